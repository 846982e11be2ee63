//! Where the machine's CPU time went: the whole machine's busy and idle time (`/proc/stat`)
//! beside each supervised component's (`/proc/PID/stat`) and firstboot's own, with the
//! children it has waited for (the `ctr` runs of the image import). Printed on the console at
//! node Ready and when CoreDNS is ready (`kiln: cpu at coredns-ready …`), so a slow boot shows
//! what it was busy with.

use crate::supervisor::shell::ProcStat;

/// The machine's CPU time over all CPUs since boot, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTicks {
    /// user, nice, system, irq, softirq and steal.
    pub busy: u64,
    /// idle and iowait.
    pub idle: u64,
}

impl MachineTicks {
    /// The `cpu` line of `/proc/stat` (the sum over all CPUs).
    pub fn parse(proc_stat: &str) -> Option<MachineTicks> {
        let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
        let n: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let at = |i: usize| n.get(i).copied().unwrap_or(0);
        if n.len() < 4 {
            return None;
        }
        Some(MachineTicks {
            busy: at(0) + at(1) + at(2) + at(5) + at(6) + at(7),
            idle: at(3) + at(4),
        })
    }

    pub fn read() -> Option<MachineTicks> {
        MachineTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// A process's CPU time with that of its children it has waited for, in clock ticks (a
/// `/proc/PID/stat` line).
pub fn own_with_children_ticks(stat: &str) -> Option<u64> {
    let s = ProcStat::parse(stat)?;
    Some(s.cpu_ticks.saturating_add(s.waited_children_ticks))
}

/// One reading: the machine's total and each named part's CPU ticks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuUse {
    pub machine: MachineTicks,
    pub parts: Vec<(String, u64)>,
}

impl CpuUse {
    /// Reads the machine, firstboot itself, and each `(name, pid)` that is running.
    pub fn read(components: &[(String, i32)]) -> CpuUse {
        let stat_of = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let mut parts: Vec<(String, u64)> = components
            .iter()
            .filter_map(|(name, pid)| {
                let t = ProcStat::parse(&stat_of(&pid.to_string())?)?.cpu_ticks;
                Some((name.clone(), t))
            })
            .collect();
        if let Some(t) = stat_of("self").as_deref().and_then(own_with_children_ticks) {
            parts.push(("firstboot (with ctr)".into(), t));
        }
        CpuUse {
            machine: MachineTicks::read().unwrap_or_default(),
            parts,
        }
    }

    /// The console line: seconds, the largest part first, then what no part accounts
    /// for (pods, containerd's shims, the kernel's threads).
    pub fn line(&self, at: &str, ticks_per_second: u64) -> String {
        let hz = ticks_per_second.max(1) as f64;
        let s = |t: u64| format!("{:.1} s", t as f64 / hz);
        let mut parts = self.parts.clone();
        parts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let named: u64 = parts.iter().map(|p| p.1).sum();
        let mut list: Vec<String> = parts
            .iter()
            .map(|(n, t)| format!("{n} {}", s(*t)))
            .collect();
        list.push(format!(
            "other {}",
            s(self.machine.busy.saturating_sub(named))
        ));
        format!(
            "kiln: cpu at {at}: busy {}, idle {}; {}",
            s(self.machine.busy),
            s(self.machine.idle),
            list.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_sums_busy_and_idle_fields() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1 2\n";
        let m = MachineTicks::parse(stat).unwrap();
        assert_eq!(
            m,
            MachineTicks {
                busy: 161,
                idle: 1020
            }
        );
        assert_eq!(MachineTicks::parse("cpu0 1 2 3 4\n"), None);
        assert_eq!(MachineTicks::parse("cpu  1 x 3 4\n"), None);
        // The real machine: busy time grows while this test computes.
        let before = MachineTicks::read().unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while MachineTicks::read().unwrap().busy == before.busy && std::time::Instant::now() < until
        {
            std::hint::black_box((0..1_000_000u64).sum::<u64>());
        }
        assert!(MachineTicks::read().unwrap().busy > before.busy);
    }

    #[test]
    fn own_time_counts_the_waited_for_children() {
        let line = "7 (firstboot) S 1 7 7 0 -1 0 0 0 0 0 300 40 2000 500 20 0 9 0 777 1";
        assert_eq!(own_with_children_ticks(line), Some(300 + 40 + 2000 + 500));
        assert_eq!(own_with_children_ticks("7 (x) S 1"), None);
        // A real child's time shows up once it has been waited for.
        let self_ticks = || {
            own_with_children_ticks(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap()
        };
        let before = self_ticks();
        let out = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(out.success());
        assert!(self_ticks() > before);
    }

    #[test]
    fn the_line_puts_the_largest_first_and_counts_the_rest() {
        let u = CpuUse {
            machine: MachineTicks {
                busy: 10_000,
                idle: 500,
            },
            parts: vec![
                ("etcd".into(), 1_000),
                ("kube-apiserver".into(), 4_000),
                ("firstboot (with ctr)".into(), 1_500),
            ],
        };
        assert_eq!(
            u.line("coredns-ready", 100),
            "kiln: cpu at coredns-ready: busy 100.0 s, idle 5.0 s; kube-apiserver 40.0 s, \
             firstboot (with ctr) 15.0 s, etcd 10.0 s, other 35.0 s"
        );
    }
}
