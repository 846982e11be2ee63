//! Shared fixtures for the boot tests: a real Debian kernel package (downloaded with
//! apt into $KILN_CACHE/fixtures and unpacked once), the host's static busybox as a
//! stand-in for firstboot, a small root Tree, and one build of every boot output.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::run;

use kiln::outputs::boot::{self, initramfs, BootIdentity};
use kiln::tree::{Content, Entry, Kind, Tree, TreePath};

pub const EPOCH: u64 = 1_700_000_000;
pub const INIT_REACHED: &str = "kiln: stage 1 test init reached";

pub struct Kernel {
    pub root: PathBuf,
    pub kver: String,
    pub vmlinuz: PathBuf,
}

/// The current Debian 6.1 kernel package, unpacked under the cache.
pub fn kernel() -> &'static Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    K.get_or_init(|| {
        let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
        let pkg = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-6.1"))
            .expect("linux-image-amd64 depends on a 6.1 kernel")
            .to_string();
        let kver = pkg.trim_start_matches("linux-image-").to_string();
        let fixtures = crate::kiln_cache().join("fixtures");
        fs::create_dir_all(&fixtures).expect("fixtures dir");
        let find_deb = || {
            fs::read_dir(&fixtures)
                .expect("read fixtures")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
                })
        };
        let deb = match find_deb() {
            Some(d) => d,
            None => {
                run(Command::new("apt-get")
                    .args(["download", &pkg])
                    .current_dir(&fixtures));
                find_deb().expect("downloaded kernel .deb")
            }
        };
        let root = fixtures.join(format!("unpacked-{pkg}"));
        if !root.join("boot").is_dir() {
            let tmp = tempfile::tempdir_in(&fixtures).expect("tmp");
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp.path()));
            let _ = fs::remove_dir_all(&root);
            fs::rename(tmp.keep(), &root).expect("rename unpacked");
        }
        let vmlinuz = root.join(format!("boot/vmlinuz-{kver}"));
        Kernel {
            root,
            kver,
            vmlinuz,
        }
    })
}

/// A Tree of a directory on disk (regular files by reference), root-owned.
pub fn tree_from_dir(dir: &Path, epoch: u64) -> Tree {
    let mut t = Tree::new(epoch);
    let mut stack = vec![(dir.to_path_buf(), TreePath::root())];
    while let Some((d, tp)) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .expect("read_dir")
            .map(|e| e.expect("entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = tp.join(&name);
            let ft = e.file_type().expect("file type");
            let md = e.metadata().expect("metadata");
            use std::os::unix::fs::PermissionsExt;
            let mode = md.permissions().mode() & 0o7777;
            if ft.is_dir() {
                t.insert(&p, Entry::dir(mode, "kernel").at(epoch))
                    .expect("dir");
                stack.push((e.path(), p));
            } else if ft.is_symlink() {
                let target = fs::read_link(e.path()).expect("readlink");
                t.insert(
                    &p,
                    Entry::symlink(&target.to_string_lossy(), "kernel").at(epoch),
                )
                .expect("link");
            } else {
                t.insert(
                    &p,
                    Entry::file(
                        Content::OnDisk {
                            path: e.path(),
                            size: md.len(),
                        },
                        mode,
                        "kernel",
                    )
                    .at(epoch),
                )
                .expect("file");
            }
        }
    }
    t
}

pub fn kernel_tree() -> &'static Tree {
    static T: OnceLock<Tree> = OnceLock::new();
    T.get_or_init(|| tree_from_dir(&kernel().root, EPOCH))
}

/// A small root with owners and modes that a naive writer would lose.
pub fn root_tree() -> Tree {
    let mut t = Tree::new(EPOCH);
    let p = |s: &str| TreePath::from_definition(s).expect("path");
    let f = |b: &str| Content::inline(b.as_bytes().to_vec());
    t.insert(&p("/usr/bin"), Entry::dir(0o755, "t").at(EPOCH))
        .expect("usr");
    t.insert(&p("/bin"), Entry::symlink("usr/bin", "t"))
        .expect("bin");
    t.insert(
        &p("/etc/hostname"),
        Entry::file(f("kiln\n"), 0o644, "t").at(1_600_000_000),
    )
    .expect("hostname");
    t.insert(
        &p("/usr/bin/sudo-ish"),
        Entry::file(f("#!/bin/sh\n"), 0o4755, "t"),
    )
    .expect("suid");
    t.insert(&p("/home/user"), Entry::dir(0o700, "t").owned(1000, 1000))
        .expect("home");
    t.insert(
        &p("/etc/shadow"),
        Entry::file(f("root:*:1::::::\n"), 0o640, "t").owned(0, 42),
    )
    .expect("shadow");
    t.insert(
        &p("/usr/bin/hard"),
        Entry::new(Kind::Hardlink(p("/usr/bin/sudo-ish")), 0o4755, "t"),
    )
    .expect("hard");
    t.insert(&p("/tmp"), Entry::dir(0o1777, "t")).expect("tmp");
    t
}

