//! The disk image's GUID partition table: its layout (partitions with derived GUIDs), written
//! through firstboot's GPT codec (`firstboot::gpt`, the one that also grows kiln-data at
//! boot). 512-byte sectors, 128 entries.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use firstboot::gpt::{self as codec, Entry, GptError};
use uuid::Uuid;

pub const SECTOR: u64 = 512;
const ENTRY_SECTORS: u64 = (codec::ENTRY_COUNT * codec::ENTRY_SIZE) as u64 / SECTOR;

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

    /// Writes the protective MBR (with `boot_code`), both headers and both entry arrays
    /// into `f` (already sized), through firstboot's GPT codec.
    pub fn write(&self, f: &mut File, boot_code: Option<&[u8]>) -> io::Result<()> {
        if !self.disk_size.is_multiple_of(SECTOR) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad GPT layout: the disk size is not a whole number of sectors",
            ));
        }
        let entries = self
            .partitions
            .iter()
            .map(|p| Entry {
                type_guid: p.type_guid.to_bytes_le(),
                part_guid: p.guid.to_bytes_le(),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                attrs: p.attributes,
                name: p.label.clone(),
            })
            .collect();
        let bad = |e: GptError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let mut table = codec::Gpt::new(
            SECTOR,
            self.total_sectors(),
            self.disk_guid.to_bytes_le(),
            entries,
        )
        .map_err(bad)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&codec::protective_mbr(self.total_sectors(), boot_code))?;
        table.write(f, self.total_sectors()).map_err(|e| match e {
            GptError::Io { source, .. } => source,
            e => bad(e),
        })
    }
}
