//! The unattended installer (issue 8) in QEMU (TCG) with the minimal image.
//!
//! - PXE: QEMU's iPXE gets a one-line script over user-mode TFTP that chains
//!   `boot-install.ipxe` over HTTP from a server on 127.0.0.1 (reached through a
//!   `guestfwd`, `restrict=on`: no other traffic); kernel, installer initramfs and the
//!   install payload come over HTTP. `kiln.install=auto` writes the image to an empty,
//!   larger virtio disk, the VM reboots, SeaBIOS boots the disk (the network is second in
//!   the boot order), and the installed system reaches its login prompt with the hostname
//!   from fw_cfg. The disk's BIOS boot, ESP and root-a partitions match the built raw.
//! - Refusals, booting the installer directly (`-kernel`/`-initrd`): a disk with a
//!   filesystem and no wipe, a selector matching nothing, a payload with a wrong sha256.
//!   Each disk file is unchanged afterwards.
//! - ISO under UEFI: the "Install to disk" entry of the ISO's GRUB menu (chosen with the
//!   arrow key through the QEMU monitor) installs to an empty disk and adds a UEFI boot
//!   entry; the CD stays first in the boot order, and the reboot still comes up from the
//!   disk.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_tests::images::minimal;
use kiln_tests::mirror::{Behaviour, Mirror};
use kiln_tests::qemu::{Firmware, Vm, VmSpec};
use kiln_tests::run;
use sha2::{Digest as _, Sha256};

const LONG: Duration = Duration::from_secs(600);

fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(p).expect("open");
    std::io::copy(&mut f, &mut h).expect("hash");
    hex::encode(h.finalize())
}

/// sha256 of `len` bytes at `offset` of `p`.
fn sha256_range(p: &Path, offset: u64, len: u64) -> String {
    let mut f = std::fs::File::open(p).expect("open");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f.take(len), &mut h).expect("hash");
    assert_eq!(n, len, "{} is shorter than {}", p.display(), offset + len);
    hex::encode(h.finalize())
}

/// (name, start byte, size in bytes) of every partition, from sfdisk.
fn partitions(raw: &Path) -> (Vec<(String, u64, u64)>, u64) {
    let j: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(raw)))
            .expect("sfdisk json");
    let t = &j["partitiontable"];
    let parts = t["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["start"].as_u64().expect("start") * 512,
                p["size"].as_u64().expect("size") * 512,
            )
        })
        .collect();
    (parts, t["lastlba"].as_u64().expect("lastlba"))
}

fn empty_qcow2(dir: &Path, name: &str, size: &str) -> PathBuf {
    let p = dir.join(name);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&p)
        .arg(size));
    p
}

/// The `kiln.install.sha256=` value in the bundle's script.
fn script_sha(pxe: &Path) -> String {
    let s = std::fs::read_to_string(pxe.join("boot-install.ipxe")).expect("boot-install.ipxe");
    s.split_whitespace()
        .find_map(|w| w.strip_prefix("kiln.install.sha256="))
        .expect("kiln.install.sha256 in boot-install.ipxe")
        .to_string()
}

/// `spec` with `disk` (qcow2) as a virtio disk, `opts` added to its device
/// (`bootindex=1,serial=...`); started with 2 GiB and no network of its own.
fn start_with_disk(spec: VmSpec, disk: &Path, opts: &str) -> Vm {
    let mut spec = spec
        .arg("-drive")
        .arg(&format!(
            "file={},format=qcow2,if=none,id=d0",
            disk.display()
        ))
        .arg("-device")
        .arg(&format!("virtio-blk-pci,drive=d0,{opts}"));
    spec.net = None;
    spec.memory_mib = 2048;
    Vm::start(&spec).expect("qemu starts")
}

