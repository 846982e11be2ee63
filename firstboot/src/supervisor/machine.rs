//! The supervisor's pure state machine: `next(state, event, now) -> actions`.
//!
//! Time is plain milliseconds from an arbitrary origin, injected by the caller. Per
//! component: `Waiting` (for its dependencies to be ready) -> spawn -> `Running` (not ready
//! until the first good probe) -> on exit, or `failure_threshold` consecutive failed probes,
//! `Stopping` (SIGTERM at t, SIGKILL at t + grace) -> `Backoff` (until t + delay) -> spawn ...
//! A process seen stopped (state `T`) for [`FROZEN_AFTER`] is hung: SIGKILL at once. So is
//! one whose probe timed out while it used no CPU time at all for at least the second half of
//! that probe's wait (a deadlock, a frozen cgroup: it sleeps, so its state says nothing).
//!
//! Restart rate: after the first crash the component is respawned at once; after the n-th
//! consecutive crash (n >= 2) the delay is `min(backoff_base * 2^(n-2), backoff_max)`; the
//! count resets once a run has been ready for `stable_after`. So a crash loop spawns at most
//! twice within `backoff_base` and settles at one spawn per `backoff_max`, and a component
//! that crashes just after each stable run restarts at most once per `stable_after`. A `Stopping` component is never respawned before its process is reaped.
//!
//! A supervisor that starts while its components still run (firstboot restarted after a
//! crash or a watchdog kill) adopts them ([`Event::Adopted`]): they are `Running` since
//! their processes started, not ready until a probe answers, and are not spawned again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Milliseconds on the injected clock.
pub type Millis = u64;

/// Probe period of a component not ready yet in its run (when it has a startup window).
pub const STARTUP_PROBE_PERIOD: Millis = 250;

/// A process seen stopped (state `T`, e.g. SIGSTOP) this long is hung: it is killed at once.
/// Nothing in a healthy node stops a component, and a stopped process answers no probe, so
/// waiting for the probes to fail would only add their whole failure window.
pub const FROZEN_AFTER: Millis = 1_000;

/// Liveness/readiness probe timing. The first good result marks the component ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub initial_delay: Millis,
    pub period: Millis,
    pub timeout: Millis,
    pub failure_threshold: u32,
    /// Before the first good probe, failures stop the component only once it has been
    /// running this long (a slow cold start is not a hang). 0: they count from the start.
    #[serde(default)]
    pub startup_timeout: Millis,
}

impl ProbeSpec {
    /// Whether `failures` consecutive failed probes stop a component that started at
    /// `since` and is `ready` (or not yet).
    pub fn gives_up(&self, failures: u32, ready: bool, since: Millis, now: Millis) -> bool {
        failures >= self.failure_threshold
            && (ready || now.saturating_sub(since) >= self.startup_timeout)
    }
}

/// What to run and how to judge it; the command itself lives in the shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    pub name: String,
    pub depends_on: Vec<String>,
    /// Without a probe the component is ready as soon as it is spawned.
    pub probe: Option<ProbeSpec>,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Millis,
    pub backoff_base: Millis,
    pub backoff_max: Millis,
    /// A run ready for this long resets the backoff.
    pub stable_after: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    Term,
    Kill,
}

/// What happens once a stopping process has been reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum After {
    /// Restart after the backoff delay (it failed).
    Backoff,
    /// Restart as soon as dependencies are ready (identity change).
    Restart,
    /// Stay down (shutdown).
    Stay,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Not running; spawned once every dependency is ready.
    Waiting,
    Running {
        since: Millis,
        ready: bool,
        ready_since: Option<Millis>,
        failures: u32,
        next_probe: Millis,
        /// The probe in flight.
        in_flight: Option<InFlight>,
        /// The last probe timed out (and none has been answered since): when it was sent.
        unanswered: Option<Millis>,
    },
    Stopping {
        term_at: Millis,
        killed: bool,
        after: After,
    },
    Backoff {
        until: Millis,
    },
    Stopped,
}

/// A probe sent and not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub id: u64,
    pub sent: Millis,
    /// Past this the shell is taken never to answer: the probe counts as timed out.
    pub deadline: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Tick,
    /// The process exited (or could not be spawned: `status` None).
    Exited {
        name: String,
        status: Option<i32>,
    },
    ProbeResult {
        name: String,
        id: u64,
        ok: bool,
    },
    /// Its process has been seen stopped (state `T`) since `since`, and still is.
    Frozen {
        name: String,
        since: Millis,
    },
    /// Its process, neither stopped nor in disk wait, has used no CPU time since `since`.
    Idle {
        name: String,
        since: Millis,
    },
    /// Its certificates or configuration changed: restart it and its dependents.
    IdentityChanged {
        name: String,
    },
    /// Stop everything, restart nothing.
    Shutdown,
    /// Processes of these components are running already (left by an earlier supervisor),
    /// each since the given time: supervise them instead of spawning. Only components still
    /// `Waiting` are adopted, so this is fed before anything else.
    Adopted {
        running: Vec<(String, Millis)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn {
        name: String,
    },
    Probe {
        name: String,
        id: u64,
        timeout: Millis,
    },
    Signal {
        name: String,
        signal: Signal,
    },
    /// Informational: the component will be respawned at `at`.
    RestartAt {
        name: String,
        at: Millis,
    },
    Log {
        name: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("component {0} is defined twice")]
    Duplicate(String),
    #[error("component {name} depends on unknown component {dep}")]
    UnknownDependency { name: String, dep: String },
    #[error("dependency cycle through component {0}")]
    Cycle(String),
    #[error("component {0}: failure_threshold and period must be positive")]
    BadProbe(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub spec: ComponentSpec,
    pub phase: Phase,
    /// Spawns after the first.
    pub restarts: u32,
    /// Consecutive failed runs (backoff exponent), reset after a stable run.
    pub crashes: u32,
    pub last_probe: Option<bool>,
    pub last_exit: Option<i32>,
    /// Why it last stopped unexpectedly (exit status or failed probes).
    pub last_failure: Option<String>,
    /// When it was last spawned (for an adopted process: when that process started), became
    /// ready, exited (reaped).
    pub started_at: Option<Millis>,
    pub ready_at: Option<Millis>,
    pub exited_at: Option<Millis>,
    /// When its running process was adopted (see [`Event::Adopted`]), if this run was.
    pub adopted_at: Option<Millis>,
    spawned_once: bool,
}

impl Component {
    pub fn ready(&self) -> bool {
        matches!(self.phase, Phase::Running { ready: true, .. })
    }
}

/// Snapshot for `firstboot status`. Times are on the supervisor's clock (the shell uses
/// CLOCK_MONOTONIC milliseconds, i.e. time since boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: String,
    pub ready: bool,
    pub restarts: u32,
    pub last_probe_ok: Option<bool>,
    pub last_exit: Option<i32>,
    /// Consecutive failed runs: the backoff exponent, 0 after a stable run.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Why it last stopped unexpectedly, e.g. `exited with status 1`.
    #[serde(default)]
    pub last_failure: Option<String>,
    /// In backoff: when it is respawned.
    #[serde(default)]
    pub restart_at_ms: Option<Millis>,
    /// Its last spawn.
    #[serde(default)]
    pub started_at_ms: Option<Millis>,
    /// The last time it became ready (kept after it stops).
    #[serde(default)]
    pub ready_at_ms: Option<Millis>,
    /// Its last exit (reaped).
    #[serde(default)]
    pub exited_at_ms: Option<Millis>,
    /// Its current run was adopted from an earlier supervisor, at this time.
    #[serde(default)]
    pub adopted_at_ms: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// In dependency order (dependencies first).
    pub components: Vec<Component>,
    next_probe_id: u64,
}