/// The test `/init`: load every module of modules.load with busybox insmod (proving
/// the closure and its order), report, power off. efivarfs refuses to load without EFI
/// (ENODEV, "No such device"); firstboot's stage 1 does not count that as a failure, and
/// neither does this.
pub const TEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
n=0
while read m; do
  if out=$(/bin/busybox insmod "$m" 2>&1); then echo "kiln: loaded $m"; n=$((n+1))
  else
    case "$m:$out" in
      */efivarfs.ko*:*"No such device"*) echo "kiln: no EFI, not loaded: $m"; n=$((n+1));;
      *) echo "kiln: FAILED $m: $out";;
    esac
  fi
done < /etc/kiln/modules.load
echo "kiln: loaded $n modules"
echo "kiln: cmdline $(/bin/busybox cat /proc/cmdline)"
[ -f /root.squashfs ] && echo "kiln: embedded root present"
echo "kiln: stage 1 test init reached"
/bin/busybox poweroff -f
"#;

pub fn busybox_entry() -> (TreePath, Entry) {
    let path = PathBuf::from("/bin/busybox");
    let size = fs::metadata(&path).expect("busybox-static installed").len();
    (
        TreePath::from_archive("bin/busybox").expect("p"),
        Entry::file(Content::OnDisk { path, size }, 0o755, "busybox"),
    )
}

pub fn identity() -> BootIdentity {
    BootIdentity::new("minimal", "0.1.0")
}

/// Every output of one build.
pub struct Outputs {
    pub dir: PathBuf,
    pub squashfs: PathBuf,
    pub initramfs: PathBuf,
    pub initramfs_report: initramfs::Report,
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub iso: PathBuf,
    pub pxe: PathBuf,
    pub disk: boot::disk::DiskReport,
}

/// Builds everything into `dir` (which must exist).
pub fn build_all(dir: &Path) -> Outputs {
    let k = kernel();
    let init = dir.join("test-init");
    fs::write(&init, TEST_INIT).expect("init");
    let squashfs = dir.join("root.squashfs");
    boot::squashfs::write(&root_tree(), &squashfs, &Default::default()).expect("squashfs");
    let extra = [busybox_entry()];
    let initramfs_path = dir.join("initramfs");
    let spec = initramfs::Spec {
        kver: &k.kver,
        modules: boot::modules::STAGE1,
        init: &init,
        extra: &extra,
        embedded: &[],
        compression: initramfs::Compression::Gzip,
    };
    let report = initramfs::build(kernel_tree(), &spec, &initramfs_path).expect("initramfs");
    let id = identity();
    let raw = dir.join("disk.raw");
    let dspec = boot::disk::DiskSpec::new(&id, &k.vmlinuz, &initramfs_path, &squashfs, EPOCH);
    let disk = boot::disk::write_raw(&dspec, &raw).expect("raw disk");
    let qcow2 = dir.join("disk.qcow2");
    boot::disk::to_qcow2(&raw, &qcow2, EPOCH).expect("qcow2");
    let iso = dir.join("image.iso");
    boot::iso::write(
        &boot::iso::IsoSpec {
            identity: &id,
            kernel: &k.vmlinuz,
            initramfs: &initramfs_path,
            root_squashfs: &squashfs,
            epoch: EPOCH,
            install: None,
        },
        &iso,
    )
    .expect("iso");
    let pxe_initrd = dir.join("initramfs-pxe");
    let embedded = boot::pxe::embedded_root(&squashfs);
    let pspec = initramfs::Spec {
        embedded: &embedded,
        ..spec
    };
    initramfs::build(kernel_tree(), &pspec, &pxe_initrd).expect("pxe initramfs");
    let pxe = dir.join("pxe");
    boot::pxe::write(&identity(), &k.vmlinuz, &pxe_initrd, None, &pxe).expect("pxe");
    Outputs {
        dir: dir.to_path_buf(),
        squashfs,
        initramfs: initramfs_path,
        initramfs_report: report,
        raw,
        qcow2,
        iso,
        pxe,
        disk,
    }
}

/// One shared build per test binary, kept in a temp dir for the process lifetime.
pub fn outputs() -> &'static Outputs {
    static O: OnceLock<(tempfile::TempDir, Outputs)> = OnceLock::new();
    &O.get_or_init(|| {
        let d = tempfile::tempdir().expect("tmp");
        let o = build_all(d.path());
        (d, o)
    })
    .1
}

pub fn tool(cmd: &str, args: &[&str]) -> String {
    run(Command::new(cmd).args(args))
}
