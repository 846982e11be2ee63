//! `firstboot`: `init` (stage 1, also when run as PID 1), `agent` (stage 2), `status`.
//! Arguments are parsed by hand to keep the initramfs binary small.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use firstboot::agent::{self, AgentPaths};
use firstboot::cmdline::Cmdline;
use firstboot::console::Console;
use firstboot::notify::{self, Notifier};
use firstboot::stage1::{self, Layout, OnFailure};
use firstboot::status::Status;
use firstboot::sys::{self, RealSys, Sys};
use firstboot::{logging, network};

const USAGE: &str = "usage: firstboot init | agent | status [--json]";

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

/// Stage 1. Never returns: it execs systemd, or reports and waits (or reboots).
fn init() -> ExitCode {
    let sys = RealSys;
    let layout = Layout::new("/");
    let console = Console::new("/dev", true);
    std::panic::set_hook(Box::new(|info| {
        Console::new("/dev", true).say(&format!("kiln: stage 1 failed: internal error: {info}"));
        halt(OnFailure::Wait);
    }));
    let say = |s: &str| console.say(s);
    say("kiln: stage 1 start");
    let err = match stage1::prepare(&sys, &layout, &say) {
        Ok(t) => {
            say(&format!("kiln: stage 1: root {}, /var {}", t.root, t.var));
            say(&stage1::done_line(&t));
            sys.reap();
            stage1::switch_root(&sys, &layout)
        }
        Err(e) => e,
    };
    // After a failed switch_root the old /dev may be gone: use the new one if it is there.
    let console = if Path::new("/dev/console").exists() {
        console
    } else {
        Console::new(PathBuf::from("/sysroot/dev"), true)
    };
    console.say(&format!("kiln: stage 1 failed: {err}"));
    let policy = Cmdline::read(Path::new("/proc/cmdline"))
        .map(|c| OnFailure::from_cmdline(&c))
        .unwrap_or(OnFailure::Wait);
    if policy == OnFailure::Reboot {
        console.say("kiln: stage 1: rebooting in 10 s (kiln.on-failure=reboot)");
    } else {
        console.say("kiln: stage 1: waiting; boot with kiln.on-failure=reboot to reboot instead");
    }
    halt(policy)
}

fn halt(policy: OnFailure) -> ! {
    let sys = RealSys;
    if policy == OnFailure::Reboot {
        for _ in 0..10 {
            sys.reap();
            sys.sleep(Duration::from_secs(1));
        }
        let _ = sys.reboot();
    }
    loop {
        sys.reap();
        sys.sleep(Duration::from_secs(1));
    }
}

fn run_agent() -> anyhow::Result<()> {
    use anyhow::Context as _;
    logging::init();
    let console = Console::new("/dev", false);
    let say = |s: &str| {
        log::info!("{s}");
        console.say(s);
    };
    let notifier = Notifier::from_env().context("opening $NOTIFY_SOCKET")?;
    let sys = RealSys;
    let env = agent::Env {
        say: &say,
        notify: &notifier,
        addresses: &network::current_addresses,
        reload_network: &network::reload_networkd,
        network_timeout_ms: agent::NETWORK_TIMEOUT_MS,
    };
    let st = agent::run(&sys, &AgentPaths::new("/"), &env)?;
    let line = st.summary().swap_remove(0);
    notifier
        .ready(line.trim_start_matches("kiln: "))
        .context("sending READY=1")?;
    // Stay up: systemd restarts the unit when it exits. Ping the watchdog while healthy.
    let every = notify::watchdog_interval_from_env();
    loop {
        sys.reap();
        match every {
            Some(d) => {
                sys.sleep(d);
                if let Err(e) = notifier.watchdog() {
                    log::warn!("sd_notify WATCHDOG=1: {e}");
                }
            }
            None => sys.sleep(Duration::from_secs(3600)),
        }
    }
}

fn status(json: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let path = AgentPaths::new("/").status_json();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let s: Status =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.table());
    }
    Ok(())
}
