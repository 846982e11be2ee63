//! Output staging: every output is written into a hidden staging directory inside
//! the output directory and only moved into place when the whole build succeeded.
//! On an error or Ctrl-C the staging directory is removed, so the output directory
//! never holds a half-written file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};

fn live() -> &'static Mutex<Vec<PathBuf>> {
    static LIVE: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(Vec::new()))
}

/// Removes every live staging directory and exits, on SIGINT/SIGTERM.
fn install_interrupt_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if let Ok(dirs) = live().lock() {
                for d in dirs.iter() {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
            eprintln!("kiln: interrupted; nothing was written");
            std::process::exit(130);
        });
    });
}

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("creating output directory {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("moving {from} into place as {to}: {source}")]
    Commit {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A staging directory for one build's outputs.
#[derive(Debug)]
pub struct Staging {
    out: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn new(out: &Path) -> Result<Self, StagingError> {
        install_interrupt_handler();
        std::fs::create_dir_all(out).map_err(|source| StagingError::Create {
            path: out.to_path_buf(),
            source,
        })?;
        let dir = out.join(format!(".kiln-staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|source| StagingError::Create {
            path: dir.clone(),
            source,
        })?;
        if let Ok(mut l) = live().lock() {
            l.push(dir.clone());
        }
        Ok(Staging {
            out: out.to_path_buf(),
            dir,
            committed: false,
        })
    }

    /// Where outputs are written until `commit`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The final output directory.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Moves every staged entry into the output directory (renames on one file
    /// system), replacing older outputs of the same name.
    pub fn commit(mut self) -> Result<Vec<PathBuf>, StagingError> {
        let mut names: Vec<_> = std::fs::read_dir(&self.dir)
            .map_err(|source| StagingError::Create {
                path: self.dir.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let mut moved = Vec::new();
        for n in names {
            let from = self.dir.join(&n);
            let to = self.out.join(&n);
            if to.is_dir() {
                let _ = std::fs::remove_dir_all(&to);
            }
            std::fs::rename(&from, &to).map_err(|source| StagingError::Commit {
                from: from.clone(),
                to: to.clone(),
                source,
            })?;
            moved.push(to);
        }
        self.committed = true;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(moved)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Ok(mut l) = live().lock() {
            l.retain(|d| d != &self.dir);
        }
        let _ = self.committed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_lands_without_commit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("out");
        {
            let s = Staging::new(&out).expect("staging");
            std::fs::write(s.dir().join("a.tar"), b"half").expect("write");
        }
        let left: Vec<_> = std::fs::read_dir(&out).expect("read").collect();
        assert!(left.is_empty(), "{left:?}");
        let s = Staging::new(&out).expect("staging");
        std::fs::write(s.dir().join("a.tar"), b"whole").expect("write");
        let moved = s.commit().expect("commit");
        assert_eq!(moved, vec![out.join("a.tar")]);
        assert_eq!(std::fs::read(out.join("a.tar")).expect("read"), b"whole");
        assert_eq!(std::fs::read_dir(&out).expect("read").count(), 1);
    }
}
