//! Boot outputs checked by host tools as oracles (unsquashfs, cpio, sfdisk, qemu-img,
//! xorriso), built twice for byte identity, and refused cleanly on bad inputs.

use std::fs;
use std::path::Path;

use kiln::outputs::boot::{self, disk, initramfs, BootError};
use kiln_tests::boot::{build_all, identity, kernel, outputs, tool, EPOCH};

#[test]
fn squashfs_keeps_owners_and_modes_from_the_tree() {
    let o = outputs();
    let ls = tool(
        "unsquashfs",
        &["-lln", "-d", "", o.squashfs.to_str().expect("utf8")],
    );
    let line = |suffix: &str| {
        ls.lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not listed:\n{ls}"))
            .to_string()
    };
    let shadow = line(" /etc/shadow");
    assert!(shadow.starts_with("-rw-r----- 0/42 "), "{shadow}");
    let home = line(" /home/user");
    assert!(home.starts_with("drwx------ 1000/1000 "), "{home}");
    let suid = line(" /usr/bin/sudo-ish");
    assert!(suid.starts_with("-rwsr-xr-x 0/0 "), "{suid}");
    let tmp = line(" /tmp");
    assert!(tmp.starts_with("drwxrwxrwt 0/0 "), "{tmp}");
    assert!(line(" /bin -> usr/bin").starts_with("lrwxrwxrwx 0/0 "));
    // Times come from the Tree: the one set explicitly, and the epoch for created dirs.
    assert!(
        line(" /etc/hostname").contains(" 2020-09-13 12:26 "),
        "{ls}"
    );
    assert!(line(" /usr/bin").contains(" 2023-11-14 22:13 "), "{ls}");
    let root = ls.lines().next().unwrap_or_default();
    assert!(root.starts_with("drwxr-xr-x 0/0 "), "{root}");
    let stat = tool("unsquashfs", &["-s", o.squashfs.to_str().expect("utf8")]);
    assert!(stat.contains("Compression zstd"), "{stat}");
    // One inode per Tree entry; the hard link shares its target's.
    let tree = kiln_tests::boot::root_tree();
    let links = tree
        .iter()
        .filter(|(_, e)| matches!(e.kind, kiln::tree::Kind::Hardlink(_)))
        .count();
    let inodes = format!("Number of inodes {}\n", tree.len() - links);
    assert!(stat.contains(&inodes), "{inodes}{stat}");
}

#[test]
fn initramfs_holds_init_modules_and_their_load_order() {
    let o = outputs();
    let report = &o.initramfs_report;
    assert!(report.size <= 16 * 1024 * 1024, "{} bytes", report.size);
    let work = tempfile::tempdir().expect("tmp");
    let cpio = work.path().join("x.cpio");
    let raw = std::process::Command::new("gzip")
        .args(["-dc"])
        .arg(&o.initramfs)
        .output()
        .expect("gzip");
    assert!(raw.status.success());
    fs::write(&cpio, &raw.stdout).expect("write");
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cpio -tv --quiet < {}", cpio.display()))
        .env("TZ", "UTC")
        .output()
        .expect("cpio");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing
        .lines()
        .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")));
    assert!(listing
        .lines()
        .any(|l| l.starts_with("crw-------") && l.ends_with(" dev/console")));
    // gzip header mtime is zero.
    let gz = fs::read(&o.initramfs).expect("read");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0]);

    let load = String::from_utf8(
        std::process::Command::new("cpio")
            .args(["-i", "--quiet", "--to-stdout", "etc/kiln/modules.load"])
            .stdin(fs::File::open(&cpio).expect("open"))
            .output()
            .expect("cpio -i")
            .stdout,
    )
    .expect("utf8");
    let pos = |m: &str| {
        load.lines()
            .position(|l| l.ends_with(&format!("/{m}.ko")))
            .unwrap_or_else(|| panic!("{m} not in modules.load:\n{load}"))
    };
    let kver = &kernel().kver;
    for l in load.lines() {
        assert!(
            l.starts_with(&format!("/lib/modules/{kver}/kernel/")),
            "{l}"
        );
        assert!(
            listing.contains(&l[1..]),
            "{l} listed but not in the archive"
        );
    }
    // Order from the kernel's own dependency data.
    assert!(pos("virtio_ring") < pos("virtio"));
    assert!(pos("virtio") < pos("virtio_pci"));
    assert!(pos("fat") < pos("vfat"));
    assert!(pos("jbd2") < pos("ext4"));
    assert!(pos("scsi_mod") < pos("sd_mod"));
    assert!(pos("cdrom") < pos("sr_mod"));
    for m in [
        "virtio_blk",
        "virtio_net",
        "virtio_scsi",
        "ata_piix",
        "isofs",
        "squashfs",
    ] {
        pos(m);
    }
    for m in [
        "overlay",
        "loop",
        "qemu_fw_cfg",
        "nls_cp437",
        "nls_iso8859-1",
    ] {
        pos(m);
    }
    assert_eq!(report.modules.len(), load.lines().count());
    eprintln!(
        "initramfs: {} modules, {} bytes",
        report.modules.len(),
        report.size
    );
}

