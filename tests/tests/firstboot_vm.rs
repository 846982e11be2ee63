//! firstboot in real QEMU boots of the minimal image (issue 9): the hostname from fw_cfg,
//! a NoCloud seed made by `cloud-localds` and the kernel command line, with their
//! precedence; malformed config in each source; identity and /var kept across a reboot;
//! a grown disk; a power cut during the first boot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_tests::images::minimal;
use kiln_tests::qemu::{Firmware, Vm, VmSpec};
use kiln_tests::run;

/// One boot to the login prompt under TCG on a busy machine.
const BOOT: Duration = Duration::from_secs(300);

/// A copy-on-write overlay over the built qcow2, so the build stays pristine.
fn overlay(dir: &Path) -> PathBuf {
    let o = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(minimal().qcow2())
        .arg(&o));
    o
}

/// A fw_cfg config file with `toml` in it.
fn fw_cfg_file(dir: &Path, toml: &str) -> PathBuf {
    let f = dir.join("fw_cfg.toml");
    std::fs::write(&f, toml).expect("writing the fw_cfg file");
    f
}

/// A NoCloud seed image made by cloud-localds (the real tool).
fn seed(dir: &Path, user_data: &str, meta_data: &str) -> PathBuf {
    let (ud, md, img) = (
        dir.join("user-data"),
        dir.join("meta-data"),
        dir.join("seed.img"),
    );
    std::fs::write(&ud, user_data).expect("writing user-data");
    std::fs::write(&md, meta_data).expect("writing meta-data");
    run(Command::new("cloud-localds").arg(&img).arg(&ud).arg(&md));
    img
}

/// Boots the kernel and initramfs of the PXE bundle directly with `append`, the disk
/// attached (stage 1 finds root slot a on it).
fn direct_kernel(disk: &Path, snapshot: bool, append: &str) -> VmSpec {
    let pxe = minimal().pxe();
    let mut spec = VmSpec::new(Firmware::Bios)
        .disk(disk, "qcow2", snapshot)
        .arg("-kernel")
        .arg(&pxe.join("vmlinuz").to_string_lossy())
        .arg("-initrd")
        .arg(&pxe.join("initramfs").to_string_lossy())
        .arg("-append")
        .arg(&format!("console=ttyS0,115200 kiln.slot=a {append}"));
    spec.memory_mib = 2048;
    spec
}

fn with_seed(spec: VmSpec, seed: &Path) -> VmSpec {
    spec.arg("-drive").arg(&format!(
        "file={},format=raw,if=virtio,readonly=on",
        seed.display()
    ))
}

/// The agent's summary line (`kiln: hostname ...`).
fn summary(vm: &Vm) -> String {
    vm.line("kiln: hostname ").unwrap_or_default()
}

/// Boots to the login prompt of `host`; returns the summary line. Checks the summary
/// names `host` and the login prompt is `host login:`.
fn boot_to_login(vm: &mut Vm, name: &str, host: &str) -> String {
    let sum_at = vm.expect("kiln: machine-id ", BOOT);
    let login_at = vm.expect(" login:", BOOT);
    let s = summary(vm);
    assert!(
        s.starts_with(&format!("kiln: hostname {host}, ")),
        "{name}: summary {s:?}\n{}",
        vm.tail(80)
    );
    let prompt = format!("{host} login:");
    assert!(
        vm.serial().lines().any(|l| l
            .trim_start_matches(|c: char| c.is_control() || c == ' ')
            .starts_with(&prompt)),
        "{name}: no \"{host} login:\"\n{}",
        vm.tail(80)
    );
    assert!(
        !vm.serial().contains("kiln: stage 1 failed"),
        "{name}\n{}",
        vm.tail(80)
    );
    eprintln!(
        "{name}: summary at {:.1} s, login at {:.1} s",
        sum_at.as_secs_f64(),
        login_at.as_secs_f64()
    );
    s
}

/// `kiln: machine-id <id>, first boot yes|no` -> (id, first boot).
fn identity(vm: &Vm) -> (String, bool) {
    let serial = vm.serial();
    let line = serial
        .lines()
        .find_map(|l| l.split_once("kiln: machine-id ").map(|(_, r)| r.trim_end()))
        .unwrap_or_else(|| panic!("no machine-id line\n{}", vm.tail(80)));
    let (id, first) = line
        .split_once(", first boot ")
        .unwrap_or_else(|| panic!("bad machine-id line {line:?}"));
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "machine-id {id:?}"
    );
    (id.to_string(), first == "yes")
}

