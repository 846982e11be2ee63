//! The thin IO shell around [`machine`](super::machine): spawns children in their own
//! process group, reaps with `waitpid(-1, WNOHANG)` until nothing is left, runs probes on
//! short-lived threads, and signals process groups. [`Supervisor::adopt_running`] takes over
//! the components an earlier supervisor left running (seen exiting through pidfds, since
//! they are not our children). Each child's stdout and stderr go to
//! journald as a stream with the component name as SYSLOG_IDENTIFIER (`journalctl -t
//! kube-apiserver`) when [`Supervisor::journal`] is set and journald answers; otherwise they
//! are forwarded line by line to the `log` crate with the component name as target.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions};
use serde::{Deserialize, Serialize};

use super::machine::{self, Action, ComponentSpec, ComponentStatus, Event, Millis, Signal, State};
use super::probe::HttpProbe;

/// How to start a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The nice value it runs with until [`Supervisor::end_boot_priority`] (0: none): work
    /// that is not on the boot's critical path yields the CPU to what is.
    #[serde(default)]
    pub boot_nice: i32,
}

/// A component: its machine spec, its command and (if any) its HTTP(S) probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    pub spec: ComponentSpec,
    pub command: CommandSpec,
    pub probe: Option<HttpProbe>,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid component specs")]
    Spec(#[from] machine::SpecError),
    #[error("component {0} has a probe spec but no probe target (or the reverse)")]
    ProbeMismatch(String),
    #[error("reaping children")]
    Reap(#[source] std::io::Error),
}

/// One component's entry in `firstboot status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisedStatus {
    #[serde(flatten)]
    pub component: ComponentStatus,
    pub pid: Option<i32>,
    pub last_probe_error: Option<String>,
}

pub struct Supervisor {
    state: State,
    managed: BTreeMap<String, Managed>,
    pids: BTreeMap<String, Pid>,
    /// Adopted processes (not our children): a pidfd each, readable once it has exited.
    adopted: BTreeMap<String, OwnedFd>,
    probe_errors: BTreeMap<String, Option<String>>,
    probe_tx: mpsc::Sender<(String, u64, Result<(), String>)>,
    probe_rx: mpsc::Receiver<(String, u64, Result<(), String>)>,
    last_step: Option<Instant>,
    /// Components whose process was seen stopped (state `T`), and since when.
    stopped_since: BTreeMap<String, Millis>,
    /// Each running process's CPU time (clock ticks) as last read, and since when it has
    /// not changed.
    cpu_since: BTreeMap<String, (Pid, u64, Millis)>,
    next_state_check: Millis,
    /// Loop period.
    pub tick: Duration,
    /// Connect children's stdout/stderr to journald streams named after the component.
    pub journal: bool,
}

impl Supervisor {
    pub fn new(components: Vec<Managed>) -> Result<Supervisor, SupervisorError> {
        let mut managed = BTreeMap::new();
        for m in &components {
            if m.spec.probe.is_some() != m.probe.is_some() {
                return Err(SupervisorError::ProbeMismatch(m.spec.name.clone()));
            }
            managed.insert(m.spec.name.clone(), m.clone());
        }
        let state = State::new(components.into_iter().map(|m| m.spec).collect())?;
        let (probe_tx, probe_rx) = mpsc::channel();
        Ok(Supervisor {
            state,
            managed,
            pids: BTreeMap::new(),
            adopted: BTreeMap::new(),
            probe_errors: BTreeMap::new(),
            probe_tx,
            probe_rx,
            last_step: None,
            stopped_since: BTreeMap::new(),
            cpu_since: BTreeMap::new(),
            next_state_check: 0,
            tick: Duration::from_millis(100),
            journal: false,
        })
    }

