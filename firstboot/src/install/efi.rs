//! A UEFI boot entry for the installed disk, written through efivarfs: `Boot####` pointing
//! at `\EFI\BOOT\BOOTX64.EFI` on the installed ESP (by partition GUID, so it names this disk
//! and no other), first in `BootOrder`, and `BootNext` so the very next boot takes it even
//! where firmware rearranges `BootOrder` by its own rules. Booting by the removable-media
//! path also works without the entry; the entry is what keeps a machine whose network or CD
//! comes first from booting the installer again.
//!
//! Formats (UEFI 2.10, 3.1.3 and 10.3): an `EFI_LOAD_OPTION` is attributes (u32),
//! the device path's length (u16), a NUL-terminated UCS-2 description, then the device
//! path: a hard drive media node (type 4, subtype 1: partition number, start and size in
//! LBAs, the GPT partition GUID, format 2 = GPT, signature type 2 = GUID), a file path node
//! (type 4, subtype 4: UCS-2, NUL-terminated) and the end node. An efivarfs file holds the
//! variable's attributes (u32) then its data, written in one write(2).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::gpt;

/// The EFI global variable GUID, as efivarfs spells it in file names.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const ATTRS: u32 = 0x7;
/// LOAD_OPTION_ACTIVE.
const ACTIVE: u32 = 0x1;
/// The loader on the image's ESP that the entry starts.
pub const LOADER: &str = "\\EFI\\BOOT\\BOOTX64.EFI";

/// The ESP as the entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Esp {
    /// Partition number, 1-based.
    pub number: u32,
    pub first_lba: u64,
    pub size_lba: u64,
    /// The partition's unique GUID, in the GPT's on-disk byte order (which device paths
    /// share).
    pub part_guid: [u8; 16],
}

impl Esp {
    /// The partition named `ESP` of `g`.
    pub fn from_gpt(g: &gpt::Gpt) -> Option<Esp> {
        let (number, e) = g.find("ESP")?;
        Some(Esp {
            number,
            first_lba: e.first_lba,
            size_lba: e.last_lba + 1 - e.first_lba,
            part_guid: e.part_guid,
        })
    }
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn node(kind: u8, subtype: u8, body: &[u8]) -> Vec<u8> {
    let mut n = vec![kind, subtype];
    n.extend(((body.len() + 4) as u16).to_le_bytes());
    n.extend(body);
    n
}

/// The `EFI_LOAD_OPTION` bytes of an active entry `description` that starts `loader` on
/// `esp`.
pub fn load_option(description: &str, esp: &Esp, loader: &str) -> Vec<u8> {
    let mut hd = Vec::with_capacity(38);
    hd.extend(esp.number.to_le_bytes());
    hd.extend(esp.first_lba.to_le_bytes());
    hd.extend(esp.size_lba.to_le_bytes());
    hd.extend(esp.part_guid);
    hd.extend([2, 2]);
    let mut path = node(4, 1, &hd);
    path.extend(node(4, 4, &ucs2(loader)));
    path.extend(node(0x7f, 0xff, &[]));
    let mut o = Vec::new();
    o.extend(ACTIVE.to_le_bytes());
    o.extend((path.len() as u16).to_le_bytes());
    o.extend(ucs2(description));
    o.extend(path);
    o
}

fn var_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-{GLOBAL}"))
}

/// A variable's data (without the attributes), if it exists.
fn read_var(dir: &Path, name: &str) -> Option<Vec<u8>> {
    let b = fs::read(var_path(dir, name)).ok()?;
    (b.len() >= 4).then(|| b[4..].to_vec())
}

fn write_var(dir: &Path, name: &str, data: &[u8]) -> Result<(), String> {
    let p = var_path(dir, name);
    let mut buf = ATTRS.to_le_bytes().to_vec();
    buf.extend(data);
    // One write(2): efivarfs takes the attributes and the data together.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .map_err(|e| format!("opening {}: {e}", p.display()))?;
    let n = f
        .write(&buf)
        .map_err(|e| format!("writing {}: {e}", p.display()))?;
    if n != buf.len() {
        return Err(format!(
            "writing {}: {n} of {} bytes",
            p.display(),
            buf.len()
        ));
    }
    Ok(())
}

