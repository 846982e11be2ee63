//! QEMU's command line from a description of the machine: where `kiln run` and the test
//! harness both get their argv. [`VmSpec::argv`] is pure; the one file this module writes
//! is a UEFI machine's fresh variable store ([`Firmware::fresh_vars`]).
//!
//! Networking is QEMU's user-mode stack only, and host forwards bind 127.0.0.1 by
//! construction ([`HostFwd`] has no address to get wrong).

use std::path::PathBuf;

/// OVMF firmware code (Debian's `ovmf` package).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// The OVMF variable store template; each VM boots with its own copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// Firmware to boot with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default, legacy BIOS).
    Bios,
    /// OVMF (UEFI) with `vars`, this VM's private copy of the variable store.
    Uefi { vars: PathBuf },
}

impl Firmware {
    /// Gives a UEFI machine a fresh copy of the variable store template (each start boots
    /// with its own, unchanged by earlier boots); nothing to do for BIOS.
    pub fn fresh_vars(&self) -> std::io::Result<()> {
        match self {
            Firmware::Bios => Ok(()),
            Firmware::Uefi { vars } => std::fs::copy(OVMF_VARS, vars).map(drop),
        }
    }
}

/// A drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// A virtio disk; `snapshot` keeps the file unchanged.
    Disk {
        path: PathBuf,
        format: String,
        snapshot: bool,
    },
    /// A read-only CD-ROM, booted first (`-boot d`).
    Cdrom(PathBuf),
}

/// Direct kernel boot (`-kernel`, `-initrd`, `-append`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

/// A TCP port of the guest forwarded from 127.0.0.1 on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    pub host_port: u16,
    pub guest_port: u16,
}

/// QEMU's user-mode network on a virtio NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNet {
    /// Isolate the guest: it reaches nothing but its forwards (`restrict=on`).
    pub restrict: bool,
    pub hostfwd: Vec<HostFwd>,
    /// TFTP root and boot file, for PXE.
    pub tftp: Option<(PathBuf, String)>,
}

/// The machine to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// `tcg` (software emulation) or `kvm`.
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u32,
    pub firmware: Firmware,
    /// File that receives the serial console.
    pub serial: PathBuf,
    /// Unix socket of the human monitor (`system_powerdown`, `quit`).
    pub monitor: PathBuf,
    /// An i6300esb watchdog, for systemd's RuntimeWatchdogSec.
    pub watchdog: bool,
    pub drives: Vec<Drive>,
    pub kernel: Option<Kernel>,
    /// `-fw_cfg name=NAME,file=FILE`.
    pub fw_cfg: Vec<(String, PathBuf)>,
    pub net: Option<UserNet>,
    /// Anything else, appended as given.
    pub extra: Vec<String>,
}

impl VmSpec {
    /// Software emulation with 2 CPUs, no drives, no network.
    pub fn new(
        memory_mib: u32,
        firmware: Firmware,
        serial: impl Into<PathBuf>,
        monitor: impl Into<PathBuf>,
    ) -> Self {
        VmSpec {
            accel: "tcg".into(),
            cpus: 2,
            memory_mib,
            firmware,
            serial: serial.into(),
            monitor: monitor.into(),
            watchdog: false,
            drives: Vec::new(),
            kernel: None,
            fw_cfg: Vec::new(),
            net: None,
            extra: Vec::new(),
        }
    }

