//! Built images shared by the end-to-end tests: each definition is built once per
//! change of its inputs (the kiln binary, the definition and lock, firstboot's
//! sources) and reused by every test binary.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest as _, Sha256};

use crate::{kiln_bin, text, workspace_root};

/// The outputs of one `kiln build`.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub name: String,
}

impl Built {
    pub fn qcow2(&self) -> PathBuf {
        self.dir.join(format!("{}.qcow2", self.name))
    }
    pub fn raw(&self) -> PathBuf {
        self.dir.join(format!("{}.raw", self.name))
    }
    pub fn iso(&self) -> PathBuf {
        self.dir.join(format!("{}.iso", self.name))
    }
    pub fn pxe(&self) -> PathBuf {
        self.dir.join(format!("{}-pxe", self.name))
    }
}

fn hash_tree(h: &mut Sha256, dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            hash_tree(h, &p);
        } else if let Ok(b) = std::fs::read(&p) {
            h.update(p.to_string_lossy().as_bytes());
            h.update(&b);
        }
    }
}

/// Where the build of `definition` for the current inputs lives.
fn key(definition: &str) -> String {
    let root = workspace_root();
    let mut h = Sha256::new();
    h.update(std::fs::read(kiln_bin()).unwrap_or_default());
    for f in [
        definition.to_string(),
        definition.replace(".toml", ".lock"),
        "Cargo.lock".into(),
    ] {
        h.update(std::fs::read(root.join(&f)).unwrap_or_default());
    }
    // Bases a definition extends, and their locks.
    hash_tree(&mut h, &root.join("images"));
    hash_tree(&mut h, &root.join("firstboot/src"));
    hash_tree(&mut h, &root.join("firstboot/units"));
    hex::encode(h.finalize())[..16].to_string()
}

/// Builds (or reuses) `definition` with all its outputs.
pub fn build(definition: &str) -> Built {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace_root();
    let name = Path::new(definition)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target
        .join("kiln-test-images")
        .join(format!("{name}-{}", key(definition)));
    if dir.join("SHA256SUMS").is_file() {
        return Built { dir, name };
    }
    let o = std::process::Command::new(kiln_bin())
        .args(["build", definition, "--out"])
        .arg(&dir)
        .current_dir(&root)
        .output()
        .expect("kiln runs");
    assert!(o.status.success(), "building {definition}: {}", text(&o));
    prune_stale(&dir, &name);
    Built { dir, name }
}

/// Removes builds of `name` for inputs other than the current ones: each is
/// hundreds of megabytes and no key ever comes back once its inputs changed.
fn prune_stale(current: &Path, name: &str) {
    let Some(parent) = current.parent() else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in rd.filter_map(Result::ok) {
        let path = entry.path();
        if path != current && is_build_of(&entry.file_name().to_string_lossy(), name) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Whether a directory name is `<name>-<16 hex digits>`, as `build` names them.
fn is_build_of(dir_name: &str, name: &str) -> bool {
    dir_name
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|key| key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// images/minimal.toml, built once.
pub fn minimal() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| build("images/minimal.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_dirs_are_told_apart_by_name_and_key() {
        assert!(is_build_of("minimal-cf8eed59340c8ca6", "minimal"));
        assert!(is_build_of("single-node-317e2369661f7731", "single-node"));
        // Another definition whose name starts with this one's.
        assert!(!is_build_of("minimal-iso-cf8eed59340c8ca6", "minimal"));
        assert!(!is_build_of("single-node-317e2369661f7731", "single"));
        assert!(!is_build_of("minimal-cf8eed59340c8ca", "minimal"));
        assert!(!is_build_of("minimal", "minimal"));
    }

    #[test]
    fn pruning_keeps_the_current_build_and_other_definitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let names = [
            "minimal-0000000000000000",
            "minimal-1111111111111111",
            "single-node-2222222222222222",
        ];
        for n in names {
            std::fs::create_dir_all(dir.path().join(n).join("sub")).expect("mkdir");
        }
        prune_stale(&dir.path().join(names[1]), "minimal");
        assert!(!dir.path().join(names[0]).exists());
        assert!(dir.path().join(names[1]).join("sub").is_dir());
        assert!(dir.path().join(names[2]).is_dir());
    }
}
