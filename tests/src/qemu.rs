//! A QEMU harness for end-to-end tests: software emulation (TCG, `-smp 2`), the
//! serial console captured to a file, user-mode networking only, and the VM killed
//! when the handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Firmware to boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default, legacy BIOS).
    Bios,
    /// OVMF (UEFI), with a private copy of the variable store.
    Uefi,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub firmware: Firmware,
    pub memory_mib: u32,
    /// Extra QEMU arguments (drives, fw_cfg, -boot, ...).
    pub args: Vec<String>,
    /// User-mode network with these `hostfwd` rules (`tcp:127.0.0.1:H-:G`), and an
    /// optional TFTP root and boot file for PXE.
    pub net: Option<Net>,
}

#[derive(Debug, Clone, Default)]
pub struct Net {
    pub hostfwd: Vec<String>,
    pub tftp: Option<(PathBuf, String)>,
}

impl VmSpec {
    pub fn new(firmware: Firmware) -> Self {
        VmSpec {
            firmware,
            memory_mib: 1536,
            args: Vec::new(),
            net: Some(Net::default()),
        }
    }

    /// A virtio disk; `snapshot` keeps the file unchanged.
    pub fn disk(mut self, path: &Path, format: &str, snapshot: bool) -> Self {
        let mut d = format!("file={},format={format},if=virtio", path.display());
        if snapshot {
            d.push_str(",snapshot=on");
        }
        self.args.extend(["-drive".into(), d]);
        self
    }

    pub fn cdrom(mut self, iso: &Path) -> Self {
        self.args.extend([
            "-drive".into(),
            format!("file={},format=raw,media=cdrom,readonly=on", iso.display()),
            "-boot".into(),
            "d".into(),
        ]);
        self
    }

    pub fn fw_cfg_file(mut self, name: &str, file: &Path) -> Self {
        self.args.extend([
            "-fw_cfg".into(),
            format!("name={name},file={}", file.display()),
        ]);
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }
}

/// A running VM.
pub struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Vm {
    pub fn start(spec: &VmSpec) -> std::io::Result<Vm> {
        let dir = tempfile::tempdir()?;
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-accel",
            "tcg",
            "-smp",
            "2",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-m", &spec.memory_mib.to_string()])
        .arg("-serial")
        .arg(format!("file:{}", dir.path().join("serial.log").display()))
        .arg("-monitor")
        .arg(format!(
            "unix:{},server=on,wait=off",
            dir.path().join("monitor.sock").display()
        ))
        .args(["-device", "virtio-rng-pci"]);
        if spec.firmware == Firmware::Uefi {
            let vars = dir.path().join("OVMF_VARS.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars)?;
            c.arg("-drive")
                .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    vars.display()
                ));
        }
        if let Some(net) = &spec.net {
            let mut n = "user,id=n0,restrict=off".to_string();
            for f in &net.hostfwd {
                assert!(
                    f.contains("127.0.0.1:"),
                    "host forwards bind loopback only: {f}"
                );
                n.push_str(&format!(",hostfwd={f}"));
            }
            if let Some((root, file)) = &net.tftp {
                n.push_str(&format!(",tftp={},bootfile={file}", root.display()));
            }
            c.args(["-netdev", &n, "-device", "virtio-net-pci,netdev=n0"]);
        }
        c.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join("qemu.err"),
            )?));
        let child = c.spawn()?;
        Ok(Vm {
            child,
            dir,
            started: Instant::now(),
        })
    }

    /// Everything the serial console printed so far.
    pub fn serial(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("serial.log")).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The last `n` lines of the console and QEMU's stderr, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let s = self.serial();
        let lines: Vec<&str> = s.lines().collect();
        let start = lines.len().saturating_sub(n);
        let err = std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default();
        format!(
            "--- serial (last {n} lines)\n{}\n--- qemu stderr\n{err}",
            lines[start..].join("\n")
        )
    }

    /// Seconds since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the console shows `needle`; returns the time since QEMU started.
    /// Fails early if QEMU exits.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial().contains(needle) {
                return Ok(self.started.elapsed());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                if self.serial().contains(needle) {
                    return Ok(self.started.elapsed());
                }
                return Err(format!(
                    "QEMU exited ({st}) before {needle:?}\n{}",
                    self.tail(60)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no {needle:?} on the console after {:?}\n{}",
                    timeout,
                    self.tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Sends a command to the QEMU monitor (e.g. `system_powerdown`).
    pub fn monitor(&self, cmd: &str) -> std::io::Result<()> {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.path().join("monitor.sock"))?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "QEMU still running after {timeout:?}\n{}",
                    self.tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kills QEMU at once (a power cut).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
