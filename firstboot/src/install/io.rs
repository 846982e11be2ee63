//! Writing and reading back the disk: regions in chunks, zeroed ranges, progress lines.

use super::*;

/// Prints progress every few seconds and at the end.
pub(super) struct Progress<'a> {
    sys: &'a dyn Sys,
    say: &'a dyn Fn(&str),
    verb: &'static str,
    total: u64,
    start: u64,
    last: u64,
}

impl<'a> Progress<'a> {
    pub(super) fn new(
        sys: &'a dyn Sys,
        say: &'a dyn Fn(&str),
        verb: &'static str,
        total: u64,
    ) -> Self {
        let now = sys.monotonic_ms();
        Progress {
            sys,
            say,
            verb,
            total,
            start: now,
            last: now,
        }
    }
    pub(super) fn line(&self, done: u64) -> String {
        let ms = self.sys.monotonic_ms().saturating_sub(self.start).max(1);
        format!(
            "kiln: install: {} {} of {} ({}%), {}/s",
            self.verb,
            human_size(done),
            human_size(self.total),
            done * 100 / self.total.max(1),
            human_size(done * 1000 / ms)
        )
    }
    pub(super) fn update(&mut self, done: u64) {
        let now = self.sys.monotonic_ms();
        if now.saturating_sub(self.last) >= PROGRESS_EVERY_MS {
            self.last = now;
            (self.say)(&self.line(done));
        }
    }
    pub(super) fn finish(&self) -> u64 {
        (self.say)(&self.line(self.total));
        self.sys.monotonic_ms().saturating_sub(self.start)
    }
}

/// Zeros `len` bytes at `offset`: fallocate(ZERO_RANGE), else a hole, else written.
pub(super) fn zero_range(f: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags as F};
    if fallocate(f, F::ZERO_RANGE | F::KEEP_SIZE, offset, len).is_ok()
        || fallocate(f, F::PUNCH_HOLE | F::KEEP_SIZE, offset, len).is_ok()
    {
        return Ok(());
    }
    let zeros = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        f.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes every region; returns the sha256 of the non-zero regions' bytes, in order.
pub(super) fn write_regions(
    f: &File,
    regions: &[Region],
    p: &mut Payload,
    progress: &mut Progress<'_>,
) -> Result<String, String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    for r in regions {
        if r.source == Source::Zero {
            zero_range(f, r.offset, r.len)
                .map_err(|e| format!("zeroing {} bytes at byte {}: {e}", r.len, r.offset))?;
            done += r.len;
            progress.update(done);
            continue;
        }
        let mut off = 0u64;
        while off < r.len {
            let n = (r.len - off).min(CHUNK as u64) as usize;
            let bytes: &[u8] = match &r.source {
                Source::Payload(at) => {
                    p.read_file_at(at + off, &mut buf[..n])
                        .map_err(|e| e.to_string())?;
                    &buf[..n]
                }
                Source::Bytes(b) => &b[off as usize..off as usize + n],
                Source::Zero => &[],
            };
            let at = r.offset + off;
            f.write_all_at(bytes, at)
                .map_err(|e| format!("writing at byte {at}: {e}"))?;
            h.update(bytes);
            off += n as u64;
            done += n as u64;
            progress.update(done);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Reads every region back; returns the sha256 of the non-zero regions' bytes (in order)
/// and fails on the first non-zero byte in a zero region.
pub(super) fn read_regions(
    f: &File,
    regions: &[Region],
    progress: &mut Progress<'_>,
) -> Result<String, String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    for r in regions {
        let mut off = 0u64;
        while off < r.len {
            let n = (r.len - off).min(CHUNK as u64) as usize;
            let at = r.offset + off;
            f.read_exact_at(&mut buf[..n], at)
                .map_err(|e| format!("reading back at byte {at}: {e}"))?;
            if r.source == Source::Zero {
                if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                    return Err(format!(
                        "byte {} should be zero but reads back as {:#04x}",
                        at + i as u64,
                        buf[i]
                    ));
                }
            } else {
                h.update(&buf[..n]);
            }
            off += n as u64;
            done += n as u64;
            progress.update(done);
        }
    }
    Ok(hex::encode(h.finalize()))
}
