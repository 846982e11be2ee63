//! Real boots under QEMU (TCG): each boot path must reach the test init in the
//! initramfs, which loads the whole modules.load closure with insmod and prints a
//! marker on the serial console. Slow (tens of seconds each).

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln::qemu;
use kiln_tests::boot::{outputs, INIT_REACHED};

const TIMEOUT: Duration = Duration::from_secs(240);

enum Firmware {
    SeaBios,
    Ovmf,
}

/// Runs QEMU until it exits (the init powers off) or the timeout; returns the serial log.
fn boot(name: &str, fw: Firmware, args: &[&str]) -> String {
    let work = tempfile::tempdir().expect("tmp");
    let log = work.path().join("serial.log");
    let firmware = match fw {
        Firmware::SeaBios => qemu::Firmware::Bios,
        Firmware::Ovmf => qemu::Firmware::Uefi {
            vars: work.path().join("OVMF_VARS.fd"),
        },
    };
    firmware.fresh_vars().expect("ovmf vars");
    let mut spec = qemu::VmSpec::new(1024, firmware, &log, work.path().join("monitor.sock"));
    spec.extra = ["-no-reboot"]
        .iter()
        .chain(args)
        .map(|a| a.to_string())
        .collect();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(spec.argv());
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("qemu-system-x86_64 installed");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let serial = fs::read(&log).unwrap_or_default();
    let serial = String::from_utf8_lossy(&serial).into_owned();
    eprintln!(
        "{name}: {:.1} s, status {status:?}, qemu stderr: {err}",
        start.elapsed().as_secs_f64()
    );
    serial
}

fn check(name: &str, serial: &str, cmdline_arg: &str) {
    let tail: String = serial
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        serial.contains(INIT_REACHED),
        "{name}: init not reached:\n{tail}"
    );
    assert!(
        !serial.contains("kiln: FAILED"),
        "{name}: a module failed:\n{tail}"
    );
    let expected = outputs().initramfs_report.modules.len();
    assert!(
        serial.contains(&format!("kiln: loaded {expected} modules")),
        "{name}: expected {expected} modules loaded:\n{tail}"
    );
    let cmdline = serial
        .lines()
        .find(|l| l.contains("kiln: cmdline"))
        .unwrap_or_default();
    for arg in ["console=tty0", "console=ttyS0,115200", cmdline_arg] {
        assert!(cmdline.contains(arg), "{name}: {arg} missing in {cmdline}");
    }
}

fn disk_args(qcow2: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "file={},format=qcow2,if=virtio,snapshot=on",
            qcow2.display()
        ),
    ]
}

#[test]
fn qcow2_boots_with_seabios() {
    let args = disk_args(&outputs().qcow2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serial = boot("qcow2+SeaBIOS", Firmware::SeaBios, &args);
    check("qcow2+SeaBIOS", &serial, "kiln.slot=a");
}

#[test]
fn qcow2_boots_with_ovmf() {
    let args = disk_args(&outputs().qcow2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serial = boot("qcow2+OVMF", Firmware::Ovmf, &args);
    check("qcow2+OVMF", &serial, "kiln.slot=a");
}

fn cd_args(iso: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},media=cdrom,if=ide,readonly=on", iso.display()),
        "-boot".into(),
        "d".into(),
    ]
}

#[test]
fn iso_boots_as_cdrom_with_seabios() {
    let args = cd_args(&outputs().iso);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serial = boot("ISO+SeaBIOS", Firmware::SeaBios, &args);
    check("ISO+SeaBIOS", &serial, "kiln.root=iso");
}

#[test]
fn iso_boots_as_cdrom_with_ovmf() {
    let args = cd_args(&outputs().iso);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let serial = boot("ISO+OVMF", Firmware::Ovmf, &args);
    check("ISO+OVMF", &serial, "kiln.root=iso");
}

#[test]
fn pxe_boots_through_ipxe_and_user_mode_tftp() {
    let dir = &outputs().pxe;
    let netdev = format!("user,id=n0,tftp={},bootfile=boot.ipxe", dir.display());
    let serial = boot(
        "PXE",
        Firmware::SeaBios,
        &[
            "-netdev",
            &netdev,
            "-device",
            "virtio-net-pci,netdev=n0",
            "-boot",
            "n",
        ],
    );
    check("PXE", &serial, "kiln.root=embedded");
    assert!(serial.contains("kiln: embedded root present"), "{serial}");
}