    /// CLOCK_MONOTONIC milliseconds (time since boot): the machine's clock, so the times
    /// in [`ComponentStatus`] compare with other monotonic readings (e.g. a benchmark's).
    pub fn now(&self) -> Millis {
        monotonic_ms()
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The loop has completed a step within the last `within` (for WATCHDOG=1).
    pub fn loop_healthy(&self, within: Duration) -> bool {
        self.last_step.is_some_and(|t| t.elapsed() <= within)
    }

    pub fn pid(&self, name: &str) -> Option<i32> {
        self.pids.get(name).map(|p| p.as_raw_nonzero().get())
    }

    pub fn status(&self) -> Vec<SupervisedStatus> {
        self.state
            .status()
            .into_iter()
            .map(|c| SupervisedStatus {
                pid: self.pid(&c.name),
                last_probe_error: self.probe_errors.get(&c.name).cloned().flatten(),
                component: c,
            })
            .collect()
    }

    /// Ends the boot's priorities: every component started with a [`CommandSpec::boot_nice`]
    /// runs at nice 0 from now on, the running processes (every thread) included.
    pub fn end_boot_priority(&mut self) {
        for (name, m) in self.managed.iter_mut() {
            if m.command.boot_nice == 0 {
                continue;
            }
            m.command.boot_nice = 0;
            if let Some(pid) = self.pids.get(name) {
                match renice_threads(*pid, 0) {
                    Ok(n) => log::info!(target: "supervisor", "{name}: {n} threads at nice 0"),
                    Err(e) => log::warn!(target: "supervisor", "{name}: renicing: {e}"),
                }
            }
        }
    }

    /// Takes over the components' processes that an earlier supervisor left running (it was
    /// killed, or hung and killed by systemd's watchdog, and the components were not): a
    /// process in this process's cgroup, leading its own process group (as [`spawn`] starts
    /// them), running exactly a component's command line. It is supervised from now on as
    /// if spawned here: probed, restarted when it fails, stopped at shutdown. A process
    /// running a component's program with other arguments (the command changed meanwhile)
    /// is killed, so the new one can take its ports. Call before the first [`step`]: every
    /// component not adopted is spawned by it. Returns the adopted components and pids.
    ///
    /// [`spawn`]: Supervisor::spawn
    /// [`step`]: Supervisor::step
    pub fn adopt_running(&mut self) -> Vec<(String, i32)> {
        let own = std::process::id();
        let own_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
        let mut running = Vec::new();
        let mut adopted = Vec::new();
        for (pid, argv) in processes() {
            let raw = pid.as_raw_nonzero().get();
            if raw.unsigned_abs() == own {
                continue;
            }
            let runs = |m: &Managed| argv.first() == Some(&m.command.program);
            let exact = |m: &Managed| runs(m) && argv[1..] == m.command.args;
            let found = (self.managed.iter().find(|(_, m)| exact(m)))
                .or_else(|| self.managed.iter().find(|(_, m)| runs(m)));
            let Some((name, m)) = found else {
                continue;
            };
            let stat = read_stat(pid);
            let leader = stat.is_some_and(|s| s.pgrp == raw);
            let cgroup = std::fs::read_to_string(format!("/proc/{raw}/cgroup"));
            if !leader || own_cgroup.is_none() || cgroup.ok() != own_cgroup {
                continue;
            }
            if argv[1..] != m.command.args || self.pids.contains_key(name) {
                log::warn!(
                    target: "supervisor",
                    "{name}: pid {raw} runs an earlier or second copy of its command: killed"
                );
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                continue;
            }
            let Some((fd, started)) = open_pidfd(pid, stat) else {
                continue;
            };
            log::info!(target: "supervisor", "{name}: adopted pid {raw}");
            self.pids.insert(name.clone(), pid);
            self.adopted.insert(name.clone(), fd);
            running.push((name.clone(), started));
            adopted.push((name.clone(), raw));
        }
        if !running.is_empty() {
            self.feed(Event::Adopted { running });
        }
        adopted
    }

    /// Restarts `name` and its dependents (e.g. after its certificates changed).
    pub fn identity_changed(&mut self, name: &str) {
        self.feed(Event::IdentityChanged {
            name: name.to_string(),
        });
    }

    fn feed(&mut self, event: Event) {
        let now = self.now();
        let actions = machine::next(&mut self.state, event, now);
        for a in actions {
            self.perform(a);
        }
    }

    /// One loop iteration: reap, collect probe results, tick.
    pub fn step(&mut self) -> Result<(), SupervisorError> {
        for (name, status) in self.reap()? {
            self.feed(Event::Exited { name, status });
        }
        for name in self.adopted_exits() {
            self.feed(Event::Exited { name, status: None });
        }
        while let Ok((name, id, result)) = self.probe_rx.try_recv() {
            let ok = result.is_ok();
            if let Err(e) = &result {
                log::debug!(target: "supervisor", "{name}: probe failed: {e}");
            }
            self.probe_errors.insert(name.clone(), result.err());
            self.feed(Event::ProbeResult { name, id, ok });
        }
        self.check_processes();
        self.feed(Event::Tick);
        self.last_step = Some(Instant::now());
        Ok(())
    }

    /// Reads each running component's `/proc/PID/stat` (every [`STATE_CHECK_EVERY`] ms)
    /// and reports the hung-looking ones: stopped (state `T`), a hang the probes would take
    /// their whole failure window to see and one a component without a probe (containerd)
    /// would never show; and idle (no CPU time used), which the machine weighs against its
    /// probes. A process in disk wait (`D`) is waiting on the disk, not hung by itself.
    fn check_processes(&mut self) {
        let now = self.now();
        if now < self.next_state_check {
            return;
        }
        // A check this late means the loop itself did not run (the machine was starved or
        // paused): nobody watched the processes meanwhile, so their idleness counts anew.
        if now.saturating_sub(self.next_state_check) > STATE_CHECK_STALL {
            self.cpu_since.clear();
        }
        self.next_state_check = now.saturating_add(STATE_CHECK_EVERY);
        let mut events = Vec::new();
        for (name, pid) in &self.pids {
            let stat = read_stat(*pid);
            if stat.is_some_and(|s| s.state == 'T') {
                let since = *self.stopped_since.entry(name.clone()).or_insert(now);
                events.push(Event::Frozen {
                    name: name.clone(),
                    since,
                });
                continue;
            }
            self.stopped_since.remove(name);
            match stat {
                Some(s) if matches!(s.state, 'R' | 'S' | 'I') => match self.cpu_since.get(name) {
                    Some(&(p, ticks, since)) if p == *pid && ticks == s.cpu_ticks => {
                        events.push(Event::Idle {
                            name: name.clone(),
                            since,
                        });
                    }
                    _ => {
                        self.cpu_since
                            .insert(name.clone(), (*pid, s.cpu_ticks, now));
                    }
                },
                _ => {
                    self.cpu_since.remove(name);
                }
            }
        }
        for event in events {
            self.feed(event);
        }
    }

    /// Runs the loop until `done(state)` holds (returns true) or `timeout` passes (false).
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&State) -> bool,
    ) -> Result<bool, SupervisorError> {
        let end = Instant::now() + timeout;
        loop {
            self.step()?;
            if done(&self.state) {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(self.tick);
        }
    }

    /// SIGTERM everything, SIGKILL after each grace period, wait until all are reaped.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<bool, SupervisorError> {
        self.feed(Event::Shutdown);
        self.run_until(timeout, |s| s.all_stopped())
    }

    /// `waitpid(-1, WNOHANG)` until no child is left to collect; returns our components'
    /// exits (other reaped processes, e.g. orphans when PID 1, are dropped).
    fn reap(&mut self) -> Result<Vec<(String, Option<i32>)>, SupervisorError> {
        let mut exits = Vec::new();
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let code = status
                        .exit_status()
                        .or_else(|| status.terminating_signal().map(|s| 128 + s));
                    let name = self
                        .pids
                        .iter()
                        .find(|(_, p)| **p == pid)
                        .map(|(n, _)| n.clone());
                    if let Some(name) = name {
                        self.forget(&name);
                        log::info!(target: "supervisor", "{name}: exited with {code:?}");
                        exits.push((name, code));
                    }
                }
                Ok(None) => break,
                Err(Errno::CHILD) => break,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(SupervisorError::Reap(e.into())),
            }
        }
        Ok(exits)
    }

    /// The adopted processes that have exited (their pidfds are readable). Their parent
    /// (PID 1) reaps them, and their exit status is not ours to read.
    fn adopted_exits(&mut self) -> Vec<String> {
        if self.adopted.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = self.adopted.keys().cloned().collect();
        let mut fds: Vec<rustix::event::PollFd> = self
            .adopted
            .values()
            .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN))
            .collect();
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(0) == 0 {
            return Vec::new();
        }
        let exited: Vec<String> = names
            .into_iter()
            .zip(fds.iter().map(|f| !f.revents().is_empty()))
            .filter_map(|(n, gone)| gone.then_some(n))
            .collect();
        for name in &exited {
            self.forget(name);
            log::info!(target: "supervisor", "{name}: adopted process exited");
        }
        exited
    }

    /// Drops what is known of `name`'s process once it has exited.
    fn forget(&mut self, name: &str) {
        self.pids.remove(name);
        self.adopted.remove(name);
        self.stopped_since.remove(name);
        self.cpu_since.remove(name);
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Spawn { name } => {
                if let Err(e) = self.spawn(&name) {
                    log::error!(target: "supervisor", "{name}: spawning failed: {e}");
                    self.feed(Event::Exited { name, status: None });
                }
            }
            Action::Probe { name, id, timeout } => {
                let Some(probe) = self.managed.get(&name).and_then(|m| m.probe.clone()) else {
                    return;
                };
                let tx = self.probe_tx.clone();
                std::thread::spawn(move || {
                    let r = probe
                        .check(Duration::from_millis(timeout))
                        .map_err(|e| format!("{e:#}"));
                    let _ = tx.send((name, id, r));
                });
            }
            Action::Signal { name, signal } => {
                if let Some(pid) = self.pids.get(&name) {
                    let sig = match signal {
                        Signal::Term => rustix::process::Signal::TERM,
                        Signal::Kill => rustix::process::Signal::KILL,
                    };
                    // The group first (children of the component), then the leader itself;
                    // an adopted leader through its pidfd (its pid is not held for us).
                    let _ = rustix::process::kill_process_group(*pid, sig);
                    let _ = match self.adopted.get(&name) {
                        Some(fd) => rustix::process::pidfd_send_signal(fd, sig),
                        None => rustix::process::kill_process(*pid, sig),
                    };
                }
            }
            Action::RestartAt { name, at } => {
                let delay = at.saturating_sub(self.now());
                log::info!(target: "supervisor", "{name}: restarting in {delay} ms");
            }
            Action::Log { name, message } => {
                log::info!(target: "supervisor", "{name}: {message}");
            }
        }
    }

    fn spawn(&mut self, name: &str) -> std::io::Result<()> {
        let Some(m) = self.managed.get(name) else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        let mut cmd = Command::new(&m.command.program);
        cmd.args(&m.command.args)
            .envs(m.command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0);
        let stream = if self.journal {
            crate::logging::journal_stream(name)
        } else {
            None
        };
        match stream {
            Some((out, err)) => {
                cmd.stdout(out).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let mut child = spawn_niced(&mut cmd, m.command.boot_nice)?;
        let raw = i32::try_from(child.id()).map_err(|_| std::io::ErrorKind::InvalidData)?;
        let pid = Pid::from_raw(raw).ok_or(std::io::ErrorKind::InvalidData)?;
        if let Some(out) = child.stdout.take() {
            forward(name, out);
        }
        if let Some(err) = child.stderr.take() {
            forward(name, err);
        }
        // `child` is dropped without waiting: the reaper collects it by pid.
        drop(child);
        log::info!(target: "supervisor", "{name}: started, pid {raw}");
        self.pids.insert(name.to_string(), pid);
        Ok(())
    }
}

/// Spawns `cmd` with nice value `nice`. Linux keeps the nice value per thread and a child
/// inherits its forking thread's: a short-lived thread sets its own and spawns, so neither
/// the supervisor's own threads nor `unsafe` code are involved.
fn spawn_niced(cmd: &mut Command, nice: i32) -> std::io::Result<std::process::Child> {
    if nice == 0 {
        return cmd.spawn();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::process::setpriority_process(None, nice)?;
            cmd.spawn()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawning thread panicked")))
    })
}