#[test]
fn pxe_install_to_an_empty_disk_then_boot_it() {
    let b = minimal();
    let pxe = b.pxe();
    let script = std::fs::read_to_string(pxe.join("boot-install.ipxe")).expect("script");
    assert!(script.contains(" kiln.install=auto "), "{script}");
    let files = [
        "boot-install.ipxe",
        "vmlinuz",
        "installer.initramfs",
        "install.cpio",
    ];
    let mirror = Mirror::start(files.map(|f| {
        (
            format!("/{f}"),
            Behaviour::Serve(std::fs::read(pxe.join(f)).expect("bundle file")),
        )
    }))
    .expect("http server");
    let port = mirror
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();

    let t = tempfile::tempdir().expect("tmp");
    let tftp = t.path().join("tftp");
    std::fs::create_dir(&tftp).expect("mkdir");
    std::fs::write(
        tftp.join("chain.ipxe"),
        "#!ipxe\nchain http://10.0.2.100/boot-install.ipxe\n",
    )
    .expect("chain script");
    // Larger than the image (8 GiB): the backup GPT moves, kiln-data gets the rest.
    let target = empty_qcow2(t.path(), "target.qcow2", "10G");
    let fw = t.path().join("fw.toml");
    std::fs::write(&fw, "hostname = \"installed-node\"\n").expect("fw_cfg");
    let spec = VmSpec::new(Firmware::Bios)
        .fw_cfg_file("opt/kiln/config", &fw)
        .arg("-netdev")
        .arg(&format!(
            "user,id=n1,restrict=on,tftp={},bootfile=chain.ipxe,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:{port}",
            tftp.display()
        ))
        .arg("-device")
        .arg("virtio-net-pci,netdev=n1,bootindex=2");
    let mut vm = start_with_disk(spec, &target, "bootindex=1,serial=KILN-TARGET");
    let started = vm.expect("kiln: install: payload ", LONG);
    let done = vm.expect("kiln: install: rebooting into the installed disk", LONG);
    let login = vm.expect("installed-node login:", LONG);
    let serial = vm.serial();
    vm.kill();
    let lines: Vec<&str> = serial
        .lines()
        .filter(|l| l.contains("kiln: install:"))
        .collect();
    eprintln!("{}", lines.join("\n"));
    eprintln!(
        "installer stage 1 at {:.0} s, installed at {:.0} s, login on the disk at {:.0} s",
        started.as_secs_f64(),
        done.as_secs_f64(),
        login.as_secs_f64()
    );
    assert!(mirror.requests("/install.cpio") >= 1, "{:?}", mirror.seen());
    for want in [
        "/dev/vda 10.0 GiB model - serial \"KILN-TARGET\" partition table none: matches",
        "payload sha256 matches",
        "backup GPT moved to the end of the disk",
        "kiln: install: wrote ",
        "kiln: install: verified: read-back sha256",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{want:?} not in {lines:#?}"
        );
    }
    // The second boot came from the disk: GRUB's slot a entry, no installer.
    let cmdlines: Vec<&str> = serial
        .lines()
        .filter(|l| l.contains("Command line:"))
        .collect();
    let last = cmdlines.last().expect("a kernel command line");
    assert!(cmdlines.len() >= 2, "{cmdlines:?}");
    assert!(
        last.contains("kiln.slot=a") && !last.contains("kiln.install"),
        "{last}"
    );
    assert!(!serial.contains("kiln: stage 1 failed"), "{}", serial);

    // The installed disk against the built raw image.
    let installed = t.path().join("installed.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(&target)
        .arg(&installed));
    let (built, _) = partitions(&b.raw());
    let (got, lastlba) = partitions(&installed);
    assert_eq!(
        lastlba,
        (10u64 << 30) / 512 - 34,
        "backup GPT at the new end"
    );
    let names: Vec<&str> = got.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        ["BIOS", "ESP", "kiln-root-a", "kiln-root-b", "kiln-data"],
        "first boot created kiln-data"
    );
    for (name, start, size) in &built {
        if name == "kiln-root-b" {
            continue;
        }
        assert!(got.contains(&(name.clone(), *start, *size)), "{name} moved");
        assert_eq!(
            sha256_range(&installed, *start, *size),
            sha256_range(&b.raw(), *start, *size),
            "partition {name} differs from the built image"
        );
    }
    run(Command::new("sfdisk").arg("--verify").arg(&installed));
}