/// The numbers of the `Boot####` variables in `dir`.
fn boot_numbers(dir: &Path) -> Result<Vec<(u16, PathBuf)>, String> {
    let suffix = format!("-{GLOBAL}");
    let rd = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut v = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(num) = name
            .strip_suffix(&suffix)
            .and_then(|s| s.strip_prefix("Boot"))
        else {
            continue;
        };
        if num.len() == 4 && num.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(n) = u16::from_str_radix(num, 16) {
                v.push((n, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// What [`add_entry`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `Boot####` number.
    pub number: u16,
    /// An identical entry was there already and is reused.
    pub reused: bool,
    /// `BootOrder` afterwards.
    pub order: Vec<u16>,
}

/// Adds (or reuses) the entry `option` in the efivarfs directory `dir`, puts it first in
/// `BootOrder` and sets `BootNext`.
pub fn add_entry(dir: &Path, option: &[u8]) -> Result<Entry, String> {
    let existing = boot_numbers(dir)?;
    let same = existing
        .iter()
        .find(|(n, _)| read_var(dir, &format!("Boot{n:04X}")).as_deref() == Some(option));
    let (number, reused) = match same {
        Some((n, _)) => (*n, true),
        None => {
            let used: Vec<u16> = existing.iter().map(|(n, _)| *n).collect();
            let n = (0..=u16::MAX)
                .find(|n| !used.contains(n))
                .ok_or("every Boot#### number is taken")?;
            write_var(dir, &format!("Boot{n:04X}"), option)?;
            (n, false)
        }
    };
    let mut order: Vec<u16> = read_var(dir, "BootOrder")
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .filter(|n| *n != number)
        .collect();
    order.insert(0, number);
    let bytes: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
    write_var(dir, "BootOrder", &bytes)?;
    write_var(dir, "BootNext", &number.to_le_bytes())?;
    Ok(Entry {
        number,
        reused,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp() -> Esp {
        Esp {
            number: 2,
            first_lba: 4096,
            size_lba: 16384,
            part_guid: [
                0x33, 0x2a, 0x6e, 0x0b, 0x6b, 0x4e, 0x39, 0x4d, 0x9c, 0x4b, 0x5d, 0x8c, 0x8b, 0x3a,
                0x1f, 0x01,
            ],
        }
    }

    #[test]
    fn load_option_layout() {
        let o = load_option("Kiln", &esp(), LOADER);
        assert_eq!(&o[..4], &[1, 0, 0, 0], "active");
        let desc = ucs2("Kiln");
        assert_eq!(desc.len(), 10);
        assert_eq!(&o[6..16], &desc[..]);
        let path = &o[16..];
        assert_eq!(
            u16::from_le_bytes([o[4], o[5]]) as usize,
            path.len(),
            "FilePathListLength"
        );
        // Hard drive node: 42 bytes.
        assert_eq!(&path[..4], &[4, 1, 42, 0]);
        assert_eq!(&path[4..8], &2u32.to_le_bytes());
        assert_eq!(&path[8..16], &4096u64.to_le_bytes());
        assert_eq!(&path[16..24], &16384u64.to_le_bytes());
        assert_eq!(&path[24..40], &esp().part_guid);
        assert_eq!(&path[40..42], &[2, 2]);
        // File node: 4 + UCS-2 of the 22-character path and its NUL.
        let file_len = 4 + 2 * (LOADER.len() + 1);
        assert_eq!(&path[42..46], &[4, 4, file_len as u8, 0]);
        assert_eq!(&path[46..42 + file_len], &ucs2(LOADER)[..]);
        assert_eq!(&path[42 + file_len..], &[0x7f, 0xff, 4, 0], "end node");
    }

    #[test]
    fn entry_is_added_first_in_order_and_next_then_reused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        // What firmware left: Boot0000 and Boot0001 in that order, and an unrelated var.
        std::fs::write(var_path(d, "Boot0000"), [7, 0, 0, 0, 1]).unwrap();
        std::fs::write(var_path(d, "Boot0001"), [7, 0, 0, 0, 2]).unwrap();
        std::fs::write(var_path(d, "BootOrder"), [7, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        std::fs::write(d.join(format!("Lang-{GLOBAL}")), [7, 0, 0, 0]).unwrap();
        let opt = load_option("Kiln (vda)", &esp(), LOADER);
        let e = add_entry(d, &opt).unwrap();
        assert_eq!(e.number, 2);
        assert!(!e.reused);
        assert_eq!(e.order, [2, 1, 0]);
        let raw = std::fs::read(var_path(d, "Boot0002")).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(&raw[4..], &opt[..]);
        assert_eq!(
            std::fs::read(var_path(d, "BootOrder")).unwrap(),
            [7, 0, 0, 0, 2, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            std::fs::read(var_path(d, "BootNext")).unwrap(),
            [7, 0, 0, 0, 2, 0]
        );
        // A second install of the same image reuses the entry.
        let e = add_entry(d, &opt).unwrap();
        assert_eq!((e.number, e.reused), (2, true));
        assert_eq!(e.order, [2, 1, 0]);
        assert_eq!(boot_numbers(d).unwrap().len(), 3);
    }
}
