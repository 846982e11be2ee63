//! Finding block devices: sysfs uevents, filesystem labels and magics read from the device.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// A block device from `/sys/class/block/*/uevent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name, e.g. `vda3` (the node is `/dev/<devname>`).
    pub devname: String,
    /// GPT partition name, if any.
    pub partname: Option<String>,
    /// Whether this is a partition.
    pub is_partition: bool,
}

/// Lists block devices under `class_block` (normally `/sys/class/block`), sorted by name.
pub fn block_devices(class_block: &Path) -> Vec<BlockDev> {
    let Ok(rd) = std::fs::read_dir(class_block) else {
        return Vec::new();
    };
    let mut out: Vec<BlockDev> = rd
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("uevent")).ok()?;
            let mut dev = BlockDev {
                devname: e.file_name().to_string_lossy().into_owned(),
                partname: None,
                is_partition: false,
            };
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("DEVNAME=") {
                    dev.devname = v.to_string();
                } else if let Some(v) = line.strip_prefix("PARTNAME=") {
                    dev.partname = Some(v.to_string());
                } else if line == "DEVTYPE=partition" {
                    dev.is_partition = true;
                }
            }
            Some(dev)
        })
        .collect();
    out.sort_by(|a, b| a.devname.cmp(&b.devname));
    out
}

/// The device whose GPT partition name is `name`.
pub fn find_partition(class_block: &Path, name: &str) -> Option<String> {
    block_devices(class_block)
        .into_iter()
        .find(|d| d.partname.as_deref() == Some(name))
        .map(|d| d.devname)
}

/// The whole disk holding partition `devname` (sysfs nests partitions under their disk).
pub fn parent_disk(class_block: &Path, devname: &str) -> Option<String> {
    let real = std::fs::canonicalize(class_block.join(devname)).ok()?;
    let parent = real.parent()?.file_name()?.to_string_lossy().into_owned();
    class_block
        .join(&parent)
        .join("uevent")
        .exists()
        .then_some(parent)
}

