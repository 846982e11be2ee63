//! The supervisor's IO shell against real processes. One test function: the reaper uses
//! waitpid(-1), so nothing else in this test binary may own children concurrently.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use firstboot::supervisor::machine::{ComponentSpec, FROZEN_AFTER};
use firstboot::supervisor::shell::{ProcStat, STATE_CHECK_EVERY};
use firstboot::supervisor::{CommandSpec, HttpProbe, Managed, ProbeSpec, Supervisor};
use kiln_tests::free_port;

struct Recorder(Mutex<Vec<(String, String)>>);

impl log::Log for Recorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let line = (r.target().to_string(), r.args().to_string());
        eprintln!("{}: {}", line.0, line.1);
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static LOG: Recorder = Recorder(Mutex::new(Vec::new()));

fn web(port: u16) -> Managed {
    Managed {
        spec: ComponentSpec {
            name: "web".into(),
            depends_on: vec![],
            probe: Some(ProbeSpec {
                initial_delay: 2_000,
                period: 250,
                timeout: 500,
                failure_threshold: 3,
                startup_timeout: 0,
            }),
            grace: 1_000,
            backoff_base: 200,
            backoff_max: 1_000,
            stable_after: 1_000,
        },
        command: CommandSpec {
            program: "/usr/bin/python3".into(),
            // SIGUSR1 hangs it: the handler sleeps on the main thread, so the server accepts
            // connections (the kernel's backlog) and never answers, in state S, using no CPU.
            args: vec![
                "-c".into(),
                // A second thread, to see every thread reniced.
                format!(
                    "import http.server, signal, threading, time\n\
                     threading.Thread(target=time.sleep, args=(10**6,), daemon=True).start()\n\
                     signal.signal(signal.SIGUSR1, lambda *_: time.sleep(10**6))\n\
                     http.server.HTTPServer(('127.0.0.1', {port}), \
                     http.server.SimpleHTTPRequestHandler).serve_forever()\n"
                ),
            ],
            env: vec![],
            boot_nice: 10,
        },
        probe: Some(HttpProbe::from_url(&format!("http://127.0.0.1:{port}/"), None).unwrap()),
    }
}

fn crasher() -> Managed {
    Managed {
        spec: ComponentSpec {
            name: "crasher".into(),
            depends_on: vec!["web".into()],
            probe: None,
            grace: 1_000,
            backoff_base: 200,
            backoff_max: 800,
            stable_after: 60_000,
        },
        command: CommandSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo boom-$$; exit 3".into()],
            env: vec![],
            boot_nice: 0,
        },
        probe: None,
    }
}

/// The nice value of each thread of `pid` (field 19 of /proc/PID/task/TID/stat).
fn nices(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("stat")).ok())
        .map(|stat| {
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            after.split_whitespace().nth(16).unwrap().parse().unwrap()
        })
        .collect()
}

fn restarts(s: &Supervisor, name: &str) -> u32 {
    s.state().get(name).unwrap().restarts
}

fn ready(s: &Supervisor, name: &str) -> bool {
    s.state().get(name).unwrap().ready()
}

