//! A small GPT editor for one job: create or grow the `kiln-data` partition in the free space
//! after the last partition, moving the backup header and entries when the disk grew.
//!
//! Works on any `Read + Write + Seek` (a block device or, in tests, a file image).

use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};

/// The GPT name of the data partition.
pub const DATA_LABEL: &str = "kiln-data";
/// Entries in a table [`Gpt::new`] makes (the usual 128, 16 KiB of them).
pub const ENTRY_COUNT: u32 = 128;
/// Bytes per entry in a table [`Gpt::new`] makes.
pub const ENTRY_SIZE: u32 = 128;
/// Linux filesystem data, 0FC63DAF-8483-4772-8E79-3D69D8477DE4, in on-disk byte order.
pub const LINUX_FS_TYPE: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];
/// Partition starts are aligned to 1 MiB.
const ALIGN_BYTES: u64 = 1 << 20;
/// Refuse to create a data partition smaller than this.
const MIN_DATA_BYTES: u64 = 16 << 20;

/// Errors from reading or editing a GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// I/O on the device failed.
    #[error("{action} on the disk: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The primary header is missing or corrupt.
    #[error("reading the primary GPT header: {0}")]
    BadHeader(&'static str),
    /// The disk is smaller than the GPT says.
    #[error("the disk ({disk_sectors} sectors) is smaller than its GPT ({gpt_sectors} sectors)")]
    Shrunk { disk_sectors: u64, gpt_sectors: u64 },
    /// No room or no free entry for the data partition.
    #[error("creating {DATA_LABEL}: {0}")]
    NoSpace(&'static str),
}

fn io_err(action: &'static str) -> impl FnOnce(io::Error) -> GptError {
    move |source| GptError::Io { action, source }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// One partition entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub type_guid: [u8; 16],
    pub part_guid: [u8; 16],
    pub first_lba: u64,
    pub last_lba: u64,
    pub attrs: u64,
    pub name: String,
}

impl Entry {
    fn is_used(&self) -> bool {
        self.type_guid != [0; 16]
    }
    fn parse(b: &[u8]) -> Entry {
        let mut type_guid = [0; 16];
        type_guid.copy_from_slice(&b[0..16]);
        let mut part_guid = [0; 16];
        part_guid.copy_from_slice(&b[16..32]);
        let units: Vec<u16> = b[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Entry {
            type_guid,
            part_guid,
            first_lba: le64(b, 32),
            last_lba: le64(b, 40),
            attrs: le64(b, 48),
            name: String::from_utf16_lossy(&units),
        }
    }
    /// The entry's 128 bytes (the rest of a larger entry slot is zeroed).
    pub fn encode(&self, b: &mut [u8]) {
        b.fill(0);
        b[0..16].copy_from_slice(&self.type_guid);
        b[16..32].copy_from_slice(&self.part_guid);
        b[32..40].copy_from_slice(&self.first_lba.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_lba.to_le_bytes());
        b[48..56].copy_from_slice(&self.attrs.to_le_bytes());
        for (i, u) in self.name.encode_utf16().take(36).enumerate() {
            b[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
}

/// A GPT as read from the primary header.
#[derive(Debug, Clone)]
pub struct Gpt {
    sector: u64,
    header: Vec<u8>,
    entry_size: usize,
    /// The partition entry array (unused slots included, index = partition number - 1).
    pub entries: Vec<Entry>,
    raw_entries: Vec<u8>,
}

impl Gpt {
    /// A new table for a disk of `disk_sectors` sectors of `sector` bytes, with
    /// [`ENTRY_COUNT`] entries of [`ENTRY_SIZE`] bytes after the primary header;
    /// `entries` fill the first slots. [`Gpt::write`] puts it on the disk.
    pub fn new(
        sector: u64,
        disk_sectors: u64,
        disk_guid: [u8; 16],
        entries: Vec<Entry>,
    ) -> Result<Gpt, GptError> {
        if sector < 512 {
            return Err(GptError::BadHeader("sector size below 512 bytes"));
        }
        if entries.len() > ENTRY_COUNT as usize {
            return Err(GptError::BadHeader("too many partitions"));
        }
        let table = u64::from(ENTRY_COUNT * ENTRY_SIZE);
        let entry_sectors = table.div_ceil(sector);
        if disk_sectors < 3 + 2 * entry_sectors {
            return Err(GptError::BadHeader("disk too small for a GPT"));
        }
        let mut header = vec![0u8; sector as usize];
        header[0..8].copy_from_slice(b"EFI PART");
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        header[12..16].copy_from_slice(&92u32.to_le_bytes());
        header[40..48].copy_from_slice(&(2 + entry_sectors).to_le_bytes());
        header[56..72].copy_from_slice(&disk_guid);
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        header[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        let mut all = entries;
        all.resize(ENTRY_COUNT as usize, Entry::default());
        Ok(Gpt {
            sector,
            header,
            entry_size: ENTRY_SIZE as usize,
            entries: all,
            raw_entries: vec![0u8; table as usize],
        })
    }

    /// Reads and checks the primary header and entry array.
    pub fn read<D: Read + Seek>(dev: &mut D, sector: u64) -> Result<Gpt, GptError> {
        let mut header = vec![0u8; sector as usize];
        dev.seek(SeekFrom::Start(sector))
            .map_err(io_err("seeking to LBA 1"))?;
        dev.read_exact(&mut header)
            .map_err(io_err("reading the GPT header"))?;
        if &header[0..8] != b"EFI PART" {
            return Err(GptError::BadHeader("no 'EFI PART' signature"));
        }
        let hsize = le32(&header, 12) as usize;
        if !(92..=sector as usize).contains(&hsize) {
            return Err(GptError::BadHeader("header size out of range"));
        }
        let mut h = header[..hsize].to_vec();
        h[16..20].fill(0);
        if crc32fast::hash(&h) != le32(&header, 16) {
            return Err(GptError::BadHeader("header CRC mismatch"));
        }
        let count = le32(&header, 80) as usize;
        let entry_size = le32(&header, 84) as usize;
        if !(128..=4096).contains(&entry_size) || count == 0 || count > 4096 {
            return Err(GptError::BadHeader("entry array size out of range"));
        }
        let mut raw_entries = vec![0u8; count * entry_size];
        dev.seek(SeekFrom::Start(le64(&header, 72) * sector))
            .map_err(io_err("seeking to the GPT entries"))?;
        dev.read_exact(&mut raw_entries)
            .map_err(io_err("reading the GPT entries"))?;
        if crc32fast::hash(&raw_entries) != le32(&header, 88) {
            return Err(GptError::BadHeader("entry array CRC mismatch"));
        }
        let entries = raw_entries.chunks(entry_size).map(Entry::parse).collect();
        Ok(Gpt {
            sector,
            header,
            entry_size,
            entries,
            raw_entries,
        })
    }

    /// The disk GUID in on-disk byte order.
    pub fn disk_guid(&self) -> [u8; 16] {
        let mut g = [0; 16];
        g.copy_from_slice(&self.header[56..72]);
        g
    }
    /// LBA of the backup header.
    pub fn alternate_lba(&self) -> u64 {
        le64(&self.header, 32)
    }
    /// Last LBA usable by partitions.
    pub fn last_usable(&self) -> u64 {
        le64(&self.header, 48)
    }
    fn entry_sectors(&self) -> u64 {
        (self.raw_entries.len() as u64).div_ceil(self.sector)
    }
    /// The partition number (1-based) and entry with GPT name `name`.
    pub fn find(&self, name: &str) -> Option<(u32, &Entry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.is_used() && e.name == name)
            .map(|(i, e)| (i as u32 + 1, e))
    }

    fn serialize_entries(&mut self) {
        let size = self.entry_size;
        for (i, e) in self.entries.iter().enumerate() {
            e.encode(&mut self.raw_entries[i * size..i * size + size]);
        }
    }

    fn header_bytes(&self, my_lba: u64, other_lba: u64, entries_lba: u64) -> Vec<u8> {
        let mut h = self.header.clone();
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&other_lba.to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&self.raw_entries).to_le_bytes());
        h[16..20].fill(0);
        let hsize = le32(&h, 12) as usize;
        let c = crc32fast::hash(&h[..hsize]);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        h
    }

    /// Writes primary and backup headers and entry arrays for a disk of `disk_sectors`:
    /// the backup first and the primary header last, so that until that last write
    /// (the commit point) the disk still holds the old, consistent table.
    pub fn write<D: Write + Seek>(
        &mut self,
        dev: &mut D,
        disk_sectors: u64,
    ) -> Result<(), GptError> {
        self.serialize_entries();
        let last = disk_sectors - 1;
        let backup_entries = last - self.entry_sectors();
        self.header[48..56].copy_from_slice(&(backup_entries - 1).to_le_bytes());
        let primary_entries = le64(&self.header, 72);
        let s = self.sector;
        let primary = self.header_bytes(1, last, primary_entries);
        let backup = self.header_bytes(last, 1, backup_entries);
        let mut put = |lba: u64, bytes: &[u8], what| -> Result<(), GptError> {
            dev.seek(SeekFrom::Start(lba * s)).map_err(io_err(what))?;
            dev.write_all(bytes).map_err(io_err(what))
        };
        put(
            backup_entries,
            &self.raw_entries,
            "writing the backup GPT entries",
        )?;
        put(last, &backup, "writing the backup GPT header")?;
        put(
            primary_entries,
            &self.raw_entries,
            "writing the primary GPT entries",
        )?;
        put(1, &primary, "writing the primary GPT header")?;
        self.header = primary;
        dev.flush().map_err(io_err("flushing the disk"))
    }
}

/// The partition GUID of `kiln-data`, derived from the disk GUID (v4-shaped, on-disk order).
pub fn data_part_guid(disk_guid: &[u8; 16]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(disk_guid);
    h.update(b"kiln-data");
    let d = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    // The hash read as on-disk (mixed-endian) bytes, made a version-4 RFC 4122 UUID.
    uuid::Builder::from_bytes_le(g)
        .with_version(uuid::Version::Random)
        .with_variant(uuid::Variant::RFC4122)
        .into_uuid()
        .to_bytes_le()
}

/// What [`ensure_data_partition`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPartition {
    /// A new partition with this number was appended.
    Created(u32),
    /// The disk grew; the backup GPT moved and this partition grew to the end.
    Grown(u32),
    /// The disk grew but the partition is not at the end: only the backup GPT moved.
    Moved(u32),
    /// Nothing to do.
    Unchanged(u32),
}

impl DataPartition {
    /// The partition number.
    pub fn number(self) -> u32 {
        match self {
            DataPartition::Created(n)
            | DataPartition::Grown(n)
            | DataPartition::Moved(n)
            | DataPartition::Unchanged(n) => n,
        }
    }
}

/// A protective MBR for a disk of `disk_sectors` sectors: one 0xEE partition over the disk
/// and `boot_code` (at most 440 bytes are used) in front.
pub fn protective_mbr(disk_sectors: u64, boot_code: Option<&[u8]>) -> [u8; 512] {
    let mut m = [0u8; 512];
    if let Some(code) = boot_code {
        let n = code.len().min(440);
        m[..n].copy_from_slice(&code[..n]);
    }
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    set_protective_size(&mut m, disk_sectors);
    m
}

fn set_protective_size(mbr: &mut [u8; 512], disk_sectors: u64) {
    let size = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
    mbr[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
}

fn update_protective_mbr<D: Read + Write + Seek>(
    dev: &mut D,
    disk_sectors: u64,
) -> Result<(), GptError> {
    let mut mbr = [0u8; 512];
    dev.seek(SeekFrom::Start(0))
        .map_err(io_err("reading the MBR"))?;
    dev.read_exact(&mut mbr)
        .map_err(io_err("reading the MBR"))?;
    if mbr[510..512] == [0x55, 0xAA] && mbr[446 + 4] == 0xEE {
        set_protective_size(&mut mbr, disk_sectors);
        dev.seek(SeekFrom::Start(0))
            .map_err(io_err("writing the MBR"))?;
        dev.write_all(&mbr).map_err(io_err("writing the MBR"))?;
    }
    Ok(())
}

/// Creates `kiln-data` in the free space after the last partition, or, if the disk grew,
/// moves the backup GPT to the new end and grows `kiln-data` when it is the last partition.
pub fn ensure_data_partition<D: Read + Write + Seek>(
    dev: &mut D,
    sector: u64,
) -> Result<DataPartition, GptError> {
    let disk_bytes = dev
        .seek(SeekFrom::End(0))
        .map_err(io_err("sizing the disk"))?;
    let disk_sectors = disk_bytes / sector;
    let mut gpt = Gpt::read(dev, sector)?;
    let old_alternate = gpt.alternate_lba();
    if old_alternate + 1 > disk_sectors {
        return Err(GptError::Shrunk {
            disk_sectors,
            gpt_sectors: old_alternate + 1,
        });
    }
    let grew = old_alternate + 1 != disk_sectors;
    let new_last_usable = disk_sectors - 1 - gpt.entry_sectors() - 1;
    let max_end = gpt
        .entries
        .iter()
        .filter(|e| e.is_used())
        .map(|e| e.last_lba)
        .max()
        .unwrap_or(0);

    let outcome = if let Some((n, e)) = gpt.find(DATA_LABEL) {
        let (n, at_end) = (n, e.last_lba == max_end);
        if !grew {
            return Ok(DataPartition::Unchanged(n));
        }
        let idx = n as usize - 1;
        if at_end && gpt.entries[idx].last_lba < new_last_usable {
            gpt.entries[idx].last_lba = new_last_usable;
            DataPartition::Grown(n)
        } else {
            DataPartition::Moved(n)
        }
    } else {
        let align = (ALIGN_BYTES / sector).max(1);
        let first_usable = le64(&gpt.header, 40);
        let start = (max_end.max(first_usable) + 1).div_ceil(align) * align;
        if start > new_last_usable || (new_last_usable - start + 1) * sector < MIN_DATA_BYTES {
            return Err(GptError::NoSpace(
                "less than 16 MiB free after the last partition",
            ));
        }
        let Some(idx) = gpt.entries.iter().position(|e| !e.is_used()) else {
            return Err(GptError::NoSpace("no free partition entry"));
        };
        gpt.entries[idx] = Entry {
            type_guid: LINUX_FS_TYPE,
            part_guid: data_part_guid(&gpt.disk_guid()),
            first_lba: start,
            last_lba: new_last_usable,
            attrs: 0,
            name: DATA_LABEL.to_string(),
        };
        DataPartition::Created(idx as u32 + 1)
    };
    gpt.write(dev, disk_sectors)?;
    if grew {
        update_protective_mbr(dev, disk_sectors)?;
    }
    Ok(outcome)
}

/// Moves the backup header and entries to the end of a disk larger than the GPT says (and
/// fixes the protective MBR), without touching any partition. Returns whether it moved.
pub fn relocate_backup<D: Read + Write + Seek>(dev: &mut D, sector: u64) -> Result<bool, GptError> {
    let disk_sectors = dev
        .seek(SeekFrom::End(0))
        .map_err(io_err("sizing the disk"))?
        / sector;
    let mut gpt = Gpt::read(dev, sector)?;
    let alternate = gpt.alternate_lba();
    if alternate + 1 > disk_sectors {
        return Err(GptError::Shrunk {
            disk_sectors,
            gpt_sectors: alternate + 1,
        });
    }
    if alternate + 1 == disk_sectors {
        return Ok(false);
    }
    gpt.write(dev, disk_sectors)?;
    update_protective_mbr(dev, disk_sectors)?;
    Ok(true)
}

/// Checks the backup GPT against the primary: at the last LBA, valid CRCs, pointing back
/// to LBA 1, the same partition entries.
pub fn check_backup<D: Read + Seek>(dev: &mut D, sector: u64) -> Result<(), GptError> {
    let disk_sectors = dev
        .seek(SeekFrom::End(0))
        .map_err(io_err("sizing the disk"))?
        / sector;
    let primary = Gpt::read(dev, sector)?;
    let last = disk_sectors - 1;
    if primary.alternate_lba() != last {
        return Err(GptError::BadHeader(
            "the backup header is not at the last LBA",
        ));
    }
    let mut h = vec![0u8; sector as usize];
    dev.seek(SeekFrom::Start(last * sector))
        .and_then(|_| dev.read_exact(&mut h))
        .map_err(io_err("reading the backup GPT header"))?;
    if &h[0..8] != b"EFI PART" {
        return Err(GptError::BadHeader("no 'EFI PART' signature in the backup"));
    }
    let hsize = (le32(&h, 12) as usize).clamp(92, sector as usize);
    let mut z = h[..hsize].to_vec();
    z[16..20].fill(0);
    if crc32fast::hash(&z) != le32(&h, 16) || le64(&h, 24) != last || le64(&h, 32) != 1 {
        return Err(GptError::BadHeader("backup header CRC or LBAs wrong"));
    }
    let mut raw = vec![0u8; primary.raw_entries.len()];
    dev.seek(SeekFrom::Start(le64(&h, 72) * sector))
        .and_then(|_| dev.read_exact(&mut raw))
        .map_err(io_err("reading the backup GPT entries"))?;
    if raw != primary.raw_entries || crc32fast::hash(&raw) != le32(&h, 88) {
        return Err(GptError::BadHeader(
            "backup entries differ from the primary",
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn derived_guid_is_v4_shaped_and_stable() {
        let g = data_part_guid(&[7; 16]);
        assert_eq!(g, data_part_guid(&[7; 16]));
        assert_ne!(g, data_part_guid(&[8; 16]));
        assert_eq!(g[7] >> 4, 4);
        assert_eq!(g[8] >> 6, 2);
        // Pinned: a change here would give every existing disk's kiln-data a new GUID.
        assert_eq!(hex::encode(g), "2165966e3da03c4495846cdaae42f849");
    }

    fn have_sfdisk() -> bool {
        Command::new("sfdisk").arg("--version").output().is_ok()
    }

    pub(crate) fn make_image(path: &Path, mib: u64) {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        let script = "label: gpt\n\
                      label-id: 0B6E2A33-4E6B-4D39-9C4B-5D8C8B3A1F00\n\
                      size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=BIOS\n\
                      size=8MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n\
                      size=8MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=kiln-root-a\n\
                      size=8MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=kiln-root-b\n";
        let mut child = Command::new("sfdisk")
            .arg("--quiet")
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    pub(crate) fn sfdisk_json(path: &Path) -> serde_json::Value {
        let out = Command::new("sfdisk")
            .arg("--json")
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The partition names sfdisk reads from `path`, in table order.
    pub(crate) fn sfdisk_names(path: &Path) -> Vec<String> {
        sfdisk_json(path)["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    }

    fn sfdisk_verify(path: &Path) {
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "sfdisk --verify: {text}");
        assert!(!text.to_lowercase().contains("corrupt"), "{text}");
    }

    fn ensure(path: &Path) -> DataPartition {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        ensure_data_partition(&mut f, 512).unwrap()
    }

    #[test]
    fn create_then_grow_checked_by_sfdisk() {
        if !have_sfdisk() {
            eprintln!("sfdisk not installed (ci/setup installs fdisk); skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        make_image(&img, 64);

        assert_eq!(ensure(&img), DataPartition::Created(5));
        sfdisk_verify(&img);
        let j = sfdisk_json(&img);
        let t = &j["partitiontable"];
        let parts = t["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 5);
        let p4 = &parts[3];
        let p5 = &parts[4];
        assert_eq!(p5["name"], "kiln-data");
        assert_eq!(p5["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        let start = p5["start"].as_u64().unwrap();
        let p4_end = p4["start"].as_u64().unwrap() + p4["size"].as_u64().unwrap();
        assert!(
            start >= p4_end && start.is_multiple_of(2048),
            "start {start} after {p4_end}"
        );
        let lastlba = t["lastlba"].as_u64().unwrap();
        assert_eq!(start + p5["size"].as_u64().unwrap() - 1, lastlba);
        let uuid1 = p5["uuid"].as_str().unwrap().to_string();
        // The other partitions are untouched.
        assert_eq!(parts[2]["name"], "kiln-root-a");

        // Second run: nothing to do, nothing written.
        let before = std::fs::read(&img).unwrap();
        assert_eq!(ensure(&img), DataPartition::Unchanged(5));
        assert_eq!(before, std::fs::read(&img).unwrap());

        // The disk grows: backup GPT moves, kiln-data grows to the new end.
        let st = Command::new("truncate")
            .args(["-s", "96M"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(ensure(&img), DataPartition::Grown(5));
        sfdisk_verify(&img);
        let j = sfdisk_json(&img);
        let t = &j["partitiontable"];
        let p5 = &t["partitions"][4];
        let lastlba = t["lastlba"].as_u64().unwrap();
        assert_eq!(lastlba, (96 << 20) / 512 - 34);
        assert_eq!(p5["start"].as_u64().unwrap(), start);
        assert_eq!(start + p5["size"].as_u64().unwrap() - 1, lastlba);
        assert_eq!(p5["uuid"].as_str().unwrap(), uuid1);
        assert_eq!(ensure(&img), DataPartition::Unchanged(5));
    }

    #[test]
    fn relocate_backup_only_moves_the_backup() {
        if !have_sfdisk() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        make_image(&img, 40);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        check_backup(&mut f, 512).unwrap();
        assert!(!relocate_backup(&mut f, 512).unwrap());
        f.set_len(72 << 20).unwrap();
        assert!(
            check_backup(&mut f, 512).is_err(),
            "the backup is not at the end"
        );
        assert!(relocate_backup(&mut f, 512).unwrap());
        check_backup(&mut f, 512).unwrap();
        drop(f);
        sfdisk_verify(&img);
        let j = sfdisk_json(&img);
        let t = &j["partitiontable"];
        assert_eq!(t["partitions"].as_array().unwrap().len(), 4);
        assert_eq!(t["lastlba"].as_u64().unwrap(), (72 << 20) / 512 - 34);
        // A corrupted backup entry array is caught.
        let mut bytes = std::fs::read(&img).unwrap();
        let n = bytes.len();
        bytes[n - 33 * 512 + 3] ^= 1;
        assert!(check_backup(&mut std::io::Cursor::new(bytes), 512).is_err());
        let mut small = std::io::Cursor::new(std::fs::read(&img).unwrap());
        small.get_mut().truncate(40 << 20);
        assert!(matches!(
            relocate_backup(&mut small, 512),
            Err(GptError::Shrunk { .. })
        ));
    }

    #[test]
    fn same_disk_guid_gives_same_partition_guid() {
        if !have_sfdisk() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        make_image(&a, 48);
        make_image(&b, 48);
        ensure(&a);
        ensure(&b);
        // sfdisk gave partitions 1-4 random GUIDs, but the disk GUID is the same.
        let uuid = |p: &Path| sfdisk_json(p)["partitiontable"]["partitions"][4]["uuid"].clone();
        assert_eq!(uuid(&a), uuid(&b));
        assert!(uuid(&a).is_string());
    }

    #[test]
    fn refuses_corrupt_or_full_disks() {
        let mut blank = std::io::Cursor::new(vec![0u8; 1 << 20]);
        assert!(matches!(
            ensure_data_partition(&mut blank, 512),
            Err(GptError::BadHeader(_))
        ));
        if !have_sfdisk() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("full.img");
        make_image(&img, 27); // 1+8+8+8 MiB used: less than 16 MiB left
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        assert!(matches!(
            ensure_data_partition(&mut f, 512),
            Err(GptError::NoSpace(_))
        ));
        // A flipped bit in the header is caught by the CRC.
        let mut bytes = std::fs::read(&img).unwrap();
        bytes[512 + 40] ^= 1;
        let mut c = std::io::Cursor::new(bytes);
        assert!(matches!(
            ensure_data_partition(&mut c, 512),
            Err(GptError::BadHeader(_))
        ));
    }
}