/// Sets the nice value of every thread of `pid` (a thread started meanwhile inherits its
/// creator's); returns how many were set.
fn renice_threads(pid: Pid, nice: i32) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(format!("/proc/{}/task", pid.as_raw_nonzero()))? {
        let tid = entry?.file_name().to_string_lossy().parse::<i32>().ok();
        if let Some(tid) = tid.and_then(Pid::from_raw) {
            match rustix::process::setpriority_process(Some(tid), nice) {
                Ok(()) => n += 1,
                Err(Errno::SRCH) => {} // the thread has just exited
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(n)
}

/// Every process's pid and command line (`/proc/PID/cmdline`), but kernel threads'.
fn processes() -> Vec<(Pid, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid = e.ok()?.file_name().to_str()?.parse::<i32>().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv: Vec<String> = cmdline
            .strip_suffix(&[0])
            .unwrap_or(&cmdline)
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (!cmdline.is_empty()).then_some((Pid::from_raw(pid)?, argv))
    })
    .collect()
}

fn read_stat(pid: Pid) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()));
    stat.ok().as_deref().and_then(ProcStat::parse)
}

/// A pidfd for `pid`, and when it started (ms since boot), if it is still the process
/// `seen` (the same start time read again after the pidfd is open: the pid was not reused
/// in between) and has not exited.
fn open_pidfd(pid: Pid, seen: Option<ProcStat>) -> Option<(OwnedFd, Millis)> {
    let seen = seen?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
    let now = read_stat(pid)?;
    if now.start_ticks != seen.start_ticks || now.state == 'Z' {
        return None;
    }
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some((fd, now.start_ticks.saturating_mul(1000) / hz))
}

