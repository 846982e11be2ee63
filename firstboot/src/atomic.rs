//! Replacing a file atomically: a reader sees the old contents or the new, never part of
//! either. The one way firstboot writes a file another process (or the next boot) reads.
//!
//! The data goes to a temp file beside the target (`.NAME.tmp`, created fresh with the final
//! mode, so a secret is never readable by others even for a moment), then is renamed over
//! the target. Where the data must survive a power cut ([`Durability::PowerCut`]), the temp
//! file is fsynced before the rename and the directory after it: without the first a crash
//! can leave an empty file under the new name, without the second the rename itself can be
//! lost.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// What a completed write promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The new contents survive a power cut once the call returns. For state on disk: the
    /// PKI, the generated component files, step markers, the last good machine config.
    PowerCut,
    /// Atomic for readers, not flushed. For files under /run, which a power cut clears
    /// anyway (generated network units, the status report).
    Runtime,
}

/// How to write: the file's mode, its parents' mode when they must be created, durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replace {
    mode: u32,
    parent_mode: u32,
    durability: Durability,
}

impl Replace {
    /// A write that survives a power cut, of a file with `mode`.
    pub const fn durable(mode: u32) -> Self {
        Replace {
            mode,
            parent_mode: 0o755,
            durability: Durability::PowerCut,
        }
    }

    /// A write of a runtime file (under /run) with `mode`.
    pub const fn runtime(mode: u32) -> Self {
        Replace {
            mode,
            parent_mode: 0o755,
            durability: Durability::Runtime,
        }
    }

    /// Missing parent directories are created owner-only (0700), as the PKI's are.
    pub const fn private_parents(self) -> Self {
        Replace {
            parent_mode: 0o700,
            ..self
        }
    }

    /// Replaces `path` with `data`, creating missing parent directories.
    pub fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(self.parent_mode)
            .create(dir)?;
        let tmp = temp_path(dir, path)?;
        // A temp file left by an interrupted write would make create_new fail.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.mode)
                .open(&tmp)?;
            f.write_all(data)?;
            if self.durability == Durability::PowerCut {
                f.sync_all()?;
            }
            drop(f);
            fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if self.durability == Durability::PowerCut {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// `.NAME.tmp` beside `path`: hidden, in the same directory (so the rename stays on one
/// file system).
fn temp_path(dir: &Path, path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".tmp");
    Ok(dir.join(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replaces_contents_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/key.pem");
        Replace::durable(0o600).write(&p, b"one").unwrap();
        Replace::durable(0o600).write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
    }

    #[test]
    fn the_file_has_its_mode_and_private_parents_are_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pki/etcd/ca.key");
        Replace::durable(0o600)
            .private_parents()
            .write(&p, b"k")
            .unwrap();
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(mode_of(&d.path().join("pki")), 0o700);
        assert_eq!(mode_of(&d.path().join("pki/etcd")), 0o700);
        let q = d.path().join("run/status.json");
        Replace::runtime(0o644).write(&q, b"{}").unwrap();
        assert_eq!(mode_of(&q), 0o644);
    }

    #[test]
    fn a_stale_temp_file_from_an_interrupted_write_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("done");
        fs::write(d.path().join(".done.tmp"), b"half").unwrap();
        Replace::durable(0o644).write(&p, b"whole").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"whole");
        assert!(!d.path().join(".done.tmp").exists());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("target");
        fs::write(&p, b"old").unwrap();
        // A directory where the temp file would go makes the write fail before the rename.
        fs::create_dir(d.path().join(".target.tmp")).unwrap();
        fs::write(d.path().join(".target.tmp/x"), b"").unwrap();
        assert!(Replace::durable(0o644).write(&p, b"new").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
    }
}
