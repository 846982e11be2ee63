//! The real kiln-pause binary: exits 0 on SIGTERM and SIGINT, reaps children it inherits,
//! and otherwise stays asleep.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAUSE: &str = env!("CARGO_BIN_EXE_kiln-pause");

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -s {sig} {pid}");
}

/// The state letter of /proc/<pid>/stat, or None when the process is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.chars().next()
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn terminates_with_zero_on_sigterm_and_sigint() {
    for sig in ["TERM", "INT"] {
        let mut child = Command::new(PAUSE).spawn().expect("spawn kiln-pause");
        // Still running after a while: it does not exit on its own.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "exited early"
        );
        assert_eq!(state(child.id()), Some('S'), "asleep, not spinning");
        signal(child.id(), sig);
        let st = wait_exit(&mut child, Duration::from_secs(5)).expect("exits after SIG{sig}");
        assert_eq!(st.code(), Some(0), "SIG{sig}: {st}");
    }
}

#[test]
fn reaps_children_it_inherits() {
    // The shell starts `sleep` and then execs kiln-pause, which so inherits the child.
    let script = format!("sleep 0.3 & echo $!; exec {PAUSE}");
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read pid");
    let sleeper: u32 = line.trim().parse().expect("pid");
    let start = Instant::now();
    while state(sleeper).is_some() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = state(sleeper);
    let alive = child.try_wait().expect("try_wait").is_none();
    // Stop it before asserting, so a failure leaves no process behind.
    signal(child.id(), "TERM");
    let st = wait_exit(&mut child, Duration::from_secs(5)).expect("exits");
    assert!(alive, "kiln-pause exited on its own");
    assert_eq!(
        left, None,
        "the exited child was not reaped (state {left:?})"
    );
    assert_eq!(st.code(), Some(0));
}
