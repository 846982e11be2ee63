//! `[[container-image]]` of a definition: the OCI images to bake into the machine image,
//! each made of files of other inputs. Parsed and checked here; `crate::container_image`
//! bakes them.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Mode, SymlinkSpec};
use crate::gobuild::GoInput;
use crate::oci::{ImageConfig, OciError, Reference};
use crate::tree::TreePath;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
}
