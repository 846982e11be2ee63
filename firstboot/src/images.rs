//! Baked container images: every OCI archive the builder put in `/usr/lib/kiln/images` is
//! imported into containerd's `k8s.io` namespace (the CRI's) with the real `ctr`, then
//! labelled `io.cri-containerd.pinned=pinned` so the kubelet's image GC never removes it.
//! Idempotent: an image already present with the archive's manifest digest and the label
//! is left alone; no registry is ever contacted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// Where the builder puts the archives (the builder's `container_image::IMAGES_DIR`).
pub const IMAGES_DIR: &str = "/usr/lib/kiln/images";
/// The CRI plugin's containerd namespace.
pub const NAMESPACE: &str = "k8s.io";
pub const PINNED_KEY: &str = "io.cri-containerd.pinned";
pub const PINNED_VALUE: &str = "pinned";
/// The annotation containerd names an imported image by (the full reference).
pub const ANNOTATION_NAME: &str = "io.containerd.image.name";

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("listing {0}")]
    ListDir(PathBuf, #[source] io::Error),
    #[error("reading archive {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive {path}: {reason}")]
    BadArchive { path: PathBuf, reason: String },
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr_tail}")]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
}

/// How to call `ctr`: the binary, the containerd socket (default: ctr's own default),
/// and the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctr {
    pub program: PathBuf,
    pub address: Option<PathBuf>,
    pub namespace: String,
}

impl Ctr {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Ctr {
            program: program.into(),
            address: None,
            namespace: NAMESPACE.to_string(),
        }
    }

    pub fn at(mut self, address: impl Into<PathBuf>) -> Self {
        self.address = Some(address.into());
        self
    }

    fn base(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(a) = &self.address {
            v.push("--address".into());
            v.push(a.display().to_string());
        }
        v.push("--namespace".into());
        v.push(self.namespace.clone());
        v
    }

    /// `ctr images ls`: REF, TYPE, DIGEST, ..., LABELS columns.
    pub fn list_args(&self) -> Vec<String> {
        let mut v = self.base();
        v.extend(["images".into(), "ls".into()]);
        v
    }

    /// `ctr images import --local <archive>`: the client-side importer, which names each
    /// image by its `io.containerd.image.name` annotation and unpacks it for the default
    /// platform (linux/amd64) into the default snapshotter.
    pub fn import_args(&self, archive: &Path) -> Vec<String> {
        let mut v = self.base();
        v.extend([
            "images".into(),
            "import".into(),
            "--local".into(),
            archive.display().to_string(),
        ]);
        v
    }

    /// `ctr images label <ref> io.cri-containerd.pinned=pinned`.
    pub fn pin_args(&self, reference: &str) -> Vec<String> {
        let mut v = self.base();
        v.extend([
            "images".into(),
            "label".into(),
            reference.to_string(),
            format!("{PINNED_KEY}={PINNED_VALUE}"),
        ]);
        v
    }
}

/// Runs a program and returns its stdout; the seam tests replace.
pub trait Run {
    fn run(&self, program: &Path, args: &[String]) -> Result<String, ImagesError>;
}

/// Runs the real program.
pub struct HostRun;

