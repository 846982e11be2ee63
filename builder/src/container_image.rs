//! `[[container-image]]`: OCI images baked into the machine image. Each is assembled as a
//! Tree fragment from files of other inputs (a go input's binary, a file of a locked Debian
//! package, one of Kiln's own programs), written as a reproducible OCI archive
//! (`crate::oci`) and placed at `/usr/lib/kiln/images/<name>.tar`, where firstboot imports
//! it into containerd.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::build::GoBuilt;
use crate::definition::{Mode, SymlinkSpec};
use crate::gobuild::GoInput;
use crate::oci::{self, ImageConfig, OciError, Reference, WrittenImage};
use crate::tree::{Content, Entry, Kind, Tree, TreeError, TreePath};

/// Where baked archives go in the image; firstboot imports every `*.tar` here.
pub const IMAGES_DIR: &str = "/usr/lib/kiln/images";

/// Kiln's own programs a container image may carry (`from = "self:<name>"`).
pub const SELF_BINARIES: &[&str] = &["kiln-pause"];

/// A container image baked into the machine image.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContainerImage {
    /// Full reference `registry/repository:tag`, e.g. `registry.k8s.io/pause:3.10.1`: the
    /// name containerd and the kubelet know the image by.
    pub name: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=value` strings.
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory.
    pub workdir: Option<String>,
    /// Files of the image and where each comes from.
    #[serde(default)]
    pub files: Vec<ContainerFile>,
    #[serde(default)]
    pub symlinks: Vec<SymlinkSpec>,
    /// Path (one of `files`' `to`) of a busybox binary: every applet it lists
    /// (`busybox --list`, run at build time) gets a symlink next to it.
    pub busybox_applets: Option<String>,
}

/// One file of a container image.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContainerFile {
    /// `go:<input>/<binary>`, `deb:<package>` (with `path`), or `self:<program>`.
    pub from: String,
    /// For `deb:` sources: the file's path in the machine image.
    pub path: Option<String>,
    /// Path in the container image.
    pub to: String,
    /// Default: the source's mode (`deb:`), else 0755.
    pub mode: Option<Mode>,
}

/// Where a container file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Go { input: String, binary: String },
    Deb { package: String, path: String },
    SelfBinary(String),
}

impl ContainerFile {
    pub fn source(&self) -> Result<Source, String> {
        let (kind, rest) = self.from.split_once(':').ok_or_else(|| {
            format!(
                "{:?} is not go:<input>/<binary>, deb:<package> or self:<program>",
                self.from
            )
        })?;
        if kind != "deb" && self.path.is_some() {
            return Err(format!(
                "`path` is only for deb: sources, not {:?}",
                self.from
            ));
        }
        match kind {
            "go" => {
                let (input, binary) = rest
                    .split_once('/')
                    .filter(|(i, b)| !i.is_empty() && !b.is_empty() && !b.contains('/'))
                    .ok_or_else(|| format!("{:?}: write go:<input>/<binary>", self.from))?;
                Ok(Source::Go {
                    input: input.into(),
                    binary: binary.into(),
                })
            }
            "deb" if !rest.is_empty() => {
                let path = self.path.clone().ok_or_else(|| {
                    format!("{:?} needs `path`, the file in the package", self.from)
                })?;
                Ok(Source::Deb {
                    package: rest.into(),
                    path,
                })
            }
            "self" if SELF_BINARIES.contains(&rest) => Ok(Source::SelfBinary(rest.into())),
            "self" => Err(format!(
                "{:?}: Kiln's programs are {}",
                self.from,
                SELF_BINARIES.join(", ")
            )),
            _ => Err(format!(
                "{:?} is not go:<input>/<binary>, deb:<package> or self:<program>",
                self.from
            )),
        }
    }
}

impl ContainerImage {
    pub fn reference(&self) -> Result<Reference, OciError> {
        Reference::parse(&self.name)
    }

    pub fn config(&self) -> ImageConfig {
        ImageConfig {
            entrypoint: self.entrypoint.clone(),
            cmd: self.cmd.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
        }
    }

    /// The self programs this image needs built.
    pub fn self_binaries(&self) -> BTreeSet<String> {
        self.files
            .iter()
            .filter_map(|f| match f.source() {
                Ok(Source::SelfBinary(n)) => Some(n),
                _ => None,
            })
            .collect()
    }
}

/// Checks the definition's container images; errors are (key, message).
pub fn validate(images: &[ContainerImage], go: &[GoInput]) -> Result<(), (String, String)> {
    let mut names = BTreeSet::new();
    let mut stems = BTreeSet::new();
    for img in images {
        let key = |k: &str| format!("container-image.{}{k}", img.name);
        let r = img.reference().map_err(|e| (key(".name"), e.to_string()))?;
        if !names.insert(img.name.clone()) || !stems.insert(r.file_stem()) {
            return Err((
                "container-image.name".into(),
                format!("{:?} is defined twice", img.name),
            ));
        }
        if img.files.is_empty() {
            return Err((key(".files"), "an image needs at least one file".into()));
        }
        for e in &img.env {
            if matches!(e.split_once('='), None | Some(("", _))) {
                return Err((key(".env"), format!("{e:?} is not KEY=value")));
            }
        }
        if let Some(w) = &img.workdir {
            if !w.starts_with('/') {
                return Err((key(".workdir"), format!("{w:?} is not absolute")));
            }
        }
        let mut tos = BTreeSet::new();
        for f in &img.files {
            let to =
                TreePath::from_definition(&f.to).map_err(|e| (key(".files.to"), e.to_string()))?;
            if to.is_root() || !tos.insert(to) {
                return Err((
                    key(".files.to"),
                    format!("{:?} is empty or given twice", f.to),
                ));
            }
            match f.source().map_err(|m| (key(".files.from"), m))? {
                Source::Go { input, binary } => {
                    let g = go.iter().find(|g| g.name == input).ok_or_else(|| {
                        (
                            key(".files.from"),
                            format!("{:?}: there is no [[go]] input named {input:?}", f.from),
                        )
                    })?;
                    if !g.packages.iter().any(|p| p.binary() == binary) {
                        return Err((
                            key(".files.from"),
                            format!("{:?}: go input {input} builds no binary {binary:?}", f.from),
                        ));
                    }
                }
                Source::Deb { path, .. } => {
                    TreePath::from_definition(&path)
                        .map_err(|e| (key(".files.path"), e.to_string()))?;
                }
                Source::SelfBinary(_) => {}
            }
        }
        for s in &img.symlinks {
            TreePath::from_definition(&s.path)
                .map_err(|e| (key(".symlinks.path"), e.to_string()))?;
        }
        if let Some(b) = &img.busybox_applets {
            let p = TreePath::from_definition(b)
                .map_err(|e| (key(".busybox-applets"), e.to_string()))?;
            if !tos.contains(&p) {
                return Err((
                    key(".busybox-applets"),
                    format!("{b:?} is not one of the image's files"),
                ));
            }
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerImageError {
    #[error("container image {image}: {from}: {reason}")]
    Source {
        image: String,
        from: String,
        reason: String,
    },
    #[error("container image {image}: {source}")]
    Tree {
        image: String,
        #[source]
        source: Box<TreeError>,
    },
    #[error("container image {image}: running {binary} --list to find busybox applets")]
    Applets {
        image: String,
        binary: String,
        #[source]
        source: io::Error,
    },
    #[error("container image {image}: `{binary} --list` failed ({status}): {stderr}")]
    AppletsFailed {
        image: String,
        binary: String,
        status: String,
        stderr: String,
    },
    #[error("container image {image}: writing {path}")]
    Write {
        image: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Oci(#[from] OciError),
}

/// What `bake` put into the machine image.
#[derive(Debug, Clone)]
pub struct BakedImage {
    pub written: WrittenImage,
    /// Path of the archive in the machine image.
    pub at: TreePath,
    /// The archive on the build host (inside `scratch`).
    pub archive: PathBuf,
}

impl BakedImage {
    /// The image as a manifest/SBOM input: name, tag, and the manifest digest containerd
    /// will report, with the archive's sha256 as checksum.
    pub fn input(&self) -> crate::manifest::Input {
        crate::manifest::Input {
            kind: "container-image".into(),
            name: self.written.reference.name().into(),
            version: self.written.reference.tag().into(),
            source: format!("{} (manifest {})", self.at, self.written.manifest),
            checksum: self.written.archive.clone(),
        }
    }
}

/// Follows symlinks (in parents and at the end) to a regular file of `tree`.
fn resolve_file<'a>(tree: &'a Tree, path: &TreePath) -> Option<&'a Entry> {
    let mut p = path.clone();
    for _ in 0..40 {
        let real = tree.resolve_parent(&p, "resolve").ok()?;
        let entry = tree.get(&real)?;
        match &entry.kind {
            Kind::File(_) => return Some(entry),
            Kind::Hardlink(t) => p = t.clone(),
            Kind::Symlink(t) => p = Tree::lexical_target(&real, t)?,
            Kind::Dir => return None,
        }
    }
    None
}

/// The Tree fragment of one container image. `root` is the assembled machine image (for
/// `deb:` sources), `self_bins` maps Kiln's program names to their built binaries.
pub fn fragment(
    img: &ContainerImage,
    epoch: u64,
    root: &Tree,
    go: &[GoBuilt],
    self_bins: &BTreeMap<String, PathBuf>,
    scratch: &Path,
) -> Result<Tree, ContainerImageError> {
    let mut t = Tree::new(epoch);
    let src_err = |f: &ContainerFile, reason: String| ContainerImageError::Source {
        image: img.name.clone(),
        from: f.from.clone(),
        reason,
    };
    let tree_err = |source| ContainerImageError::Tree {
        image: img.name.clone(),
        source: Box::new(source),
    };
    for f in &img.files {
        let source = f.source().map_err(|r| src_err(f, r))?;
        let (content, mode) = match source {
            Source::Go { input, binary } => {
                let b = go
                    .iter()
                    .filter(|g| g.input.name == input)
                    .flat_map(|g| &g.output.binaries)
                    .find(|b| b.name == binary)
                    .ok_or_else(|| src_err(f, "the go build has no such binary".into()))?;
                let content = Content::OnDisk {
                    path: b.path.clone(),
                    size: b.size,
                };
                (content, 0o755)
            }
            Source::Deb { package, path } => {
                let p = TreePath::from_definition(&path).map_err(|e| src_err(f, e.to_string()))?;
                let entry = resolve_file(root, &p)
                    .ok_or_else(|| src_err(f, format!("{p} is not a file of the image")))?;
                if *entry.origin != *package {
                    return Err(src_err(
                        f,
                        format!("{p} comes from {}, not {package}", entry.origin),
                    ));
                }
                let Kind::File(content) = &entry.kind else {
                    return Err(src_err(f, format!("{p} is not a regular file")));
                };
                (content.clone(), entry.mode)
            }
            Source::SelfBinary(name) => {
                let path = self_bins
                    .get(&name)
                    .ok_or_else(|| src_err(f, "this program was not built".into()))?;
                let size = std::fs::metadata(path)
                    .map_err(|e| src_err(f, format!("{}: {e}", path.display())))?
                    .len();
                let content = Content::OnDisk {
                    path: path.clone(),
                    size,
                };
                (content, 0o755)
            }
        };
        let to = TreePath::from_definition(&f.to).map_err(|e| src_err(f, e.to_string()))?;
        let mode = f.mode.map_or(mode, |m| m.0);
        t.replace(&to, Entry::file(content, mode, &img.name).at(epoch))
            .map_err(tree_err)?;
    }
    if let Some(b) = &img.busybox_applets {
        let at = TreePath::from_definition(b).map_err(|e| ContainerImageError::Source {
            image: img.name.clone(),
            from: b.clone(),
            reason: e.to_string(),
        })?;
        let content = match t.get(&at).map(|e| &e.kind) {
            Some(Kind::File(c)) => c.clone(),
            _ => {
                return Err(ContainerImageError::Source {
                    image: img.name.clone(),
                    from: b.clone(),
                    reason: "busybox-applets names no file of the image".into(),
                })
            }
        };
        let own = at.file_name().to_string();
        let dir = at.parent().unwrap_or_else(TreePath::root);
        for applet in busybox_applets(&img.name, &content, scratch)? {
            if applet == own {
                continue;
            }
            let p = dir.join(&applet);
            if t.get(&p).is_none() {
                t.insert(&p, Entry::symlink(&own, &img.name).at(epoch))
                    .map_err(tree_err)?;
            }
        }
    }
    for s in &img.symlinks {
        let p = TreePath::from_definition(&s.path).map_err(|e| ContainerImageError::Source {
            image: img.name.clone(),
            from: s.path.clone(),
            reason: e.to_string(),
        })?;
        t.replace(&p, Entry::symlink(&s.target, &img.name).at(epoch))
            .map_err(tree_err)?;
    }
    Ok(t)
}

/// Runs the busybox binary in `content` with `--list` (a static binary; it is copied to a
/// private executable file first) and returns the applet names.
pub fn busybox_applets(
    image: &str,
    content: &Content,
    scratch: &Path,
) -> Result<Vec<String>, ContainerImageError> {
    let err = |source| ContainerImageError::Applets {
        image: image.into(),
        binary: "busybox".into(),
        source,
    };
    let dir = tempfile::tempdir_in(scratch).map_err(err)?;
    let exe = dir.path().join("busybox");
    // Written and closed before it runs, so exec never sees a busy text file.
    std::fs::write(&exe, content.read_all().map_err(err)?).map_err(err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    let out = Command::new(&exe)
        .arg("--list")
        .env_clear()
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(ContainerImageError::AppletsFailed {
            image: image.into(),
            binary: exe.display().to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(parse_applets(&String::from_utf8_lossy(&out.stdout)))
}

/// Applet names from `busybox --list`: one per line; anything that is not a plain file
/// name is dropped.
pub fn parse_applets(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && *l != "."
                && *l != ".."
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-[]".contains(&b))
        })
        .map(String::from)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Writes every container image of `images` as an OCI archive into `scratch` and places it in
/// `root` at `IMAGES_DIR/<file stem>.tar` (origin: the image name).
pub fn bake(
    images: &[ContainerImage],
    epoch: u64,
    root: &mut Tree,
    go: &[GoBuilt],
    self_bins: &BTreeMap<String, PathBuf>,
    scratch: &Path,
) -> Result<Vec<BakedImage>, ContainerImageError> {
    let mut baked = Vec::new();
    for img in images {
        let reference = img.reference()?;
        let layer = fragment(img, epoch, root, go, self_bins, scratch)?;
        let archive = scratch.join(format!("{}.tar", reference.file_stem()));
        let write_err = |source| ContainerImageError::Write {
            image: img.name.clone(),
            path: archive.clone(),
            source,
        };
        let file = std::fs::File::create(&archive).map_err(write_err)?;
        let written = oci::write_archive(&reference, &layer, &img.config(), scratch, file)?;
        let at = TreePath::from_definition(&format!("{IMAGES_DIR}/{}.tar", reference.file_stem()))
            .map_err(|e| write_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let content = Content::OnDisk {
            path: archive.clone(),
            size: written.archive_size,
        };
        root.replace(&at, Entry::file(content, 0o644, &img.name).at(epoch))
            .map_err(|source| ContainerImageError::Tree {
                image: img.name.clone(),
                source: Box::new(source),
            })?;
        baked.push(BakedImage {
            written,
            at,
            archive,
        });
    }
    Ok(baked)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "[image]\nname = \"c\"\nversion = \"1\"\nepoch = 0\n\
        [[go]]\nname = \"coredns\"\nmodule = \"github.com/coredns/coredns\"\nversion = \"v1.13.1\"\n\
        packages = [\"github.com/coredns/coredns\"]\n";

    fn load(dir: &Path, name: &str, text: &str) -> Result<crate::definition::Definition, String> {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        crate::definition::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn definitions_parse_validate_and_merge_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let img = |name: &str, extra: &str| {
            format!(
                "[[container-image]]\nname = \"{name}\"\nentrypoint = [\"/coredns\"]\n\
                 files = [{{ from = \"go:coredns/coredns\", to = \"/coredns\" }}]\n{extra}"
            )
        };
        let d = load(
            dir.path(),
            "ok.toml",
            &format!(
                "{HEAD}{}{}",
                img("registry.k8s.io/coredns/coredns:v1.13.1", ""),
                "[[container-image]]\nname = \"kiln.local/busybox:1\"\nenv = [\"PATH=/bin\"]\n\
                 files = [{ from = \"deb:busybox-static\", path = \"/bin/busybox\", to = \"/bin/busybox\" },\n\
                 { from = \"self:kiln-pause\", to = \"/pause\", mode = 0o700 }]\n\
                 busybox-applets = \"/bin/busybox\"\nsymlinks = [{ path = \"/bin/sh\", target = \"busybox\" }]\n"
            ),
        )
        .expect("valid");
        assert_eq!(d.container_images.len(), 2);
        let bb = &d.container_images[1];
        assert_eq!(
            bb.files[0].source(),
            Ok(Source::Deb {
                package: "busybox-static".into(),
                path: "/bin/busybox".into()
            })
        );
        assert_eq!(
            bb.self_binaries(),
            BTreeSet::from(["kiln-pause".to_string()])
        );

        for (extra, key, needle) in [
            (
                img("coredns:v1", ""),
                "container-image.coredns:v1.name",
                "registry",
            ),
            (
                img("r.io/a:1", "").replace("go:coredns/coredns", "go:nope/coredns"),
                "files.from",
                "no [[go]] input named \"nope\"",
            ),
            (
                img("r.io/a:1", "").replace("go:coredns/coredns", "go:coredns/kubelet"),
                "files.from",
                "builds no binary",
            ),
            (
                img("r.io/a:1", "").replace("go:coredns/coredns", "deb:busybox"),
                "files.from",
                "needs `path`",
            ),
            (
                img("r.io/a:1", "").replace("go:coredns/coredns", "self:sh"),
                "files.from",
                "kiln-pause",
            ),
            (img("r.io/a:1", "env = [\"NOEQ\"]"), ".env", "KEY=value"),
            (img("r.io/a:1", "workdir = \"tmp\""), ".workdir", "absolute"),
            (
                img("r.io/a:1", "busybox-applets = \"/bin/busybox\""),
                ".busybox-applets",
                "not one of the image's files",
            ),
            (
                format!("{}{}", img("r.io/a:1", ""), img("r.io/a:1", "")),
                "container-image.name",
                "defined twice",
            ),
        ] {
            let msg = load(dir.path(), "bad.toml", &format!("{HEAD}{extra}")).expect_err(&extra);
            assert!(
                msg.contains("bad.toml") && msg.contains(key) && msg.contains(needle),
                "{msg}"
            );
        }
        let msg = load(
            dir.path(),
            "unk.toml",
            &format!("{HEAD}{}", img("r.io/a:1", "user = \"x\"")),
        )
        .expect_err("unknown key");
        assert!(msg.contains("unk.toml:") && msg.contains("user"), "{msg}");

        // A variant replaces the base's image of the same name and keeps the others.
        std::fs::write(
            dir.path().join("base.toml"),
            format!("{HEAD}{}{}", img("r.io/a:1", ""), img("r.io/b:1", "")),
        )
        .expect("base");
        let d = load(
            dir.path(),
            "v.toml",
            &format!(
                "extends = \"base.toml\"\n{}",
                img("r.io/a:1", "cmd = [\"-conf\", \"/x\"]")
            ),
        )
        .expect("variant");
        let names: Vec<_> = d.container_images.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["r.io/b:1", "r.io/a:1"]);
        assert_eq!(d.container_images[1].cmd, ["-conf", "/x"]);
    }

    #[test]
    fn applet_lists_are_filtered() {
        assert_eq!(
            parse_applets("sh\n[\n[[\nls\n\n../evil\na/b\nsh\n"),
            ["[", "[[", "ls", "sh"]
        );
    }
}
