//! Assembly of the Tree from archives: Debian packages (`deb.rs`) and release
//! tarballs through their extraction maps (`add_tar_archive`). Maintainer scripts
//! never run. Hostile archives (`..` or absolute paths, escaping links, device
//! nodes, decompression bombs) are refused with an error naming the archive and
//! the member. Large contents stay on disk in the content store (`store.rs`);
//! each unpacked archive is indexed in the cache (`index.rs`) so a warm build
//! never decompresses again.

mod archive;
mod deb;
mod index;
mod store;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

pub use archive::{Compression, ExtractMap};
pub use deb::{add_deb, add_debs, read_data_file, DebControl, DebInput};
pub use index::indexed_contents;
pub use store::{ContentStore, StoreError, INLINE_MAX};

use crate::digest::{Algorithm, Digest};
use crate::tree::{Entry, Kind, PathError, Tree, TreeError, TreePath};

/// Size limits applied while reading an archive, counted on decompressed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest content of one entry.
    pub max_entry_bytes: u64,
    /// Largest decompressed stream (and sum of contents) of one archive.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_bytes: 1 << 30,
            max_total_bytes: 8 << 30,
        }
    }
}

/// One entry read from an archive, at its destination path, before insertion.
#[derive(Debug, Clone)]
pub struct Member {
    pub path: TreePath,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{archive}: reading {what}: {source}")]
    Read {
        archive: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{archive}: not a Debian binary package: {reason}")]
    NotADeb { archive: String, reason: String },
    #[error("{archive}: unsupported compression of {what}")]
    UnknownCompression { archive: String, what: String },
    #[error("{archive}: member {member:?} has an unsafe path: {source}")]
    UnsafePath {
        archive: String,
        member: String,
        #[source]
        source: PathError,
    },
    #[error("{archive}: member {member:?} has a name that is not UTF-8")]
    NonUtf8 { archive: String, member: String },
    #[error("{archive}: member {member:?} is a {kind}, which is refused in an image archive")]
    SpecialFile {
        archive: String,
        member: String,
        kind: &'static str,
    },
    #[error("{archive}: member {member:?} is a hard link to {target:?}, which is not extracted")]
    LinkOutsideExtract {
        archive: String,
        member: String,
        target: String,
    },
    #[error("{archive}: member {member:?} is larger than the limit of {limit} bytes per entry")]
    EntryTooLarge {
        archive: String,
        member: String,
        limit: u64,
    },
    #[error(
        "{archive}: decompressed data exceeds the limit of {limit} bytes (at member {member:?})"
    )]
    TotalTooLarge {
        archive: String,
        member: String,
        limit: u64,
    },
    #[error("{archive}: storing member {member:?}: {source}")]
    Store {
        archive: String,
        member: String,
        #[source]
        source: StoreError,
    },
    #[error("{archive}: extraction map entry {entry}: {source}")]
    BadExtractMap {
        archive: String,
        entry: String,
        #[source]
        source: PathError,
    },
    #[error("{archive}: writing cache index {path}: {source}")]
    Index {
        archive: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{archive}: {source}")]
    Tree {
        archive: String,
        #[source]
        source: Box<TreeError>,
    },
}

/// Creates Debian bookworm's merged-/usr layout (`bin -> usr/bin`, `sbin ->
/// usr/sbin`, `lib -> usr/lib`, `lib64 -> usr/lib64`) in a tree, before packages
/// go in: `bin/ls` from a .deb then lands in `usr/bin/ls`.
pub fn merged_usr(tree: &mut Tree) -> Result<(), TreeError> {
    let epoch = tree.epoch();
    for dir in ["usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64"] {
        tree.insert(&tp(dir), Entry::dir(0o755, "kiln").at(epoch))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        tree.insert(&tp(link), Entry::symlink(target, "kiln").at(epoch))?;
    }
    Ok(())
}

fn tp(s: &str) -> TreePath {
    // Only called with the constant, valid paths above.
    TreePath::from_definition(s).unwrap_or_else(|_| TreePath::root())
}

/// Symlink hops followed when a package directory lands on a symlink.
const MAX_DIR_HOPS: usize = 40;