#[derive(serde::Deserialize)]
struct SfdiskDump {
    partitiontable: Table,
}
#[derive(serde::Deserialize)]
struct Table {
    label: String,
    id: String,
    sectorsize: u64,
    partitions: Vec<Part>,
}
#[derive(serde::Deserialize)]
struct Part {
    start: u64,
    size: u64,
    #[serde(rename = "type")]
    ty: String,
    uuid: String,
    name: String,
}

#[test]
fn gpt_disk_matches_design_and_identity() {
    let o = outputs();
    let json = tool("sfdisk", &["--json", o.raw.to_str().expect("utf8")]);
    let dump: SfdiskDump = serde_json::from_str(&json).expect("sfdisk json");
    let t = dump.partitiontable;
    assert_eq!(t.label, "gpt");
    assert_eq!(t.sectorsize, 512);
    let id = identity();
    assert_eq!(t.id.to_lowercase(), id.uuid("disk").to_string());
    let names: Vec<&str> = t.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["BIOS", "ESP", "kiln-root-a", "kiln-root-b"]);
    assert_eq!(
        t.partitions[0].ty.to_lowercase(),
        "21686148-6449-6e6f-744e-656564454649"
    );
    assert_eq!(
        t.partitions[1].ty.to_lowercase(),
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    );
    for p in &t.partitions {
        assert_eq!(
            p.uuid.to_lowercase(),
            id.uuid(&format!("partition:{}", p.name)).to_string()
        );
        assert_eq!(p.start % 2048, 0, "{} not MiB-aligned", p.name);
    }
    assert_eq!(t.partitions[2].size, t.partitions[3].size);
    // The squashfs sits at the start of kiln-root-a, byte for byte.
    let raw = fs::read(&o.raw).expect("raw");
    let sq = fs::read(&o.squashfs).expect("squashfs");
    let at = (t.partitions[2].start * 512) as usize;
    assert_eq!(&raw[at..at + sq.len()], &sq[..]);
    // FAT serial of the ESP, read back by mtools.
    let esp_at = t.partitions[1].start * 512;
    let info = tool(
        "minfo",
        &["-i", &format!("{}@@{esp_at}", o.raw.display()), "::"],
    );
    let serial = format!("{:08X}", id.fat_serial("esp"));
    assert!(
        info.to_uppercase()
            .contains(&format!("SERIAL NUMBER: {serial}")),
        "{info}"
    );
    let files = tool(
        "mdir",
        &[
            "-i",
            &format!("{}@@{esp_at}", o.raw.display()),
            "-/",
            "-b",
            "::",
        ],
    );
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/grub/grub.cfg",
        "::/kiln/a/vmlinuz",
        "::/kiln/b/initramfs",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} missing:\n{files}");
    }
}

#[test]
fn qcow2_is_clean_and_equal_to_raw() {
    let o = outputs();
    tool("qemu-img", &["check", o.qcow2.to_str().expect("utf8")]);
    tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            o.raw.to_str().expect("utf8"),
            o.qcow2.to_str().expect("utf8"),
        ],
    );
    let info = tool(
        "qemu-img",
        &["info", "--output=json", o.qcow2.to_str().expect("utf8")],
    );
    let v: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(v["virtual-size"], 8u64 * 1024 * 1024 * 1024);
    let qsize = fs::metadata(&o.qcow2).expect("qcow2").len();
    assert!(qsize < 200 * 1024 * 1024, "qcow2 not sparse: {qsize}");
    use std::os::unix::fs::MetadataExt;
    let raw_alloc = fs::metadata(&o.raw).expect("raw").blocks() * 512;
    assert!(raw_alloc < 200 * 1024 * 1024, "raw not sparse: {raw_alloc}");
}

#[test]
fn iso_has_bios_and_uefi_el_torito_and_the_root_file() {
    let o = outputs();
    let iso = o.iso.to_str().expect("utf8");
    let report = tool(
        "xorriso",
        &[
            "-indev",
            iso,
            "-report_el_torito",
            "plain",
            "-report_system_area",
            "plain",
        ],
    );
    let boot_lines: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img :"))
        .collect();
    assert_eq!(boot_lines.len(), 2, "{report}");
    assert!(boot_lines[0].contains("BIOS"), "{report}");
    assert!(boot_lines[1].contains("UEFI"), "{report}");
    assert!(report.contains("GPT"), "no GPT for USB boot:\n{report}");
    let pvd = tool("xorriso", &["-indev", iso, "-pvd_info"]);
    assert!(pvd.contains("Volume Id    : KILN"), "{pvd}");
    let files = tool("xorriso", &["-indev", iso, "-find", "/kiln", "-type", "f"]);
    for f in ["/kiln/root.squashfs", "/kiln/vmlinuz", "/kiln/initramfs"] {
        assert!(files.contains(&format!("'{f}'")), "{f}:\n{files}");
    }
}