#[test]
fn supervises_real_processes() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Debug);
    let port = free_port();
    let mut sup = Supervisor::new(vec![web(port), crasher()]).unwrap();

    // Comes up and becomes ready through its HTTP probe.
    assert!(sup
        .run_until(Duration::from_secs(30), |st| st.get("web").unwrap().ready())
        .unwrap());
    assert!(sup.loop_healthy(Duration::from_secs(1)));
    // Started at its boot nice value, every thread; the supervisor's own thread is not.
    let pid = sup.pid("web").unwrap();
    assert_eq!(nices(pid), [10, 10]);
    assert_eq!(rustix::process::getpriority_process(None).unwrap(), 0);
    // The boot's priorities end: the running process, every thread, at nice 0.
    sup.end_boot_priority();
    assert_eq!(nices(pid), [0, 0]);

    // The crasher (gated on web) restarts with backoff: 200, 400, 800, 800, ... ms.
    let t0 = Instant::now();
    let r0 = restarts(&sup, "crasher");
    sup.run_until(Duration::from_secs(4), |_| false).unwrap();
    let spawned = restarts(&sup, "crasher") - r0;
    let took = t0.elapsed();
    assert!(
        (3..=9).contains(&spawned),
        "{spawned} restarts in {took:?}; without backoff it would be ~40"
    );
    let st = sup.status();
    let c = st.iter().find(|c| c.component.name == "crasher").unwrap();
    assert_eq!(c.component.last_exit, Some(3));
    // Its output went to the log under its own name.
    assert!(LOG
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|(t, m)| t == "crasher" && m.starts_with("boom-")));

    // kill -9: restarted and healthy again.
    let pid = sup.pid("web").unwrap();
    let r = restarts(&sup, "web");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(sup
        .run_until(Duration::from_secs(30), |st| {
            let w = st.get("web").unwrap();
            w.restarts == r + 1 && w.ready()
        })
        .unwrap());
    assert_eq!(sup.status()[0].component.last_exit, Some(128 + 9));
    assert_ne!(sup.pid("web"), Some(pid));
    // And its next run too.
    assert_eq!(nices(sup.pid("web").unwrap()), [0, 0]);

    // SIGSTOP: the process state says stopped; after FROZEN_AFTER it is killed at once
    // (SIGTERM would wait for a SIGCONT), sooner than its probes would give up (3 timeouts
    // of 0.5 s, then the 1 s grace), then restarted.
    let pid = sup.pid("web").unwrap();
    let r = restarts(&sup, "web");
    let stopped_at = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    assert!(sup
        .run_until(Duration::from_secs(30), |st| st
            .get("web")
            .unwrap()
            .restarts
            == r + 1)
        .unwrap());
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_millis(FROZEN_AFTER)
            && took < Duration::from_millis(FROZEN_AFTER + STATE_CHECK_EVERY + 1_000),
        "{took:?}"
    );
    let web_status = &sup.status()[0];
    assert_eq!(web_status.component.last_exit, Some(128 + 9));
    let why = web_status
        .component
        .last_failure
        .clone()
        .unwrap_or_default();
    assert!(why.contains("stopped (state T)"), "{why}");
    assert!(sup
        .run_until(Duration::from_secs(30), |st| st.get("web").unwrap().ready())
        .unwrap());
    assert!(ready(&sup, "web"));
    let json = serde_json::to_string(&sup.status()).unwrap();
    let back: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(back[0]["name"], "web");
    assert_eq!(back[0]["restarts"], u64::from(restarts(&sup, "web")));
    assert!(restarts(&sup, "web") >= 2, "{json}");

    // A hang that is not a stop: the process sleeps (state S) and its probe times out. The
    // probe's timeout with no CPU used since before it was sent is enough: killed at once,
    // long before 3 failed probes and the 1 s grace would have stopped it.
    let pid = sup.pid("web").unwrap();
    let r = restarts(&sup, "web");
    let hung_at = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::USR1,
    )
    .unwrap();
    let mut state = None;
    assert!(sup
        .run_until(Duration::from_secs(30), |st| {
            if state.is_none() && hung_at.elapsed() > Duration::from_millis(300) {
                state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            }
            st.get("web").unwrap().restarts == r + 1
        })
        .unwrap());
    let took = hung_at.elapsed();
    let state = state.as_deref().and_then(ProcStat::parse).map(|s| s.state);
    assert_eq!(state, Some('S'), "the hung server sleeps");
    let web_status = &sup.status()[0];
    assert_eq!(
        web_status.component.last_exit,
        Some(128 + 9),
        "SIGKILL, no grace"
    );
    let why = web_status.component.last_failure.as_deref().unwrap_or("");
    assert!(why.contains("no CPU"), "{why}");
    // Worst case: a probe sent just before the hang was answered; the next, 250 ms later,
    // times out 500 ms after that; then the next process check.
    assert!(
        took < Duration::from_millis(250 + 500 + STATE_CHECK_EVERY + 1_000),
        "{took:?}"
    );
    assert!(sup
        .run_until(Duration::from_secs(30), |st| st.get("web").unwrap().ready())
        .unwrap());

    // Shutdown: everything reaped, nothing restarted.
    assert!(sup.shutdown(Duration::from_secs(10)).unwrap());
    assert!(sup.pid("web").is_none() && sup.pid("crasher").is_none());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
