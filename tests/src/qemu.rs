//! A QEMU harness for end-to-end tests: software emulation (TCG, `-smp 2`), the
//! serial console captured to a file, user-mode networking only, and the VM killed
//! when the handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::qemu;
pub use kiln::qemu::UserNet;

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
    pub drives: Vec<qemu::Drive>,
    /// `-fw_cfg` files: (name, file).
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Extra QEMU arguments, after the drives.
    pub args: Vec<String>,
    /// QEMU's user-mode network (forwards from 127.0.0.1 only, guest isolated), or none.
    pub net: Option<UserNet>,
}

impl VmSpec {
    pub fn new(firmware: Firmware) -> Self {
        VmSpec {
            firmware,
            memory_mib: 1536,
            drives: Vec::new(),
            fw_cfg: Vec::new(),
            args: Vec::new(),
            // Isolated as `kiln run` is: the guest reaches its forwards, DHCP and TFTP of the
            // user-mode stack, and nothing else.
            net: Some(UserNet {
                restrict: true,
                ..UserNet::default()
            }),
        }
    }

    /// A virtio disk; `snapshot` keeps the file unchanged.
    pub fn disk(mut self, path: &Path, format: &str, snapshot: bool) -> Self {
        self.drives.push(qemu::Drive::Disk {
            path: path.to_path_buf(),
            format: format.into(),
            snapshot,
        });
        self
    }

    pub fn cdrom(mut self, iso: &Path) -> Self {
        self.drives.push(qemu::Drive::Cdrom(iso.to_path_buf()));
        self
    }

    pub fn fw_cfg_file(mut self, name: &str, file: &Path) -> Self {
        self.fw_cfg.push((name.into(), file.to_path_buf()));
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    /// The machine as the builder's QEMU command line sees it, with its console, monitor
    /// and variable store in `dir`.
    fn machine(&self, dir: &Path) -> qemu::VmSpec {
        let firmware = match self.firmware {
            Firmware::Bios => qemu::Firmware::Bios,
            Firmware::Uefi => qemu::Firmware::Uefi {
                vars: dir.join("OVMF_VARS.fd"),
            },
        };
        let mut m = qemu::VmSpec::new(
            self.memory_mib,
            firmware,
            dir.join("serial.log"),
            dir.join("monitor.sock"),
        );
        m.drives = self.drives.clone();
        m.fw_cfg = self.fw_cfg.clone();
        m.net = self.net.clone();
        m.extra = self.args.clone();
        m
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
        let machine = spec.machine(dir.path());
        machine.firmware.fresh_vars()?;
        let mut c = Command::new("qemu-system-x86_64");
        c.args(machine.argv())
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

    /// [`Vm::wait_for`], panicking with the console's tail when `needle` does not come.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Duration {
        self.wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("waiting for {needle:?}: {e}"))
    }

    /// The first console line containing `needle`, from `needle` on (the kernel's and
    /// systemd's prefixes dropped).
    pub fn line(&self, needle: &str) -> Option<String> {
        let serial = self.serial();
        let l = serial.lines().find(|l| l.contains(needle))?;
        Some(l[l.find(needle).unwrap_or(0)..].trim_end().to_string())
    }

    /// Boots to the end: waits until QEMU exits by itself (a guest that powers off, with
    /// `-no-reboot`), or kills it after `timeout`; returns the console.
    pub fn run_to_exit(spec: &VmSpec, name: &str, timeout: Duration) -> String {
        let mut vm = Vm::start(spec).unwrap_or_else(|e| panic!("{name}: starting QEMU: {e}"));
        let ended = vm.wait_exit(timeout);
        eprintln!(
            "{name}: {:.1} s, {}",
            vm.elapsed().as_secs_f64(),
            match &ended {
                Ok(()) => "QEMU exited".to_string(),
                Err(e) => e.clone(),
            }
        );
        vm.kill();
        vm.serial()
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

/// Asserts the kernel command line (`cmdline`, a console line) has the serial console and
/// each of `args`.
pub fn assert_cmdline(name: &str, cmdline: &str, args: &[&str]) {
    for arg in ["console=tty0", "console=ttyS0,115200"].iter().chain(args) {
        assert!(
            cmdline.contains(arg),
            "{name}: {arg} missing from the command line {cmdline:?}"
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