#[test]
fn every_output_is_byte_identical_when_rebuilt() {
    let a = outputs();
    for f in [
        &a.squashfs,
        &a.initramfs,
        &a.raw,
        &a.qcow2,
        &a.iso,
        &a.pxe.join("initramfs"),
    ] {
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(f).expect("output");
        eprintln!(
            "{}: {} bytes ({} allocated)",
            f.display(),
            m.len(),
            m.blocks() * 512
        );
    }
    // Second build: another directory, later, and a different umask.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let dir = tempfile::tempdir().expect("tmp");
    let t = std::time::Instant::now();
    let b = build_all(dir.path());
    eprintln!(
        "second build of every output: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    rustix::process::umask(old);
    let same = |x: &Path, y: &Path| {
        let (bx, by) = (fs::read(x).expect("a"), fs::read(y).expect("b"));
        assert!(bx == by, "{} differs from {}", x.display(), y.display());
    };
    same(&a.squashfs, &b.squashfs);
    same(&a.initramfs, &b.initramfs);
    same(&a.raw, &b.raw);
    same(&a.qcow2, &b.qcow2);
    same(&a.iso, &b.iso);
    for f in ["vmlinuz", "initramfs", "boot.ipxe"] {
        same(&a.pxe.join(f), &b.pxe.join(f));
    }
}

fn dir_is_empty(d: &Path) -> bool {
    fs::read_dir(d).expect("read_dir").next().is_none()
}

#[test]
fn a_disk_too_small_fails_clearly_and_leaves_nothing() {
    let o = outputs();
    let k = kernel();
    let out = tempfile::tempdir().expect("tmp");
    let id = identity();
    let mut spec = disk::DiskSpec::new(&id, &k.vmlinuz, &o.initramfs, &o.squashfs, EPOCH);
    spec.disk_size = 1024 * 1024 * 1024;
    let err = disk::write_raw(&spec, &out.path().join("disk.raw")).expect_err("too small");
    assert!(matches!(err, BootError::DoesNotFit { .. }), "{err}");
    assert!(err.to_string().contains("raise the disk size"), "{err}");
    assert!(dir_is_empty(out.path()));
}

#[test]
fn a_missing_kernel_fails_clearly_and_leaves_nothing() {
    let o = outputs();
    let out = tempfile::tempdir().expect("tmp");
    let id = identity();
    let missing = out.path().join("no-vmlinuz");
    let spec = disk::DiskSpec::new(&id, &missing, &o.initramfs, &o.squashfs, EPOCH);
    let err = disk::write_raw(&spec, &out.path().join("disk.raw")).expect_err("no kernel");
    assert!(matches!(err, BootError::MissingKernel { .. }), "{err}");
    assert!(err.to_string().contains("no-vmlinuz"), "{err}");
    let err = boot::pxe::write(
        &kiln_tests::boot::identity(),
        &missing,
        &o.initramfs,
        None,
        &out.path().join("pxe"),
    )
    .expect_err("no kernel");
    assert!(matches!(err, BootError::MissingKernel { .. }), "{err}");
    assert!(dir_is_empty(out.path()));

    // A tree without the kernel's modules: the initramfs names the kernel version.
    let empty = kiln::tree::Tree::new(EPOCH);
    let init = out.path().join("init");
    fs::write(&init, "#!/bin/sh\n").expect("init");
    let spec = initramfs::Spec {
        kver: "6.1.0-99-amd64",
        modules: boot::modules::STAGE1,
        init: &init,
        extra: &[],
        embedded: &[],
        compression: initramfs::Compression::Gzip,
    };
    let target = out.path().join("initramfs");
    let err = initramfs::build(&empty, &spec, &target).expect_err("no kernel");
    assert!(matches!(err, BootError::MissingKernel { .. }), "{err}");
    assert!(err.to_string().contains("6.1.0-99-amd64"), "{err}");
    assert!(!target.exists());
}

#[test]
fn an_unknown_module_is_refused() {
    let k = kernel();
    let out = tempfile::tempdir().expect("tmp");
    let init = out.path().join("init");
    fs::write(&init, "#!/bin/sh\n").expect("init");
    let spec = initramfs::Spec {
        kver: &k.kver,
        modules: &["virtio_blk", "virtio_blkk"],
        init: &init,
        extra: &[],
        embedded: &[],
        compression: initramfs::Compression::Gzip,
    };
    let target = out.path().join("initramfs");
    let err = initramfs::build(kiln_tests::boot::kernel_tree(), &spec, &target).expect_err("typo");
    assert!(err.to_string().contains("virtio_blkk"), "{err}");
    assert!(!target.exists());
}