/// The sources list of a summary line.
fn sources(summary: &str) -> &str {
    summary
        .split_once(", sources ")
        .map(|(_, r)| r.rsplit_once(", ").map_or(r, |(s, _)| s))
        .unwrap_or("")
}

fn powerdown(vm: &mut Vm) {
    vm.monitor("system_powerdown").expect("QEMU monitor");
    if vm.wait_exit(Duration::from_secs(20)).is_ok() {
        return;
    }
    // The minimal image has no logind (no D-Bus), so nothing acts on the ACPI power
    // button: sync, remount read-only and power off through magic SysRq instead.
    eprintln!("system_powerdown ignored by the guest; powering off with SysRq s, u, o");
    for key in ["s", "u", "o"] {
        vm.monitor(&format!("sendkey alt-sysrq-{key}"))
            .expect("QEMU monitor");
        std::thread::sleep(Duration::from_secs(3));
    }
    vm.wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("powerdown: {e}"));
}

/// The `(X, Y)` of `kiln: stage 1: kiln-data grown from X to Y MiB`.
fn growth(serial: &str) -> Option<(u64, u64)> {
    let l = serial
        .lines()
        .find(|l| l.contains("kiln-data grown from "))?;
    let rest = l.split_once("kiln-data grown from ")?.1;
    let (x, rest) = rest.split_once(" to ")?;
    let y = rest.split_once(" MiB")?.0;
    Some((x.parse().ok()?, y.parse().ok()?))
}

#[test]
fn fw_cfg_hostname_survives_reboot_with_identity_and_var_and_grown_disk() {
    let t = tempfile::tempdir().unwrap();
    let disk = overlay(t.path());
    let fw = fw_cfg_file(t.path(), "hostname = \"fwcfg-node\"\n");
    let spec = VmSpec::new(Firmware::Bios)
        .disk(&disk, "qcow2", false)
        .fw_cfg_file("opt/kiln/config", &fw);

    // First boot: the data partition is created, the hostname comes from fw_cfg.
    let mut vm = Vm::start(&spec).unwrap();
    let s = boot_to_login(&mut vm, "boot 1", "fwcfg-node");
    assert_eq!(sources(&s), "fw_cfg", "{s}");
    assert!(
        vm.serial().contains("/var kiln-data created (vda5)"),
        "{}",
        vm.tail(80)
    );
    let (id1, first1) = identity(&vm);
    assert!(first1, "first boot not reported as such\n{}", vm.tail(80));
    powerdown(&mut vm);
    drop(vm);

    // The disk grows by 2 GiB while the machine is off.
    run(Command::new("qemu-img")
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("+2G"));

    // Second boot: same disk, same fw_cfg. /var is found (and grown), not created; the
    // machine-id and first-boot marker (both on /var) are kept.
    let mut vm = Vm::start(&spec).unwrap();
    let s = boot_to_login(&mut vm, "boot 2", "fwcfg-node");
    assert_eq!(sources(&s), "fw_cfg", "{s}");
    let serial = vm.serial();
    assert!(
        !serial.contains("kiln-data created"),
        "data partition recreated\n{}",
        vm.tail(80)
    );
    assert!(
        serial.contains("/var kiln-data grown (vda5)"),
        "{}",
        vm.tail(80)
    );
    let (x, y) = growth(&serial).unwrap_or_else(|| panic!("no growth line\n{}", vm.tail(80)));
    assert!(y >= x + 2000, "kiln-data grew from {x} to {y} MiB only");
    eprintln!("boot 2: kiln-data grown from {x} to {y} MiB");
    let (id2, first2) = identity(&vm);
    assert_eq!(id2, id1, "machine-id changed across a reboot");
    assert!(!first2, "second boot reported as a first boot");
    powerdown(&mut vm);
}

