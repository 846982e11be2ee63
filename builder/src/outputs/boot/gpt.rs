//! GUID partition table writer: protective MBR (with optional boot code), primary and
//! backup headers and entry arrays, CRC32s. 512-byte sectors, 128 entries.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use super::Uuid;

pub const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// "Root partition (x86-64)" from the Discoverable Partitions Specification.
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

#[derive(Debug, Clone)]
pub struct Partition {
    pub label: String,
    pub type_guid: Uuid,
    pub guid: Uuid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
}

#[derive(Debug, Clone)]
pub struct Gpt {
    pub disk_guid: Uuid,
    /// Whole disk size in bytes (a multiple of 512).
    pub disk_size: u64,
    pub partitions: Vec<Partition>,
}

impl Gpt {
    pub fn total_sectors(&self) -> u64 {
        self.disk_size / SECTOR
    }

    /// First LBA a partition may use.
    pub fn first_usable(&self) -> u64 {
        2 + ENTRY_SECTORS
    }

    /// Last LBA a partition may use.
    pub fn last_usable(&self) -> u64 {
        self.total_sectors() - 2 - ENTRY_SECTORS
    }

    fn entries(&self) -> Vec<u8> {
        let mut v = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut v[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.to_gpt_bytes());
            e[16..32].copy_from_slice(&p.guid.to_gpt_bytes());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (j, u) in p.label.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        v
    }

    fn header(&self, current: u64, backup: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_gpt_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Protective MBR: one 0xEE partition over the disk, `boot_code` in bytes 0..440.
    pub fn protective_mbr(&self, boot_code: Option<&[u8]>) -> [u8; 512] {
        let mut m = [0u8; 512];
        if let Some(code) = boot_code {
            let n = code.len().min(440);
            m[..n].copy_from_slice(&code[..n]);
        }
        let size = (self.total_sectors() - 1).min(u32::MAX as u64) as u32;
        let e = &mut m[446..462];
        e[0] = 0;
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        e[4] = 0xee;
        e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..16].copy_from_slice(&size.to_le_bytes());
        m[510] = 0x55;
        m[511] = 0xaa;
        m
    }

    /// Writes MBR, both headers and both entry arrays into `f` (already sized).
    pub fn write(&self, f: &mut File, boot_code: Option<&[u8]>) -> io::Result<()> {
        if self.partitions.len() as u64 > ENTRIES || !self.disk_size.is_multiple_of(SECTOR) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad GPT layout",
            ));
        }
        let last = self.total_sectors() - 1;
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let backup_entries = last - ENTRY_SECTORS;
        let at = |f: &mut File, lba: u64, b: &[u8]| -> io::Result<()> {
            f.seek(SeekFrom::Start(lba * SECTOR))?;
            f.write_all(b)
        };
        at(f, 0, &self.protective_mbr(boot_code))?;
        at(f, 1, &self.header(1, last, 2, crc))?;
        at(f, 2, &entries)?;
        at(f, backup_entries, &entries)?;
        at(f, last, &self.header(last, 1, backup_entries, crc))?;
        Ok(())
    }
}
