//! This process's peak memory (VmHWM), which stage 1 and stage 2 each report.

use std::path::Path;

/// The `VmHWM:` (peak resident set, KiB) of a `/proc/<pid>/status` text.
pub fn vm_hwm_kib(proc_status: &str) -> Option<u64> {
    let rest = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim();
    rest.strip_suffix("kB")?.trim().parse().ok()
}

/// This process's peak resident set in KiB, from `proc_self_status`
/// (`/proc/self/status` on a machine).
pub fn read_vm_hwm_kib(proc_self_status: &Path) -> Option<u64> {
    vm_hwm_kib(&std::fs::read_to_string(proc_self_status).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_from_proc_status() {
        let text =
            "Name:\tfirstboot\nVmPeak:\t   12000 kB\nVmHWM:\t    3968 kB\nVmRSS:\t    3900 kB\n";
        assert_eq!(vm_hwm_kib(text), Some(3968));
        assert_eq!(vm_hwm_kib("VmRSS:\t 10 kB\n"), None);
        assert_eq!(vm_hwm_kib("VmHWM:\t lots kB\n"), None);
        assert_eq!(vm_hwm_kib("VmHWM:\t 12 MB\n"), None);
        // This test process: a real peak, at least its current resident set (both from one
        // reading: the resident set may grow between two).
        assert!(read_vm_hwm_kib(Path::new("/proc/self/status")).is_some_and(|k| k > 0));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let real = vm_hwm_kib(&status).unwrap();
        let rss: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(real >= rss && rss > 0, "VmHWM {real} < VmRSS {rss}");
        assert_eq!(read_vm_hwm_kib(Path::new("/nonexistent/status")), None);
    }
}
