//! Stage 1: PID 1 in the initramfs. Mounts the API filesystems, loads modules, finds and
//! mounts the root, creates/grows and mounts `kiln-data` at /var, overlays /etc, writes the
//! machine id and switches root into systemd.
//!
//! Every path is relative to a [`Layout`] root (`/` on a machine, a temp dir in tests) and
//! every privileged call goes through [`Sys`].

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cmdline::Cmdline;
use crate::gpt::{self, DataPartition};
use crate::probe;
use crate::sys::{MountFlags, Sys};

mod data;
mod layout;
mod root;
mod switch_root;

pub use data::*;
pub use layout::*;
pub use root::*;
pub use switch_root::*;

/// How long to wait for a device to show up (virtio under TCG can be slow).
pub const DEVICE_TIMEOUT_MS: u64 = 30_000;
/// ISO volume label of Kiln's hybrid ISO.
pub const ISO_LABEL: &str = "KILN";
/// Where the init of the real root lives.
pub const INIT: &str = "/sbin/init";

/// A stage-1 failure: the step that failed and why, printed once on the console.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct Stage1Error {
    /// What stage 1 was doing.
    pub step: &'static str,
    /// Why it failed.
    pub detail: String,
}

fn fail(step: &'static str, detail: impl std::fmt::Display) -> Stage1Error {
    Stage1Error {
        step,
        detail: detail.to_string(),
    }
}

/// What to do after a failure (`kiln.on-failure=reboot`, default wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Keep the console alive forever.
    Wait,
    /// Reboot after a delay.
    Reboot,
}

impl OnFailure {
    /// From the kernel command line.
    pub fn from_cmdline(c: &Cmdline) -> Self {
        if c.get("kiln.on-failure") == Some("reboot") {
            OnFailure::Reboot
        } else {
            OnFailure::Wait
        }
    }
}

/// Stage-1 phase timestamps, CLOCK_MONOTONIC milliseconds, written to /run/kiln/stage1.json.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Timings {
    pub start: u64,
    pub modules_loaded: u64,
    pub root_mounted: u64,
    pub var_mounted: u64,
    pub switch_root: u64,
    /// How the root was found: `slot-a`, `slot-b`, `iso`, `embedded`.
    pub root: String,
    /// What /var is: `kiln-data (created|grown|existing)` or `tmpfs`.
    pub var: String,
    /// Modules loaded / failed.
    pub modules_ok: u32,
    pub modules_failed: u32,
    /// Stage 1's peak resident set (VmHWM, KiB) just before switch_root.
    #[serde(default)]
    pub rss_hwm_kib: Option<u64>,
}

/// The console line at the end of stage 1:
/// `kiln: stage 1 done in <ms> ms, rss-hwm-kib=<KiB|->, switching root`.
pub fn done_line(t: &Timings) -> String {
    format!(
        "kiln: stage 1 done in {} ms, rss-hwm-kib={}, switching root",
        t.switch_root.saturating_sub(t.start),
        t.rss_hwm_kib
            .map_or_else(|| "-".to_string(), |v| v.to_string())
    )
}

/// Polls `f` every 100 ms until it gives a value or `timeout_ms` passes.
pub fn wait_for<T>(sys: &dyn Sys, timeout_ms: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = sys.monotonic_ms();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if sys.monotonic_ms().saturating_sub(start) >= timeout_ms {
            return None;
        }
        sys.sleep(Duration::from_millis(100));
    }
}

fn mkdir(p: &Path) -> Result<(), Stage1Error> {
    std::fs::create_dir_all(p)
        .map_err(|e| fail("creating a directory", format!("{}: {e}", p.display())))
}

/// Everything up to (not including) switch_root. Returns the timings, also written to
/// /run/kiln/stage1.json.
pub fn prepare(sys: &dyn Sys, l: &Layout, say: &dyn Fn(&str)) -> Result<Timings, Stage1Error> {
    let (cmdline, t) = early(sys, l, say)?;
    prepare_root(sys, l, say, &cmdline, t)
}

