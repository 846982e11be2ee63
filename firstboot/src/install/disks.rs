//! The disks the installer can see: `/sys/block/*` attributes and the first sectors of
//! each disk and partition (partition tables and filesystem signatures).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::select::Disk;
use crate::gpt::{self, Gpt};

/// Bytes read at the start of a disk or partition to find a signature (btrfs is at 64 KiB).
const PROBE_LEN: usize = 68 * 1024;

fn at(b: &[u8], offset: usize, magic: &[u8]) -> bool {
    b.get(offset..offset + magic.len()) == Some(magic)
}

/// The filesystem (or volume) signature at the start of `b`, blkid-style names.
pub fn fs_signature(b: &[u8]) -> Option<&'static str> {
    let table: [(&str, usize, &[u8]); 13] = [
        ("ext4", 0x438, &[0x53, 0xEF]),
        ("xfs", 0, b"XFSB"),
        ("squashfs", 0, b"hsqs"),
        ("btrfs", 0x10040, b"_BHRfS_M"),
        ("iso9660", 0x8001, b"CD001"),
        ("vfat", 82, b"FAT32   "),
        ("vfat", 54, b"FAT16   "),
        ("vfat", 54, b"FAT12   "),
        ("ntfs", 3, b"NTFS    "),
        ("swap", 4086, b"SWAPSPACE2"),
        ("crypto_LUKS", 0, b"LUKS\xba\xbe"),
        ("LVM2_member", 512 + 24, b"LVM2 001"),
        ("linux_raid_member", 4096, &[0xFC, 0x4E, 0x2B, 0xA9]),
    ];
    table
        .iter()
        .find(|(_, off, magic)| at(b, *off, magic))
        .map(|(name, _, _)| *name)
}

/// The partition table at the start of `b` (`gpt` or `mbr`).
pub fn table_kind(b: &[u8]) -> Option<&'static str> {
    if at(b, 512, b"EFI PART") {
        return Some("gpt");
    }
    let fat_or_ntfs = matches!(fs_signature(b), Some("vfat" | "ntfs"));
    let entries = b.get(446..510)?;
    let any_part = entries.chunks(16).any(|e| e[4] != 0);
    (at(b, 510, &[0x55, 0xAA]) && any_part && !fat_or_ntfs).then_some("mbr")
}