/// How often [`Supervisor::step`] reads the components' process states.
pub const STATE_CHECK_EVERY: Millis = 200;
/// A process check this much later than due finds CPU times that nobody watched grow.
const STATE_CHECK_STALL: Millis = 1_000;

/// What the supervisor reads from a `/proc/PID/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `D`, `T` stopped, `t` traced, `Z`...
    pub state: char,
    /// User plus system CPU time of the whole process (all threads), in clock ticks.
    pub cpu_ticks: u64,
    /// Its process group.
    pub pgrp: i32,
    /// When it started, in clock ticks since boot.
    pub start_ticks: u64,
    /// User plus system CPU time of its children it has waited for, in clock ticks.
    pub waited_children_ticks: u64,
}

impl ProcStat {
    /// Parses the fields after the command name, which may itself hold spaces and
    /// parentheses: the state is field 3, the process group field 5, utime and stime
    /// fields 14 and 15, the waited-for children's cutime and cstime 16 and 17, the start
    /// time field 22.
    pub fn parse(stat: &str) -> Option<ProcStat> {
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        // Field n of proc_pid_stat(5) is fields[n - 3].
        let field = |n: usize| fields.get(n - 3).copied();
        let number = |n: usize| field(n)?.parse::<u64>().ok();
        Some(ProcStat {
            state: field(3)?.chars().next()?,
            pgrp: field(5)?.parse().ok()?,
            cpu_ticks: number(14)?.saturating_add(number(15)?),
            start_ticks: number(22)?,
            waited_children_ticks: number(16)?.saturating_add(number(17)?),
        })
    }
}

