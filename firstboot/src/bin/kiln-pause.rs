//! kiln-pause: the program of the pod sandbox ("pause") image. It holds the pod's
//! namespaces open and does nothing else: SIGINT or SIGTERM end it with status 0, SIGCHLD
//! makes it reap every exited child (it is PID 1 of pods that share their process
//! namespace), and otherwise it sleeps in `sigwait`. The signals are blocked and taken
//! synchronously, so no handler runs and, as PID 1 of a namespace, they still arrive.

use std::process::ExitCode;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("kiln-pause {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("kiln-pause: blocking signals: {e}");
        return ExitCode::FAILURE;
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGINT | Signal::SIGTERM) => return ExitCode::SUCCESS,
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("kiln-pause: waiting for signals: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

/// Reaps every child that has exited; stops when none is left or all are running.
fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