/// Inserts members in archive order. A directory over a symlink that leads to a
/// directory keeps the symlink (as dpkg does: `./bin/` of a package over the
/// merged-/usr `bin -> usr/bin`).
pub fn insert_members(
    tree: &mut Tree,
    members: &[Member],
    origin: &str,
    archive: &str,
) -> Result<(), UnpackError> {
    let terr = |source| UnpackError::Tree {
        archive: archive.to_string(),
        source: Box::new(source),
    };
    for m in members {
        let entry = Entry::new(m.kind.clone(), m.mode, origin)
            .owned(m.uid, m.gid)
            .at(m.mtime);
        if matches!(m.kind, Kind::Dir) && !m.path.is_root() {
            let mut at = tree.resolve_parent(&m.path, origin).map_err(terr)?;
            let mut hops = 0;
            while let Some(Kind::Symlink(target)) = tree.get(&at).map(|e| &e.kind) {
                hops += 1;
                if hops > MAX_DIR_HOPS {
                    return Err(terr(TreeError::Loop {
                        path: m.path.clone(),
                    }));
                }
                let next = Tree::lexical_target(&at, target).ok_or_else(|| {
                    terr(TreeError::EscapingSymlink {
                        path: at.clone(),
                        origin: origin.to_string(),
                        target: target.clone(),
                    })
                })?;
                at = tree.resolve_parent(&next, origin).map_err(terr)?;
            }
            tree.insert(&at, entry).map_err(terr)?;
        } else {
            tree.insert(&m.path, entry).map_err(terr)?;
        }
    }
    Ok(())
}

/// The sha256 of a file, as the cache key of its unpacked index.
pub(crate) fn file_sha256(path: &Path) -> Result<Digest, UnpackError> {
    let f = File::open(path).map_err(|source| UnpackError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Digest::of_reader(Algorithm::Sha256, BufReader::with_capacity(1 << 20, f)).map_err(|source| {
        UnpackError::Read {
            archive: path.display().to_string(),
            what: "archive for its sha256".into(),
            source,
        }
    })
}

/// Extracts a release tarball (.tar, .tar.gz/.tgz, .tar.xz, .tar.zst: detected by
/// magic bytes) into the tree through its extraction map (archive path, a file or
/// a directory prefix -> destination in the tree); members not in the map are
/// skipped, and an empty map extracts everything at the root. Owners are reset
/// to root (a release tarball carries its builder's uid); modes and mtimes kept.
pub fn add_tar_archive(
    tree: &mut Tree,
    path: &Path,
    origin: &str,
    extract: &BTreeMap<String, String>,
    store: &ContentStore,
    limits: &Limits,
) -> Result<(), UnpackError> {
    let archive = path.display().to_string();
    let map = ExtractMap::new(extract, &archive)?;
    let sha = file_sha256(path)?;
    let map_json = serde_json::to_string(extract).unwrap_or_default();
    let key = format!(
        "tar-{}",
        Digest::of_bytes(
            Algorithm::Sha256,
            format!("{}\n{map_json}", sha.hex()).as_bytes()
        )
        .hex()
    );
    let members = match index::load(store, &key, limits) {
        Some((_, members)) => members,
        None => {
            let members = read_tar_archive(path, &archive, &map, store, limits)?;
            index::save(store, &key, None, &members, &archive)?;
            members
        }
    };
    insert_members(tree, &members, origin, &archive)
}

fn read_tar_archive(
    path: &Path,
    archive: &str,
    map: &ExtractMap,
    store: &ContentStore,
    limits: &Limits,
) -> Result<Vec<Member>, UnpackError> {
    let f = File::open(path).map_err(|source| UnpackError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let head = r.fill_buf().map_err(|source| UnpackError::Read {
        archive: archive.to_string(),
        what: "header".into(),
        source,
    })?;
    let compression = Compression::detect(head).ok_or_else(|| UnpackError::UnknownCompression {
        archive: archive.to_string(),
        what: "the archive (not gzip, xz, zstd or tar)".into(),
    })?;
    let stream = compression.decoder(r).map_err(|source| UnpackError::Read {
        archive: archive.to_string(),
        what: "compressed stream".into(),
        source,
    })?;
    archive::read_tar(stream, archive, store, limits, &|p| map.map(p), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;

    #[test]
    fn merged_usr_then_package_dirs_keep_the_links() {
        let mut t = Tree::new(10);
        merged_usr(&mut t).expect("merged usr");
        let members = vec![
            Member {
                path: tp("bin"),
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 5,
            },
            Member {
                path: tp("bin/ls"),
                kind: Kind::File(Content::inline(b"elf".to_vec())),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 5,
            },
        ];
        insert_members(&mut t, &members, "coreutils", "coreutils.deb").expect("insert");
        assert!(
            matches!(t.get(&tp("bin")).map(|e| &e.kind), Some(Kind::Symlink(s)) if s == "usr/bin")
        );
        assert!(t.get(&tp("usr/bin/ls")).is_some());
        // A different /usr/bin/ls from another package is a conflict naming both.
        let other = vec![Member {
            path: tp("usr/bin/ls"),
            kind: Kind::File(Content::inline(b"other".to_vec())),
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 5,
        }];
        let err = insert_members(&mut t, &other, "evil", "evil.deb").expect_err("conflict");
        let msg = err.to_string();
        assert!(
            msg.contains("coreutils") && msg.contains("evil") && msg.contains("evil.deb"),
            "{msg}"
        );
    }
}
