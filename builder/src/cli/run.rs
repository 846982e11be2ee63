//! `kiln run`: boot a built image under QEMU on this machine, hand it a hostname, machine
//! config and operator-side cluster secrets through fw_cfg, forward the Kubernetes API (and
//! a NodePort) to 127.0.0.1, show the boot's phases from the serial console, write an admin
//! kubeconfig, and shut the guest down through ACPI on Ctrl-C or SIGTERM.

use std::io::{IsTerminal, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::dispatch::{now, read_secrets, write_private};
use crate::cli::RunArgs;
use crate::process::Tool;
use crate::qemu::{Drive, Firmware, HostFwd, Kernel, UserNet, VmSpec, OVMF_VARS};

/// What kind of output is booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    Disk {
        path: PathBuf,
        format: &'static str,
    },
    Iso(PathBuf),
    /// A PXE bundle directory, booted directly (kernel + initramfs).
    Pxe {
        kernel: PathBuf,
        initramfs: PathBuf,
        cmdline: String,
    },
}

/// The kernel command line of a PXE bundle's `boot.ipxe` (`kernel vmlinuz ARGS`).
pub fn ipxe_cmdline(script: &str) -> Option<String> {
    script.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("kernel ")?;
        let mut words = rest.split_whitespace();
        words.next()?;
        Some(words.collect::<Vec<_>>().join(" "))
    })
}

impl Boot {
    pub fn of(image: &Path) -> Result<Boot> {
        if image.is_dir() {
            let kernel = image.join("vmlinuz");
            let initramfs = image.join("initramfs");
            if !(kernel.is_file() && initramfs.is_file()) {
                bail!(
                    "{} is not a PXE bundle (no vmlinuz and initramfs)",
                    image.display()
                );
            }
            let script = image.join("boot.ipxe");
            let text = std::fs::read_to_string(&script)
                .with_context(|| format!("reading {}", script.display()))?;
            let cmdline = ipxe_cmdline(&text)
                .with_context(|| format!("{}: no `kernel` line", script.display()))?;
            return Ok(Boot::Pxe {
                kernel,
                initramfs,
                cmdline,
            });
        }
        if !image.is_file() {
            bail!("{}: no such image", image.display());
        }
        match image.extension().and_then(|e| e.to_str()) {
            Some("qcow2") => Ok(Boot::Disk {
                path: image.to_path_buf(),
                format: "qcow2",
            }),
            Some("raw" | "img") => Ok(Boot::Disk {
                path: image.to_path_buf(),
                format: "raw",
            }),
            Some("iso") => Ok(Boot::Iso(image.to_path_buf())),
            _ => bail!(
                "{}: not a .qcow2, .raw, .iso or PXE bundle directory",
                image.display()
            ),
        }
    }
}

/// Boot phases recognised on the serial console, in order: (console text, phase name).
pub const PHASES: &[(&str, &str)] = &[
    ("Linux version", "kernel"),
    ("kiln: stage 1 start", "stage 1"),
    ("switching root", "switch_root"),
    ("systemd[1]", "systemd"),
    ("kiln: hostname ", "stage 2 (hostname, network)"),
    ("kiln: etcd ready", "etcd ready"),
    ("kiln: kube-apiserver ready", "apiserver ready"),
    ("kiln: kubelet ready", "kubelet ready"),
    ("Ready", "node Ready"),
    ("kiln: coredns ready", "CoreDNS ready"),
    ("kiln: images imported", "images imported"),
];

/// How many of [`PHASES`] form the boot chain, each reached only after the one before it;
/// the rest (components, the node, CoreDNS) are each reached by their own line once the
/// chain is complete, in whatever order the node's parallel start prints them.
const BOOT_CHAIN: usize = 6;

/// The phases newly reached in `console` (the whole log so far), given those already
/// reached (`seen[i]` for `PHASES[i]`), in `PHASES` order. "node Ready" needs `kiln: node `
/// too.
pub fn phases_reached(console: &str, seen: &[bool]) -> Vec<usize> {
    let hit = |needle: &str| {
        if needle == "Ready" {
            console
                .lines()
                .any(|l| l.contains("kiln: node ") && l.trim_end().ends_with(" Ready"))
        } else {
            console.contains(needle)
        }
    };
    let mut reached = seen.to_vec();
    reached.resize(PHASES.len(), false);
    let mut new = Vec::new();
    for (i, (needle, _)) in PHASES.iter().enumerate() {
        if reached[i] {
            continue;
        }
        let before = i.min(BOOT_CHAIN);
        if reached[..before].iter().all(|r| *r) && hit(needle) {
            reached[i] = true;
            new.push(i);
        }
    }
    new
}