fn read_at(path: &Path, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// The ISO 9660 volume identifier (primary volume descriptor, byte 32768+40, 32 bytes).
pub fn iso9660_label(path: &Path) -> Option<String> {
    let pvd = read_at(path, 32768, 72)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    Some(String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string())
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// The label in the first volume-id entry (attribute 0x08, not a long-name part) of a FAT
/// root directory region.
fn fat_root_dir_label(dir: &[u8]) -> Option<String> {
    for e in dir.chunks_exact(32) {
        match e[0] {
            0x00 => return None,
            0xE5 => continue,
            _ => {}
        }
        if e[11] & 0x3F == 0x08 {
            return Some(String::from_utf8_lossy(&e[..11]).trim_end().to_string());
        }
    }
    None
}

/// The FAT volume label, as blkid reads it: the root directory's volume-id entry, else the
/// boot sector's (FAT12/16 at 43, FAT32 at 71) unless that is `NO NAME`.
pub fn vfat_label(path: &Path) -> Option<String> {
    let bs = read_at(path, 0, 512)?;
    if bs[510..512] != [0x55, 0xAA] {
        return None;
    }
    let fat32 = &bs[82..87] == b"FAT32";
    let boot_label = if fat32 {
        &bs[71..82]
    } else if &bs[54..57] == b"FAT" {
        &bs[43..54]
    } else {
        return None;
    };
    let bps = le16(&bs, 11);
    let spc = u64::from(bs[13]);
    let reserved = le16(&bs, 14);
    let fats = u64::from(bs[16]);
    let (dir_offset, dir_len) = if fat32 {
        let first_data = reserved + fats * le32(&bs, 36);
        let root_cluster = le32(&bs, 44).max(2);
        ((first_data + (root_cluster - 2) * spc) * bps, spc * bps)
    } else {
        ((reserved + fats * le16(&bs, 22)) * bps, le16(&bs, 17) * 32)
    };
    // Bounded read: a corrupt boot sector must not make us allocate gigabytes.
    let dir = read_at(path, dir_offset, dir_len.min(1 << 20) as usize);
    if let Some(l) = dir.as_deref().and_then(fat_root_dir_label) {
        return Some(l);
    }
    let l = String::from_utf8_lossy(boot_label).trim_end().to_string();
    (l != "NO NAME").then_some(l)
}

/// Whether `path` holds a NoCloud seed (an iso9660 or vfat filesystem labelled `cidata`,
/// any case); gives the filesystem type to mount it with.
pub fn nocloud_fstype(path: &Path) -> Option<&'static str> {
    let is_cidata = |l: Option<String>| l.is_some_and(|l| l.eq_ignore_ascii_case("cidata"));
    if is_cidata(iso9660_label(path)) {
        Some("iso9660")
    } else if is_cidata(vfat_label(path)) {
        Some("vfat")
    } else {
        None
    }
}

/// Whether an ext2/3/4 superblock magic (0xEF53 at byte 1080) is present.
pub fn has_ext4(path: &Path) -> bool {
    read_at(path, 1080, 2).is_some_and(|m| m == [0x53, 0xEF])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn fake_sysfs(root: &Path, disk: &str, parts: &[(&str, &str)]) {
        let d = root.join("devices").join(disk);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("uevent"),
            format!("MAJOR=254\nDEVNAME={disk}\nDEVTYPE=disk\n"),
        )
        .unwrap();
        let cb = root.join("class/block");
        std::fs::create_dir_all(&cb).unwrap();
        std::os::unix::fs::symlink(&d, cb.join(disk)).unwrap();
        for (p, name) in parts {
            let pd = d.join(p);
            std::fs::create_dir_all(&pd).unwrap();
            std::fs::write(
                pd.join("uevent"),
                format!("DEVNAME={p}\nDEVTYPE=partition\nPARTN=1\nPARTNAME={name}\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(&pd, cb.join(p)).unwrap();
        }
    }

    #[test]
    fn finds_partitions_and_their_disk() {
        let t = tempfile::tempdir().unwrap();
        fake_sysfs(
            t.path(),
            "vda",
            &[("vda3", "kiln-root-a"), ("vda4", "kiln-root-b")],
        );
        let cb = t.path().join("class/block");
        assert_eq!(find_partition(&cb, "kiln-root-b").as_deref(), Some("vda4"));
        assert_eq!(find_partition(&cb, "kiln-data"), None);
        assert_eq!(parent_disk(&cb, "vda4").as_deref(), Some("vda"));
        assert_eq!(block_devices(&cb).len(), 3);
        assert!(block_devices(&t.path().join("nope")).is_empty());
    }

    #[test]
    fn labels_from_real_images() {
        let t = tempfile::tempdir().unwrap();
        // ISO 9660 made by xorriso, FAT by mkfs.vfat: skip quietly when not installed.
        let iso = t.path().join("x.iso");
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let made = std::process::Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-V", "KILN", "-o"])
            .arg(&iso)
            .arg(&src)
            .status();
        if made.is_ok_and(|s| s.success()) {
            assert_eq!(iso9660_label(&iso).as_deref(), Some("KILN"));
            assert_eq!(vfat_label(&iso), None);
        }
        let fat = t.path().join("fat.img");
        std::fs::File::create(&fat)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let made = std::process::Command::new("mkfs.vfat")
            .args(["-n", "CIDATA"])
            .arg(&fat)
            .output();
        if made.is_ok_and(|o| o.status.success()) {
            assert_eq!(vfat_label(&fat).as_deref(), Some("CIDATA"));
            assert_eq!(iso9660_label(&fat), None);
            assert!(!has_ext4(&fat));
        }
        let mut ext = vec![0u8; 2048];
        ext[1080] = 0x53;
        ext[1081] = 0xEF;
        std::fs::write(t.path().join("ext"), &ext).unwrap();
        assert!(has_ext4(&t.path().join("ext")));
    }

    fn run(cmd: &mut std::process::Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn nocloud_seeds_made_by_cloud_localds_are_found_by_label() {
        let t = tempfile::tempdir().unwrap();
        let ud = t.path().join("user-data");
        let md = t.path().join("meta-data");
        std::fs::write(&ud, "#cloud-config\nhostname: seeded\n").unwrap();
        std::fs::write(&md, "local-hostname: seeded\n").unwrap();
        let iso = t.path().join("seed.iso");
        run(std::process::Command::new("cloud-localds")
            .arg(&iso)
            .arg(&ud)
            .arg(&md));
        assert_eq!(iso9660_label(&iso).as_deref(), Some("cidata"));
        assert_eq!(nocloud_fstype(&iso), Some("iso9660"));
        let fat = t.path().join("seed.img");
        run(std::process::Command::new("cloud-localds")
            .args(["--filesystem", "vfat"])
            .arg(&fat)
            .arg(&ud)
            .arg(&md));
        assert!(vfat_label(&fat).is_some_and(|l| l.eq_ignore_ascii_case("cidata")));
        assert_eq!(nocloud_fstype(&fat), Some("vfat"));
    }

    #[test]
    fn fat_label_from_the_root_directory_when_the_boot_sector_says_no_name() {
        let t = tempfile::tempdir().unwrap();
        // FAT12, FAT16 and FAT32, each labelled by mkfs.vfat; then the boot sector label is
        // blanked the way some formatters leave it, so only the root directory entry tells.
        for (bits, mib) in [("12", 2u64), ("16", 32), ("32", 64)] {
            let img = t.path().join(format!("fat{bits}.img"));
            std::fs::File::create(&img)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            run(std::process::Command::new("mkfs.vfat")
                .args(["-F", bits, "-n", "CIDATA"])
                .arg(&img));
            assert_eq!(vfat_label(&img).as_deref(), Some("CIDATA"), "FAT{bits}");
            let mut bytes = std::fs::read(&img).unwrap();
            let at = if bits == "32" { 71 } else { 43 };
            bytes[at..at + 11].copy_from_slice(b"NO NAME    ");
            std::fs::write(&img, &bytes).unwrap();
            assert_eq!(vfat_label(&img).as_deref(), Some("CIDATA"), "FAT{bits}");
            assert_eq!(nocloud_fstype(&img), Some("vfat"), "FAT{bits}");
        }
        // No label anywhere: not a seed.
        let img = t.path().join("plain.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        run(std::process::Command::new("mkfs.vfat").arg(&img));
        assert_eq!(vfat_label(&img), None);
        assert_eq!(nocloud_fstype(&img), None);
    }
}
