//! What each `firstboot` subcommand does on a machine: `init` (stage 1), `agent` (stage 2),
//! `status`, and `host` (the control plane on 127.0.0.1 under a directory, for tests).
//! `main.rs` only picks one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{self, AgentPaths};
use crate::cmdline::Cmdline;
use crate::console::Console;
use crate::host::HostOptions;
use crate::install;
use crate::notify::{self, Notifier};
use crate::stage1::{self, Layout, OnFailure};
use crate::status::Status;
use crate::sys::{RealSys, Sys};
use crate::{logging, network};

/// Stage 1. Never returns: it execs systemd, or reports and waits (or reboots).
pub fn init() -> ExitCode {
    let sys = RealSys;
    let layout = Layout::new("/");
    let console = Console::new("/dev", true);
    std::panic::set_hook(Box::new(|info| {
        Console::new("/dev", true).say(&format!("kiln: stage 1 failed: internal error: {info}"));
        halt(OnFailure::Wait);
    }));
    let say = |s: &str| console.say(s);
    say("kiln: stage 1 start");
    let early = stage1::early(&sys, &layout, &say)
        .and_then(|(c, t)| install::Options::from_cmdline(&c, &layout).map(|opts| (c, t, opts)));
    let err = match early {
        Ok((_, _, Some(opts))) => match install::run(&sys, &layout, &opts, &say) {
            Ok(_) => {
                say("kiln: install: rebooting into the installed disk");
                sys.reap();
                if let Err(e) = sys.reboot() {
                    say(&format!("kiln: install: reboot(2) failed: {e}"));
                }
                halt(OnFailure::Wait)
            }
            Err(e) => e,
        },
        Ok((c, t, None)) => match stage1::prepare_root(&sys, &layout, &say, &c, t) {
            Ok(t) => {
                say(&format!("kiln: stage 1: root {}, /var {}", t.root, t.var));
                say(&stage1::done_line(&t));
                sys.reap();
                stage1::switch_root(&sys, &layout)
            }
            Err(e) => e,
        },
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

pub fn run_agent() -> anyhow::Result<()> {
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
    let paths = AgentPaths::new("/");
    let mut st = agent::run(&sys, &paths, &env)?;
    if crate::node::available(Path::new("/usr/bin")) {
        // The effective config, as stage 2 just persisted it.
        let text = std::fs::read_to_string(paths.last_good())
            .with_context(|| format!("reading {}", paths.last_good().display()))?;
        let cfg = crate::config::MachineConfig::from_toml(&text)
            .with_context(|| format!("parsing {}", paths.last_good().display()))?;
        let _ = notifier.status("starting the node");
        let now = || agent::now(&sys);
        let node_env = crate::node::NodeEnv {
            say: &say,
            notify: &notifier,
            status_path: paths.status_json(),
            host_status_path: Some(PathBuf::from(crate::node::HOST_STATUS)),
            now: &now,
        };
        let r = crate::node::run(&mut st, &cfg, &node_env);
        if let Err(e) = &r {
            say(&format!("kiln: node failed: {e:#}"));
        }
        return r;
    }
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

pub fn status(json: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let path = AgentPaths::new("/").status_json();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut s: Status =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    s.read_certificates(Path::new(crate::pki::DEFAULT_DIR));
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.table());
    }
    Ok(())
}

/// Parses `host` arguments.
pub fn parse_host(args: &[String]) -> Result<HostOptions, String> {
    let mut root = None;
    let mut bin = None;
    let mut json = false;
    let mut apiserver_port = crate::k8s::APISERVER_PORT;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--bin" => bin = Some(PathBuf::from(value("--bin")?)),
            "--apiserver-port" => {
                let v = value("--apiserver-port")?;
                apiserver_port = v
                    .parse()
                    .map_err(|_| format!("invalid --apiserver-port {v:?}"))?;
            }
            "--json" => json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(HostOptions {
        root: root.ok_or("--root is required")?,
        bin: bin.ok_or("--bin is required")?,
        json,
        apiserver_port,
    })
}

/// Host mode until SIGINT or SIGTERM.
pub fn host(opts: &HostOptions) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the SIGINT/SIGTERM handler")?;
    let root = std::path::absolute(&opts.root)
        .with_context(|| format!("resolving {}", opts.root.display()))?;
    let bin = std::path::absolute(&opts.bin)
        .with_context(|| format!("resolving {}", opts.bin.display()))?;
    let opts = HostOptions {
        root,
        bin,
        ..opts.clone()
    };
    crate::host::run(&opts, &stop, &mut std::io::stdout())
}
