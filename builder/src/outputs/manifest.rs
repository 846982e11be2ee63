//! manifest.json and SHA256SUMS: what went into an image and what came out.

use std::path::Path;

use serde::Serialize;

use crate::digest::{Algorithm, Digest};

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub struct Input {
    /// `deb`, `artifact`, `go`, `local`.
    pub kind: String,
    pub name: String,
    pub version: String,
    /// Where it came from: a pool path, a URL, a module path.
    pub source: String,
    pub checksum: Digest,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutputFile {
    pub name: String,
    pub size: u64,
    pub sha256: Digest,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    pub image: String,
    pub version: String,
    pub arch: String,
    pub epoch: u64,
    pub kiln_version: String,
    pub lock: Digest,
    pub inputs: Vec<Input>,
    pub tools: Vec<Tool>,
    pub outputs: Vec<OutputFile>,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let mut m = self.clone();
        m.inputs.sort();
        m.tools.sort();
        m.outputs.sort();
        let mut s = serde_json::to_string_pretty(&m).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Hashes a finished output file.
pub fn describe(path: &Path) -> std::io::Result<OutputFile> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let sha256 = Digest::of_reader(Algorithm::Sha256, std::io::BufReader::new(f))?;
    Ok(OutputFile {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256,
    })
}

/// `sha256sum`-compatible text for the given files, sorted by name.
pub fn sha256sums(files: &[OutputFile]) -> String {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256.hex(), f.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sums_is_checked_by_sha256sum() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("b"), b"bee").expect("write");
        std::fs::write(dir.path().join("a"), b"ay").expect("write");
        let files = vec![
            describe(&dir.path().join("b")).expect("b"),
            describe(&dir.path().join("a")).expect("a"),
        ];
        let sums = sha256sums(&files);
        assert!(sums.starts_with(&files[1].sha256.hex().to_string()));
        std::fs::write(dir.path().join("SHA256SUMS"), &sums).expect("write");
        let st = std::process::Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(dir.path())
            .output()
            .expect("sha256sum runs");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        std::fs::write(dir.path().join("a"), b"changed").expect("write");
        let st = std::process::Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(dir.path())
            .output()
            .expect("sha256sum runs");
        assert!(!st.status.success());
    }
}
