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

/// The FAT volume label from the boot sector (FAT12/16 at 43, FAT32 at 71).
pub fn vfat_label(path: &Path) -> Option<String> {
    let bs = read_at(path, 0, 512)?;
    if bs[510..512] != [0x55, 0xAA] {
        return None;
    }
    let label = if &bs[82..87] == b"FAT32" {
        &bs[71..82]
    } else if &bs[54..57] == b"FAT" {
        &bs[43..54]
    } else {
        return None;
    };
    Some(String::from_utf8_lossy(label).trim_end().to_string())
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
}
