//! First-boot-only steps: a marker file under /var/lib/kiln/markers/<step>, written (and
//! fsynced) only after the step succeeded, checked before running it. A power cut in the
//! middle of a step leaves no marker, so the step runs again on the next boot.

use std::path::{Path, PathBuf};

/// Where markers live on a machine (on the data partition).
pub const MARKERS_DIR: &str = "/var/lib/kiln/markers";

/// Errors from recording a marker.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("invalid step name {0:?}")]
    Name(String),
    #[error("writing marker {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A directory of markers.
#[derive(Debug, Clone)]
pub struct Markers {
    dir: PathBuf,
}

fn valid(step: &str) -> bool {
    !step.is_empty()
        && step
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Markers {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Markers { dir: dir.into() }
    }

    /// Whether `step` completed on an earlier run.
    pub fn is_done(&self, step: &str) -> bool {
        valid(step) && self.dir.join(step).is_file()
    }

    /// Records that `step` completed: temp file, fsync, rename, fsync the directory.
    pub fn mark_done(&self, step: &str, note: &str) -> Result<(), MarkerError> {
        if !valid(step) {
            return Err(MarkerError::Name(step.to_string()));
        }
        let werr = |p: &Path| {
            let path = p.display().to_string();
            move |source| MarkerError::Write { path, source }
        };
        let path = self.dir.join(step);
        crate::atomic::Replace::durable(0o644)
            .write(&path, format!("{note}\n").as_bytes())
            .map_err(werr(&path))
    }

    /// Runs `f` unless `step` is marked done; marks it done when `f` succeeds. Returns
    /// whether `f` ran.
    pub fn run_once<E: From<MarkerError>>(
        &self,
        step: &str,
        f: impl FnOnce() -> Result<(), E>,
    ) -> Result<bool, E> {
        if self.is_done(step) {
            return Ok(false);
        }
        f()?;
        self.mark_done(step, "done")?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug)]
    enum E {
        Crash,
        Marker,
    }
    impl From<MarkerError> for E {
        fn from(_: MarkerError) -> E {
            E::Marker
        }
    }

    #[test]
    fn a_step_that_failed_midway_reruns_and_a_done_step_does_not() {
        let t = tempfile::tempdir().unwrap();
        let m = Markers::new(t.path().join("markers"));
        let runs = Cell::new(0);
        // First boot: the step is cut short (power loss simulated by an error) — no marker.
        let r = m.run_once("pki", || {
            runs.set(runs.get() + 1);
            Err(E::Crash)
        });
        assert!(matches!(r, Err(E::Crash)));
        assert!(!m.is_done("pki"));
        assert!(!t.path().join("markers/pki").exists());
        // Next boot: the step runs again and completes.
        assert!(m
            .run_once("pki", || {
                runs.set(runs.get() + 1);
                Ok::<(), E>(())
            })
            .unwrap());
        assert!(m.is_done("pki"));
        // Later boots: skipped, even through a fresh handle on the same directory.
        let m2 = Markers::new(t.path().join("markers"));
        assert!(!m2
            .run_once("pki", || {
                runs.set(runs.get() + 1);
                Ok::<(), E>(())
            })
            .unwrap());
        assert_eq!(runs.get(), 2);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(t.path().join("markers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pki"]);
    }

    #[test]
    fn a_leftover_temp_file_is_not_a_marker_and_names_are_checked() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(".first-boot.tmp"), "done\n").unwrap();
        let m = Markers::new(t.path());
        assert!(!m.is_done("first-boot"));
        assert!(matches!(
            m.mark_done("../etc", "x"),
            Err(MarkerError::Name(_))
        ));
        assert!(!m.is_done("../markers"));
        m.mark_done("first-boot", "at 5").unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("first-boot")).unwrap(),
            "at 5\n"
        );
    }
}