/// CLOCK_MONOTONIC in milliseconds.
pub fn monotonic_ms() -> Millis {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000)
}

/// Forwards lines from a child's pipe to the log with the component name as target.
fn forward(name: &str, stream: impl Read + Send + 'static) {
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => log::info!(target: name.as_str(), "{line}"),
                Err(_) => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_cpu_time_follow_the_last_parenthesis() {
        let line = |comm: &str, state: char| {
            format!("42 ({comm}) {state} 1 42 42 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0 777 1")
        };
        let etcd = ProcStat::parse(&line("etcd", 'S')).unwrap();
        assert_eq!((etcd.state, etcd.cpu_ticks), ('S', 1234 + 56));
        assert_eq!((etcd.pgrp, etcd.start_ticks), (42, 777));
        let odd = ProcStat::parse(&line("kube (x) 1 2", 'T')).unwrap();
        assert_eq!((odd.state, odd.cpu_ticks), ('T', 1290));
        assert_eq!(ProcStat::parse("garbage"), None);
        assert_eq!(ProcStat::parse("42 (a) t 1"), None);
        // This process's own line: its CPU time grows while it computes.
        let read = || ProcStat::parse(&std::fs::read_to_string("/proc/self/stat").unwrap());
        let before = read().unwrap().cpu_ticks;
        let spin_until = Instant::now() + Duration::from_secs(5);
        while read().unwrap().cpu_ticks == before && Instant::now() < spin_until {
            std::hint::black_box((0..1_000_000u64).sum::<u64>());
        }
        assert!(read().unwrap().cpu_ticks > before);
        let own = ProcStat::parse(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
        assert_eq!(own.map(|o| o.state), Some('R'));
    }
}
