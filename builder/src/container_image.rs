//! `[[container-image]]`: OCI images baked into the machine image. Each is assembled as a
//! Tree fragment from files of other inputs (a go input's binary, a file of a locked Debian
//! package, one of Kiln's own programs), written as a reproducible OCI archive
//! (`crate::oci`) and placed at `/usr/lib/kiln/images/<name>.tar`, where firstboot imports
//! it into containerd.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::definition::container_image::{ContainerFile, ContainerImage, Source};
use crate::gobuild::GoBuilt;
use crate::oci::{self, OciError, WrittenImage};
use crate::tree::{Content, Entry, Kind, Tree, TreeError, TreePath};

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
    #[error("container image {image}: {source}")]
    AppletsFailed {
        image: String,
        #[source]
        source: crate::process::CommandError,
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
    pub fn input(&self) -> crate::outputs::manifest::Input {
        crate::outputs::manifest::Input {
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
            from: s.path.to_string(),
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
    let out = crate::process::Tool::new(&exe)
        .arg("--list")
        .env_clear()
        .run_text()
        .map_err(|source| ContainerImageError::AppletsFailed {
            image: image.into(),
            source,
        })?;
    Ok(parse_applets(&out))
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
        let at = TreePath::from_definition(&format!(
            "{}/{}.tar",
            firstboot::images::IMAGES_DIR,
            reference.file_stem()
        ))
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

    #[test]
    fn applet_lists_are_filtered() {
        assert_eq!(
            parse_applets("sh\n[\n[[\nls\n\n../evil\na/b\nsh\n"),
            ["[", "[[", "ls", "sh"]
        );
    }
}
