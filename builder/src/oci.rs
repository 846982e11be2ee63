//! Reproducible OCI image archives (the `oci-archive` format: an OCI image layout in a
//! tar), written from a Tree fragment without any registry or container tool.
//!
//! One layer: the fragment as a tar (sorted entries, uid/gid as in the Tree, mtimes clamped
//! to the epoch, no PAX times) compressed with gzip (header mtime 0, fixed level). The config
//! says `created` = the epoch; the index carries both `io.containerd.image.name` (the full
//! reference, what `ctr images import` names the image after) and
//! `org.opencontainers.image.ref.name` (the tag, as containerd's own exports write it). The
//! outer tar has sorted entries, numeric owner 0 and the epoch as every mtime. Same fragment,
//! same bytes.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use flate2::{Compression, GzBuilder};
use serde::Serialize;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::tree::Tree;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation containerd names an imported image by.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// gzip level of the layer; part of the output's identity, never change it silently.
pub const GZIP_LEVEL: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("writing the layer of {reference}")]
    Layer {
        reference: String,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive of {reference}")]
    Archive {
        reference: String,
        #[source]
        source: io::Error,
    },
}

/// A full image reference `registry/repository:tag`, checked to carry a tag and no digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    full: String,
    tag_at: usize,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let bad = |reason: &str| OciError::BadReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.contains('@') {
            return Err(bad("digests are not allowed, give name:tag"));
        }
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let colon = s[last_slash..]
            .rfind(':')
            .map(|i| i + last_slash)
            .ok_or_else(|| bad("needs a tag (name:tag)"))?;
        let (name, tag) = (&s[..colon], &s[colon + 1..]);
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !tag_ok {
            return Err(bad(
                "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let first = name.split('/').next().unwrap_or_default();
        if !(first.contains('.') || first.contains(':') || first == "localhost") {
            return Err(bad(
                "give the registry host too (e.g. registry.k8s.io/pause:3.10.1): the name is what containerd and the kubelet match",
            ));
        }
        let path_ok = name.split('/').skip(1).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        }) && name.contains('/');
        let host_ok = first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
        if !(path_ok && host_ok) {
            return Err(bad(
                "the repository path must be lower-case letters, digits, '.', '_', '-' separated by '/'",
            ));
        }
        Ok(Reference {
            full: s.to_string(),
            tag_at: colon,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// `registry/repository` without the tag.
    pub fn name(&self) -> &str {
        &self.full[..self.tag_at]
    }

    pub fn tag(&self) -> &str {
        &self.full[self.tag_at + 1..]
    }

    /// A file name for the archive: every character outside `[A-Za-z0-9._-]` becomes `_`,
    /// e.g. `registry.k8s.io_pause_3.10.1`.
    pub fn file_stem(&self) -> String {
        self.full
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

/// What goes into the image config besides the layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

/// What was written, for the manifest and for the import on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    pub reference: Reference,
    /// The manifest digest: what containerd reports as the image's target.
    pub manifest: Digest,
    pub config: Digest,
    /// The compressed layer blob.
    pub layer: Digest,
    pub layer_size: u64,
    /// sha256 of the uncompressed layer tar (the config's diff_id).
    pub diff_id: Digest,
    /// sha256 and size of the archive itself.
    pub archive: Digest,
    pub archive_size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a Digest,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct Config<'a> {
    created: String,
    architecture: &'static str,
    os: &'static str,
    config: RunConfig<'a>,
    rootfs: RootFs<'a>,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    cmd: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    r#type: &'static str,
    diff_ids: Vec<&'a Digest>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: &'static str,
}

/// A Write adapter hashing and counting everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(Algorithm::Sha256),
            count: 0,
        }
    }
    fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn json(v: &impl Serialize) -> Vec<u8> {
    // Serialising these plain structs cannot fail; fall back to an empty object regardless.
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

/// Writes `layer` as a one-layer OCI image archive to `out`. The compressed layer is staged
/// in a temporary file under `scratch` (removed before returning).
pub fn write_archive(
    reference: &Reference,
    layer: &Tree,
    config: &ImageConfig,
    scratch: &Path,
    out: impl Write,
) -> Result<WrittenImage, OciError> {
    let layer_err = |source: io::Error| OciError::Layer {
        reference: reference.to_string(),
        source,
    };
    let epoch = layer.epoch();
    let mut staged = tempfile::NamedTempFile::new_in(scratch).map_err(layer_err)?;
    let (diff_id, layer_digest, layer_size) = {
        let compressed = HashingWriter::new(io::BufWriter::new(staged.as_file_mut()));
        let gz = GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(compressed, Compression::new(GZIP_LEVEL));
        let mut plain = HashingWriter::new(gz);
        crate::outputs::tar::write_tar(layer, &mut plain).map_err(layer_err)?;
        let (gz, diff_id, _) = plain.finish();
        let compressed = gz.finish().map_err(layer_err)?;
        let (mut file, digest, size) = compressed.finish();
        file.flush().map_err(layer_err)?;
        (diff_id, digest, size)
    };

    let created = firstboot::utc::seconds(epoch);
    let config_json = json(&Config {
        created: created.clone(),
        architecture: "amd64",
        os: "linux",
        config: RunConfig {
            env: &config.env,
            entrypoint: &config.entrypoint,
            cmd: &config.cmd,
            working_dir: config.workdir.as_deref(),
        },
        rootfs: RootFs {
            r#type: "layers",
            diff_ids: vec![&diff_id],
        },
        history: vec![History {
            created,
            created_by: "kiln",
        }],
    });
    let config_digest = Digest::of_bytes(Algorithm::Sha256, &config_json);
    let manifest_json = json(&Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        config: Descriptor {
            media_type: MEDIA_CONFIG,
            digest: &config_digest,
            size: config_json.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: MEDIA_LAYER_GZIP,
            digest: &layer_digest,
            size: layer_size,
            platform: None,
            annotations: BTreeMap::new(),
        }],
    });
    let manifest_digest = Digest::of_bytes(Algorithm::Sha256, &manifest_json);
    let index_json = json(&Index {
        schema_version: 2,
        media_type: MEDIA_INDEX,
        manifests: vec![Descriptor {
            media_type: MEDIA_MANIFEST,
            digest: &manifest_digest,
            size: manifest_json.len() as u64,
            platform: Some(Platform {
                architecture: "amd64",
                os: "linux",
            }),
            annotations: BTreeMap::from([
                (ANNOTATION_CONTAINERD_NAME, reference.as_str()),
                (ANNOTATION_REF_NAME, reference.tag()),
            ]),
        }],
    });
    let layout_json = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();

    // The outer tar, entries in byte order of their names.
    let archive_err = |source: io::Error| OciError::Archive {
        reference: reference.to_string(),
        source,
    };
    let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
    blobs.insert(config_digest.hex().to_string(), Blob::Bytes(config_json));
    blobs.insert(
        manifest_digest.hex().to_string(),
        Blob::Bytes(manifest_json),
    );
    blobs.insert(
        layer_digest.hex().to_string(),
        Blob::File(staged.path(), layer_size),
    );
    let mut entries: Vec<(String, Option<Blob>)> =
        vec![("blobs/".into(), None), ("blobs/sha256/".into(), None)];
    entries.extend(
        blobs
            .into_iter()
            .map(|(hex, b)| (format!("blobs/sha256/{hex}"), Some(b))),
    );
    entries.push(("index.json".into(), Some(Blob::Bytes(index_json))));
    entries.push(("oci-layout".into(), Some(Blob::Bytes(layout_json))));
    let mut hashed = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, out));
    {
        let mut ar = tar::Builder::new(&mut hashed);
        for (name, blob) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(epoch);
            match blob {
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    ar.append_data(&mut h, &name, io::empty())
                        .map_err(archive_err)?;
                }
                Some(blob) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    let (size, reader) = blob.open().map_err(archive_err)?;
                    h.set_size(size);
                    ar.append_data(&mut h, &name, reader.take(size))
                        .map_err(archive_err)?;
                }
            }
        }
        ar.finish().map_err(archive_err)?;
    }
    hashed.flush().map_err(archive_err)?;
    let (_, archive, archive_size) = hashed.finish();
    Ok(WrittenImage {
        reference: reference.clone(),
        manifest: manifest_digest,
        config: config_digest,
        layer: layer_digest,
        layer_size,
        diff_id,
        archive,
        archive_size,
    })
}