fn read_at(f: &mut File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut n = 0;
    while n < len {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    buf.truncate(n);
    buf
}

/// Partition table, filesystems and `kiln-data` of the disk (or image file) at `node`.
pub fn probe_contents(node: &Path, disk: &mut Disk) {
    let Ok(mut f) = File::open(node) else {
        disk.filesystems.push("(unreadable)".into());
        return;
    };
    let head = read_at(&mut f, 0, PROBE_LEN);
    disk.data = head.iter().any(|&b| b != 0);
    disk.table = table_kind(&head).map(str::to_string);
    let mut parts: Vec<(u32, u64)> = Vec::new();
    match disk.table.as_deref() {
        Some("gpt") => match Gpt::read(&mut f, 512) {
            Ok(g) => {
                for (i, e) in g.entries.iter().enumerate() {
                    if e.type_guid == [0; 16] {
                        continue;
                    }
                    if e.name == gpt::DATA_LABEL {
                        disk.kiln_data = true;
                    }
                    parts.push((i as u32 + 1, e.first_lba));
                }
            }
            Err(e) => disk.filesystems.push(format!("(unreadable GPT: {e})")),
        },
        Some(_) => {
            for (i, e) in head[446..510].chunks(16).enumerate() {
                let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
                if e[4] != 0 && e[4] != 0x05 && e[4] != 0x0F && start != 0 {
                    parts.push((i as u32 + 1, u64::from(start)));
                }
            }
        }
        None => {}
    }
    if let Some(fs) = fs_signature(&head) {
        disk.filesystems.push(format!("{fs} (whole disk)"));
    }
    for (n, lba) in parts {
        let b = read_at(&mut f, lba * 512, PROBE_LEN);
        if let Some(fs) = fs_signature(&b) {
            disk.filesystems.push(format!("{fs} (partition {n})"));
        }
    }
}

fn attr(dir: &Path, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|n| std::fs::read_to_string(dir.join(n)).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Every whole disk under `sys_block` (normally `/sys/block`; loop, ram and zram devices
/// skipped), sorted by name, probed through the nodes under `dev`.
pub fn scan(sys_block: &Path, dev: &Path) -> Vec<Disk> {
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["loop", "ram", "zram"].iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let d = sys_block.join(&name);
            let num = |n: &str| attr(&d, &[n]).parse::<u64>().unwrap_or(0);
            let mut disk = Disk {
                size: num("size") * 512,
                sector: attr(&d, &["queue/logical_block_size"])
                    .parse()
                    .unwrap_or(512),
                removable: num("removable") == 1,
                read_only: num("ro") == 1,
                model: attr(&d, &["device/model"]),
                serial: attr(&d, &["device/serial", "serial"]),
                wwid: attr(&d, &["device/wwid", "wwid"]),
                name,
                ..Disk::default()
            };
            if disk.size > 0 {
                probe_contents(&dev.join(&disk.name), &mut disk);
            }
            disk
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(argv: &[&str], img: &Path) -> bool {
        Command::new(argv[0])
            .args(&argv[1..])
            .arg(img)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn blank(dir: &Path, name: &str, mib: u64) -> std::path::PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().set_len(mib << 20).unwrap();
        p
    }

    fn probed(p: &Path) -> Disk {
        let mut d = Disk::default();
        probe_contents(p, &mut d);
        d
    }

    /// Real mkfs tools as the oracles; each one not installed is skipped.
    #[test]
    fn signatures_made_by_real_tools() {
        let t = tempfile::tempdir().unwrap();
        let cases: [(&[&str], &str); 5] = [
            (&["mkfs.ext4", "-q", "-F"], "ext4"),
            (&["mkfs.vfat"], "vfat"),
            (&["mkfs.vfat", "-F", "32"], "vfat"),
            (&["mkswap"], "swap"),
            (&["mkfs.xfs", "-q", "-f"], "xfs"),
        ];
        let mut tried = 0;
        for (i, (argv, want)) in cases.iter().enumerate() {
            let img = blank(t.path(), &format!("fs{i}.img"), 64);
            if !run(argv, &img) {
                continue;
            }
            tried += 1;
            let d = probed(&img);
            assert_eq!(
                d.filesystems,
                vec![format!("{want} (whole disk)")],
                "{argv:?}"
            );
            assert_eq!(d.table, None, "{argv:?}");
        }
        assert!(
            tried >= 2,
            "mkfs.ext4 and mkfs.vfat are expected on the host"
        );
        let empty = blank(t.path(), "empty.img", 8);
        assert_eq!(probed(&empty), Disk::default());
        // One byte of no known kind makes a disk not blank.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&empty)
            .unwrap();
        f.seek(SeekFrom::Start(40_000)).unwrap();
        std::io::Write::write_all(&mut f, b"\x01").unwrap();
        let d = probed(&empty);
        assert!(
            d.data && d.table.is_none() && d.filesystems.is_empty(),
            "{d:?}"
        );
    }

    #[test]
    fn partitions_are_probed_through_the_table() {
        if Command::new("sfdisk").arg("--version").output().is_err() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        // GPT (with kiln-data) made by sfdisk; ext4 in partition 5.
        let img = t.path().join("gpt.img");
        crate::gpt::tests::make_image(&img, 64);
        let mut d = probed(&img);
        assert_eq!(d.table.as_deref(), Some("gpt"));
        assert!(!d.kiln_data && d.filesystems.is_empty(), "{d:?}");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        crate::gpt::ensure_data_partition(&mut f, 512).unwrap();
        let g = Gpt::read(&mut f, 512).unwrap();
        let (_, e) = g.find(gpt::DATA_LABEL).unwrap();
        let part = t.path().join("p5.img");
        let len = (e.last_lba - e.first_lba + 1) * 512;
        File::create(&part).unwrap().set_len(len).unwrap();
        if run(&["mkfs.ext4", "-q", "-F"], &part) {
            let bytes = std::fs::read(&part).unwrap();
            use std::io::Write;
            f.seek(SeekFrom::Start(e.first_lba * 512)).unwrap();
            f.write_all(&bytes[..1 << 20]).unwrap();
            d = probed(&img);
            assert_eq!(d.filesystems, vec!["ext4 (partition 5)".to_string()]);
        } else {
            d = probed(&img);
        }
        assert!(d.kiln_data);

        // MBR made by sfdisk, vfat in partition 1.
        let mbr = blank(t.path(), "mbr.img", 64);
        let mut c = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&mbr)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\nstart=2048, size=40960, type=c\n")
            .unwrap();
        assert!(c.wait().unwrap().success());
        assert_eq!(probed(&mbr).table.as_deref(), Some("mbr"));
        assert!(probed(&mbr).filesystems.is_empty());
        let p1 = blank(t.path(), "p1.img", 20);
        if run(&["mkfs.vfat"], &p1) {
            let bytes = std::fs::read(&p1).unwrap();
            let mut f = std::fs::OpenOptions::new().write(true).open(&mbr).unwrap();
            f.seek(SeekFrom::Start(2048 * 512)).unwrap();
            f.write_all(&bytes[..1 << 20]).unwrap();
            assert_eq!(probed(&mbr).filesystems, vec!["vfat (partition 1)"]);
        }
    }

    #[test]
    fn sysfs_attributes() {
        let t = tempfile::tempdir().unwrap();
        let sb = t.path().join("sys/block");
        let dev = t.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        let mk = |name: &str, files: &[(&str, &str)]| {
            let d = sb.join(name);
            std::fs::create_dir_all(d.join("device")).unwrap();
            std::fs::create_dir_all(d.join("queue")).unwrap();
            for (f, v) in files {
                std::fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
        };
        mk(
            "vda",
            &[("size", "2048"), ("removable", "0"), ("serial", "KILN-1")],
        );
        mk(
            "sda",
            &[
                ("size", "4096"),
                ("removable", "1"),
                ("ro", "1"),
                ("device/model", "QEMU HARDDISK   "),
                ("device/wwid", "t10.ATA QEMU"),
                ("queue/logical_block_size", "4096"),
            ],
        );
        mk("loop0", &[("size", "100")]);
        std::fs::write(dev.join("vda"), vec![0u8; 1 << 20]).unwrap();
        let disks = scan(&sb, &dev);
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].name, "sda");
        assert!(disks[0].removable && disks[0].read_only);
        assert_eq!(disks[0].model, "QEMU HARDDISK");
        assert_eq!(disks[0].wwid, "t10.ATA QEMU");
        assert_eq!(disks[0].sector, 4096);
        assert_eq!(disks[0].filesystems, vec!["(unreadable)".to_string()]);
        assert_eq!(disks[1].size, 1 << 20);
        assert_eq!(disks[1].serial, "KILN-1");
        assert_eq!(disks[1].sector, 512);
        assert!(disks[1].filesystems.is_empty() && disks[1].table.is_none());
    }
}
