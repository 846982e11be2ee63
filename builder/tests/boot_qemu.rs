//! Real boots under QEMU (TCG): each boot path must reach the test init in the
//! initramfs, which loads the whole modules.load closure with insmod and prints a
//! marker on the serial console. Slow (tens of seconds each).

use std::time::Duration;

use kiln_tests::boot::{outputs, INIT_REACHED};
use kiln_tests::qemu::{assert_cmdline, Firmware, UserNet, Vm, VmSpec};

const TIMEOUT: Duration = Duration::from_secs(240);

/// Runs QEMU until it exits (the init powers off) or the timeout; returns the serial log.
fn boot(name: &str, mut spec: VmSpec) -> String {
    spec.memory_mib = 1024;
    Vm::run_to_exit(&spec.arg("-no-reboot"), name, TIMEOUT)
}

/// A machine with no network and nothing to boot yet.
fn machine(fw: Firmware) -> VmSpec {
    let mut spec = VmSpec::new(fw);
    spec.net = None;
    spec
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
    assert_cmdline(name, cmdline, &[cmdline_arg]);
}

#[test]
fn qcow2_boots_with_seabios() {
    let spec = machine(Firmware::Bios).disk(&outputs().qcow2, "qcow2", true);
    check("qcow2+SeaBIOS", &boot("qcow2+SeaBIOS", spec), "kiln.slot=a");
}

#[test]
fn qcow2_boots_with_ovmf() {
    let spec = machine(Firmware::Uefi).disk(&outputs().qcow2, "qcow2", true);
    check("qcow2+OVMF", &boot("qcow2+OVMF", spec), "kiln.slot=a");
}

#[test]
fn iso_boots_as_cdrom_with_seabios() {
    let spec = machine(Firmware::Bios).cdrom(&outputs().iso);
    check("ISO+SeaBIOS", &boot("ISO+SeaBIOS", spec), "kiln.root=iso");
}

#[test]
fn iso_boots_as_cdrom_with_ovmf() {
    let spec = machine(Firmware::Uefi).cdrom(&outputs().iso);
    check("ISO+OVMF", &boot("ISO+OVMF", spec), "kiln.root=iso");
}

#[test]
fn pxe_boots_through_ipxe_and_user_mode_tftp() {
    let mut spec = machine(Firmware::Bios).arg("-boot").arg("n");
    spec.net = Some(UserNet {
        restrict: true,
        tftp: Some((outputs().pxe.clone(), "boot.ipxe".into())),
        ..UserNet::default()
    });
    let serial = boot("PXE", spec);
    check("PXE", &serial, "kiln.root=embedded");
    assert!(serial.contains("kiln: embedded root present"), "{serial}");
}