impl Run for HostRun {
    fn run(&self, program: &Path, args: &[String]) -> Result<String, ImagesError> {
        let command = format!("{} {}", program.display(), args.join(" "));
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| ImagesError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(10).collect();
            return Err(ImagesError::Failed {
                command,
                status: out.status.to_string(),
                stderr_tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// An image of the store as `ctr images ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub digest: String,
    pub pinned: bool,
}

/// Parses `ctr images ls`: the header line, then REF TYPE DIGEST SIZE(2 words) PLATFORMS
/// LABELS per image. Only REF, DIGEST and LABELS (the last column, `-` or `k=v,k=v`) are
/// read.
pub fn parse_ls(text: &str) -> BTreeMap<String, Listed> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || cols[0] == "REF" || !cols[2].starts_with("sha256:") {
            continue;
        }
        let labels = cols.last().copied().unwrap_or("-");
        let pinned = labels
            .split(',')
            .any(|kv| kv == format!("{PINNED_KEY}={PINNED_VALUE}"));
        out.insert(
            cols[0].to_string(),
            Listed {
                digest: cols[2].to_string(),
                pinned,
            },
        );
    }
    out
}

/// The images an OCI archive names: (reference, manifest digest) from its `index.json`.
pub fn read_index(mut r: impl Read + Seek) -> io::Result<Vec<(String, String)>> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Desc>,
    }
    #[derive(Deserialize)]
    struct Desc {
        digest: String,
        #[serde(default)]
        annotations: BTreeMap<String, String>,
    }
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut header = [0u8; 512];
    loop {
        r.read_exact(&mut header)?;
        if header.iter().all(|b| *b == 0) {
            return Err(bad("no index.json in the archive".into()));
        }
        let name_end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]);
        let size_field = String::from_utf8_lossy(&header[124..136]);
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .map_err(|_| bad(format!("bad size field in the header of {name:?}")))?;
        let padded = size.div_ceil(512) * 512;
        if name.trim_start_matches("./") == "index.json" && matches!(header[156], b'0' | 0) {
            if size > 1 << 20 {
                return Err(bad(format!("index.json is {size} bytes")));
            }
            let mut text = vec![0u8; size as usize];
            r.read_exact(&mut text)?;
            let idx: Index =
                serde_json::from_slice(&text).map_err(|e| bad(format!("index.json: {e}")))?;
            return Ok(idx
                .manifests
                .into_iter()
                .filter_map(|d| {
                    let name = d.annotations.get(ANNOTATION_NAME)?.clone();
                    Some((name, d.digest))
                })
                .collect());
        }
        r.seek(SeekFrom::Current(padded as i64))?;
    }
}

