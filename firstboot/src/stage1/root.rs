//! The API file systems, kernel modules, the immutable root (squashfs, its tools), the
//! /etc overlay, /tmp and the machine id.

use super::*;

/// Mounts /proc, /sys, /dev and /run (an already-mounted one is fine).
pub fn mount_api_filesystems(sys: &dyn Sys, l: &Layout) -> Result<(), Stage1Error> {
    let common = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let table: [(&str, PathBuf, &str, MountFlags, &str); 4] = [
        ("proc", l.proc(), "proc", common, ""),
        ("sysfs", l.sys(), "sysfs", common, ""),
        (
            "devtmpfs",
            l.dev(),
            "devtmpfs",
            MountFlags::NOSUID,
            "mode=0755",
        ),
        (
            "tmpfs",
            l.run(),
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            "mode=0755",
        ),
    ];
    for (src, dir, fs, flags, data) in table {
        let _ = std::fs::create_dir_all(&dir);
        match sys.mount(src, &dir, fs, flags, data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(16) => {} // EBUSY: already mounted
            Err(e) => {
                return Err(fail(
                    "mounting the API filesystems",
                    format!("{}: {e}", dir.display()),
                ))
            }
        }
    }
    Ok(())
}

/// Loads the modules listed in /etc/kiln/modules.load, in order. EEXIST counts as loaded;
/// other failures are reported and skipped. Returns (loaded, failed).
pub fn load_modules(sys: &dyn Sys, l: &Layout, say: &dyn Fn(&str)) -> (u32, u32) {
    let Ok(list) = std::fs::read_to_string(l.modules_load()) else {
        return (0, 0);
    };
    let (mut ok, mut bad) = (0, 0);
    for line in list
        .lines()
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
    {
        match sys.finit_module(&l.inside(line)) {
            Ok(()) => ok += 1,
            Err(e) if e.raw_os_error() == Some(17) => ok += 1, // EEXIST
            // ENODEV from a module's init: not for this machine (efivarfs on a BIOS boot).
            Err(e) if e.raw_os_error() == Some(19) => {}
            Err(e) => {
                bad += 1;
                say(&format!("kiln: stage 1: module {line} not loaded: {e}"));
            }
        }
    }
    (ok, bad)
}

pub(super) fn mount_squashfs(sys: &dyn Sys, l: &Layout, dev: &Path) -> Result<(), Stage1Error> {
    mkdir(&l.sysroot())?;
    sys.mount(
        &dev.to_string_lossy(),
        &l.sysroot(),
        "squashfs",
        MountFlags::RDONLY,
        "",
    )
    .map_err(|e| {
        fail(
            "mounting the root squashfs",
            format!("{}: {e}", dev.display()),
        )
    })
}

/// Runs tools from the new root (mkfs.ext4, e2fsck, resize2fs) with /dev and /proc there.
pub(super) fn run_root_tools(
    sys: &dyn Sys,
    l: &Layout,
    cmds: &[&[&str]],
) -> Result<(), Stage1Error> {
    let (dev, proc) = (l.sysroot().join("dev"), l.sysroot().join("proc"));
    sys.mount(
        "devtmpfs",
        &dev,
        "devtmpfs",
        MountFlags::NOSUID,
        "mode=0755",
    )
    .map_err(|e| fail("mounting devtmpfs for the root's tools", e))?;
    let proc_ok = sys
        .mount("proc", &proc, "proc", MountFlags::empty(), "")
        .is_ok();
    let mut result = Ok(());
    for argv in cmds {
        match sys.run_chrooted(&l.sysroot(), argv) {
            // e2fsck: 1 = errors corrected, 2 = corrected, reboot advised. Both usable.
            Ok(0) => {}
            Ok(1 | 2) if argv[0].ends_with("e2fsck") => {}
            Ok(code) => {
                result = Err(fail(
                    "preparing kiln-data",
                    format!("{} exited with {code}", argv.join(" ")),
                ));
                break;
            }
            Err(e) => {
                result = Err(fail(
                    "preparing kiln-data",
                    format!("running {}: {e}", argv[0]),
                ));
                break;
            }
        }
    }
    if proc_ok {
        let _ = sys.umount(&proc);
    }
    let _ = sys.umount(&dev);
    result
}

/// A tmpfs at `/<rel>` of the new root (nodev, nosuid) with `mode`.
pub(super) fn mount_tmpfs(
    sys: &dyn Sys,
    l: &Layout,
    rel: &str,
    mode: &str,
) -> Result<(), Stage1Error> {
    sys.mount(
        "tmpfs",
        &l.sysroot().join(rel),
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOSUID,
        &format!("mode={mode}"),
    )
    .map_err(|e| fail("mounting a tmpfs", format!("/{rel}: {e}")))
}

