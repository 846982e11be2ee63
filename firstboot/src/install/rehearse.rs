//! A rehearsal of the disk head's write on a sparse file of the target's size: the GPT
//! must parse back before the real disk is touched.

use super::*;

/// The rehearsed partition tables for a disk of `disk_size` bytes.
#[derive(Debug, Clone)]
pub struct Rehearsal {
    pub head: Vec<u8>,
    pub tail_offset: u64,
    pub tail: Vec<u8>,
    /// Ranges to clear: the start of kiln-root-b and of the future kiln-data.
    pub zeros: Vec<(u64, u64)>,
    /// Whether the backup GPT moved (the disk is larger than the image).
    pub moved: bool,
}

/// Puts the payload's head on a sparse temporary file of `disk_size` bytes in `dir`, moves
/// the backup GPT to its end and checks both tables and that every partition fits.
pub fn rehearse(head: &[u8], disk_size: u64, dir: &Path) -> Result<Rehearsal, String> {
    let path = dir.join("install-rehearsal.img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let r = rehearse_on(&file, head, disk_size);
    drop(file);
    let _ = std::fs::remove_file(&path);
    r
}

pub(super) fn rehearse_on(file: &File, head: &[u8], disk_size: u64) -> Result<Rehearsal, String> {
    let mut f = file;
    f.set_len(disk_size)
        .and_then(|_| f.write_all_at(head, 0))
        .map_err(|e| format!("writing the rehearsal file: {e}"))?;
    let moved = gpt::relocate_backup(&mut f, 512).map_err(|e| e.to_string())?;
    gpt::check_backup(&mut f, 512).map_err(|e| e.to_string())?;
    let g = Gpt::read(&mut f, 512).map_err(|e| e.to_string())?;
    let used: Vec<&gpt::Entry> = g
        .entries
        .iter()
        .filter(|e| e.type_guid != [0; 16])
        .collect();
    if let Some(e) = used.iter().find(|e| e.last_lba > g.last_usable()) {
        return Err(format!(
            "partition {:?} ends at LBA {}, past the last usable LBA {}",
            e.name,
            e.last_lba,
            g.last_usable()
        ));
    }
    let tail_offset = disk_size.saturating_sub(TAIL);
    let read = |at: u64, len: u64| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, at)
            .map_err(|e| format!("reading the rehearsal file: {e}"))?;
        Ok(b)
    };
    let head = read(0, HEAD)?;
    let tail = read(tail_offset, disk_size - tail_offset)?;
    let mut zeros = Vec::new();
    if let Some((_, b)) = g.find("kiln-root-b") {
        zeros.push((b.first_lba * 512, HEAD));
    }
    let max_end = used.iter().map(|e| e.last_lba).max().unwrap_or(0);
    zeros.push(((max_end + 1).div_ceil(2048) * 2048 * 512, HEAD));
    Ok(Rehearsal {
        head,
        tail_offset,
        tail,
        zeros,
        moved,
    })
}
