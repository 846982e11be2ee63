//! The install payload: the bytes of a disk image from LBA 0 to the end of `kiln-root-a`
//! (GPT, BIOS boot, ESP, root slot a), stored sparse: only the non-zero extents.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "KILNIMG1"                    8 bytes
//! logical length                u64   bytes of the image the payload describes
//! extent count N                u64
//! N x (offset u64, length u64)  sorted, non-overlapping, inside the logical length
//! extent data                   the N extents' bytes, in order, nothing after
//! ```
//!
//! Everything outside the extents is zero. `kiln build` writes it (with [`write`]); the
//! installer reads it (with [`Payload::open`]). Its sha256 is of the payload file itself.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The first bytes of every payload.
pub const MAGIC: &[u8; 8] = b"KILNIMG1";
/// Zero detection granularity.
const BLOCK: u64 = 4096;
/// Zero runs shorter than this between two extents are stored, not skipped.
const MIN_GAP: u64 = 64 * 1024;
/// More extents than this is not a payload `kiln build` wrote.
const MAX_EXTENTS: u64 = 1 << 20;

/// One stored range of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Why a payload cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Reading or writing failed.
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file is not a well-formed payload.
    #[error("not a Kiln install payload: {0}")]
    Malformed(String),
}

fn io_err(action: &'static str) -> impl FnOnce(io::Error) -> PayloadError {
    move |source| PayloadError::Io { action, source }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The non-zero extents of the first `len` bytes of `src` (4 KiB granularity, zero
/// runs under 64 KiB kept inside an extent).
pub fn extents<R: Read + Seek>(src: &mut R, len: u64) -> io::Result<Vec<Extent>> {
    src.seek(SeekFrom::Start(0))?;
    let mut out: Vec<Extent> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let want = (len - pos).min(buf.len() as u64) as usize;
        let n = read_full(src, &mut buf[..want])?;
        if n < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the image ends at {} bytes, before {len}", pos + n as u64),
            ));
        }
        for (i, chunk) in buf[..n].chunks(BLOCK as usize).enumerate() {
            if is_zero(chunk) {
                continue;
            }
            let at = pos + i as u64 * BLOCK;
            let clen = chunk.len() as u64;
            match out.last_mut() {
                Some(last) if at - last.end() < MIN_GAP => last.len = at + clen - last.offset,
                _ => out.push(Extent {
                    offset: at,
                    len: clen,
                }),
            }
        }
        pos += n as u64;
    }
    Ok(out)
}

/// Writes the payload of the first `len` bytes of `src` to `out`; returns its extents.
pub fn write<R: Read + Seek, W: Write>(
    src: &mut R,
    len: u64,
    out: &mut W,
) -> io::Result<Vec<Extent>> {
    let ext = extents(src, len)?;
    out.write_all(MAGIC)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&(ext.len() as u64).to_le_bytes())?;
    for e in &ext {
        out.write_all(&e.offset.to_le_bytes())?;
        out.write_all(&e.len.to_le_bytes())?;
    }
    for e in &ext {
        src.seek(SeekFrom::Start(e.offset))?;
        let copied = io::copy(&mut src.by_ref().take(e.len), out)?;
        if copied != e.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image changed while it was read",
            ));
        }
    }
    out.flush()?;
    Ok(ext)
}

/// An opened, structurally checked payload file.
#[derive(Debug)]
pub struct Payload {
    file: File,
    /// Bytes of the image the payload describes.
    pub logical_len: u64,
    /// The stored extents, sorted.
    pub extents: Vec<Extent>,
    /// Where the first extent's data starts in the file.
    data_start: u64,
    /// The payload file's size.
    pub file_size: u64,
}

impl Payload {
    /// Opens `path` and checks its header: sorted, disjoint extents inside the logical
    /// length, and exactly as much data as they need.
    pub fn open(path: &Path) -> Result<Payload, PayloadError> {
        let mut file = File::open(path).map_err(io_err("opening the payload"))?;
        let file_size = file
            .metadata()
            .map_err(io_err("reading the payload's size"))?
            .len();
        let mut head = [0u8; 24];
        file.read_exact(&mut head)
            .map_err(|_| PayloadError::Malformed("shorter than its header".into()))?;
        if &head[..8] != MAGIC {
            return Err(PayloadError::Malformed("no KILNIMG1 signature".into()));
        }
        let u64_at = |b: &[u8], at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let logical_len = u64_at(&head, 8);
        let count = u64_at(&head, 16);
        if count > MAX_EXTENTS || 24 + count * 16 > file_size {
            return Err(PayloadError::Malformed(format!(
                "{count} extents do not fit a {file_size}-byte file"
            )));
        }
        let mut table = vec![0u8; (count * 16) as usize];
        file.read_exact(&mut table)
            .map_err(io_err("reading the payload's extent table"))?;
        let mut extents = Vec::with_capacity(count as usize);
        let mut prev_end = 0u64;
        let mut data = 0u64;
        for c in table.chunks(16) {
            let e = Extent {
                offset: u64_at(c, 0),
                len: u64_at(c, 8),
            };
            let end = e.offset.checked_add(e.len);
            if e.len == 0 || e.offset < prev_end || end.is_none_or(|x| x > logical_len) {
                return Err(PayloadError::Malformed(format!(
                    "extent {}+{} is empty, out of order or past {logical_len}",
                    e.offset, e.len
                )));
            }
            prev_end = e.offset + e.len;
            data += e.len;
            extents.push(e);
        }
        let data_start = 24 + count * 16;
        if data_start + data != file_size {
            return Err(PayloadError::Malformed(format!(
                "extents hold {data} bytes but the file has {} after its header",
                file_size - data_start
            )));
        }
        Ok(Payload {
            file,
            logical_len,
            extents,
            data_start,
            file_size,
        })
    }