/// The installer booted directly: the bundle's kernel, its installer initramfs with the
/// payload cpio appended (what a boot loader does with two initrds), `append` added.
fn installer_vm(dir: &Path, disk: &Path, append: &str) -> Vm {
    let pxe = minimal().pxe();
    let initrd = dir.join("installer+payload");
    if !initrd.exists() {
        let mut bytes = std::fs::read(pxe.join("installer.initramfs")).expect("initramfs");
        while !bytes.len().is_multiple_of(4) {
            bytes.push(0);
        }
        bytes.extend(std::fs::read(pxe.join("install.cpio")).expect("payload"));
        std::fs::write(&initrd, bytes).expect("initrd");
    }
    let spec = VmSpec::new(Firmware::Bios)
        .arg("-kernel")
        .arg(&pxe.join("vmlinuz").to_string_lossy())
        .arg("-initrd")
        .arg(&initrd.to_string_lossy())
        .arg("-append")
        .arg(&format!("console=ttyS0,115200 {append}"));
    start_with_disk(spec, disk, "serial=KILN-DISK")
}

fn refused(vm: &mut Vm, needles: &[&str]) -> String {
    vm.expect("kiln: stage 1: waiting", LONG);
    let serial = vm.serial();
    vm.kill();
    for n in needles {
        assert!(serial.contains(n), "{n:?} not on the console:\n{serial}");
    }
    assert!(!serial.contains("kiln: install: wrote "), "{serial}");
    serial
}

#[test]
fn installer_refuses_filesystems_unmatched_selectors_and_bad_payloads() {
    let b = minimal();
    let sha = script_sha(&b.pxe());
    let t = tempfile::tempdir().expect("tmp");
    let t0 = Instant::now();

    // A disk holding ext4 and no kiln.install.wipe: listed, chosen, refused, untouched.
    let raw = t.path().join("ext4.raw");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(9 << 30))
        .expect("raw");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&raw));
    let ext4 = t.path().join("ext4.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&ext4));
    std::fs::remove_file(&raw).expect("rm");
    let before = sha256_file(&ext4);
    let mut vm = installer_vm(
        t.path(),
        &ext4,
        &format!("kiln.install=auto kiln.install.sha256={sha}"),
    );
    refused(
        &mut vm,
        &[
            "serial \"KILN-DISK\" partition table none, holds ext4 (whole disk): matches",
            "/dev/vda holds ext4 (whole disk); not overwritten without kiln.install.wipe=true",
        ],
    );
    assert_eq!(sha256_file(&ext4), before, "the ext4 disk was modified");
    eprintln!("ext4 refusal: {:.0} s", t0.elapsed().as_secs_f64());

    // A selector that matches nothing: every disk listed with the reason.
    let blank = empty_qcow2(t.path(), "blank.qcow2", "9G");
    let before = sha256_file(&blank);
    let mut vm = installer_vm(
        t.path(),
        &blank,
        &format!("kiln.install=size>=20G,serial=NOPE* kiln.install.sha256={sha}"),
    );
    refused(
        &mut vm,
        &[
            "disks seen for kiln.install=size>=20G,serial=NOPE* (image needs 8.0 GiB):",
            "/dev/vda 9.0 GiB model - serial \"KILN-DISK\" partition table none: ruled out: size 9.0 GiB < 20.0 GiB; serial \"KILN-DISK\" is not \"NOPE*\"",
            "no disk matches kiln.install=",
        ],
    );
    assert_eq!(sha256_file(&blank), before);
    eprintln!("no match: {:.0} s", t0.elapsed().as_secs_f64());

    // A payload whose sha256 is not the one on the command line: refused before writing.
    let wrong: String = sha
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let mut vm = installer_vm(
        t.path(),
        &blank,
        &format!("kiln.install=/dev/vda kiln.install.sha256={wrong}"),
    );
    refused(
        &mut vm,
        &[&format!(
            "checking the payload: its sha256 is {sha} but kiln.install.sha256 is {wrong}: refused, nothing written"
        )],
    );
    assert_eq!(sha256_file(&blank), before);
    eprintln!("wrong sha256: {:.0} s", t0.elapsed().as_secs_f64());
}

