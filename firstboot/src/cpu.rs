//! Where the machine's CPU time went: the whole machine's busy and idle time (`/proc/stat`),
//! how much of the busy time was spent in the kernel, each supervised component's
//! (`/proc/PID/stat`) and firstboot's own, each with the children it has waited for (the
//! `ctr` runs of the image import, kube-proxy's `iptables-restore`, containerd's CNI plugins),
//! and the largest of the rest grouped by command name (journald, the shims, the kernel's
//! worker threads). Printed on the console at node Ready and when CoreDNS is ready (`kiln: cpu
//! at coredns-ready …`), so a slow boot shows what it was busy with.

use crate::supervisor::shell::ProcStat;

/// The machine's CPU time over all CPUs since boot, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MachineTicks {
    /// user, nice, system, irq, softirq and steal.
    pub busy: u64,
    /// idle and iowait.
    pub idle: u64,
    /// system, irq and softirq: the part of `busy` spent in the kernel.
    pub kernel: u64,
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
            kernel: at(2) + at(5) + at(6),
        })
    }

    pub fn read() -> Option<MachineTicks> {
        MachineTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// One process's (or one group's) CPU ticks: its own and its waited-for children's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Part {
    pub name: String,
    pub own: u64,
    pub children: u64,
}

impl Part {
    fn total(&self) -> u64 {
        self.own.saturating_add(self.children)
    }
}

/// How many of the unnamed processes' groups the line names.
const OTHERS_SHOWN: usize = 5;

/// One reading: the machine's total, each named part's CPU ticks, and the rest's largest
/// groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuUse {
    pub machine: MachineTicks,
    pub parts: Vec<Part>,
    /// The processes that are neither firstboot nor a component, summed by command name.
    pub others: Vec<Part>,
}

/// A `/proc/PID/stat` line's command name, with a kernel thread's per-CPU suffix dropped
/// (`kworker/1:2` counts as `kworker`).
pub fn command_name(stat: &str) -> Option<String> {
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    Some(name.split('/').next().unwrap_or(name).to_string())
}

/// Sums the processes by command name, the largest first.
pub fn group_by_name(processes: impl IntoIterator<Item = Part>) -> Vec<Part> {
    let mut groups: std::collections::BTreeMap<String, Part> = Default::default();
    for p in processes {
        let g = groups.entry(p.name.clone()).or_insert_with(|| Part {
            name: p.name.clone(),
            ..Part::default()
        });
        g.own = g.own.saturating_add(p.own);
        g.children = g.children.saturating_add(p.children);
    }
    let mut groups: Vec<Part> = groups.into_values().collect();
    groups.sort_by(|a, b| b.total().cmp(&a.total()).then_with(|| a.name.cmp(&b.name)));
    groups
}

