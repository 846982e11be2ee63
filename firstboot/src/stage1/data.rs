//! `kiln-data`, the persistent /var: found, created or grown, checked and mounted; a tmpfs
//! when there is none.

use super::*;

/// The size of the ext4 filesystem on `path` in MiB, from its superblock.
pub fn ext4_size_mib(path: &Path) -> Option<u64> {
    use std::os::unix::fs::FileExt as _;
    let mut sb = [0u8; 1024];
    std::fs::File::open(path)
        .ok()?
        .read_exact_at(&mut sb, 1024)
        .ok()?;
    if sb[56..58] != [0x53, 0xEF] {
        return None;
    }
    let u32_at = |o: usize| u64::from(u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]));
    let mut blocks = u32_at(4);
    if u32_at(0x60) & 0x80 != 0 {
        blocks |= u32_at(0x150) << 32;
    }
    let block_size = 1024u64.checked_shl(u32::try_from(u32_at(24)).ok()?)?;
    Some(blocks.saturating_mul(block_size) >> 20)
}

/// Formats (first time only) or resizes `kiln-data` and mounts it at /sysroot/var.
pub(super) fn mount_data(
    sys: &dyn Sys,
    l: &Layout,
    devname: &str,
    grown: bool,
    say: &dyn Fn(&str),
) -> Result<&'static str, Stage1Error> {
    let node = l.dev().join(devname);
    let in_root = format!("/dev/{devname}");
    let mut how = if grown { "grown" } else { "existing" };
    if !probe::has_ext4(&node) {
        run_root_tools(
            sys,
            l,
            &[&[
                "/usr/sbin/mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "kiln-data",
                &in_root,
            ]],
        )?;
        how = "created";
    } else if grown {
        let before = ext4_size_mib(&node);
        run_root_tools(
            sys,
            l,
            &[
                &["/usr/sbin/e2fsck", "-f", "-p", &in_root],
                &["/usr/sbin/resize2fs", &in_root],
            ],
        )?;
        if let (Some(b), Some(a)) = (before, ext4_size_mib(&node)) {
            say(&format!(
                "kiln: stage 1: kiln-data grown from {b} to {a} MiB ({devname})"
            ));
        }
    }
    let var = l.sysroot().join("var");
    sys.mount(
        &node.to_string_lossy(),
        &var,
        "ext4",
        MountFlags::NODEV | MountFlags::NOSUID,
        "",
    )
    .map_err(|e| {
        fail(
            "mounting kiln-data at /var",
            format!("{}: {e}", node.display()),
        )
    })?;
    Ok(how)
}

pub(super) fn mount_var_tmpfs(sys: &dyn Sys, l: &Layout) -> Result<(), Stage1Error> {
    mount_tmpfs(sys, l, "var", "0755")
}

/// Creates or grows kiln-data on the disk holding `root_part`. Returns (grown-or-created, created).
pub(super) fn prepare_data_partition(
    sys: &dyn Sys,
    l: &Layout,
    root_part: &str,
    say: &dyn Fn(&str),
) -> Option<DataPartition> {
    let cb = l.class_block();
    let Some(disk) = probe::parent_disk(&cb, root_part) else {
        say(&format!(
            "kiln: stage 1: no parent disk for {root_part}; /var on tmpfs"
        ));
        return None;
    };
    let disk_node = l.dev().join(&disk);
    let res = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_node)
        .map_err(|e| e.to_string())
        .and_then(|mut f| gpt::ensure_data_partition(&mut f, 512).map_err(|e| e.to_string()));
    match res {
        Ok(out) => {
            if !matches!(out, DataPartition::Unchanged(_)) {
                if let Err(e) = sys.reread_partitions(&disk_node) {
                    say(&format!(
                        "kiln: stage 1: re-reading the partitions of {disk}: {e}"
                    ));
                }
            }
            Some(out)
        }
        Err(e) => {
            say(&format!(
                "kiln: stage 1: kiln-data on {disk}: {e}; /var on tmpfs"
            ));
            None
        }
    }
}
