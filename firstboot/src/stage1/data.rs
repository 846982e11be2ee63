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

/// What `kiln-data` holds, as far as stage 1 must know before touching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataState {
    /// An ext4 filesystem with its primary superblock.
    Ext4,
    /// Never formatted: nothing in its first 64 KiB and no backup superblock (a partition
    /// created just before a power cut, or a mkfs cut before it wrote any superblock).
    Blank,
    /// No primary superblock but a backup one: a damaged ext4 that e2fsck can repair.
    Damaged,
    /// Bytes of no kind Kiln knows, and no superblock anywhere: not Kiln's to format.
    Unknown,
    /// It could not be read.
    Unreadable(String),
}

/// Where ext4 keeps the backup superblock of block group 1, for 1, 2 and 4 KiB blocks.
const BACKUP_SUPERBLOCKS: [u64; 3] = [8193 * 1024, 16384 * 2048, 32768 * 4096];

/// Reads what `path` holds: [`DataState`].
pub fn data_state(path: &Path) -> DataState {
    use std::os::unix::fs::FileExt as _;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return DataState::Unreadable(e.to_string()),
    };
    let mut head = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < head.len() {
        match f.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return DataState::Unreadable(e.to_string()),
        }
    }
    head.truncate(n);
    if head.get(1080..1082) == Some(&[0x53, 0xEF][..]) {
        return DataState::Ext4;
    }
    let backup = BACKUP_SUPERBLOCKS.iter().any(|at| {
        let mut magic = [0u8; 2];
        f.read_exact_at(&mut magic, at + 56).is_ok() && magic == [0x53, 0xEF]
    });
    if backup {
        DataState::Damaged
    } else if head.iter().all(|&b| b == 0) {
        DataState::Blank
    } else {
        DataState::Unknown
    }
}

/// Formats (first time only) or resizes `kiln-data` and mounts it at /sysroot/var. Only a
/// blank partition is formatted: a damaged ext4 is repaired by e2fsck (from a backup
/// superblock) and anything else stops the boot with the data left as it is.
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
    let state = data_state(&node);
    match &state {
        DataState::Ext4 | DataState::Blank => {}
        DataState::Damaged => {
            say(&format!(
                "kiln: stage 1: kiln-data ({devname}) has lost its primary superblock; \
                 repairing it with e2fsck from a backup"
            ));
            run_root_tools(sys, l, &[&["/usr/sbin/e2fsck", "-f", "-y", &in_root]])?;
            how = "repaired";
        }
        DataState::Unknown => {
            return Err(fail(
                "checking kiln-data",
                format!(
                    "{} holds no ext4 superblock (primary or backup) but is not blank; \
                     not formatting it: copy off what it holds, then clear it",
                    node.display()
                ),
            ))
        }
        DataState::Unreadable(e) => {
            return Err(fail(
                "checking kiln-data",
                format!(
                    "{}: {e}; not formatting what cannot be read",
                    node.display()
                ),
            ))
        }
    }
    if state == DataState::Blank {
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
