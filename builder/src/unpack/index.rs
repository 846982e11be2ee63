//! The unpacked index of an archive, cached as `unpacked/<key>.json`: every member
//! with its metadata, small contents inline (base64), large ones by sha256 in the
//! content store. A warm build reads this and never decompresses the archive.

use std::fs;
use std::io::Write;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{DebControl, Limits, Member, UnpackError};
use crate::tree::{Content, Kind, TreePath};
use crate::unpack::store::ContentStore;

/// Bumped whenever the meaning of the index changes; older indexes are ignored.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct IndexFile {
    format: u32,
    #[serde(default)]
    control: Option<DebControl>,
    entries: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
struct IndexEntry {
    /// Destination path.
    p: String,
    /// Kind: `d`, `f`, `l` (symlink), `h` (hard link).
    k: char,
    m: u32,
    u: u32,
    g: u32,
    t: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The contents (sha256 hex) an index file keeps in the content store; None when the file
/// is not a readable index of the current format.
pub fn indexed_contents(path: &std::path::Path) -> Option<Vec<String>> {
    let bytes = fs::read(path).ok()?;
    let file: IndexFile = serde_json::from_slice(&bytes).ok()?;
    if file.format != FORMAT {
        return None;
    }
    Some(file.entries.into_iter().filter_map(|e| e.sha256).collect())
}

/// Loads a cached index. Anything unusable (missing, older format, corrupt, a
/// stored content gone, an entry over the current limits) gives `None`, and the
/// caller unpacks again.
pub(crate) fn load(
    store: &ContentStore,
    key: &str,
    limits: &Limits,
) -> Option<(Option<DebControl>, Vec<Member>)> {
    let path = store.index_dir().join(format!("{key}.json"));
    let bytes = fs::read(&path).ok()?;
    let file: IndexFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("ignoring cache index {}: {e}", path.display());
            return None;
        }
    };
    if file.format != FORMAT {
        return None;
    }
    let mut members = Vec::with_capacity(file.entries.len());
    let mut total: u64 = 0;
    for e in file.entries {
        let kind = match e.k {
            'd' => Kind::Dir,
            'l' => Kind::Symlink(e.target?),
            'h' => Kind::Hardlink(TreePath::from_archive(&e.target?).ok()?),
            'f' => {
                let size = e.size?;
                if size > limits.max_entry_bytes {
                    return None;
                }
                total = total.saturating_add(size);
                let content = match (e.data, e.sha256) {
                    (Some(data), None) => Content::inline(b64().decode(data).ok()?),
                    (None, Some(hex)) => store.get(&hex, size)?,
                    _ => return None,
                };
                if content.size() != size {
                    return None;
                }
                Kind::File(content)
            }
            _ => return None,
        };
        members.push(Member {
            path: TreePath::from_definition(&e.p).ok()?,
            kind,
            mode: e.m,
            uid: e.u,
            gid: e.g,
            mtime: e.t,
        });
    }
    if total > limits.max_total_bytes {
        return None;
    }
    Some((file.control, members))
}

/// Writes an index atomically (temporary file, then rename).
pub(crate) fn save(
    store: &ContentStore,
    key: &str,
    control: Option<&DebControl>,
    members: &[Member],
    archive: &str,
) -> Result<(), UnpackError> {
    let entries = members
        .iter()
        .map(|m| {
            let mut e = IndexEntry {
                p: m.path.as_str().to_string(),
                k: 'd',
                m: m.mode,
                u: m.uid,
                g: m.gid,
                t: m.mtime,
                size: None,
                sha256: None,
                data: None,
                target: None,
            };
            match &m.kind {
                Kind::Dir => {}
                Kind::Symlink(t) => {
                    e.k = 'l';
                    e.target = Some(t.clone());
                }
                Kind::Hardlink(t) => {
                    e.k = 'h';
                    e.target = Some(t.as_str().to_string());
                }
                Kind::File(c) => {
                    e.k = 'f';
                    e.size = Some(c.size());
                    match c {
                        Content::Inline(b) => e.data = Some(b64().encode(b)),
                        Content::OnDisk { path, .. } => {
                            e.sha256 = path.file_name().map(|n| n.to_string_lossy().into_owned())
                        }
                    }
                }
            }
            e
        })
        .collect();
    let file = IndexFile {
        format: FORMAT,
        control: control.cloned(),
        entries,
    };
    let dir = store.index_dir();
    let path = dir.join(format!("{key}.json"));
    let err = |source| UnpackError::Index {
        archive: archive.to_string(),
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| err(e.into()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(err)?;
    tmp.write_all(&bytes).map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    Ok(())
}