/// Mounts the root and /var for `source`; returns the description of /var.
pub(super) fn mount_root_and_var(
    sys: &dyn Sys,
    l: &Layout,
    source: &RootSource,
    t: &mut Timings,
    say: &dyn Fn(&str),
) -> Result<String, Stage1Error> {
    let cb = l.class_block();
    let mut data: Option<(String, bool)> = None;
    match source {
        RootSource::Slot(slot) => {
            let label = format!("kiln-root-{slot}");
            let part = wait_for(sys, DEVICE_TIMEOUT_MS, || {
                probe::find_partition(&cb, &label)
            })
            .ok_or_else(|| {
                fail(
                    "finding the root",
                    format!("no partition {label} after 30 s"),
                )
            })?;
            // Partition edits first: BLKRRPART is refused once a partition is mounted.
            let outcome = prepare_data_partition(sys, l, &part, say);
            let wait = if matches!(outcome, Some(DataPartition::Created(_))) {
                DEVICE_TIMEOUT_MS
            } else {
                0
            };
            if let Some(dev) = wait_for(sys, wait, || probe::find_partition(&cb, gpt::DATA_LABEL)) {
                data = Some((dev, matches!(outcome, Some(DataPartition::Grown(_)))));
            }
            mount_squashfs(sys, l, &l.dev().join(&part))?;
            t.root = format!("slot-{slot}");
        }
        RootSource::Iso => {
            let dev = wait_for(sys, DEVICE_TIMEOUT_MS, || {
                probe::block_devices(&cb).into_iter().find(|d| {
                    probe::iso9660_label(&l.dev().join(&d.devname)).as_deref() == Some(ISO_LABEL)
                })
            })
            .ok_or_else(|| {
                fail(
                    "finding the root",
                    format!("no ISO 9660 volume labelled {ISO_LABEL} after 30 s"),
                )
            })?;
            let media = l.media();
            mkdir(&media)?;
            let node = l.dev().join(&dev.devname);
            sys.mount(
                &node.to_string_lossy(),
                &media,
                "iso9660",
                MountFlags::RDONLY,
                "",
            )
            .map_err(|e| fail("mounting the ISO", format!("{}: {e}", node.display())))?;
            let file = media.join("kiln/root.squashfs");
            let lo = sys.loop_attach(&l.dev(), &file).map_err(|e| {
                fail(
                    "attaching the root squashfs to a loop device",
                    format!("{}: {e}", file.display()),
                )
            })?;
            mount_squashfs(sys, l, &lo)?;
            data = probe::find_partition(&cb, gpt::DATA_LABEL).map(|d| (d, false));
            t.root = "iso".into();
        }
        RootSource::Embedded => {
            let file = l.embedded_squashfs();
            let lo = sys.loop_attach(&l.dev(), &file).map_err(|e| {
                fail(
                    "attaching the embedded root squashfs",
                    format!("{}: {e}", file.display()),
                )
            })?;
            mount_squashfs(sys, l, &lo)?;
            data = probe::find_partition(&cb, gpt::DATA_LABEL).map(|d| (d, false));
            t.root = "embedded".into();
        }
    }
    t.root_mounted = sys.monotonic_ms();
    let var = match data {
        Some((dev, grown)) => format!(
            "kiln-data {} ({dev})",
            mount_data(sys, l, &dev, grown, say)?
        ),
        None => {
            mount_var_tmpfs(sys, l)?;
            "tmpfs".to_string()
        }
    };
    t.var_mounted = sys.monotonic_ms();
    Ok(var)
}

/// Overlays /sysroot/etc with an upper layer on /var.
pub(super) fn overlay_etc(sys: &dyn Sys, l: &Layout) -> Result<(), Stage1Error> {
    let etc = l.sysroot().join("etc");
    let base = l.sysroot().join("var/lib/kiln/etc");
    let (upper, work) = (base.join("upper"), base.join("work"));
    mkdir(&upper)?;
    mkdir(&work)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        etc.display(),
        upper.display(),
        work.display()
    );
    sys.mount("overlay", &etc, "overlay", MountFlags::empty(), &data)
        .map_err(|e| fail("overlaying /etc", e))
}

/// /tmp is a tmpfs: the root is read-only, and programs such as runc (`kubectl exec`) write
/// their temporary files there.
pub(super) fn mount_tmp(sys: &dyn Sys, l: &Layout) -> Result<(), Stage1Error> {
    mount_tmpfs(sys, l, "tmp", "1777")
}

pub(super) fn valid_machine_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && s != "0".repeat(32)
}

/// Generates the machine id once into /var/lib/kiln/machine-id and writes /etc/machine-id.
pub fn machine_id(sys: &dyn Sys, sysroot: &Path) -> Result<String, Stage1Error> {
    let stored = sysroot.join("var/lib/kiln/machine-id");
    let id = match std::fs::read_to_string(&stored) {
        Ok(s) if valid_machine_id(s.trim()) => s.trim().to_string(),
        _ => {
            let mut b = [0u8; 16];
            sys.random(&mut b)
                .map_err(|e| fail("generating the machine id", e))?;
            let id = hex::encode(b);
            std::fs::write(&stored, format!("{id}\n")).map_err(|e| {
                fail(
                    "storing the machine id",
                    format!("{}: {e}", stored.display()),
                )
            })?;
            id
        }
    };
    let etc_id = sysroot.join("etc/machine-id");
    if std::fs::read_to_string(&etc_id)
        .ok()
        .as_deref()
        .map(str::trim)
        != Some(id.as_str())
    {
        std::fs::write(&etc_id, format!("{id}\n")).map_err(|e| {
            fail(
                "writing /etc/machine-id",
                format!("{}: {e}", etc_id.display()),
            )
        })?;
    }
    Ok(id)
}
