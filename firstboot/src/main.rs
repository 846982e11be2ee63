//! `firstboot`: `init` (stage 1, also when run as PID 1), `agent` (stage 2), `status`,
//! `host` (the control plane on 127.0.0.1 under a directory, for tests).
//! Arguments are parsed by hand to keep the initramfs binary small.

use std::path::Path;
use std::process::ExitCode;

use firstboot::commands::{host, init, parse_host, run_agent, status};
use firstboot::sys;

const USAGE: &str = "usage: firstboot init | agent | status [--json]
       firstboot host --root DIR --bin DIR [--apiserver-port PORT] [--json]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let pid1 = rustix::process::getpid().is_init();
    match args.get(1).map(String::as_str) {
        _ if pid1 => init(),
        Some("init") => init(),
        Some(sys::CHROOT_EXEC) if args.len() > 2 => {
            let e = sys::chroot_exec(Path::new(&args[2]), &args[3..]);
            eprintln!("firstboot: running {:?} in {}: {e}", args.get(3), args[2]);
            ExitCode::from(127)
        }
        Some("agent") => report(run_agent()),
        Some("status") => report(status(args.get(2).map(String::as_str) == Some("--json"))),
        Some("host") => match parse_host(&args[2..]) {
            Ok(opts) => report(host(&opts)),
            Err(e) => {
                eprintln!("firstboot: {e}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("firstboot: {e:#}");
            ExitCode::FAILURE
        }
    }
}