    /// The arguments of `qemu-system-x86_64` for this machine.
    pub fn argv(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-accel", &self.accel, "-display", "none", "-nodefaults"]);
        push(&["-smp", &self.cpus.to_string()]);
        push(&["-m", &self.memory_mib.to_string()]);
        push(&["-serial", &format!("file:{}", self.serial.display())]);
        push(&[
            "-monitor",
            &format!("unix:{},server=on,wait=off", self.monitor.display()),
        ]);
        push(&["-device", "virtio-rng-pci"]);
        if self.watchdog {
            push(&["-device", "i6300esb"]);
        }
        for (name, file) in &self.fw_cfg {
            push(&["-fw_cfg", &format!("name={name},file={}", file.display())]);
        }
        if let Firmware::Uefi { vars } = &self.firmware {
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            ]);
            push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        for d in &self.drives {
            match d {
                Drive::Disk {
                    path,
                    format,
                    snapshot,
                } => {
                    let snap = if *snapshot { ",snapshot=on" } else { "" };
                    push(&[
                        "-drive",
                        &format!("file={},format={format},if=virtio{snap}", path.display()),
                    ]);
                }
                Drive::Cdrom(iso) => push(&[
                    "-drive",
                    &format!("file={},format=raw,media=cdrom,readonly=on", iso.display()),
                    "-boot",
                    "d",
                ]),
            }
        }
        if let Some(k) = &self.kernel {
            push(&["-kernel", &k.kernel.display().to_string()]);
            push(&["-initrd", &k.initrd.display().to_string()]);
            push(&["-append", &k.cmdline]);
        }
        if let Some(net) = &self.net {
            let mut n = format!(
                "user,id=n0,restrict={}",
                if net.restrict { "on" } else { "off" }
            );
            for f in &net.hostfwd {
                n.push_str(&format!(
                    ",hostfwd=tcp:127.0.0.1:{}-:{}",
                    f.host_port, f.guest_port
                ));
            }
            if let Some((root, file)) = &net.tftp {
                n.push_str(&format!(",tftp={},bootfile={file}", root.display()));
            }
            push(&["-netdev", &n, "-device", "virtio-net-pci,netdev=n0"]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_bare_machine_is_software_emulated_with_console_and_monitor() {
        let argv = VmSpec::new(1536, Firmware::Bios, "/s/serial.log", "/s/mon.sock").argv();
        assert_eq!(after(&argv, "-accel"), ["tcg"]);
        assert_eq!(after(&argv, "-smp"), ["2"]);
        assert_eq!(after(&argv, "-m"), ["1536"]);
        assert_eq!(after(&argv, "-serial"), ["file:/s/serial.log"]);
        assert_eq!(
            after(&argv, "-monitor"),
            ["unix:/s/mon.sock,server=on,wait=off"]
        );
        assert!(after(&argv, "-netdev").is_empty());
        assert!(after(&argv, "-drive").is_empty(), "BIOS needs no pflash");
        assert!(argv.contains(&"-nodefaults".to_string()));
    }

    #[test]
    fn uefi_disk_cdrom_kernel_fw_cfg_and_watchdog() {
        let mut s = VmSpec::new(
            4096,
            Firmware::Uefi {
                vars: "/s/VARS.fd".into(),
            },
            "/s/c",
            "/s/m",
        );
        s.watchdog = true;
        s.fw_cfg
            .push(("opt/kiln/config".into(), "/s/config.toml".into()));
        s.drives.push(Drive::Disk {
            path: "/i/a.qcow2".into(),
            format: "qcow2".into(),
            snapshot: true,
        });
        s.drives.push(Drive::Cdrom("/i/a.iso".into()));
        s.kernel = Some(Kernel {
            kernel: "/p/vmlinuz".into(),
            initrd: "/p/initrd".into(),
            cmdline: "console=ttyS0 kiln.x=1".into(),
        });
        s.extra = vec!["-no-reboot".into()];
        let argv = s.argv();
        assert_eq!(
            after(&argv, "-drive"),
            [
                format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}").as_str(),
                "if=pflash,format=raw,unit=1,file=/s/VARS.fd",
                "file=/i/a.qcow2,format=qcow2,if=virtio,snapshot=on",
                "file=/i/a.iso,format=raw,media=cdrom,readonly=on",
            ]
        );
        assert_eq!(after(&argv, "-boot"), ["d"]);
        assert_eq!(after(&argv, "-device"), ["virtio-rng-pci", "i6300esb"]);
        assert_eq!(
            after(&argv, "-fw_cfg"),
            ["name=opt/kiln/config,file=/s/config.toml"]
        );
        assert_eq!(after(&argv, "-kernel"), ["/p/vmlinuz"]);
        assert_eq!(after(&argv, "-initrd"), ["/p/initrd"]);
        assert_eq!(after(&argv, "-append"), ["console=ttyS0 kiln.x=1"]);
        assert_eq!(argv.last().map(String::as_str), Some("-no-reboot"));
    }

    #[test]
    fn user_network_forwards_only_from_loopback() {
        let mut s = VmSpec::new(1024, Firmware::Bios, "c", "m");
        s.net = Some(UserNet {
            restrict: true,
            hostfwd: vec![
                HostFwd {
                    host_port: 16443,
                    guest_port: 6443,
                },
                HostFwd {
                    host_port: 18080,
                    guest_port: 30080,
                },
            ],
            tftp: Some(("/t".into(), "boot.ipxe".into())),
        });
        let argv = s.argv();
        assert_eq!(
            after(&argv, "-netdev"),
            ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:16443-:6443,\
              hostfwd=tcp:127.0.0.1:18080-:30080,tftp=/t,bootfile=boot.ipxe"]
        );
        assert_eq!(
            after(&argv, "-device"),
            ["virtio-rng-pci", "virtio-net-pci,netdev=n0"]
        );
    }
}
