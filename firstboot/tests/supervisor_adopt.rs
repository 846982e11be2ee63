//! A supervisor that starts while an earlier one's components still run adopts them: the
//! earlier supervisor runs in a child process (this test binary again, in the role
//! `first`), which is SIGKILLed as systemd kills a hung firstboot; its components, now
//! orphans and no children of ours, are taken over by a new supervisor here. One test
//! function: the reaper uses waitpid(-1), so nothing else in this binary may own children.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use firstboot::supervisor::machine::ComponentSpec;
use firstboot::supervisor::{CommandSpec, HttpProbe, Managed, ProbeSpec, Supervisor};
use kiln_tests::{alive, free_port};

const ROLE: &str = "KILN_ADOPT_TEST_ROLE";
const DIR: &str = "KILN_ADOPT_TEST_DIR";
const PORT: &str = "KILN_ADOPT_TEST_PORT";
const TEST: &str = "a_restarted_supervisor_adopts_the_running_components";

/// `web`, a quiet HTTP server (it writes nothing: its output pipe dies with the first
/// supervisor), and `worker`, which waits for web and sleeps; `worker_arg` is part of its
/// command line. Both run `DIR/py`, a link to python3, so no other process on this machine
/// has their command lines.
fn components(dir: &Path, port: u16, worker_arg: &str) -> Vec<Managed> {
    let program = dir.join("py").display().to_string();
    let spec = |name: &str, deps: &[&str], probe: Option<ProbeSpec>| ComponentSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        probe,
        grace: 1_000,
        backoff_base: 200,
        backoff_max: 1_000,
        stable_after: 60_000,
    };
    let command = |args: Vec<String>| CommandSpec {
        program: program.clone(),
        args,
        env: vec![],
        boot_nice: 0,
    };
    let web = format!(
        "import http.server\n\
         class Quiet(http.server.BaseHTTPRequestHandler):\n    \
             def do_GET(self):\n        \
                 self.send_response(200); self.end_headers()\n    \
             def log_message(self, *a):\n        pass\n\
         http.server.HTTPServer(('127.0.0.1', {port}), Quiet).serve_forever()\n"
    );
    vec![
        Managed {
            spec: spec(
                "web",
                &[],
                Some(ProbeSpec {
                    initial_delay: 200,
                    period: 250,
                    timeout: 500,
                    failure_threshold: 3,
                    startup_timeout: 10_000,
                }),
            ),
            command: command(vec!["-c".into(), web]),
            probe: Some(HttpProbe::from_url(&format!("http://127.0.0.1:{port}/"), None).unwrap()),
        },
        Managed {
            spec: spec("worker", &["web"], None),
            command: command(vec![
                "-c".into(),
                "import sys, time; time.sleep(10**6)".into(),
                worker_arg.into(),
            ]),
            probe: None,
        },
    ]
}

/// Kills, when the test ends (a failed assertion included), every process still running a
/// command from `.0` (the orphans would otherwise outlive a failed run).
struct Reap(PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        let dir = self.0.display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).starts_with(&dir) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
        }
    }
}

/// The role `first`: supervise until both run, tell their pids, supervise on until killed.
fn first() {
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let port: u16 = std::env::var(PORT).unwrap().parse().unwrap();
    let mut sup = Supervisor::new(components(&dir, port, "v1")).unwrap();
    assert!(sup
        .run_until(Duration::from_secs(60), |s| s.all_ready())
        .unwrap());
    let mut out = std::io::stdout();
    let (web, worker) = (sup.pid("web").unwrap(), sup.pid("worker").unwrap());
    writeln!(out, "PIDS {web} {worker}").unwrap();
    out.flush().unwrap();
    sup.run_until(Duration::from_secs(600), |_| false).unwrap();
}

#[test]
fn a_restarted_supervisor_adopts_the_running_components() {
    if std::env::var(ROLE).as_deref() == Ok("first") {
        return first();
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/bin/python3", dir.path().join("py")).unwrap();
    let port = free_port();
    let _reap = Reap(dir.path().to_path_buf());

    // The first supervisor, in a child process; SIGKILLed once its components run.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(ROLE, "first")
        .env(DIR, dir.path())
        .env(PORT, port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let pids = loop {
        let line = lines
            .next()
            .expect("the first supervisor ended early")
            .unwrap();
        // (libtest may have written the test's name on the same line.)
        if let Some((_, p)) = line.split_once("PIDS ") {
            break p.to_string();
        }
    };
    let pids: Vec<i32> = pids.split(' ').map(|p| p.parse().unwrap()).collect();
    let (web, old_worker) = (pids[0], pids[1]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(alive(web) && alive(old_worker), "the components outlive it");

    // The new supervisor: web's command is unchanged, so its process is adopted; worker's
    // command line changed (v2), so its old process is killed and a new one spawned.
    let mut sup = Supervisor::new(components(dir.path(), port, "v2")).unwrap();
    let adopted = sup.adopt_running();
    assert_eq!(adopted, vec![("web".to_string(), web)]);
    assert!(sup
        .run_until(Duration::from_secs(30), |s| s.all_ready())
        .unwrap());
    assert_eq!(sup.pid("web"), Some(web), "web was not restarted");
    let status = sup.status();
    let w = &status[0];
    assert_eq!(
        (w.component.name.as_str(), w.component.restarts),
        ("web", 0)
    );
    assert!(w.component.adopted_at_ms.is_some());
    // Its run started when its process did, before this supervisor.
    assert!(w.component.started_at_ms < w.component.adopted_at_ms);
    let worker = sup.pid("worker").unwrap();
    assert_ne!(worker, old_worker);
    assert!(!alive(old_worker), "the outdated worker was killed");
    assert!(status[1].component.adopted_at_ms.is_none());

    // The adopted process dies (not our child: seen through its pidfd): respawned.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(web).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert!(sup
        .run_until(Duration::from_secs(30), |s| {
            let w = s.get("web").unwrap();
            w.restarts == 1 && w.ready()
        })
        .unwrap());
    assert_ne!(sup.pid("web"), Some(web));
    let why = sup.status()[0].component.last_failure.clone();
    assert!(
        why.as_deref().is_some_and(|w| w.contains("status unknown")),
        "{why:?}"
    );

    // Shutdown stops what it adopted and what it spawned.
    assert!(sup.shutdown(Duration::from_secs(10)).unwrap());
    assert!(!alive(worker));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