/// Whether /dev/kvm can be opened for reading and writing.
fn kvm_present() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// How long a KVM guest gets to print the kernel's banner before emulation is used instead.
/// A working KVM gets there in seconds; a broken one either stops with an internal error
/// or, under SeaBIOS, runs the firmware and GRUB and then hangs without a word.
const KVM_TRIAL: Duration = Duration::from_secs(30);

/// Whether the KVM trial is over: Some(true) if KVM works (the kernel has started),
/// Some(false) if it does not, None to keep waiting.
pub fn kvm_verdict(qemu_err: &str, console: &str, exited: bool, elapsed: Duration) -> Option<bool> {
    if qemu_err.contains("KVM internal error") || qemu_err.contains("failed to initialize kvm") {
        return Some(false);
    }
    if console.contains(PHASES[0].0) {
        return Some(true);
    }
    if exited || elapsed >= KVM_TRIAL {
        return Some(false);
    }
    None
}

/// Starts the guest with KVM when it actually works (tried: the kernel must print its banner
/// on the console within [`KVM_TRIAL`]), else with software emulation.
fn start_guest(
    qemu: &dyn Fn(&str) -> Result<Tool>,
    monitor: &Path,
    qemu_err: &Path,
    console: &Path,
) -> Result<(Guest, &'static str, Instant)> {
    if kvm_present() {
        let started = Instant::now();
        let child = qemu("kvm")?
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let mut guest = Guest {
            child,
            monitor: monitor.to_path_buf(),
        };
        let works = loop {
            let err = std::fs::read_to_string(qemu_err).unwrap_or_default();
            let log = std::fs::read(console).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            if let Some(v) = kvm_verdict(&err, &log, guest.exited(), started.elapsed()) {
                break v;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if works {
            return Ok((guest, "kvm", started));
        }
        drop(guest);
        log::info!("KVM does not work here; using software emulation");
    }
    let started = Instant::now();
    let child = qemu("tcg")?
        .spawn()
        .context("starting qemu-system-x86_64")?;
    Ok((
        Guest {
            child,
            monitor: monitor.to_path_buf(),
        },
        "tcg",
        started,
    ))
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// The machine config handed to the guest: the user's file, then `--hostname`, then the
/// operator secrets.
fn machine_config(args: &RunArgs, secrets: &firstboot::pki::Secrets) -> Result<String> {
    let mut table = match &args.config {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            firstboot::config::MachineConfig::from_toml(&text)
                .with_context(|| format!("{}", f.display()))?;
            text.parse::<toml::Table>()
                .with_context(|| format!("{}", f.display()))?
        }
        None => toml::Table::new(),
    };
    if let Some(h) = &args.hostname {
        table.insert("hostname".into(), toml::Value::String(h.clone()));
    }
    table.insert(
        "secrets".into(),
        toml::Value::try_from(secrets).context("encoding the secrets")?,
    );
    let text = toml::to_string(&table)?;
    firstboot::config::MachineConfig::from_toml(&text).context("the machine config")?;
    Ok(text)
}

/// Presses the ACPI power button through QEMU's human monitor at `monitor`: wait for its
/// prompt, send the command, read the echo (closing at once can drop the command unread).
fn press_power_button(monitor: &Path) {
    use std::io::Read as _;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(monitor) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("(qemu)") {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let _ = s.write_all(b"system_powerdown\n");
    let _ = s.read(&mut buf);
    std::thread::sleep(Duration::from_millis(300));
}

/// The guest; killed if still running when dropped.
struct Guest {
    child: Child,
    monitor: PathBuf,
}

impl Guest {
    fn powerdown(&self) {
        press_power_button(&self.monitor);
    }

    /// Leaves the guest running when this is dropped.
    fn detach(self) {
        std::mem::forget(self);
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The state directory's record of the guest's QEMU process (for `--stop`).
const PID_FILE: &str = "qemu.pid";

/// Whether process `pid` exists and has not exited (a zombie has), by the supervisor's
/// own reading of `/proc/PID/stat`.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .as_deref()
        .and_then(firstboot::supervisor::shell::ProcStat::parse)
        .is_some_and(|s| s.state != 'Z')
}

/// `kiln run --stop DIR`: presses the ACPI power button of the guest whose pid DIR's
/// qemu.pid holds (again every 20 s), waits up to `timeout` for it to exit, then kills it.
pub fn stop(state: &Path, timeout: Duration) -> Result<()> {
    let pid_file = state.join(PID_FILE);
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{}: no {PID_FILE}: no guest of a `kiln run` runs from there",
            state.display()
        ),
        Err(e) => bail!("reading {}: {e}", pid_file.display()),
    };
    let pid: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a pid: {:?}", pid_file.display(), text.trim()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !alive(pid) || !String::from_utf8_lossy(&cmdline).contains("qemu-system") {
        let _ = std::fs::remove_file(&pid_file);
        eprintln!("kiln: the guest of {} is not running", state.display());
        return Ok(());
    }
    let monitor = state.join("monitor.sock");
    eprintln!("kiln: shutting the guest (pid {pid}) down (ACPI power button)");
    press_power_button(&monitor);
    let started = Instant::now();
    let mut last_press = Instant::now();
    while alive(pid) {
        if started.elapsed() > timeout {
            eprintln!(
                "kiln: the guest did not power off within {} s; killing it",
                timeout.as_secs()
            );
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(500));
            break;
        }
        if last_press.elapsed() >= Duration::from_secs(20) {
            press_power_button(&monitor);
            last_press = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_file(&pid_file);
    eprintln!(
        "kiln: guest stopped after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run(args: &RunArgs) -> Result<()> {
    if let Some(state) = &args.stop {
        return stop(state, Duration::from_secs(args.shutdown_timeout));
    }
    let Some(image) = args.image.as_deref() else {
        bail!("no image to boot");
    };
    let boot = Boot::of(image)?;
    let name = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kiln".into());
    let state = match &args.state_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("kiln-run-{name}-{}", std::process::id())),
    };
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;

    // Operator side: the cluster's CAs stay here; the guest gets them through fw_cfg.
    let secrets_path = args
        .secrets
        .clone()
        .unwrap_or_else(|| state.join("secrets.toml"));
    let secrets = if secrets_path.is_file() {
        read_secrets(&secrets_path)?
    } else {
        let s = firstboot::pki::Secrets::generate(now())?;
        write_private(&secrets_path, &s.to_toml()?)?;
        s
    };
    let config_path = state.join("machine-config.toml");
    write_private(&config_path, &machine_config(args, &secrets)?)?;

    let api_port = match args.api_port {
        Some(p) => p,
        None => free_port()?,
    };
    let node_port_host = match args.node_port {
        Some(_) => Some(free_port()?),
        None => None,
    };
    let server = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| state.join("admin.kubeconfig"));
    write_private(
        &kubeconfig,
        &firstboot::pki::admin_kubeconfig(&secrets, &server, now())?,
    )?;

    let console = args
        .console_log
        .clone()
        .unwrap_or_else(|| state.join("console.log"));
    let monitor = state.join("monitor.sock");
    // The disk: an overlay unless --persist, so the built image stays pristine.
    let disk: Option<(PathBuf, &str)> = match &boot {
        Boot::Disk { path, format } if args.persist => Some((path.clone(), *format)),
        Boot::Disk { path, format } => {
            let overlay = state.join("overlay.qcow2");
            let _ = std::fs::remove_file(&overlay);
            Tool::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
                .arg(std::fs::canonicalize(path)?)
                .arg(&overlay)
                .run()
                .context("creating the overlay")?;
            Some((overlay, "qcow2"))
        }
        _ => None,
    };
    let qemu_err = state.join("qemu.err");
    let firmware = if args.bios {
        Firmware::Bios
    } else {
        Firmware::Uefi {
            vars: state.join("OVMF_VARS.fd"),
        }
    };
    let mut spec = VmSpec::new(args.memory, firmware, &console, &monitor);
    spec.cpus = args.cpus;
    // A hardware watchdog for systemd's RuntimeWatchdogSec: a hung guest is reset.
    spec.watchdog = true;
    spec.fw_cfg
        .push(("opt/kiln/config".into(), config_path.clone()));
    match &boot {
        Boot::Disk { .. } => {
            let (path, format) = disk.clone().unwrap_or_default();
            spec.drives.push(Drive::Disk {
                path,
                format: format.to_string(),
                snapshot: false,
            });
        }
        Boot::Iso(iso) => spec.drives.push(Drive::Cdrom(iso.clone())),
        Boot::Pxe {
            kernel,
            initramfs,
            cmdline,
        } => {
            spec.kernel = Some(Kernel {
                kernel: kernel.clone(),
                initrd: initramfs.clone(),
                cmdline: cmdline.clone(),
            })
        }
    }
    let mut hostfwd = vec![HostFwd {
        host_port: api_port,
        guest_port: 6443,
    }];
    if let (Some(host), Some(guest)) = (node_port_host, args.node_port) {
        hostfwd.push(HostFwd {
            host_port: host,
            guest_port: guest,
        });
    }
    spec.net = Some(UserNet {
        restrict: true,
        hostfwd,
        tftp: None,
    });
    let qemu = |accel: &str| -> Result<Tool> {
        spec.firmware
            .fresh_vars()
            .with_context(|| format!("copying {OVMF_VARS} (is the ovmf package installed?)"))?;
        let mut c = Tool::new("qemu-system-x86_64");
        c.args(
            VmSpec {
                accel: accel.into(),
                ..spec.clone()
            }
            .argv(),
        );
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&qemu_err)
                    .with_context(|| format!("creating {}", qemu_err.display()))?,
            ));
        Ok(c)
    };

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C/SIGTERM handler")?;
    }
    let (mut guest, accel, started) = start_guest(&qemu, &monitor, &qemu_err, &console)?;
    let pid_file = state.join(PID_FILE);
    crate::cache::write_atomic_bytes(&pid_file, format!("{}\n", guest.child.id()).as_bytes())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    eprintln!(
        "kiln: booting {} ({accel}, {} MiB, {} CPUs, {}); console log {}",
        image.display(),
        args.memory,
        args.cpus,
        if args.bios { "BIOS" } else { "UEFI" },
        console.display()
    );
    eprintln!(
        "kiln: API server at {server}; admin kubeconfig {}",
        kubeconfig.display()
    );
    if let (Some(host), Some(guest_port)) = (node_port_host, args.node_port) {
        eprintln!("kiln: NodePort {guest_port} at http://127.0.0.1:{host}");
    }

    let tty = std::io::stderr().is_terminal();
    let mut seen = [false; PHASES.len()];
    let mut drawn: Option<firstboot::timeline::Timeline> = None;
    let timeline_svg = state.join("timeline.svg");
    let image_name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut times: Vec<(String, Duration)> = Vec::new();
    let mut powering_down: Option<Instant> = None;
    let mut last_press = Instant::now();
    loop {
        if guest.exited() {
            break;
        }
        if stop.load(Ordering::SeqCst) && powering_down.is_none() {
            eprintln!("kiln: shutting the guest down (ACPI power button)");
            guest.powerdown();
            powering_down = Some(Instant::now());
            last_press = Instant::now();
        }
        if let Some(t) = powering_down {
            // A guest still booting may miss a press (no logind yet): press again.
            if last_press.elapsed() >= Duration::from_secs(20) {
                guest.powerdown();
                last_press = Instant::now();
            }
            if t.elapsed() > Duration::from_secs(args.shutdown_timeout) {
                eprintln!(
                    "kiln: the guest did not power off within {} s; killing it",
                    args.shutdown_timeout
                );
                let _ = guest.child.kill();
                let _ = guest.child.wait();
                break;
            }
        }
        let log = std::fs::read(&console).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        for i in phases_reached(&log, &seen) {
            seen[i] = true;
            let phase = PHASES[i].1;
            let at = started.elapsed();
            times.push((phase.to_string(), at));
            eprintln!("kiln: {:>7.1} s  {phase}", at.as_secs_f64());
            if phase == "node Ready" {
                eprintln!(
                    "kiln: try: kubectl --kubeconfig {} get nodes",
                    kubeconfig.display()
                );
                eprintln!("kiln: try: kiln health --state-dir {}", state.display());
                if args.detach {
                    eprintln!(
                        "kiln: detached; the guest runs on (pid {}); stop it with: \
                         kiln run --stop {}",
                        guest.child.id(),
                        state.display()
                    );
                    guest.detach();
                    return Ok(());
                }
            }
        }
        // firstboot's timeline (printed at node Ready and at CoreDNS ready, again after a
        // reboot) as a picture.
        if let Some(t) = firstboot::timeline::Timeline::from_console(&log) {
            if drawn.as_ref() != Some(&t) {
                // Printed again once CoreDNS is ready, with what came after node Ready.
                let until = if t.phases.iter().any(|p| p.name == "coredns-ready") {
                    "CoreDNS ready"
                } else {
                    "node Ready"
                };
                let svg =
                    crate::cli::timeline::render_svg(&t, &format!("{image_name}: boot to {until}"));
                if let Err(e) = crate::cache::write_atomic_bytes(&timeline_svg, svg.as_bytes()) {
                    eprintln!("kiln: writing {}: {e}", timeline_svg.display());
                }
                drawn = Some(t);
            }
        }
        if tty && powering_down.is_none() {
            if let Some(next) = seen.iter().position(|s| !*s).map(|i| PHASES[i].1) {
                eprint!(
                    "\r\x1b[2Kkiln: {:>7.1} s  waiting for {next}",
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if tty {
        eprint!("\r\x1b[2K");
    }
    let _ = std::fs::remove_file(&pid_file);
    eprintln!(
        "kiln: guest stopped after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (phase, at) in &times {
        eprintln!("  {:>8.1} s  {phase}", at.as_secs_f64());
    }
    if drawn.is_some() {
        eprintln!("kiln: boot timeline: {}", timeline_svg.display());
    }
    if args.detach {
        bail!("the guest stopped before node Ready; nothing was left running");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_counts_as_working_only_once_the_kernel_has_started() {
        let early = Duration::from_secs(2);
        let late = KVM_TRIAL;
        // Firmware and GRUB on the console are not enough; a kernel banner is.
        assert_eq!(
            kvm_verdict("", "SeaBIOS\nGNU GRUB\nBooting", false, early),
            None
        );
        assert_eq!(
            kvm_verdict("", "GNU GRUB\nBooting", false, late),
            Some(false)
        );
        assert_eq!(
            kvm_verdict("", "Booting\n[0.0] Linux version 6.1", false, early),
            Some(true)
        );
        // An internal error or an exit ends the trial at once.
        assert_eq!(
            kvm_verdict("KVM internal error. Suberror: 1", "", false, early),
            Some(false)
        );
        assert_eq!(kvm_verdict("", "", true, early), Some(false));
    }

    #[test]
    fn the_boot_chain_is_matched_in_order_and_the_components_as_they_come() {
        let log =
            "Linux version 6.1\nkiln: stage 1 start\nkiln: stage 1 done in 1 ms, switching root\n";
        assert_eq!(phases_reached(log, &[]), [0, 1, 2]);
        // A later phase's text before an earlier one's does not skip ahead.
        assert!(phases_reached("kiln: etcd ready\n", &[]).is_empty());
        assert!(phases_reached("kiln: kubelet ready\nkiln: node n1 Ready\n", &[]).is_empty());
        let chain = format!("{log}systemd[1]: x\nkiln: hostname n1, ...\nkiln: etcd ready\n");
        assert_eq!(phases_reached(&chain, &[true; 3]), [3, 4, 5]);
        // The kubelet ready before the apiserver (parallel start): each when it comes.
        let kubelet = format!("{chain}kiln: kubelet ready\n");
        assert_eq!(phases_reached(&kubelet, &[true; 6]), [7]);
        let mut seen = [true; 8];
        seen[6] = false;
        let all = format!("{kubelet}kiln: kube-apiserver ready\nkiln: node n1 Ready\n");
        assert_eq!(phases_reached(&all, &seen), [6, 8]);
        assert_eq!(PHASES[8].1, "node Ready");
        assert_eq!(PHASES[7].1, "kubelet ready");
        assert!(phases_reached(&all, &[true; 9]).is_empty());
    }

    #[test]
    fn pxe_command_line_comes_from_boot_ipxe() {
        let s = "#!ipxe\nkernel vmlinuz initrd=initramfs console=ttyS0 kiln.root=embedded\ninitrd initramfs\nboot\n";
        assert_eq!(
            ipxe_cmdline(s).as_deref(),
            Some("initrd=initramfs console=ttyS0 kiln.root=embedded")
        );
        assert_eq!(ipxe_cmdline("#!ipxe\nboot\n"), None);
    }

    #[test]
    fn images_are_recognised_by_kind() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let q = d.path().join("x.qcow2");
        std::fs::write(&q, b"").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            Boot::of(&q),
            Ok(Boot::Disk {
                format: "qcow2",
                ..
            })
        ));
        let bad = d.path().join("x.txt");
        std::fs::write(&bad, b"").unwrap_or_else(|e| panic!("{e}"));
        assert!(Boot::of(&bad).is_err());
        assert!(Boot::of(d.path())
            .unwrap_err()
            .to_string()
            .contains("PXE bundle"));
    }
}
