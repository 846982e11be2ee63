//! The content-addressed cache: `<root>/blobs/<alg>/<hex>`, written only by atomic rename
//! of a verified temporary file from `<root>/tmp` (same file system, so the rename is atomic).
//!
//! The root is `$KILN_CACHE`, else `$HOME/.cache/kiln`.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Errors of the cache: each names the action and the path.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot locate the cache: neither KILN_CACHE nor HOME is set")]
    NoHome,
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to cache {}: its content is {actual}, not {expected}", path.display())]
    Mismatch {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A content-addressed blob store on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache named by the environment: `KILN_CACHE`, else `$HOME/.cache/kiln`.
    pub fn from_env() -> Result<Cache, CacheError> {
        Self::from_vars(std::env::var_os("KILN_CACHE"), std::env::var_os("HOME"))
    }

    /// Same as [`Cache::from_env`] with the variables passed in (empty counts as unset).
    pub fn from_vars(
        kiln_cache: Option<OsString>,
        home: Option<OsString>,
    ) -> Result<Cache, CacheError> {
        match (kiln_cache.filter(|v| !v.is_empty()), home) {
            (Some(dir), _) => Ok(Cache::at(dir)),
            (None, Some(home)) if !home.is_empty() => {
                Ok(Cache::at(Path::new(&home).join(".cache").join("kiln")))
            }
            _ => Err(CacheError::NoHome),
        }
    }

    /// A cache rooted at `root` (created lazily on first write).
    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this digest lives: `<root>/blobs/<alg>/<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Whether the blob is present. Blobs enter only verified, so presence is trusted.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The directory for temporary and partial files, inside the root so that a rename into
    /// `blobs/` is atomic. Created if missing.
    pub fn tmp_dir(&self) -> Result<PathBuf, CacheError> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).map_err(io_err("creating cache directory", &dir))?;
        Ok(dir)
    }

    /// The stable name of a partial download of `digest`, so an interrupted run can resume it.
    pub fn partial_path(&self, digest: &Digest) -> Result<PathBuf, CacheError> {
        Ok(self.tmp_dir()?.join(format!(
            "{}-{}.part",
            digest.algorithm().name(),
            digest.hex()
        )))
    }

    /// Move `tmp` (a file inside [`Cache::tmp_dir`] whose content the caller has verified to be
    /// `digest`) into the cache: fsync, rename, fsync the directory. Returns the blob path.
    pub fn insert_verified(&self, tmp: &Path, digest: &Digest) -> Result<PathBuf, CacheError> {
        let dest = self.blob_path(digest);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io_err("creating cache directory", &dir))?;
        File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing downloaded file", tmp))?;
        fs::rename(tmp, &dest).map_err(io_err("moving into the cache", &dest))?;
        sync_dir(&dir).map_err(io_err("syncing cache directory", &dir))?;
        Ok(dest)
    }

    /// Hash `bytes`, check them against `expected`, and store them. Nothing is written on a
    /// mismatch.
    pub fn insert_bytes(&self, bytes: &[u8], expected: &Digest) -> Result<PathBuf, CacheError> {
        let dest = self.blob_path(expected);
        let actual = Digest::of_bytes(expected.algorithm(), bytes);
        if &actual != expected {
            return Err(CacheError::Mismatch {
                path: dest,
                expected: expected.clone(),
                actual,
            });
        }
        if dest.is_file() {
            return Ok(dest);
        }
        write_atomic(&dest, |w| w.write_all(bytes)).map_err(io_err("writing blob", &dest))?;
        Ok(dest)
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Write a file atomically: the closure writes into a temporary file in the same directory,
/// which is then fsynced and renamed over `path` (and the directory fsynced). Readers see the
/// old file or the complete new one, never a half-written one; on error nothing is left behind.
/// Parent directories are created.
///
/// Not firstboot's `atomic::Replace`: that one names its temp file `.NAME.tmp` (one writer per
/// file, the mode set at creation), while here parallel downloads may write the same blob at
/// once, so each writer gets a temp file of its own.
pub fn write_atomic<F>(path: &Path, write: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(&dir)?;
    {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        write(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(&dir)
}

/// [`write_atomic`] for a byte slice.
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    #[test]
    fn root_from_vars() {
        let c = Cache::from_vars(Some("/x/c".into()), Some("/home/u".into())).expect("cache");
        assert_eq!(c.root(), Path::new("/x/c"));
        let c = Cache::from_vars(Some("".into()), Some("/home/u".into())).expect("cache");
        assert_eq!(c.root(), Path::new("/home/u/.cache/kiln"));
        assert!(matches!(
            Cache::from_vars(None, None),
            Err(CacheError::NoHome)
        ));
    }

    #[test]
    fn blob_layout_and_insert() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::at(dir.path());
        let d = Digest::of_bytes(Algorithm::Sha256, b"hello");
        assert_eq!(
            cache.blob_path(&d),
            dir.path().join("blobs/sha256").join(d.hex())
        );
        assert!(!cache.contains(&d));
        let wrong = Digest::of_bytes(Algorithm::Sha256, b"other");
        let err = cache.insert_bytes(b"hello", &wrong).expect_err("mismatch");
        assert!(err.to_string().contains(&d.to_string()), "{err}");
        assert!(!cache.contains(&wrong));
        let p = cache.insert_bytes(b"hello", &d).expect("insert");
        assert_eq!(fs::read(p).expect("read"), b"hello");
        assert!(cache.contains(&d));
    }

    #[test]
    fn write_atomic_replaces_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/file");
        write_atomic_bytes(&path, b"one").expect("write");
        write_atomic_bytes(&path, b"two").expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("boom"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file")]);
    }
}