#[test]
fn iso_install_to_disk_entry() {
    let b = minimal();
    let t = tempfile::tempdir().expect("tmp");
    // The entry and the payload on the ISO, read with xorriso.
    let cfg = t.path().join("grub.cfg");
    let cpio = t.path().join("install.cpio");
    run(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(b.iso())
        .args(["-extract", "/boot/grub/grub.cfg"])
        .arg(&cfg)
        .args(["-extract", "/kiln/install.cpio"])
        .arg(&cpio));
    let menu = std::fs::read_to_string(&cfg).expect("grub.cfg");
    let sha = script_sha(&b.pxe());
    assert!(
        menu.contains(&format!("kiln.install=auto kiln.install.sha256={sha}"))
            && menu.contains("initrd /kiln/initramfs /kiln/install.cpio"),
        "{menu}"
    );
    assert_eq!(
        sha256_file(&cpio),
        sha256_file(&b.pxe().join("install.cpio")),
        "the ISO and the PXE bundle carry the same payload"
    );

    // UEFI, and the CD stays first in the firmware's boot order: only the installer's
    // UEFI boot entry (BootNext) makes the reboot come up from the disk.
    let target = empty_qcow2(t.path(), "target.qcow2", "9G");
    let spec = VmSpec::new(Firmware::Uefi)
        .arg("-drive")
        .arg(&format!(
            "file={},format=raw,if=none,id=cd,media=cdrom,readonly=on",
            b.iso().display()
        ))
        .arg("-device")
        .arg("ide-cd,drive=cd,bootindex=1");
    let mut vm = start_with_disk(spec, &target, "bootindex=2");
    // Arrow-down until GRUB's menu is on the console, then once more: keys typed before
    // GRUB reads its input may be dropped, and the menu does not wrap past its last
    // entry. The key stops the countdown (5 s with an install entry); then Enter.
    let deadline = Instant::now() + LONG;
    while !vm.serial().contains("to disk") {
        assert!(Instant::now() < deadline, "no GRUB menu\n{}", vm.tail(40));
        let _ = vm.monitor("sendkey down");
    }
    vm.monitor("sendkey down").expect("monitor");
    std::thread::sleep(Duration::from_millis(500));
    vm.monitor("sendkey ret").expect("monitor");
    let done = vm.expect("kiln: install: rebooting into the installed disk", LONG);
    let booted = vm.expect("kiln: stage 1: root slot-a", LONG);
    let serial = vm.serial();
    vm.kill();
    eprintln!(
        "ISO: installed at {:.0} s, stage 1 from the disk at {:.0} s",
        done.as_secs_f64(),
        booted.as_secs_f64()
    );
    for want in [
        "kiln: install: verified: read-back sha256",
        "kiln: install: UEFI boot entry Boot",
    ] {
        assert!(serial.contains(want), "{want:?} not in\n{serial}");
    }
    let entry = serial
        .lines()
        .find(|l| l.contains("UEFI boot entry"))
        .unwrap_or_default();
    eprintln!("{}", entry.trim());
    assert!(
        entry.contains("\"Kiln (vda)\" (added), BootNext="),
        "{entry}"
    );
    let cmdlines: Vec<&str> = serial
        .lines()
        .filter(|l| l.contains("Command line:"))
        .collect();
    assert!(cmdlines[0].contains("kiln.install=auto"), "{cmdlines:?}");
    assert!(
        cmdlines.last().is_some_and(|l| l.contains("kiln.slot=a")),
        "{cmdlines:?}"
    );
}
