//! The install plan: which regions of the payload go where on the target disk.

use super::*;

/// Where one written range's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The payload file, from this offset.
    Payload(u64),
    /// These bytes (the rehearsed partition tables).
    Bytes(Vec<u8>),
    /// Zeros: the image's zero runs (not stored in the payload) and ranges cleared so
    /// stale signatures cannot be mistaken for the image's. Written with
    /// fallocate(ZERO_RANGE) where the device supports it, checked by reading back.
    Zero,
}

/// One range of the disk the installer writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
    pub source: Source,
}

/// The write plan, in write order: the payload's extents past [`HEAD`], `zeros` (ranges
/// cleared so stale signatures cannot be mistaken for the image's), the rehearsed tail,
/// then the rehearsed head last. `data_offsets[i]` is where extent `i`'s bytes are in the
/// payload file.
pub fn plan(
    logical_len: u64,
    extents: &[Extent],
    data_offsets: &[u64],
    head: Vec<u8>,
    tail_offset: u64,
    tail: Vec<u8>,
    zeros: &[(u64, u64)],
) -> Result<Vec<Region>, String> {
    let head_len = head.len() as u64;
    if head_len > tail_offset {
        return Err("the head and tail regions overlap".into());
    }
    let mut out = Vec::new();
    let mut at = head_len;
    for (e, &d) in extents.iter().zip(data_offsets) {
        if e.end() <= head_len {
            continue;
        }
        if e.offset > at {
            out.push(Region {
                offset: at,
                len: e.offset - at,
                source: Source::Zero,
            });
        }
        at = e.end();
        if e.end() > tail_offset {
            return Err(format!(
                "the payload reaches {} but the disk's backup GPT area starts at {tail_offset}",
                e.end()
            ));
        }
        let skip = head_len.saturating_sub(e.offset);
        out.push(Region {
            offset: e.offset + skip,
            len: e.len - skip,
            source: Source::Payload(d + skip),
        });
    }
    if logical_len > tail_offset {
        return Err(format!(
            "the image reaches {logical_len} but the disk's backup GPT area starts at {tail_offset}"
        ));
    }
    if logical_len > at {
        out.push(Region {
            offset: at,
            len: logical_len - at,
            source: Source::Zero,
        });
        at = logical_len;
    }
    for &(z, len) in zeros {
        if z >= at && z + len <= tail_offset {
            out.push(Region {
                offset: z,
                len,
                source: Source::Zero,
            });
        }
    }
    out.push(Region {
        offset: tail_offset,
        len: tail.len() as u64,
        source: Source::Bytes(tail),
    });
    out.push(Region {
        offset: 0,
        len: head_len,
        source: Source::Bytes(head),
    });
    Ok(out)
}