#[test]
fn power_cut_during_first_boot_then_first_boot_completes() {
    let t = tempfile::tempdir().unwrap();
    let disk = overlay(t.path());
    let fw = fw_cfg_file(t.path(), "hostname = \"cut-node\"\n");
    let spec = VmSpec::new(Firmware::Bios)
        .disk(&disk, "qcow2", false)
        .fw_cfg_file("opt/kiln/config", &fw);

    // Cut the power in stage 1, right after the data partition was made and mounted.
    let mut vm = Vm::start(&spec).unwrap();
    vm.expect("kiln: stage 1: root slot-a, /var kiln-data created", BOOT);
    vm.kill();
    drop(vm);

    // Then again while systemd starts, before the agent reports.
    let mut vm = Vm::start(&spec).unwrap();
    vm.expect("kiln: stage 1: root slot-a, /var kiln-data ", BOOT);
    vm.expect("switching root", BOOT);
    std::thread::sleep(Duration::from_secs(3));
    vm.kill();
    assert!(
        !vm.serial().contains("kiln: hostname "),
        "the agent finished before the kill: move the kill earlier\n{}",
        vm.tail(80)
    );
    drop(vm);

    // Next boot: the first boot runs again to completion.
    let mut vm = Vm::start(&spec).unwrap();
    let s = boot_to_login(&mut vm, "after the cut", "cut-node");
    assert!(s.ends_with(", 0 problems"), "{s}\n{}", vm.tail(80));
    let (_, first) = identity(&vm);
    assert!(
        first,
        "the interrupted first boot was not redone\n{}",
        vm.tail(80)
    );
    powerdown(&mut vm);

    // And it was recorded: the boot after that is not a first boot.
    let mut vm = Vm::start(&spec).unwrap();
    boot_to_login(&mut vm, "third boot", "cut-node");
    assert!(!identity(&vm).1, "first boot not marked\n{}", vm.tail(80));
}

#[test]
fn cmdline_beats_nocloud_beats_fw_cfg() {
    let t = tempfile::tempdir().unwrap();
    let fw = fw_cfg_file(t.path(), "hostname = \"fw-host\"\n");
    let seed = seed(
        t.path(),
        "#cloud-config\n",
        "instance-id: i-kiln-test\nlocal-hostname: nocloud-host\n",
    );
    let spec = with_seed(
        direct_kernel(&minimal().qcow2(), true, "kiln.hostname=cmdline-host"),
        &seed,
    )
    .fw_cfg_file("opt/kiln/config", &fw);
    let mut vm = Vm::start(&spec).unwrap();
    let s = boot_to_login(&mut vm, "all three", "cmdline-host");
    assert_eq!(sources(&s), "fw_cfg, nocloud, cmdline", "{s}");
    assert!(s.ends_with(", 0 problems"), "{s}");
}

#[test]
fn nocloud_beats_fw_cfg() {
    let t = tempfile::tempdir().unwrap();
    let fw = fw_cfg_file(t.path(), "hostname = \"fw-host\"\n");
    let seed = seed(
        t.path(),
        "#cloud-config\n",
        "instance-id: i-kiln-test\nlocal-hostname: nocloud-host\n",
    );
    let spec = with_seed(
        VmSpec::new(Firmware::Bios).disk(&minimal().qcow2(), "qcow2", true),
        &seed,
    )
    .fw_cfg_file("opt/kiln/config", &fw);
    let mut vm = Vm::start(&spec).unwrap();
    let s = boot_to_login(&mut vm, "fw_cfg + nocloud", "nocloud-host");
    assert_eq!(sources(&s), "fw_cfg, nocloud", "{s}");
}

#[test]
fn malformed_config_in_every_source_falls_back_and_names_source_and_key() {
    let t = tempfile::tempdir().unwrap();
    let fw = fw_cfg_file(t.path(), "hostname = \"bad_fw!\"\nno-such-key = 1\n");
    let seed = seed(
        t.path(),
        "#kiln-config\nhostname = \"bad_nocloud!\"\n",
        "instance-id: i-kiln-test\n",
    );
    let spec = with_seed(
        direct_kernel(&minimal().qcow2(), true, "kiln.hostname=bad_name!"),
        &seed,
    )
    .fw_cfg_file("opt/kiln/config", &fw);
    let mut vm = Vm::start(&spec).unwrap();
    let s = boot_to_login(&mut vm, "malformed", "kiln");
    assert!(s.ends_with(", 4 problems"), "{s}\n{}", vm.tail(80));
    let serial = vm.serial();
    for prefix in [
        "kiln: problem: fw_cfg: hostname: ",
        "kiln: problem: fw_cfg: no-such-key: ",
        "kiln: problem: nocloud: hostname: ",
        "kiln: problem: cmdline: hostname: ",
    ] {
        assert!(
            serial.contains(prefix),
            "no {prefix:?} on the console\n{}",
            vm.tail(80)
        );
    }
}