impl State {
    pub fn new(specs: Vec<ComponentSpec>) -> Result<State, SpecError> {
        let mut by_name = BTreeMap::new();
        for s in &specs {
            if by_name.insert(s.name.clone(), s.clone()).is_some() {
                return Err(SpecError::Duplicate(s.name.clone()));
            }
            if let Some(p) = &s.probe {
                if p.failure_threshold == 0 || p.period == 0 {
                    return Err(SpecError::BadProbe(s.name.clone()));
                }
            }
        }
        for s in &specs {
            for d in &s.depends_on {
                if !by_name.contains_key(d) {
                    return Err(SpecError::UnknownDependency {
                        name: s.name.clone(),
                        dep: d.clone(),
                    });
                }
            }
        }
        // Topological order, stable with respect to the given order.
        let mut done = BTreeSet::new();
        let mut ordered = Vec::new();
        while ordered.len() < specs.len() {
            let before = ordered.len();
            for s in &specs {
                if !done.contains(&s.name) && s.depends_on.iter().all(|d| done.contains(d)) {
                    done.insert(s.name.clone());
                    ordered.push(s.clone());
                }
            }
            if ordered.len() == before {
                let stuck = specs.iter().find(|s| !done.contains(&s.name));
                return Err(SpecError::Cycle(
                    stuck.map(|s| s.name.clone()).unwrap_or_default(),
                ));
            }
        }
        Ok(State {
            components: ordered
                .into_iter()
                .map(|spec| Component {
                    spec,
                    phase: Phase::Waiting,
                    restarts: 0,
                    crashes: 0,
                    last_probe: None,
                    last_exit: None,
                    last_failure: None,
                    started_at: None,
                    ready_at: None,
                    exited_at: None,
                    adopted_at: None,
                    spawned_once: false,
                })
                .collect(),
            next_probe_id: 1,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.spec.name == name)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.components.iter().position(|c| c.spec.name == name)
    }

    /// Every component is ready.
    pub fn all_ready(&self) -> bool {
        self.components.iter().all(Component::ready)
    }

    /// Nothing runs or will run (after a shutdown).
    pub fn all_stopped(&self) -> bool {
        self.components
            .iter()
            .all(|c| matches!(c.phase, Phase::Stopped))
    }

    pub fn status(&self) -> Vec<ComponentStatus> {
        self.components
            .iter()
            .map(|c| ComponentStatus {
                name: c.spec.name.clone(),
                state: match &c.phase {
                    Phase::Waiting => "waiting",
                    Phase::Running { ready: false, .. } => "starting",
                    Phase::Running { ready: true, .. } => "running",
                    Phase::Stopping { .. } => "stopping",
                    Phase::Backoff { .. } => "backoff",
                    Phase::Stopped => "stopped",
                }
                .to_string(),
                ready: c.ready(),
                restarts: c.restarts,
                last_probe_ok: c.last_probe,
                last_exit: c.last_exit,
                consecutive_failures: c.crashes,
                last_failure: c.last_failure.clone(),
                restart_at_ms: match c.phase {
                    Phase::Backoff { until } => Some(until),
                    _ => None,
                },
                started_at_ms: c.started_at,
                ready_at_ms: c.ready_at,
                exited_at_ms: c.exited_at,
                adopted_at_ms: c.adopted_at,
            })
            .collect()
    }

    /// Names of the components that (transitively) depend on `name`, in dependency order.
    fn dependents(&self, name: &str) -> Vec<usize> {
        let mut affected: BTreeSet<String> = BTreeSet::from([name.to_string()]);
        let mut out = Vec::new();
        for (i, c) in self.components.iter().enumerate() {
            if c.spec.depends_on.iter().any(|d| affected.contains(d)) {
                affected.insert(c.spec.name.clone());
                out.push(i);
            }
        }
        out
    }
}

fn log(name: &str, message: String) -> Action {
    Action::Log {
        name: name.to_string(),
        message,
    }
}

/// The delay before respawning after the `crashes`-th consecutive failed run: none after
/// the first (a component that was running fine comes straight back: recovering from a
/// kill -9 costs no more than a cold start), then `backoff_base`, doubling up to
/// `backoff_max`.
pub fn backoff_delay(spec: &ComponentSpec, crashes: u32) -> Millis {
    if crashes <= 1 {
        return 0;
    }
    let exp = (crashes - 2).min(32);
    spec.backoff_base
        .saturating_mul(1u64 << exp)
        .min(spec.backoff_max)
}

/// Signals a running component and moves it to `Stopping`: after SIGTERM its grace runs,
/// after SIGKILL there is nothing left to wait for but the reaping.
fn signal_stop(
    c: &mut Component,
    now: Millis,
    signal: Signal,
    after: After,
    out: &mut Vec<Action>,
) {
    out.push(Action::Signal {
        name: c.spec.name.clone(),
        signal,
    });
    c.phase = Phase::Stopping {
        term_at: now,
        killed: signal == Signal::Kill,
        after,
    };
}

/// Sends SIGTERM and moves to `Stopping`, or for a non-running component just sets what
/// happens next.
fn stop(c: &mut Component, now: Millis, after: After, why: &str, out: &mut Vec<Action>) {
    match c.phase {
        Phase::Running { .. } => {
            out.push(log(&c.spec.name, format!("stopping: {why}")));
            signal_stop(c, now, Signal::Term, after, out);
        }
        Phase::Stopping {
            after: ref mut current,
            ..
        } => {
            // Keep the SIGTERM deadline; a shutdown overrides any planned restart.
            if after == After::Stay {
                *current = After::Stay;
            }
        }
        Phase::Waiting | Phase::Backoff { .. } => {
            c.phase = if after == After::Stay {
                Phase::Stopped
            } else {
                Phase::Waiting
            };
        }
        Phase::Stopped => {}
    }
}

/// SIGKILL at once for a hung process: a stopped or frozen process acts on no other signal
/// and a deadlocked one would only spend its grace period ignoring SIGTERM.
fn kill_hung(c: &mut Component, now: Millis, why: String, out: &mut Vec<Action>) {
    out.push(log(&c.spec.name, format!("killing: {why}")));
    c.last_failure = Some(why);
    signal_stop(c, now, Signal::Kill, After::Backoff, out);
}

/// Feeds one event to the machine at time `now` and returns what the shell must do.
pub fn next(state: &mut State, event: Event, now: Millis) -> Vec<Action> {
    let mut out = Vec::new();
    match event {
        Event::Tick => {}
        Event::Shutdown => {
            for c in state.components.iter_mut().rev() {
                stop(c, now, After::Stay, "shutdown", &mut out);
            }
        }
        Event::Exited { name, status } => {
            if let Some(i) = state.index(&name) {
                let c = &mut state.components[i];
                c.last_exit = status;
                let after = match c.phase {
                    Phase::Running { .. } => {
                        out.push(log(
                            &name,
                            format!("exited unexpectedly, status {status:?}"),
                        ));
                        c.last_failure = Some(match status {
                            Some(code) => format!("exited with status {code}"),
                            // Not spawned, or an adopted process: not our child, so its
                            // status is not ours to read.
                            None => "exited, status unknown (adopted, or not spawned)".to_string(),
                        });
                        Some(After::Backoff)
                    }
                    Phase::Stopping { after, .. } => Some(after),
                    _ => None, // stale
                };
                if after.is_some() {
                    c.exited_at = Some(now);
                }
                match after {
                    Some(After::Backoff) => {
                        c.crashes = c.crashes.saturating_add(1);
                        let until = now.saturating_add(backoff_delay(&c.spec, c.crashes));
                        out.push(Action::RestartAt {
                            name: name.clone(),
                            at: until,
                        });
                        c.phase = Phase::Backoff { until };
                    }
                    Some(After::Restart) => c.phase = Phase::Waiting,
                    Some(After::Stay) => c.phase = Phase::Stopped,
                    None => {}
                }
            }
        }
        Event::ProbeResult { name, id, ok } => {
            if let Some(i) = state.index(&name) {
                let c = &mut state.components[i];
                let probe = c.spec.probe.clone();
                if let Phase::Running {
                    since,
                    ready,
                    ready_since,
                    failures,
                    in_flight,
                    unanswered,
                    ..
                } = &mut c.phase
                {
                    if let Some(asked) = in_flight.filter(|f| f.id == id) {
                        *in_flight = None;
                        c.last_probe = Some(ok);
                        // A failure that took the whole timeout went unanswered; any other
                        // answer shows the process alive.
                        let timed_out = probe
                            .as_ref()
                            .is_some_and(|p| now.saturating_sub(asked.sent) >= p.timeout);
                        *unanswered = (!ok && timed_out).then_some(asked.sent);
                        if ok {
                            *failures = 0;
                            if !*ready {
                                *ready = true;
                                *ready_since = Some(now);
                                c.ready_at = Some(now);
                                out.push(log(&name, "ready".into()));
                            }
                        } else {
                            *failures += 1;
                            let gives_up = probe
                                .as_ref()
                                .is_none_or(|p| p.gives_up(*failures, *ready, *since, now));
                            if gives_up {
                                let why = format!("{failures} consecutive failed probes");
                                c.last_failure = Some(why.clone());
                                stop(c, now, After::Backoff, &why, &mut out);
                            }
                        }
                    }
                }
            }
        }
        Event::Frozen { name, since } => {
            if let Some(i) = state.index(&name) {
                let c = &mut state.components[i];
                let stopped_for = now.saturating_sub(since);
                // Stopped since before this run started: a report about an earlier process.
                let this_run =
                    matches!(c.phase, Phase::Running { since: started, .. } if since >= started);
                if this_run && stopped_for >= FROZEN_AFTER {
                    let why = format!("process stopped (state T) for {stopped_for} ms: hung");
                    kill_hung(c, now, why, &mut out);
                }
            }
        }
        Event::Idle { name, since } => {
            if let Some(i) = state.index(&name) {
                let c = &mut state.components[i];
                let hung = match (&c.phase, &c.spec.probe) {
                    (
                        Phase::Running {
                            since: started,
                            ready,
                            unanswered: Some(asked),
                            ..
                        },
                        Some(p),
                    ) => {
                        // It did nothing for at least the second half of the probe's
                        // wait, and nothing since: not slow, not busy, hung. (Not "since
                        // before it was asked": a hang just after a probe was sent would then
                        // wait for the next probe's whole timeout too.) A cold start gets its
                        // startup window, as with failed probes.
                        since >= *started
                            && since <= asked.saturating_add(p.timeout / 2)
                            && (*ready || now.saturating_sub(*started) >= p.startup_timeout)
                    }
                    _ => false,
                };
                if hung {
                    let idle_for = now.saturating_sub(since);
                    let why = format!(
                        "probe timed out and the process used no CPU for {idle_for} ms: hung"
                    );
                    kill_hung(c, now, why, &mut out);
                }
            }
        }
        Event::Adopted { running } => {
            for (name, started) in running {
                let Some(i) = state.index(&name) else {
                    continue;
                };
                let c = &mut state.components[i];
                if c.phase != Phase::Waiting {
                    continue;
                }
                let started = started.min(now);
                c.spawned_once = true;
                c.adopted_at = Some(now);
                start_run(c, started, now);
                let running_for = now - started;
                out.push(log(&name, format!("adopted: running for {running_for} ms")));
            }
        }
        Event::IdentityChanged { name } => {
            if let Some(i) = state.index(&name) {
                let mut targets = vec![i];
                targets.extend(state.dependents(&name));
                for t in targets {
                    let c = &mut state.components[t];
                    let why = format!("identity of {name} changed");
                    stop(c, now, After::Restart, &why, &mut out);
                }
            }
        }
    }
    advance(state, now, &mut out);
    out
}

/// A run of `c` begins: its process started at `since`; the first probe is due at
/// `first_probe`. Without a probe it is ready at once.
fn start_run(c: &mut Component, since: Millis, first_probe: Millis) {
    let ready = c.spec.probe.is_none();
    c.started_at = Some(since);
    if ready {
        c.ready_at = Some(since);
    }
    c.phase = Phase::Running {
        since,
        ready,
        ready_since: ready.then_some(since),
        failures: 0,
        next_probe: first_probe,
        in_flight: None,
        unanswered: None,
    };
}

/// Time-driven transitions: spawns, probes, probe timeouts, SIGKILL, stable-run reset.
fn advance(state: &mut State, now: Millis, out: &mut Vec<Action>) {
    for i in 0..state.components.len() {
        let deps_ready = state.components[i]
            .spec
            .depends_on
            .iter()
            .all(|d| state.get(d).is_some_and(Component::ready));
        let probe_id = state.next_probe_id;
        let c = &mut state.components[i];
        let name = c.spec.name.clone();
        let due = match c.phase {
            Phase::Waiting => true,
            Phase::Backoff { until } => now >= until,
            _ => false,
        };
        if due {
            if deps_ready {
                if c.spawned_once {
                    c.restarts += 1;
                }
                c.spawned_once = true;
                c.adopted_at = None;
                out.push(Action::Spawn { name: name.clone() });
                let delay = c.spec.probe.as_ref().map_or(0, |p| p.initial_delay);
                start_run(c, now, now.saturating_add(delay));
            } else {
                c.phase = Phase::Waiting;
            }
            continue;
        }
        match &mut c.phase {
            Phase::Running {
                since,
                ready,
                ready_since,
                failures,
                next_probe,
                in_flight,
                unanswered,
            } => {
                if let Some(since) = *ready_since {
                    if c.crashes > 0 && now.saturating_sub(since) >= c.spec.stable_after {
                        c.crashes = 0;
                        out.push(log(&name, "stable, backoff reset".into()));
                    }
                }
                let Some(p) = c.spec.probe.clone() else {
                    continue;
                };
                if let Some(asked) = *in_flight {
                    if now >= asked.deadline {
                        // The shell never answered: count it as a timed-out failure.
                        *in_flight = None;
                        *unanswered = Some(asked.sent);
                        *failures += 1;
                        c.last_probe = Some(false);
                        if p.gives_up(*failures, *ready, *since, now) {
                            let why = format!("{failures} consecutive failed probes");
                            c.last_failure = Some(why.clone());
                            stop(c, now, After::Backoff, &why, out);
                        }
                    }
                    continue;
                }
                if now >= *next_probe {
                    // A generous deadline: the shell enforces `timeout` itself.
                    let deadline = now + p.timeout.saturating_mul(2) + 1000;
                    *in_flight = Some(InFlight {
                        id: probe_id,
                        sent: now,
                        deadline,
                    });
                    // Until the first good probe of a run, probe quickly: readiness is seen
                    // within STARTUP_PROBE_PERIOD, not a whole period late. Failures in that
                    // window do not count (startup_timeout), so this cannot kill sooner.
                    let period = if !*ready && p.startup_timeout > 0 {
                        p.period.min(STARTUP_PROBE_PERIOD)
                    } else {
                        p.period
                    };
                    *next_probe = now.saturating_add(period);
                    state.next_probe_id += 1;
                    out.push(Action::Probe {
                        name,
                        id: probe_id,
                        timeout: p.timeout,
                    });
                }
            }
            Phase::Stopping {
                term_at, killed, ..
            } if !*killed && now >= term_at.saturating_add(c.spec.grace) => {
                *killed = true;
                out.push(log(&name, "grace period over, SIGKILL".into()));
                out.push(Action::Signal {
                    name,
                    signal: Signal::Kill,
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ComponentSpec {
        ComponentSpec {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            probe: Some(ProbeSpec {
                initial_delay: 1_000,
                period: 1_000,
                timeout: 500,
                failure_threshold: 3,
                startup_timeout: 0,
            }),
            grace: 5_000,
            backoff_base: 1_000,
            backoff_max: 16_000,
            stable_after: 60_000,
        }
    }

    fn spawned(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { name } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    fn probe_id(actions: &[Action], who: &str) -> Option<u64> {
        actions.iter().find_map(|a| match a {
            Action::Probe { name, id, .. } if name == who => Some(*id),
            _ => None,
        })
    }

    fn signals(actions: &[Action], who: &str) -> Vec<Signal> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { name, signal } if name == who => Some(*signal),
                _ => None,
            })
            .collect()
    }

    /// Answers every probe of `who` in `actions` with `ok`, returning the resulting actions.
    fn answer(s: &mut State, actions: &[Action], who: &str, ok: bool, now: Millis) -> Vec<Action> {
        match probe_id(actions, who) {
            Some(id) => next(
                s,
                Event::ProbeResult {
                    name: who.into(),
                    id,
                    ok,
                },
                now,
            ),
            None => vec![],
        }
    }

    /// Starts a single component and makes it ready; returns the time.
    fn start_ready(s: &mut State, who: &str, t0: Millis) -> Millis {
        let a = next(s, Event::Tick, t0);
        assert_eq!(spawned(&a), vec![who.to_string()]);
        let t = t0 + 1_000;
        let a = next(s, Event::Tick, t);
        answer(s, &a, who, true, t);
        assert!(s.get(who).is_some_and(Component::ready));
        t
    }

    #[test]
    fn probes_quickly_until_ready_when_there_is_a_startup_window() {
        let times = |startup_timeout: Millis| {
            let mut sp = spec("apiserver", &[]);
            if let Some(p) = &mut sp.probe {
                p.startup_timeout = startup_timeout;
            }
            let mut s = State::new(vec![sp]).unwrap();
            let mut probed = Vec::new();
            let mut t = 0;
            while t <= 6_000 {
                let a = next(&mut s, Event::Tick, t);
                if probe_id(&a, "apiserver").is_some() {
                    probed.push(t);
                    // Not ready until 2 s, then fine.
                    answer(&mut s, &a, "apiserver", t >= 2_000, t);
                }
                t += 50;
            }
            probed
        };
        // Startup window: every STARTUP_PROBE_PERIOD until the first good probe, then every
        // period (1 s in these specs).
        let fast = times(10_000);
        let initial = fast[0];
        assert!(fast
            .windows(2)
            .take_while(|w| w[0] < 2_000)
            .all(|w| w[1] - w[0] == STARTUP_PROBE_PERIOD));
        let ready_at = *fast.iter().find(|t| **t >= 2_000).unwrap();
        assert!(ready_at < 2_000 + STARTUP_PROBE_PERIOD, "{fast:?}");
        // (The probe after the good one was already due at the fast rate.)
        let after: Vec<Millis> = fast
            .windows(2)
            .skip_while(|w| w[0] <= ready_at)
            .map(|w| w[1] - w[0])
            .collect();
        assert!(
            !after.is_empty() && after.iter().all(|d| *d == 1_000),
            "{fast:?}"
        );
        // No startup window: failures count at once, so the period is kept throughout.
        let plain = times(0);
        assert_eq!(plain[0], initial);
        assert!(plain.windows(2).all(|w| w[1] - w[0] == 1_000), "{plain:?}");
    }

    #[test]
    fn adopted_processes_are_supervised_not_spawned() {
        // etcd <- apiserver <- scheduler; containerd alone. A new supervisor finds etcd and
        // containerd running (started at 1 s and 2 s); it is now 100 s.
        let mut apiserver = sp_with_window("apiserver", 30_000);
        apiserver.depends_on = vec!["etcd".into()];
        let mut s = State::new(vec![
            spec("etcd", &[]),
            apiserver,
            spec("scheduler", &["apiserver"]),
            spec("containerd", &[]),
        ])
        .unwrap();
        let t = 100_000;
        let a = next(
            &mut s,
            Event::Adopted {
                running: vec![("etcd".into(), 1_000), ("containerd".into(), 2_000)],
            },
            t,
        );
        // Neither is spawned again; nothing else is due (apiserver waits for etcd's probe).
        assert!(spawned(&a).is_empty(), "{a:?}");
        let etcd = s.get("etcd").unwrap();
        assert_eq!(
            (etcd.started_at, etcd.adopted_at, etcd.ready()),
            (Some(1_000), Some(t), false)
        );
        assert_eq!(etcd.restarts, 0);
        // Probed at once (not after an initial delay): it has been running for 99 s.
        assert!(probe_id(&a, "etcd").is_some() && probe_id(&a, "containerd").is_some());
        let a2 = answer(&mut s, &a, "etcd", true, t + 10);
        assert!(s.get("etcd").is_some_and(Component::ready));
        // Its dependent is spawned as after a cold start of etcd.
        assert_eq!(spawned(&a2), vec!["apiserver".to_string()]);
        assert_eq!(s.get("apiserver").unwrap().adopted_at, None);
        // A late adoption report changes nothing for a component already running.
        let a3 = next(
            &mut s,
            Event::Adopted {
                running: vec![("apiserver".into(), 5_000)],
            },
            t + 20,
        );
        assert!(spawned(&a3).is_empty());
        assert_eq!(s.get("apiserver").unwrap().started_at, Some(t + 10));
        assert_eq!(s.get("apiserver").unwrap().adopted_at, None);

        // An adopted process long past its start gets no startup window: its failed probes
        // count at once, and it is stopped after the threshold like any ready component.
        let mut late = State::new(vec![sp_with_window("apiserver", 30_000)]).unwrap();
        let mut a = next(
            &mut late,
            Event::Adopted {
                running: vec![("apiserver".into(), 0)],
            },
            100_000,
        );
        let mut t = 100_000;
        for _ in 0..3 {
            answer(&mut late, &a, "apiserver", false, t);
            t += 1_000;
            a = next(&mut late, Event::Tick, t);
        }
        assert!(
            matches!(late.get("apiserver").unwrap().phase, Phase::Stopping { .. }),
            "{:?}",
            late.get("apiserver").unwrap().phase
        );
        // Its exit (status unknown: not our child) goes to backoff and a respawn, and the
        // new run is ours, not adopted.
        let a = next(
            &mut late,
            Event::Exited {
                name: "apiserver".into(),
                status: None,
            },
            t,
        );
        let c = late.get("apiserver").unwrap();
        assert!(c
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("3 consecutive")));
        assert_eq!(spawned(&a), vec!["apiserver".to_string()]);
        let c = late.get("apiserver").unwrap();
        assert_eq!((c.restarts, c.adopted_at), (1, None));

        // An adopted process that dies: restarted, the reason says the status is unknown.
        let mut one = State::new(vec![spec("etcd", &[])]).unwrap();
        next(
            &mut one,
            Event::Adopted {
                running: vec![("etcd".into(), 0)],
            },
            10_000,
        );
        let a = next(
            &mut one,
            Event::Exited {
                name: "etcd".into(),
                status: None,
            },
            11_000,
        );
        assert_eq!(spawned(&a), vec!["etcd".to_string()]);
        let why = one.get("etcd").unwrap().last_failure.clone();
        assert!(why.is_some_and(|w| w.contains("status unknown")));
        let st = one.status();
        assert_eq!(st[0].adopted_at_ms, None);
    }

    fn sp_with_window(name: &str, startup_timeout: Millis) -> ComponentSpec {
        let mut sp = spec(name, &[]);
        if let Some(p) = &mut sp.probe {
            p.startup_timeout = startup_timeout;
        }
        sp
    }

    #[test]
    fn rejects_cycles_and_unknown_deps() {
        assert_eq!(
            State::new(vec![spec("a", &["b"]), spec("b", &["a"])]),
            Err(SpecError::Cycle("a".into()))
        );
        assert!(matches!(
            State::new(vec![spec("a", &["x"])]),
            Err(SpecError::UnknownDependency { .. })
        ));
        assert!(matches!(
            State::new(vec![spec("a", &[]), spec("a", &[])]),
            Err(SpecError::Duplicate(_))
        ));
    }

    #[test]
    fn dependents_wait_for_readiness() {
        let mut s = State::new(vec![spec("apiserver", &["etcd"]), spec("etcd", &[])]).unwrap();
        let a = next(&mut s, Event::Tick, 0);
        assert_eq!(spawned(&a), vec!["etcd".to_string()]);
        // Probe not before the initial delay.
        assert_eq!(probe_id(&next(&mut s, Event::Tick, 999), "etcd"), None);
        let a = next(&mut s, Event::Tick, 1_000);
        // Failing probes keep the dependent waiting.
        let b = answer(&mut s, &a, "etcd", false, 1_000);
        assert!(spawned(&b).is_empty());
        let a = next(&mut s, Event::Tick, 2_000);
        let b = answer(&mut s, &a, "etcd", true, 2_000);
        assert_eq!(spawned(&b), vec!["apiserver".to_string()]);
        assert_eq!(
            s.get("apiserver").unwrap().phase,
            Phase::Running {
                since: 2_000,
                ready: false,
                ready_since: None,
                failures: 0,
                next_probe: 3_000,
                in_flight: None,
                unanswered: None,
            }
        );
    }

    #[test]
    fn failure_threshold_then_term_grace_kill_then_backoff() {
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        let mut t = start_ready(&mut s, "etcd", 0);
        // Two failures and a success: the count resets, no signal.
        for ok in [false, false, true, false, false] {
            t += 1_000;
            let a = next(&mut s, Event::Tick, t);
            let b = answer(&mut s, &a, "etcd", ok, t);
            assert!(signals(&b, "etcd").is_empty(), "at {t}");
        }
        t += 1_000;
        let a = next(&mut s, Event::Tick, t);
        let b = answer(&mut s, &a, "etcd", false, t);
        assert_eq!(signals(&b, "etcd"), vec![Signal::Term]);
        let term_at = t;
        assert!(!s.get("etcd").unwrap().ready());
        // No probes, no kill during the grace period.
        let a = next(&mut s, Event::Tick, term_at + 4_999);
        assert!(signals(&a, "etcd").is_empty() && probe_id(&a, "etcd").is_none());
        let a = next(&mut s, Event::Tick, term_at + 5_000);
        assert_eq!(signals(&a, "etcd"), vec![Signal::Kill]);
        assert!(signals(&next(&mut s, Event::Tick, term_at + 9_000), "etcd").is_empty());
        // Reaped: the first failure of a run that was fine is respawned at once.
        let exit = term_at + 9_000;
        let a = next(
            &mut s,
            Event::Exited {
                name: "etcd".into(),
                status: Some(137),
            },
            exit,
        );
        assert!(a.contains(&Action::RestartAt {
            name: "etcd".into(),
            at: exit
        }));
        assert_eq!(spawned(&a), vec!["etcd".to_string()]);
        assert!(spawned(&next(&mut s, Event::Tick, exit + 1)).is_empty());
        assert_eq!(s.get("etcd").unwrap().restarts, 1);
        assert_eq!(s.get("etcd").unwrap().last_exit, Some(137));
    }

    #[test]
    fn a_slow_cold_start_is_not_a_hang_until_the_startup_timeout() {
        let mut sp = spec("apiserver", &[]);
        if let Some(p) = &mut sp.probe {
            p.startup_timeout = 10_000;
        }
        let mut s = State::new(vec![sp]).unwrap();
        next(&mut s, Event::Tick, 0);
        // Failing probes from 1 s to 9 s: no signal while starting up.
        let mut t = 0;
        for _ in 0..9 {
            t += 1_000;
            let a = next(&mut s, Event::Tick, t);
            let b = answer(&mut s, &a, "apiserver", false, t);
            assert!(signals(&b, "apiserver").is_empty(), "at {t}");
        }
        // Past the startup timeout, the failures so far count: stopped.
        t += 1_000;
        let a = next(&mut s, Event::Tick, t);
        let b = answer(&mut s, &a, "apiserver", false, t);
        assert_eq!(signals(&b, "apiserver"), vec![Signal::Term], "at {t}");
        // Once ready, the threshold applies at once, startup timeout or not.
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        let mut t = start_ready(&mut s, "etcd", 0);
        let mut stopped_at = None;
        for _ in 0..3 {
            t += 1_000;
            let a = next(&mut s, Event::Tick, t);
            let b = answer(&mut s, &a, "etcd", false, t);
            if !signals(&b, "etcd").is_empty() {
                stopped_at = Some(t);
            }
        }
        assert!(stopped_at.is_some());
    }

    #[test]
    fn status_says_why_it_failed_and_when_it_started_and_was_ready() {
        let mut s = State::new(vec![spec("scheduler", &[])]).unwrap();
        let t = start_ready(&mut s, "scheduler", 10_000);
        let st = &s.status()[0];
        assert_eq!(
            (st.started_at_ms, st.ready_at_ms, st.exited_at_ms),
            (Some(10_000), Some(t), None)
        );
        assert_eq!(
            (st.consecutive_failures, st.last_failure.as_deref()),
            (0, None)
        );
        // The first crash is respawned at once; the status keeps why.
        let a = next(
            &mut s,
            Event::Exited {
                name: "scheduler".into(),
                status: Some(137),
            },
            t + 50,
        );
        assert_eq!(spawned(&a).len(), 1);
        let st = &s.status()[0];
        assert_eq!(
            (st.state.as_str(), st.consecutive_failures, st.last_exit),
            ("starting", 1, Some(137))
        );
        assert_eq!(st.last_failure.as_deref(), Some("exited with status 137"));
        // Two more quick crashes: the status shows the failure, its count and the restart time.
        let mut at = t + 50;
        for (n, code) in [(2u32, 1), (3, 2)] {
            let a = next(
                &mut s,
                Event::Exited {
                    name: "scheduler".into(),
                    status: Some(code),
                },
                at + 100,
            );
            let st = &s.status()[0];
            assert_eq!(st.state, "backoff");
            assert_eq!(st.consecutive_failures, n);
            assert_eq!(st.last_exit, Some(code));
            assert_eq!(st.exited_at_ms, Some(at + 100));
            assert_eq!(
                st.last_failure.as_deref(),
                Some(format!("exited with status {code}").as_str())
            );
            let restart = a.iter().find_map(|a| match a {
                Action::RestartAt { at, .. } => Some(*at),
                _ => None,
            });
            assert_eq!(st.restart_at_ms, restart);
            at = restart.unwrap();
            assert_eq!(spawned(&next(&mut s, Event::Tick, at)).len(), 1);
            let st = &s.status()[0];
            assert_eq!(
                (st.state.as_str(), st.started_at_ms),
                ("starting", Some(at))
            );
            // The last ready time is kept until it is ready again.
            assert_eq!(st.ready_at_ms, Some(t));
        }
        // Failed probes are a failure too, once ready.
        let a = next(&mut s, Event::Tick, at + 1_000);
        answer(&mut s, &a, "scheduler", true, at + 1_000);
        assert_eq!(s.status()[0].ready_at_ms, Some(at + 1_000));
        let mut t = at + 1_000;
        for _ in 0..3 {
            t += 1_000;
            let a = next(&mut s, Event::Tick, t);
            answer(&mut s, &a, "scheduler", false, t);
        }
        assert_eq!(
            s.status()[0].last_failure.as_deref(),
            Some("3 consecutive failed probes")
        );
    }

    #[test]
    fn stale_probe_results_are_ignored() {
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        next(&mut s, Event::Tick, 0);
        let a = next(&mut s, Event::Tick, 1_000);
        let id = probe_id(&a, "etcd").unwrap();
        next(
            &mut s,
            Event::ProbeResult {
                name: "etcd".into(),
                id: id + 7,
                ok: true,
            },
            1_100,
        );
        assert!(!s.get("etcd").unwrap().ready());
    }

    #[test]
    fn unanswered_probe_counts_as_failure() {
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        next(&mut s, Event::Tick, 0);
        let mut term = None;
        for t in (1_000..20_000).step_by(100) {
            let a = next(&mut s, Event::Tick, t);
            if !signals(&a, "etcd").is_empty() {
                term = Some(t);
                break;
            }
        }
        // Each probe is abandoned after 2 * timeout + 1 s = 2 s; three of them.
        assert!(
            term.is_some_and(|t| (6_000..=9_000).contains(&t)),
            "{term:?}"
        );
    }

    #[test]
    fn exponential_backoff_capped_and_reset_after_stable_run() {
        let mut s = State::new(vec![spec("kubelet", &[])]).unwrap();
        next(&mut s, Event::Tick, 0);
        let mut t = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            t += 10;
            let a = next(
                &mut s,
                Event::Exited {
                    name: "kubelet".into(),
                    status: Some(1),
                },
                t,
            );
            let at = a
                .iter()
                .find_map(|a| match a {
                    Action::RestartAt { at, .. } => Some(*at),
                    _ => None,
                })
                .unwrap();
            delays.push(at - t);
            if at == t {
                // No delay: spawned by the same step.
                assert_eq!(spawned(&a).len(), 1);
            } else {
                // Spawned exactly at `at`, not before.
                assert!(spawned(&a).is_empty());
                assert!(spawned(&next(&mut s, Event::Tick, at - 1)).is_empty());
                assert_eq!(spawned(&next(&mut s, Event::Tick, at)).len(), 1);
            }
            t = at;
        }
        assert_eq!(delays, vec![0, 1_000, 2_000, 4_000, 8_000, 16_000, 16_000]);
        assert_eq!(
            delays
                .iter()
                .enumerate()
                .map(|(i, _)| backoff_delay(&spec("kubelet", &[]), i as u32 + 1))
                .collect::<Vec<_>>(),
            delays
        );
        // Ready, but not yet stable: the next crash continues the sequence.
        t += 1_000;
        let a = next(&mut s, Event::Tick, t);
        answer(&mut s, &a, "kubelet", true, t);
        let ready_at = t;
        let mut t2 = t;
        while t2 < ready_at + 60_000 {
            t2 += 1_000;
            let a = next(&mut s, Event::Tick, t2);
            answer(&mut s, &a, "kubelet", true, t2);
        }
        assert_eq!(s.get("kubelet").unwrap().crashes, 0);
        let a = next(
            &mut s,
            Event::Exited {
                name: "kubelet".into(),
                status: Some(2),
            },
            t2 + 1,
        );
        assert!(a.contains(&Action::RestartAt {
            name: "kubelet".into(),
            at: t2 + 1
        }));
    }

    #[test]
    fn crash_before_stable_keeps_growing_backoff() {
        let mut s = State::new(vec![spec("kubelet", &[])]).unwrap();
        let t = start_ready(&mut s, "kubelet", 0);
        let a = next(
            &mut s,
            Event::Exited {
                name: "kubelet".into(),
                status: Some(1),
            },
            t + 10,
        );
        assert!(a.contains(&Action::RestartAt {
            name: "kubelet".into(),
            at: t + 10
        }));
        assert_eq!(spawned(&a).len(), 1);
        let t = t + 10;
        let a = next(&mut s, Event::Tick, t + 1_000);
        answer(&mut s, &a, "kubelet", true, t + 1_000);
        // Ready for 30 s only (< stable_after).
        let a = next(
            &mut s,
            Event::Exited {
                name: "kubelet".into(),
                status: Some(1),
            },
            t + 31_000,
        );
        assert!(a.contains(&Action::RestartAt {
            name: "kubelet".into(),
            at: t + 32_000
        }));
    }

    #[test]
    fn identity_change_restarts_component_and_dependents_in_order() {
        let mut s = State::new(vec![
            spec("etcd", &[]),
            spec("apiserver", &["etcd"]),
            spec("scheduler", &["apiserver"]),
            spec("kubelet", &[]),
        ])
        .unwrap();
        let mut t = 0;
        // Bring everything up, answering every probe with success.
        let mut a = next(&mut s, Event::Tick, t);
        for _ in 0..20 {
            t += 1_000;
            a = next(&mut s, Event::Tick, t);
            for who in ["etcd", "apiserver", "scheduler", "kubelet"] {
                answer(&mut s, &a, who, true, t);
            }
        }
        assert!(s.all_ready(), "{:?}", s.status());
        let _ = a;
        t += 1;
        let a = next(
            &mut s,
            Event::IdentityChanged {
                name: "etcd".into(),
            },
            t,
        );
        for who in ["etcd", "apiserver", "scheduler"] {
            assert_eq!(signals(&a, who), vec![Signal::Term], "{who}");
        }
        assert!(signals(&a, "kubelet").is_empty());
        // apiserver and scheduler exit first; they must not come back before etcd is ready.
        for who in ["apiserver", "scheduler"] {
            let a = next(
                &mut s,
                Event::Exited {
                    name: who.into(),
                    status: Some(0),
                },
                t + 100,
            );
            assert!(spawned(&a).is_empty());
        }
        let a = next(
            &mut s,
            Event::Exited {
                name: "etcd".into(),
                status: Some(0),
            },
            t + 200,
        );
        assert_eq!(
            spawned(&a),
            vec!["etcd".to_string()],
            "no backoff after identity change"
        );
        let a = next(&mut s, Event::Tick, t + 1_200);
        let b = answer(&mut s, &a, "etcd", true, t + 1_200);
        assert_eq!(spawned(&b), vec!["apiserver".to_string()]);
        assert_eq!(s.get("etcd").unwrap().crashes, 0);
        assert_eq!(s.get("kubelet").unwrap().restarts, 0);
    }

    #[test]
    fn shutdown_stops_everything_and_restarts_nothing() {
        let mut s = State::new(vec![spec("etcd", &[]), spec("apiserver", &["etcd"])]).unwrap();
        let t = start_ready(&mut s, "etcd", 0);
        assert_eq!(s.status()[1].state, "starting");
        let a = next(&mut s, Event::Shutdown, t);
        assert_eq!(signals(&a, "etcd"), vec![Signal::Term]);
        assert_eq!(signals(&a, "apiserver"), vec![Signal::Term]);
        for who in ["etcd", "apiserver"] {
            let a = next(
                &mut s,
                Event::Exited {
                    name: who.into(),
                    status: Some(0),
                },
                t + 1,
            );
            assert!(spawned(&a).is_empty());
        }
        assert!(spawned(&next(&mut s, Event::Tick, t + 100_000)).is_empty());
        assert!(s.all_stopped(), "{:?}", s.status());
    }

    #[test]
    fn a_stopped_process_is_killed_once_it_has_been_stopped_long_enough() {
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        let t = start_ready(&mut s, "etcd", 0);
        let frozen = |since| Event::Frozen {
            name: "etcd".into(),
            since,
        };
        // Seen stopped, but not for long: a stop that ends by itself is left alone.
        let a = next(&mut s, frozen(t), t + FROZEN_AFTER - 1);
        assert!(signals(&a, "etcd").is_empty());
        assert!(s.get("etcd").unwrap().ready());
        // Stopped long enough: SIGKILL at once (SIGTERM waits for a SIGCONT), no grace.
        let a = next(&mut s, frozen(t), t + FROZEN_AFTER);
        assert_eq!(signals(&a, "etcd"), vec![Signal::Kill]);
        let c = s.get("etcd").unwrap();
        assert!(
            c.last_failure.as_deref().unwrap().contains("stopped"),
            "{c:?}"
        );
        // No second SIGKILL when the grace would have run out, and back at once once reaped
        // (a first failure has no backoff).
        let a = next(&mut s, Event::Tick, t + FROZEN_AFTER + 10_000);
        assert!(signals(&a, "etcd").is_empty());
        let a = next(
            &mut s,
            Event::Exited {
                name: "etcd".into(),
                status: Some(137),
            },
            t + FROZEN_AFTER + 10_001,
        );
        assert_eq!(spawned(&a), vec!["etcd".to_string()]);
        // A report about a process that is not running (stale) changes nothing.
        let before = s.clone();
        let a = next(&mut s, frozen(0), t + FROZEN_AFTER + 10_002);
        assert!(signals(&a, "etcd").is_empty());
        assert_eq!(
            s.get("etcd").unwrap().phase,
            before.get("etcd").unwrap().phase
        );
    }

    #[test]
    fn a_stopped_process_without_a_probe_is_killed_too() {
        // containerd has no probe: its failed probes could never tell a hang.
        let mut sp = spec("containerd", &[]);
        sp.probe = None;
        let mut s = State::new(vec![sp]).unwrap();
        let a = next(&mut s, Event::Tick, 0);
        assert_eq!(spawned(&a), vec!["containerd".to_string()]);
        let a = next(
            &mut s,
            Event::Frozen {
                name: "containerd".into(),
                since: 5_000,
            },
            5_000 + FROZEN_AFTER,
        );
        assert_eq!(signals(&a, "containerd"), vec![Signal::Kill]);
    }

    /// Sends `who`'s next probe at `at` (ticking up to it) and answers it `after` ms later.
    fn probe_answered(s: &mut State, who: &str, at: Millis, after: Millis, ok: bool) {
        let a = next(s, Event::Tick, at);
        assert!(probe_id(&a, who).is_some(), "no probe of {who} due at {at}");
        answer(s, &a, who, ok, at + after);
    }

    #[test]
    fn a_probe_timed_out_while_the_process_used_no_cpu_is_a_hang() {
        // spec(): probes every 1 s, timeout 0.5 s, 3 failures to give up.
        let idle = |since| Event::Idle {
            name: "etcd".into(),
            since,
        };
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        let t = start_ready(&mut s, "etcd", 0);
        // Idle without a failed probe: an idle server is healthy.
        assert!(signals(&next(&mut s, idle(t), t + 30_000), "etcd").is_empty());

        // A probe failing fast (refused, 500) shows the process alive, however idle.
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        let t = start_ready(&mut s, "etcd", 0);
        probe_answered(&mut s, "etcd", t + 1_000, 10, false);
        assert!(signals(&next(&mut s, idle(t), t + 1_100), "etcd").is_empty());

        // A timeout while it used CPU into the second half of the wait: slow, not hung (the
        // failure threshold decides).
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        let t = start_ready(&mut s, "etcd", 0);
        probe_answered(&mut s, "etcd", t + 1_000, 500, false);
        let a = next(&mut s, idle(t + 1_251), t + 1_600);
        assert!(signals(&a, "etcd").is_empty());
        assert!(s.get("etcd").unwrap().ready());

        // A timeout with no CPU used from halfway through the wait on (a hang just after it
        // was sent): SIGKILL at once, the reason in the status, back without backoff once
        // reaped.
        let a = next(&mut s, idle(t + 1_250), t + 1_700);
        assert_eq!(signals(&a, "etcd"), vec![Signal::Kill]);
        let why = s.get("etcd").unwrap().last_failure.clone().unwrap();
        assert!(why.contains("no CPU for 450 ms"), "{why}");
        let a = next(
            &mut s,
            Event::Exited {
                name: "etcd".into(),
                status: Some(137),
            },
            t + 1_800,
        );
        assert_eq!(spawned(&a), vec!["etcd".to_string()]);
        // A report about the process before (idle since before this run) changes nothing.
        let a = next(&mut s, idle(t), t + 1_900);
        assert!(signals(&a, "etcd").is_empty());

        // A good answer clears the timeout.
        let mut s = State::new(vec![spec("etcd", &[])]).unwrap();
        let t = start_ready(&mut s, "etcd", 0);
        probe_answered(&mut s, "etcd", t + 1_000, 500, false);
        probe_answered(&mut s, "etcd", t + 2_000, 10, true);
        assert!(signals(&next(&mut s, idle(t), t + 2_100), "etcd").is_empty());
    }

    #[test]
    fn an_idle_cold_start_is_not_a_hang_within_its_startup_window() {
        let mut sp = spec("apiserver", &[]);
        sp.probe = sp.probe.map(|p| ProbeSpec {
            startup_timeout: 60_000,
            failure_threshold: 10,
            ..p
        });
        let mut s = State::new(vec![sp]).unwrap();
        next(&mut s, Event::Tick, 0);
        // Waiting on something else, using no CPU, probes timing out: still starting.
        probe_answered(&mut s, "apiserver", 1_000, 500, false);
        let idle = |since| Event::Idle {
            name: "apiserver".into(),
            since,
        };
        assert!(signals(&next(&mut s, idle(0), 1_600), "apiserver").is_empty());
        // Past the startup window the same signs are a hang, long before the failure count
        // would stop it. (The tick at 60 s abandons the probe sent at 1.6 s.)
        next(&mut s, Event::Tick, 60_000);
        probe_answered(&mut s, "apiserver", 61_000, 500, false);
        let t = 61_000;
        let a = next(&mut s, idle(0), t + 600);
        assert_eq!(signals(&a, "apiserver"), vec![Signal::Kill]);
    }
}