/// The part of stage 1 every mode shares: mounts the API filesystems, reads the command
/// line, loads the modules.
pub fn early(
    sys: &dyn Sys,
    l: &Layout,
    say: &dyn Fn(&str),
) -> Result<(Cmdline, Timings), Stage1Error> {
    let mut t = Timings {
        start: sys.monotonic_ms(),
        ..Timings::default()
    };
    mount_api_filesystems(sys, l)?;
    let cmdline = Cmdline::read(&l.cmdline()).map_err(|e| fail("reading /proc/cmdline", e))?;
    (t.modules_ok, t.modules_failed) = load_modules(sys, l, say);
    t.modules_loaded = sys.monotonic_ms();
    Ok((cmdline, t))
}

/// After [`early`]: mounts the root and /var, overlays /etc, writes the machine id.
pub fn prepare_root(
    sys: &dyn Sys,
    l: &Layout,
    say: &dyn Fn(&str),
    cmdline: &Cmdline,
    mut t: Timings,
) -> Result<Timings, Stage1Error> {
    let source = RootSource::from_cmdline(cmdline)?;
    t.var = mount_root_and_var(sys, l, &source, &mut t, say)?;
    overlay_etc(sys, l)?;
    mount_tmp(sys, l)?;
    machine_id(sys, &l.sysroot())?;
    t.rss_hwm_kib = crate::memory::read_vm_hwm_kib(&l.proc().join("self/status"));
    t.switch_root = sys.monotonic_ms();
    let json = serde_json::to_string_pretty(&t).map_err(|e| fail("writing stage1.json", e))?;
    let path = l.stage1_json();
    mkdir(path.parent().unwrap_or(&l.run()))?;
    std::fs::write(&path, json)
        .map_err(|e| fail("writing stage1.json", format!("{}: {e}", path.display())))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::tests::fake_sysfs;
    use crate::sys::{Call, RecordingSys};
    use std::cell::RefCell;

    fn layout_with_disk(cmdline: &str) -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path());
        std::fs::create_dir_all(l.proc()).unwrap();
        std::fs::write(l.cmdline(), cmdline).unwrap();
        fake_sysfs(
            &l.sys().join("fake"),
            "vda",
            &[("vda3", "kiln-root-a"), ("vda4", "kiln-root-b")],
        );
        std::fs::create_dir_all(l.sys().join("class")).unwrap();
        std::os::unix::fs::symlink(l.sys().join("fake/class/block"), l.class_block()).unwrap();
        std::fs::create_dir_all(l.dev()).unwrap();
        std::fs::write(l.dev().join("vda3"), b"squashfs").unwrap();
        std::fs::create_dir_all(l.sysroot().join("etc")).unwrap();
        std::fs::create_dir_all(l.sysroot().join("var")).unwrap();
        std::fs::create_dir_all(l.p("etc/kiln")).unwrap();
        std::fs::write(
            l.modules_load(),
            "/lib/modules/virtio_blk.ko\n\n/lib/modules/bad.ko\n/lib/modules/efivarfs.ko\n",
        )
        .unwrap();
        (t, l)
    }

    /// The kernel's side of BLKRRPART: kiln-data appears in sysfs.
    fn kernel_hook(l: &Layout) -> impl Fn(&Call) -> std::io::Result<()> {
        let l = l.clone();
        move |c| {
            match c {
                Call::RereadPartitions(_) => {
                    let d = l.sys().join("fake/devices/vda/vda5");
                    std::fs::create_dir_all(&d)?;
                    std::fs::write(
                        d.join("uevent"),
                        "DEVNAME=vda5\nDEVTYPE=partition\nPARTNAME=kiln-data\n",
                    )?;
                    std::os::unix::fs::symlink(&d, l.class_block().join("vda5"))?;
                    std::fs::write(l.dev().join("vda5"), vec![0u8; 4096])?;
                }
                Call::FinitModule(p) if p.ends_with("bad.ko") => {
                    return Err(std::io::Error::from_raw_os_error(8)); // ENOEXEC
                }
                Call::FinitModule(p) if p.ends_with("efivarfs.ko") => {
                    return Err(std::io::Error::from_raw_os_error(19)); // ENODEV: no EFI
                }
                _ => {}
            }
            Ok(())
        }
    }

    fn has_sfdisk() -> bool {
        std::process::Command::new("sfdisk")
            .arg("--version")
            .output()
            .is_ok()
    }

    #[test]
    fn disk_boot_creates_formats_and_mounts_kiln_data_once() {
        if !has_sfdisk() {
            return;
        }
        let (_t, l) = layout_with_disk("BOOT_IMAGE=/vmlinuz kiln.slot=a quiet");
        crate::gpt::tests::make_image(&l.dev().join("vda"), 64);
        let sys = RecordingSys::with_hook(kernel_hook(&l));
        let said = RefCell::new(Vec::<String>::new());
        let say = |s: &str| said.borrow_mut().push(s.to_string());
        let t = prepare(&sys, &l, &say).unwrap();
        let calls = sys.calls();

        assert_eq!((t.modules_ok, t.modules_failed), (1, 1));
        assert!(said.borrow().iter().any(|s| s.contains("bad.ko")));
        assert!(
            !said.borrow().iter().any(|s| s.contains("efivarfs")),
            "ENODEV is not a failure"
        );
        assert_eq!(t.root, "slot-a");
        assert_eq!(t.var, "kiln-data created (vda5)");
        let pos = |want: &dyn Fn(&Call) -> bool| {
            calls
                .iter()
                .position(want)
                .unwrap_or_else(|| panic!("missing call in {calls:#?}"))
        };
        let reread = pos(&|c| matches!(c, Call::RereadPartitions(p) if p.ends_with("dev/vda")));
        let root = pos(&|c| {
            matches!(c, Call::Mount { fstype, read_only: true, target, source, .. }
            if fstype == "squashfs" && *target == l.sysroot() && source.ends_with("dev/vda3"))
        });
        let mkfs = pos(&|c| {
            matches!(c, Call::RunChrooted(r, argv) if *r == l.sysroot()
            && argv == &["/usr/sbin/mkfs.ext4", "-q", "-F", "-L", "kiln-data", "/dev/vda5"])
        });
        let var = pos(
            &|c| matches!(c, Call::Mount { fstype, target, .. } if fstype == "ext4" && *target == l.sysroot().join("var")),
        );
        let etc = pos(&|c| {
            matches!(c, Call::Mount { fstype, target, data, .. } if fstype == "overlay"
            && *target == l.sysroot().join("etc") && data.contains("upperdir=") && data.contains("var/lib/kiln/etc/upper"))
        });
        let tmp = pos(&|c| {
            matches!(c, Call::Mount { fstype, target, data, .. } if fstype == "tmpfs"
            && *target == l.sysroot().join("tmp") && data == "mode=1777")
        });
        assert!(
            reread < root && root < mkfs && mkfs < var && var < etc && etc < tmp,
            "{calls:#?}"
        );
        // The partition really is in the GPT now.
        let mut f = std::fs::File::open(l.dev().join("vda")).unwrap();
        assert!(crate::gpt::Gpt::read(&mut f, 512)
            .unwrap()
            .find("kiln-data")
            .is_some());
        // machine-id persisted and in /etc.
        let id = std::fs::read_to_string(l.sysroot().join("var/lib/kiln/machine-id")).unwrap();
        assert!(valid_machine_id(id.trim()));
        assert_eq!(
            std::fs::read_to_string(l.sysroot().join("etc/machine-id")).unwrap(),
            id
        );
        let json: Timings =
            serde_json::from_str(&std::fs::read_to_string(l.stage1_json()).unwrap()).unwrap();
        assert_eq!(json, t);

        // Second boot: the filesystem exists (ext4 magic), nothing is created again.
        let mut sb = vec![0u8; 4096];
        sb[1080] = 0x53;
        sb[1081] = 0xEF;
        std::fs::write(l.dev().join("vda5"), sb).unwrap();
        std::fs::write(l.sysroot().join("etc/machine-id"), "").unwrap();
        let sys2 = RecordingSys::with_hook(kernel_hook(&l));
        let t2 = prepare(&sys2, &l, &say).unwrap();
        assert_eq!(t2.var, "kiln-data existing (vda5)");
        let calls2 = sys2.calls();
        assert!(
            !calls2
                .iter()
                .any(|c| matches!(c, Call::RunChrooted(..) | Call::RereadPartitions(_))),
            "{calls2:#?}"
        );
        assert_eq!(
            std::fs::read_to_string(l.sysroot().join("var/lib/kiln/machine-id")).unwrap(),
            id
        );
        assert_eq!(
            std::fs::read_to_string(l.sysroot().join("etc/machine-id")).unwrap(),
            id
        );
    }

    /// Runs a host tool (`argv`) on the image `img` (its last argument); None if it cannot run.
    fn tool_on(img: &std::path::Path, argv: &[&str]) -> Option<std::process::Output> {
        std::process::Command::new(argv[0])
            .args(&argv[1..])
            .arg(img)
            .output()
            .ok()
    }

    #[test]
    fn ext4_size_is_read_from_the_superblock() {
        // mkfs.ext4 and resize2fs as the oracles.
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let run = |argv: &[&str]| tool_on(&img, argv).is_some_and(|o| o.status.success());
        if !run(&["mkfs.ext4", "-q", "-F"]) {
            return;
        }
        assert_eq!(ext4_size_mib(&img), Some(64));
        std::fs::File::options()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(96 << 20)
            .unwrap();
        assert!(run(&["e2fsck", "-f", "-p"]));
        assert!(run(&["resize2fs", "-f"]));
        assert_eq!(ext4_size_mib(&img), Some(96));
        assert_eq!(ext4_size_mib(&t.path().join("missing")), None);
        std::fs::write(&img, [0u8; 4096]).unwrap();
        assert_eq!(ext4_size_mib(&img), None);
    }

    /// The real tools: ext4 made by mkfs, its primary superblock zeroed, repaired by e2fsck
    /// from a backup with a file still there; blank and foreign bytes told apart.
    #[test]
    fn data_states_from_real_filesystems_and_a_real_repair() {
        use super::data::{data_state, DataState};
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("data.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(160 << 20)
            .unwrap();
        assert_eq!(data_state(&img), DataState::Blank);
        let tool = |argv: &[&str]| tool_on(&img, argv);
        let ok = |o: Option<std::process::Output>| o.is_some_and(|o| o.status.success());
        if !ok(tool(&["mkfs.ext4", "-q", "-F"])) {
            return;
        }
        assert_eq!(data_state(&img), DataState::Ext4);
        let keep = t.path().join("keep");
        std::fs::write(&keep, "kiln-data survives").unwrap();
        let put = format!("write {} keep", keep.display());
        assert!(ok(tool(&["debugfs", "-w", "-R", &put])));
        // The primary superblock zeroed: a backup remains.
        {
            use std::os::unix::fs::FileExt as _;
            let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            f.write_all_at(&[0u8; 1024], 1024).unwrap();
        }
        assert_eq!(data_state(&img), DataState::Damaged);
        let fsck = tool(&["e2fsck", "-f", "-y"]).unwrap();
        assert!(
            matches!(fsck.status.code(), Some(0..=2)),
            "e2fsck: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        assert_eq!(data_state(&img), DataState::Ext4);
        let cat = tool(&["debugfs", "-R", "cat keep"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), "kiln-data survives");
        // Bytes of no known kind and no superblock anywhere.
        let other = t.path().join("other.img");
        let mut bytes = vec![0u8; 1 << 20];
        bytes[100] = 0x42;
        std::fs::write(&other, bytes).unwrap();
        assert_eq!(data_state(&other), DataState::Unknown);
        assert!(matches!(
            data_state(&t.path().join("missing")),
            DataState::Unreadable(_)
        ));
    }

    /// What stage 1 does with each state: only a blank kiln-data is formatted; a damaged one
    /// is repaired with e2fsck; a foreign one stops the boot with nothing written.
    #[test]
    fn only_a_blank_kiln_data_is_formatted() {
        if !has_sfdisk() {
            return;
        }
        let runs = |sys: &RecordingSys| -> Vec<Vec<String>> {
            sys.calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::RunChrooted(_, argv) => Some(argv),
                    _ => None,
                })
                .collect()
        };
        let (_t, l) = layout_with_disk("kiln.slot=a");
        crate::gpt::tests::make_image(&l.dev().join("vda"), 64);
        prepare(&RecordingSys::with_hook(kernel_hook(&l)), &l, &|_| {}).unwrap();
        // Damaged: a backup superblock at 8193 KiB (1 KiB blocks), none at the start.
        let mut damaged = vec![0u8; 9 << 20];
        damaged[4096] = 1;
        damaged[8193 * 1024 + 56] = 0x53;
        damaged[8193 * 1024 + 57] = 0xEF;
        std::fs::write(l.dev().join("vda5"), &damaged).unwrap();
        let sys = RecordingSys::with_hook(kernel_hook(&l));
        let t = prepare(&sys, &l, &|_| {}).unwrap();
        assert_eq!(t.var, "kiln-data repaired (vda5)");
        assert_eq!(
            runs(&sys),
            vec![vec![
                "/usr/sbin/e2fsck".to_string(),
                "-f".into(),
                "-y".into(),
                "/dev/vda5".into()
            ]]
        );
        // Foreign bytes: the boot stops, nothing is run, the bytes are as they were.
        let mut foreign = vec![0u8; 1 << 20];
        foreign[0] = 0xEB;
        std::fs::write(l.dev().join("vda5"), &foreign).unwrap();
        let sys = RecordingSys::with_hook(kernel_hook(&l));
        let e = prepare(&sys, &l, &|_| {}).unwrap_err().to_string();
        assert!(e.contains("not formatting it"), "{e}");
        assert!(runs(&sys).is_empty(), "{:?}", runs(&sys));
        assert_eq!(std::fs::read(l.dev().join("vda5")).unwrap(), foreign);
    }

    #[test]
    fn grown_disk_runs_fsck_and_resize() {
        if !has_sfdisk() {
            return;
        }
        let (_t, l) = layout_with_disk("kiln.slot=a");
        let disk = l.dev().join("vda");
        crate::gpt::tests::make_image(&disk, 64);
        prepare(&RecordingSys::with_hook(kernel_hook(&l)), &l, &|_| {}).unwrap();
        let mut sb = vec![0u8; 4096];
        sb[1080] = 0x53;
        sb[1081] = 0xEF;
        std::fs::write(l.dev().join("vda5"), sb).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(80 << 20)
            .unwrap();
        let sys = RecordingSys::with_hook(kernel_hook(&l));
        let t = prepare(&sys, &l, &|_| {}).unwrap();
        assert_eq!(t.var, "kiln-data grown (vda5)");
        let runs: Vec<Vec<String>> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::RunChrooted(_, argv) => Some(argv),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs,
            vec![
                vec![
                    "/usr/sbin/e2fsck".to_string(),
                    "-f".into(),
                    "-p".into(),
                    "/dev/vda5".into()
                ],
                vec!["/usr/sbin/resize2fs".to_string(), "/dev/vda5".into()],
            ]
        );
    }

    #[test]
    fn missing_root_fails_with_one_clear_reason_after_the_timeout() {
        let (_t, l) = layout_with_disk("kiln.slot=b");
        std::fs::remove_file(l.class_block()).unwrap();
        std::fs::create_dir_all(l.class_block()).unwrap();
        let sys = RecordingSys::new();
        let e = prepare(&sys, &l, &|_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "finding the root: no partition kiln-root-b after 30 s"
        );
        assert!(sys.monotonic_ms() >= 1000 + DEVICE_TIMEOUT_MS);
    }

    #[test]
    fn embedded_root_loops_the_initramfs_squashfs_and_uses_tmpfs_var() {
        let (_t, l) = layout_with_disk("kiln.root=embedded");
        std::fs::create_dir_all(l.proc().join("self")).unwrap();
        std::fs::write(l.proc().join("self/status"), "VmHWM:\t    1536 kB\n").unwrap();
        let sys = RecordingSys::new();
        let t = prepare(&sys, &l, &|_| {}).unwrap();
        assert_eq!((t.root.as_str(), t.var.as_str()), ("embedded", "tmpfs"));
        // Stage 1's own peak goes into stage1.json and its done line.
        assert_eq!(t.rss_hwm_kib, Some(1536));
        let on_disk: Timings =
            serde_json::from_str(&std::fs::read_to_string(l.stage1_json()).unwrap()).unwrap();
        assert_eq!(on_disk, t);
        assert_eq!(
            done_line(&t),
            format!(
                "kiln: stage 1 done in {} ms, rss-hwm-kib=1536, switching root",
                t.switch_root - t.start
            )
        );
        let calls = sys.calls();
        assert!(calls.contains(&Call::LoopAttach(l.embedded_squashfs())));
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { source, fstype, .. } if fstype == "squashfs" && source.ends_with("dev/loop0"))));
        assert!(calls.iter().any(|c| matches!(c, Call::Mount { fstype, target, .. } if fstype == "tmpfs" && *target == l.sysroot().join("var"))));
    }

    #[test]
    fn iso_root_is_found_by_volume_label() {
        let (_t, l) = layout_with_disk("kiln.root=iso");
        let mut iso = vec![0u8; 32768 + 2048];
        iso[32768] = 1;
        iso[32769..32774].copy_from_slice(b"CD001");
        iso[32808..32840].copy_from_slice(format!("{:<32}", "KILN").as_bytes());
        fake_sysfs(&l.sys().join("fake2"), "sr0", &[]);
        std::os::unix::fs::symlink(
            l.sys().join("fake2/devices/sr0"),
            l.class_block().join("sr0"),
        )
        .unwrap();
        std::fs::write(l.dev().join("sr0"), iso).unwrap();
        let sys = RecordingSys::new();
        let t = prepare(&sys, &l, &|_| {}).unwrap();
        assert_eq!(t.root, "iso");
        let calls = sys.calls();
        assert!(calls.iter().any(
            |c| matches!(c, Call::Mount { source, fstype, target, read_only: true, .. }
            if fstype == "iso9660" && source.ends_with("dev/sr0") && *target == l.media())
        ));
        assert!(calls.contains(&Call::LoopAttach(l.media().join("kiln/root.squashfs"))));
    }

    #[test]
    fn cmdline_choices() {
        let rs = |s| RootSource::from_cmdline(&Cmdline::parse(s));
        assert_eq!(rs("kiln.slot=b").unwrap(), RootSource::Slot("b".into()));
        assert_eq!(rs("").unwrap(), RootSource::Slot("a".into()));
        assert_eq!(rs("kiln.slot=b kiln.root=iso").unwrap(), RootSource::Iso);
        assert!(rs("kiln.slot=c").is_err());
        assert!(rs("kiln.root=nfs").is_err());
        assert_eq!(
            OnFailure::from_cmdline(&Cmdline::parse("kiln.on-failure=reboot")),
            OnFailure::Reboot
        );
        assert_eq!(
            OnFailure::from_cmdline(&Cmdline::parse("")),
            OnFailure::Wait
        );
    }

    #[test]
    fn switch_root_sequence() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::new(t.path());
        for d in [
            "sysroot/etc",
            "proc",
            "sys",
            "dev",
            "run",
            "etc/kiln",
            "lib/modules",
        ] {
            std::fs::create_dir_all(l.p(d)).unwrap();
        }
        std::fs::write(l.p("init"), b"x").unwrap();
        std::fs::write(l.p("lib/modules/a.ko"), b"x").unwrap();
        std::fs::write(l.p("sysroot/etc/keep"), b"x").unwrap();
        let sys = RecordingSys::new();
        let e = switch_root(&sys, &l);
        assert_eq!(e.step, "starting systemd");
        let s = l.sysroot();
        assert_eq!(
            sys.calls(),
            vec![
                Call::MountMove(l.dev(), s.join("dev")),
                Call::MountMove(l.proc(), s.join("proc")),
                Call::MountMove(l.sys(), s.join("sys")),
                Call::MountMove(l.run(), s.join("run")),
                Call::Chdir(s.clone()),
                Call::MountMove(PathBuf::from("."), l.root.clone()),
                Call::Chroot(PathBuf::from(".")),
                Call::Chdir(PathBuf::from("/")),
                Call::Exec(PathBuf::from(INIT)),
            ]
        );
        // The initramfs contents are gone, the new root is intact.
        assert!(!l.p("init").exists() && !l.p("lib").exists() && !l.p("etc").exists());
        assert!(s.join("etc/keep").exists());
    }
}