impl CpuUse {
    /// Reads the machine, firstboot itself, each `(name, pid)` that is running, and every
    /// other process in `/proc`.
    pub fn read(components: &[(String, i32)]) -> CpuUse {
        let stat_of = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let part = |name: String, stat: &str| {
            let s = ProcStat::parse(stat)?;
            Some(Part {
                name,
                own: s.cpu_ticks,
                children: s.waited_children_ticks,
            })
        };
        let mut parts: Vec<Part> = components
            .iter()
            .filter_map(|(name, pid)| part(name.clone(), &stat_of(&pid.to_string())?))
            .collect();
        if let Some(p) = stat_of("self").and_then(|s| part("firstboot".into(), &s)) {
            parts.push(p);
        }
        let mut named: Vec<i32> = components.iter().map(|c| c.1).collect();
        named.push(std::process::id() as i32);
        let others = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| !named.contains(pid))
            .filter_map(|pid| {
                let stat = stat_of(&pid.to_string())?;
                part(command_name(&stat)?, &stat)
            });
        CpuUse {
            machine: MachineTicks::read().unwrap_or_default(),
            parts,
            others: group_by_name(others),
        }
    }

    /// The console line: seconds, the largest part first (with its waited-for children's
    /// share when it has one), then what no part accounts for (pods, containerd's shims,
    /// the kernel's threads) with its largest groups.
    pub fn line(&self, at: &str, ticks_per_second: u64) -> String {
        let hz = ticks_per_second.max(1) as f64;
        let s = |t: u64| format!("{:.1} s", t as f64 / hz);
        let show = |p: &Part| {
            // Children below a tenth of a second are not worth a mention.
            if p.children as f64 / hz >= 0.1 {
                format!("{} {} (children {})", p.name, s(p.total()), s(p.children))
            } else {
                format!("{} {}", p.name, s(p.total()))
            }
        };
        let mut parts = self.parts.clone();
        parts.sort_by(|a, b| b.total().cmp(&a.total()).then_with(|| a.name.cmp(&b.name)));
        let named: u64 = parts.iter().map(Part::total).sum();
        let mut list: Vec<String> = parts.iter().map(show).collect();
        let others: Vec<String> = self
            .others
            .iter()
            .filter(|p| p.total() > 0)
            .take(OTHERS_SHOWN)
            .map(show)
            .collect();
        let other = s(self.machine.busy.saturating_sub(named));
        list.push(if others.is_empty() {
            format!("other {other}")
        } else {
            format!("other {other} (of it {})", others.join(", "))
        });
        format!(
            "kiln: cpu at {at}: busy {} (kernel {}), idle {}; {}",
            s(self.machine.busy),
            s(self.machine.kernel),
            s(self.machine.idle),
            list.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_sums_busy_idle_and_kernel_fields() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\nintr 1 2\n";
        let m = MachineTicks::parse(stat).unwrap();
        assert_eq!(
            m,
            MachineTicks {
                busy: 161,
                idle: 1020,
                kernel: 55,
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
    fn a_reading_counts_the_waited_for_children_and_names_the_rest() {
        let self_part = |u: &CpuUse| u.parts.iter().find(|p| p.name == "firstboot").cloned();
        let before = CpuUse::read(&[]);
        let mine = self_part(&before).unwrap();
        // A real child's time shows up in the parent's once it has been waited for.
        let out = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(out.success());
        // A running child is one of the others, under its command name: a name of this
        // test's own (other tests run `sleep` at the same time), through a symlink.
        let dir = tempfile::tempdir().unwrap();
        let name = format!("kcpu{}", std::process::id() % 100_000);
        std::os::unix::fs::symlink("/bin/sleep", dir.path().join(&name)).unwrap();
        let mut sleeper = std::process::Command::new(dir.path().join(&name))
            .arg("30")
            .spawn()
            .unwrap();
        let after = CpuUse::read(&[("sleeper".into(), sleeper.id() as i32)]);
        assert!(self_part(&after).unwrap().children > mine.children);
        assert!(after.parts.iter().any(|p| p.name == "sleeper"));
        assert!(!after.others.iter().any(|p| p.name == name));
        let unnamed = CpuUse::read(&[]);
        assert!(unnamed.others.iter().any(|p| p.name == name));
        assert!(!unnamed.others.iter().any(|p| p.name == "firstboot"));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }

    #[test]
    fn others_are_grouped_by_command_name() {
        assert_eq!(
            command_name("12 (kworker/1:2-events) I 2 0").as_deref(),
            Some("kworker")
        );
        assert_eq!(
            command_name("13 (a (b) c) S 1 0").as_deref(),
            Some("a (b) c")
        );
        assert_eq!(command_name("13 S 1"), None);
        let p = |name: &str, own, children| Part {
            name: name.into(),
            own,
            children,
        };
        assert_eq!(
            group_by_name([p("shim", 10, 0), p("journald", 15, 0), p("shim", 10, 2)]),
            vec![p("shim", 20, 2), p("journald", 15, 0)]
        );
    }

    #[test]
    fn the_line_puts_the_largest_first_and_counts_the_rest() {
        let p = |name: &str, own, children| Part {
            name: name.into(),
            own,
            children,
        };
        let u = CpuUse {
            machine: MachineTicks {
                busy: 10_000,
                idle: 500,
                kernel: 2_500,
            },
            parts: vec![
                p("etcd", 1_000, 0),
                p("kube-apiserver", 3_995, 5),
                p("firstboot", 1_000, 500),
            ],
            others: vec![
                p("systemd-journal", 900, 0),
                p("shim", 300, 200),
                p("idle", 0, 0),
            ],
        };
        assert_eq!(
            u.line("coredns-ready", 100),
            "kiln: cpu at coredns-ready: busy 100.0 s (kernel 25.0 s), idle 5.0 s; \
             kube-apiserver 40.0 s, firstboot 15.0 s (children 5.0 s), etcd 10.0 s, \
             other 35.0 s (of it systemd-journal 9.0 s, shim 5.0 s (children 2.0 s))"
        );
    }
}