    /// The bytes of the image in `[offset, offset+len)`, zeros where nothing is stored.
    pub fn read_range(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, PayloadError> {
        let mut out = vec![0u8; len];
        let end = offset + len as u64;
        let mut at = self.data_start;
        for e in self.extents.clone() {
            let (s, t) = (e.offset.max(offset), e.end().min(end));
            if s < t {
                self.file
                    .seek(SeekFrom::Start(at + (s - e.offset)))
                    .and_then(|_| {
                        self.file
                            .read_exact(&mut out[(s - offset) as usize..(t - offset) as usize])
                    })
                    .map_err(io_err("reading the payload"))?;
            }
            at += e.len;
        }
        Ok(out)
    }

    /// Where extent `i`'s data is in the file.
    pub fn data_offset(&self, i: usize) -> u64 {
        self.data_start + self.extents[..i].iter().map(|e| e.len).sum::<u64>()
    }

    /// Reads `buf.len()` bytes at file offset `at`.
    pub fn read_file_at(&mut self, at: u64, buf: &mut [u8]) -> Result<(), PayloadError> {
        self.file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.read_exact(buf))
            .map_err(io_err("reading the payload"))
    }

    /// sha256 of the whole payload file, hex; `progress` gets the bytes hashed so far.
    pub fn sha256(&mut self, progress: &mut dyn FnMut(u64)) -> Result<String, PayloadError> {
        use sha2::{Digest as _, Sha256};
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err("reading the payload"))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = read_full(&mut self.file, &mut buf).map_err(io_err("reading the payload"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            done += n as u64;
            progress(done);
        }
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 1 << 20];
        img[0] = 1; // block 0
        img[10_000] = 2; // block 2: gap of one block, merged
        img[300_000..300_010].fill(3); // far away: a second extent
        img[(1 << 20) - 1] = 4; // the last byte
        img
    }

    #[test]
    fn round_trip_and_extents() {
        let img = image();
        let mut out = Vec::new();
        let ext = write(&mut Cursor::new(&img), img.len() as u64, &mut out).unwrap();
        assert_eq!(
            ext,
            vec![
                Extent {
                    offset: 0,
                    len: 3 * 4096
                },
                Extent {
                    offset: 299_008, // 73 * 4096
                    len: 4096
                },
                Extent {
                    offset: (1 << 20) - 4096,
                    len: 4096
                },
            ]
        );
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("install.img");
        std::fs::write(&p, &out).unwrap();
        let mut pl = Payload::open(&p).unwrap();
        assert_eq!(pl.logical_len, img.len() as u64);
        assert_eq!(pl.read_range(0, img.len()).unwrap(), img);
        assert_eq!(pl.read_range(9_000, 2_000).unwrap(), img[9_000..11_000]);
        assert_eq!(pl.data_offset(1), 24 + 3 * 16 + 3 * 4096);
        // The payload's sha256 is of the file; sha256sum is the oracle.
        let o = std::process::Command::new("sha256sum")
            .arg(&p)
            .output()
            .unwrap();
        let want = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let mut seen = 0;
        assert_eq!(pl.sha256(&mut |n| seen = n).unwrap(), want);
        assert_eq!(seen, out.len() as u64);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let img = image();
        let mut good = Vec::new();
        write(&mut Cursor::new(&img), img.len() as u64, &mut good).unwrap();
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("p");
        let check = |bytes: &[u8]| {
            std::fs::write(&p, bytes).unwrap();
            Payload::open(&p).map(|_| ())
        };
        assert!(check(&good).is_ok());
        assert!(check(&good[..good.len() - 1]).is_err(), "truncated");
        let mut extra = good.clone();
        extra.push(0);
        assert!(check(&extra).is_err(), "trailing bytes");
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(check(&magic).is_err());
        let mut order = good.clone();
        order[40..48].copy_from_slice(&0u64.to_le_bytes()); // extent 1 offset 0 overlaps 0
        assert!(check(&order).is_err());
        let mut past = good.clone();
        past[8..16].copy_from_slice(&1000u64.to_le_bytes()); // logical length too small
        assert!(check(&past).is_err());
        assert!(check(b"KILNIMG1").is_err());
        // A short source is an error, not a short payload.
        let mut sink = Vec::new();
        assert!(write(&mut Cursor::new(&img), img.len() as u64 + 1, &mut sink).is_err());
    }
}
