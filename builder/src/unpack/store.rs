//! The content store: large file contents live on disk, content-addressed, so a
//! Tree of a whole root file system stays small in memory.
//!
//! Layout under the cache directory:
//! - `contents/sha256/<hex>`: one file per distinct content, written atomically
//!   (temporary file in `contents/tmp`, then rename);
//! - `unpacked/<key>.json`: the unpacked index of an archive (see `index.rs`).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::tree::Content;

/// Contents smaller than this stay in memory (`Content::Inline`).
pub const INLINE_MAX: usize = 64 * 1024;

/// Content-addressed file store under a cache directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating as needed) the store under `cache_dir` (usually `$KILN_CACHE`).
    pub fn open(cache_dir: &Path) -> io::Result<Self> {
        let store = ContentStore {
            root: cache_dir.to_path_buf(),
        };
        fs::create_dir_all(store.contents_dir())?;
        fs::create_dir_all(store.tmp_dir())?;
        fs::create_dir_all(store.index_dir())?;
        Ok(store)
    }

    /// The cache directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn contents_dir(&self) -> PathBuf {
        self.root.join("contents").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("contents").join("tmp")
    }

    /// Directory of the unpacked-archive indexes.
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("unpacked")
    }

    /// Where the content with this sha256 hex digest is (or would be) stored.
    pub fn path_of(&self, sha256_hex: &str) -> PathBuf {
        self.contents_dir().join(sha256_hex)
    }

    /// The stored content with this digest and size, if it is present with that size.
    pub fn get(&self, sha256_hex: &str, size: u64) -> Option<Content> {
        let path = self.path_of(sha256_hex);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => Some(Content::OnDisk { path, size }),
            _ => None,
        }
    }

    /// Reads `r` to its end. Up to `INLINE_MAX` bytes come back inline; anything
    /// larger is written to the store (hashing on the way) and referenced on disk.
    /// Reading stops with `StoreError::TooLarge` once more than `max_bytes` came in,
    /// whatever the archive header claimed.
    pub fn put(&self, r: impl Read, max_bytes: u64) -> Result<Content, StoreError> {
        let mut r = r.take(max_bytes.saturating_add(1));
        let mut buf = Vec::with_capacity(8 * 1024);
        (&mut r)
            .take(INLINE_MAX as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(StoreError::Read)?;
        if buf.len() as u64 > max_bytes {
            return Err(StoreError::TooLarge { limit: max_bytes });
        }
        if buf.len() <= INLINE_MAX {
            return Ok(Content::inline(buf));
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir()).map_err(|source| {
            StoreError::Write {
                path: self.tmp_dir(),
                source,
            }
        })?;
        let tmp_path = tmp.path().to_path_buf();
        let write_err = |source| StoreError::Write {
            path: tmp_path.clone(),
            source,
        };
        let mut hasher = Hasher::new(Algorithm::Sha256);
        hasher.update(&buf);
        let mut size = buf.len() as u64;
        let mut out = io::BufWriter::with_capacity(256 * 1024, tmp.as_file_mut());
        out.write_all(&buf).map_err(write_err)?;
        buf.resize(256 * 1024, 0);
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Read(e)),
            };
            size += n as u64;
            if size > max_bytes {
                return Err(StoreError::TooLarge { limit: max_bytes });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(write_err)?;
        }
        out.flush().map_err(write_err)?;
        drop(out);
        let digest: Digest = hasher.finish();
        let path = self.path_of(digest.hex());
        if fs::metadata(&path)
            .map(|m| m.len() == size)
            .unwrap_or(false)
        {
            // Already stored: the temporary file is removed on drop.
            return Ok(Content::OnDisk { path, size });
        }
        tmp.persist(&path).map_err(|e| StoreError::Write {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(Content::OnDisk { path, size })
    }
}

/// Why storing a content failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading content: {0}")]
    Read(#[source] io::Error),
    #[error("content is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("writing content store file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_contents_stay_inline_and_large_go_to_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let small = store.put(&b"hello"[..], 1 << 20).expect("small");
        assert!(matches!(small, Content::Inline(_)));
        let big = vec![7u8; INLINE_MAX + 10];
        let c = store.put(&big[..], 1 << 20).expect("big");
        let Content::OnDisk { path, size } = &c else {
            panic!("expected on-disk content, got {c:?}");
        };
        assert_eq!(*size, big.len() as u64);
        let hex = Digest::of_bytes(Algorithm::Sha256, &big).hex().to_string();
        assert_eq!(path, &store.path_of(&hex));
        assert_eq!(fs::read(path).expect("read"), big);
        // Storing again gives the same path and leaves no temporary files behind.
        let again = store.put(&big[..], 1 << 20).expect("again");
        assert!(matches!(again, Content::OnDisk { path: p, .. } if &p == path));
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0);
        assert!(store.get(&hex, big.len() as u64).is_some());
        assert!(store.get(&hex, 1).is_none());
    }

    #[test]
    fn limit_counts_bytes_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let err = store.put(&[0u8; 100][..], 99).expect_err("over");
        assert!(matches!(err, StoreError::TooLarge { limit: 99 }));
        store.put(&[0u8; 100][..], 100).expect("at the limit");
        let big = vec![1u8; INLINE_MAX * 3];
        let err = store
            .put(&big[..], INLINE_MAX as u64 * 2)
            .expect_err("over");
        assert!(matches!(err, StoreError::TooLarge { .. }));
        assert_eq!(fs::read_dir(store.tmp_dir()).expect("tmp").count(), 0);
    }
}