enum Blob<'a> {
    Bytes(Vec<u8>),
    File(&'a Path, u64),
}

impl Blob<'_> {
    fn open(self) -> io::Result<(u64, Box<dyn Read>)> {
        match self {
            Blob::Bytes(b) => Ok((b.len() as u64, Box::new(io::Cursor::new(b)))),
            Blob::File(p, size) => Ok((size, Box::new(std::fs::File::open(p)?))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Content, Entry, TreePath};

    #[test]
    fn references_need_registry_and_tag() {
        let r = Reference::parse("registry.k8s.io/coredns/coredns:v1.13.1").expect("ok");
        assert_eq!(r.name(), "registry.k8s.io/coredns/coredns");
        assert_eq!(r.tag(), "v1.13.1");
        assert_eq!(r.file_stem(), "registry.k8s.io_coredns_coredns_v1.13.1");
        let r = Reference::parse("localhost:5000/x:1").expect("port");
        assert_eq!((r.name(), r.tag()), ("localhost:5000/x", "1"));
        for bad in [
            "pause:3.10.1",
            "registry.k8s.io/pause",
            "localhost:5000/x",
            "registry.k8s.io/Pause:1",
            "registry.k8s.io/pause:",
            "registry.k8s.io/pause@sha256:00",
            "registry.k8s.io//pause:1",
            "registry.k8s.io/pause:-x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn archive_bytes_depend_only_on_inputs() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut t = Tree::new(1_700_000_000);
        t.insert(
            &TreePath::from_definition("/etc/x").expect("p"),
            Entry::file(Content::inline(b"x".repeat(5000)), 0o644, "t").at(1_800_000_000),
        )
        .expect("insert");
        let r = Reference::parse("kiln.local/t:1").expect("ref");
        let cfg = ImageConfig {
            cmd: vec!["/bin/sh".into()],
            ..ImageConfig::default()
        };
        let mut a = Vec::new();
        let wa = write_archive(&r, &t, &cfg, dir.path(), &mut a).expect("a");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let mut b = Vec::new();
        let wb = write_archive(&r, &t, &cfg, dir.path(), &mut b).expect("b");
        assert_eq!(a, b);
        assert_eq!(wa, wb);
        assert_eq!(wa.archive_size, a.len() as u64);
        assert_eq!(wa.archive, Digest::of_bytes(Algorithm::Sha256, &a));
        // Another command line is another config and manifest, the same layer.
        let mut c = Vec::new();
        let other = ImageConfig {
            cmd: vec!["/bin/true".into()],
            ..ImageConfig::default()
        };
        let wc = write_archive(&r, &t, &other, dir.path(), &mut c).expect("c");
        assert_eq!(wc.layer, wa.layer);
        assert_ne!(wc.manifest, wa.manifest);
        // The staged layer was removed.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