/// The archives in `dir` (`*.tar`, sorted by name).
pub fn archives(dir: &Path) -> Result<Vec<PathBuf>, ImagesError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImagesError::ListDir(dir.to_path_buf(), e)),
    };
    let mut v = Vec::new();
    for e in rd {
        let p = e
            .map_err(|e| ImagesError::ListDir(dir.to_path_buf(), e))?
            .path();
        if p.extension().is_some_and(|x| x == "tar") && p.is_file() {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// What `import_all` did, per reference.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: Vec<String>,
    pub pinned: Vec<String>,
    /// Already present with the same digest and pinned: nothing run.
    pub unchanged: Vec<String>,
    /// Each `ctr` run (what it did) and how long it took.
    pub steps: Vec<(String, std::time::Duration)>,
}

impl ImportReport {
    /// `ls 0.4 s, import coredns.tar 3.1 s, ...`
    pub fn steps_line(&self) -> String {
        self.steps
            .iter()
            .map(|(what, took)| format!("{what} {:.1} s", took.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Imports every archive of `dir` that containerd does not already hold (same reference,
/// same manifest digest), then pins every image the archives name. The archives naming one
/// of `first` go first, in that order (the sandbox image, which every pod needs, then what
/// the cluster's own pods run); the rest by file name.
pub fn import_all(
    dir: &Path,
    ctr: &Ctr,
    run: &dyn Run,
    first: &[&str],
) -> Result<ImportReport, ImagesError> {
    let mut report = ImportReport::default();
    let mut archives = archives(dir)?
        .into_iter()
        .map(|path| {
            let read_err = |source| ImagesError::Read {
                path: path.clone(),
                source,
            };
            let file = File::open(&path).map_err(read_err)?;
            let named = read_index(BufReader::new(file)).map_err(read_err)?;
            if named.is_empty() {
                return Err(ImagesError::BadArchive {
                    path,
                    reason: format!("no manifest carries the {ANNOTATION_NAME} annotation"),
                });
            }
            Ok((path, named))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if archives.is_empty() {
        return Ok(report);
    }
    // Stable: archives of equal rank keep their order by name.
    archives.sort_by_key(|(_, named)| {
        named
            .iter()
            .filter_map(|(r, _)| first.iter().position(|f| f == r))
            .min()
            .unwrap_or(first.len())
    });
    let mut steps = Vec::new();
    let mut timed = |what: String, args: Vec<String>| {
        let t0 = std::time::Instant::now();
        let out = run.run(&ctr.program, &args);
        steps.push((what, t0.elapsed()));
        out
    };
    let present = parse_ls(&timed("ls".into(), ctr.list_args())?);
    for (path, named) in archives {
        let current = |r: &str, d: &str| present.get(r).is_some_and(|l| l.digest == d);
        if !named.iter().all(|(r, d)| current(r, d)) {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            timed(format!("import {file}"), ctr.import_args(&path))?;
            report.imported.extend(named.iter().map(|(r, _)| r.clone()));
        }
        for (reference, digest) in &named {
            if current(reference, digest) && present.get(reference).is_some_and(|l| l.pinned) {
                report.unchanged.push(reference.clone());
                continue;
            }
            timed(format!("pin {reference}"), ctr.pin_args(reference))?;
            report.pinned.push(reference.clone());
        }
    }
    report.steps = steps;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    const LS: &str = "\
REF                                      TYPE                                                 DIGEST                                                                  SIZE      PLATFORMS   LABELS
registry.k8s.io/pause:3.10.1             application/vnd.oci.image.manifest.v1+json           sha256:1111111111111111111111111111111111111111111111111111111111111111 310.4 KiB linux/amd64 io.cri-containerd.pinned=pinned
kiln.local/busybox:1.35.0                application/vnd.oci.image.manifest.v1+json           sha256:2222222222222222222222222222222222222222222222222222222222222222 1.1 MiB   linux/amd64 -
";

    #[test]
    fn ctr_commands() {
        let c = Ctr::new("/usr/bin/ctr").at("/run/containerd/containerd.sock");
        assert_eq!(
            c.import_args(Path::new("/usr/lib/kiln/images/a.tar")),
            [
                "--address",
                "/run/containerd/containerd.sock",
                "--namespace",
                "k8s.io",
                "images",
                "import",
                "--local",
                "/usr/lib/kiln/images/a.tar"
            ]
        );
        assert_eq!(
            Ctr::new("ctr").pin_args("registry.k8s.io/pause:3.10.1"),
            [
                "--namespace",
                "k8s.io",
                "images",
                "label",
                "registry.k8s.io/pause:3.10.1",
                "io.cri-containerd.pinned=pinned"
            ]
        );
        assert_eq!(
            Ctr::new("ctr").list_args(),
            ["--namespace", "k8s.io", "images", "ls"]
        );
    }

    #[test]
    fn ls_output_is_parsed() {
        let m = parse_ls(LS);
        assert_eq!(m.len(), 2);
        let p = &m["registry.k8s.io/pause:3.10.1"];
        assert!(p.pinned);
        assert!(p.digest.ends_with("1111"));
        assert!(!m["kiln.local/busybox:1.35.0"].pinned);
        assert!(parse_ls("REF TYPE DIGEST SIZE PLATFORMS LABELS\n").is_empty());
    }

    /// Writes an OCI-archive-shaped tar with the host's `tar` (a real tar writer).
    fn archive(dir: &Path, name: &str, reference: &str, digest: &str) -> PathBuf {
        let src = dir.join(format!("{name}.d"));
        std::fs::create_dir_all(src.join("blobs/sha256")).expect("mkdir");
        std::fs::write(src.join("blobs/sha256/aa"), vec![7u8; 1000]).expect("blob");
        std::fs::write(src.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("layout");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest, "size": 10,
                "annotations": {ANNOTATION_NAME: reference, "org.opencontainers.image.ref.name": "x"}
            }]
        });
        std::fs::write(src.join("index.json"), index.to_string()).expect("index");
        let out = dir.join(format!("{name}.tar"));
        let st = Command::new("tar")
            .args(["--sort=name", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .args(["blobs", "index.json", "oci-layout"])
            .status()
            .expect("tar");
        assert!(st.success());
        out
    }

    #[test]
    fn index_is_read_from_a_real_tar() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = archive(dir.path(), "a", "registry.k8s.io/pause:3.10.1", "sha256:ab");
        let named = read_index(File::open(&p).expect("open")).expect("read");
        assert_eq!(
            named,
            [(
                "registry.k8s.io/pause:3.10.1".to_string(),
                "sha256:ab".to_string()
            )]
        );
        std::fs::write(dir.path().join("junk.tar"), vec![0u8; 1024]).expect("junk");
        assert!(read_index(File::open(dir.path().join("junk.tar")).expect("open")).is_err());
    }

    /// Records the commands and answers `images ls` with a fixed listing.
    struct Fake {
        ls: String,
        calls: RefCell<Vec<Vec<String>>>,
    }

    impl Run for Fake {
        fn run(&self, _program: &Path, args: &[String]) -> Result<String, ImagesError> {
            self.calls.borrow_mut().push(args.to_vec());
            Ok(if args.ends_with(&["images".into(), "ls".into()]) {
                self.ls.clone()
            } else {
                String::new()
            })
        }
    }

    #[test]
    fn imports_only_what_is_missing_or_changed_and_pins() {
        let dir = tempfile::tempdir().expect("tmp");
        let images = dir.path().join("images");
        std::fs::create_dir(&images).expect("mkdir");
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let d3 = format!("sha256:{}", "3".repeat(64));
        archive(&images, "pause", "registry.k8s.io/pause:3.10.1", &d1);
        archive(&images, "busybox", "kiln.local/busybox:1.35.0", &d2);
        archive(
            &images,
            "coredns",
            "registry.k8s.io/coredns/coredns:v1.13.1",
            &d3,
        );
        for d in ["pause.d", "busybox.d", "coredns.d"] {
            std::fs::remove_dir_all(images.join(d)).expect("rm");
        }
        let fake = Fake {
            ls: LS.to_string(),
            calls: RefCell::new(Vec::new()),
        };
        let report = import_all(&images, &Ctr::new("ctr"), &fake, &[]).expect("import");
        // pause: same digest and pinned -> nothing; busybox: present but unpinned -> label
        // only; coredns: missing -> import and label.
        assert_eq!(report.unchanged, ["registry.k8s.io/pause:3.10.1"]);
        assert_eq!(report.imported, ["registry.k8s.io/coredns/coredns:v1.13.1"]);
        assert_eq!(
            report.pinned,
            [
                "kiln.local/busybox:1.35.0",
                "registry.k8s.io/coredns/coredns:v1.13.1"
            ]
        );
        let calls = fake.calls.borrow();
        let imports: Vec<_> = calls
            .iter()
            .filter(|c| c.contains(&"import".to_string()))
            .collect();
        assert_eq!(imports.len(), 1);
        assert!(imports[0]
            .last()
            .is_some_and(|a| a.ends_with("coredns.tar")));
        // A changed digest is imported again.
        let changed = LS.replace(&"1".repeat(64), &"9".repeat(64));
        let fake = Fake {
            ls: changed,
            calls: RefCell::new(Vec::new()),
        };
        let report = import_all(&images, &Ctr::new("ctr"), &fake, &[]).expect("import");
        assert!(report
            .imported
            .contains(&"registry.k8s.io/pause:3.10.1".to_string()));
        // No directory: nothing to do, ctr not even run.
        let fake = Fake {
            ls: String::new(),
            calls: RefCell::new(Vec::new()),
        };
        let r = import_all(&dir.path().join("none"), &Ctr::new("ctr"), &fake, &[]).expect("none");
        assert_eq!(r, ImportReport::default());
        assert!(fake.calls.borrow().is_empty());

        // Nothing present: the images named first are imported first, in that order, then
        // the rest by file name.
        let imported = |first: &[&str]| {
            let fake = Fake {
                ls: String::new(),
                calls: RefCell::new(Vec::new()),
            };
            import_all(&images, &Ctr::new("ctr"), &fake, first).expect("import");
            let calls = fake.calls.borrow();
            calls
                .iter()
                .filter(|c| c.contains(&"import".to_string()))
                .filter_map(|c| c.last().cloned())
                .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(imported(&[]), ["busybox.tar", "coredns.tar", "pause.tar"]);
        assert_eq!(
            imported(&[
                "registry.k8s.io/pause:3.10.1",
                "registry.k8s.io/coredns/coredns:v1.13.1"
            ]),
            ["pause.tar", "coredns.tar", "busybox.tar"]
        );
    }
}
