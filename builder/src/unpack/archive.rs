//! Reading tar streams (the `data.tar` of a .deb, release tarballs) into members,
//! with the hostile-archive checks: unsafe paths, special files, size limits.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};
use std::rc::Rc;

use super::{Limits, Member, UnpackError};
use crate::tree::{Kind, TreePath};
use crate::unpack::store::{ContentStore, StoreError};

/// Compression of a tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// From the magic bytes at the start of a stream; `None` when it is neither a
    /// known compressed format nor a tar (ustar magic at offset 257).
    pub fn detect(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// From a .deb member name suffix (`data.tar.xz`).
    pub fn from_member_name(name: &str) -> Option<Compression> {
        match name.rsplit_once('.') {
            Some((_, "tar")) => Some(Compression::None),
            Some((_, "gz")) => Some(Compression::Gzip),
            Some((_, "xz")) => Some(Compression::Xz),
            Some((_, "zst")) => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Wraps `r` in the matching decoder.
    pub fn decoder<'a>(self, r: impl BufRead + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }
}

/// A reader that fails once more than `remaining` bytes came through, and remembers it.
pub(crate) struct LimitReader<R> {
    inner: R,
    remaining: u64,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> LimitReader<R> {
    pub(crate) fn new(inner: R, limit: u64) -> (Self, Rc<Cell<bool>>) {
        let tripped = Rc::new(Cell::new(false));
        (
            LimitReader {
                inner,
                remaining: limit,
                tripped: tripped.clone(),
            },
            tripped,
        )
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.tripped.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Where archive members go: an extraction map from archive paths (a file or a
/// directory prefix) to destinations in the tree. Empty: everything at the root.
#[derive(Debug, Clone, Default)]
pub struct ExtractMap {
    /// Longest source first, so the most specific entry wins.
    rules: Vec<(TreePath, TreePath)>,
}

impl ExtractMap {
    pub fn new(map: &BTreeMap<String, String>, archive: &str) -> Result<Self, UnpackError> {
        let mut rules = Vec::new();
        for (src, dst) in map {
            let bad = |source| UnpackError::BadExtractMap {
                archive: archive.to_string(),
                entry: format!("{src} -> {dst}"),
                source,
            };
            rules.push((
                TreePath::from_archive(src).map_err(bad)?,
                TreePath::from_definition(dst).map_err(bad)?,
            ));
        }
        rules.sort_by_key(|(s, _)| std::cmp::Reverse(s.as_str().len()));
        Ok(ExtractMap { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Destination of an archive path, or `None` to skip it.
    pub fn map(&self, path: &TreePath) -> Option<TreePath> {
        if self.rules.is_empty() {
            return Some(path.clone());
        }
        for (src, dst) in &self.rules {
            if src.is_root() {
                return Some(join(dst, path.as_str()));
            }
            if path == src {
                return Some(dst.clone());
            }
            if let Some(rest) = path
                .as_str()
                .strip_prefix(src.as_str())
                .and_then(|r| r.strip_prefix('/'))
            {
                return Some(join(dst, rest));
            }
        }
        None
    }
}

fn join(base: &TreePath, rest: &str) -> TreePath {
    if rest.is_empty() {
        base.clone()
    } else {
        base.join(rest)
    }
}

/// Reads every member of a tar stream (already decompressed), applying the
/// hostile-archive checks. Contents go through the store (small ones inline).
/// `mapper` gives each member's destination (`None` skips it); `keep_owner`
/// false resets uid/gid to 0 (release tarballs carry their builder's account).
pub(crate) fn read_tar(
    stream: impl Read,
    archive: &str,
    store: &ContentStore,
    limits: &Limits,
    mapper: &dyn Fn(&TreePath) -> Option<TreePath>,
    keep_owner: bool,
) -> Result<Vec<Member>, UnpackError> {
    let (limited, tripped) = LimitReader::new(stream, limits.max_total_bytes);
    let mut tar = tar::Archive::new(limited);
    let mut members = Vec::new();
    let mut total: u64 = 0;
    let read_err = |what: String, source: io::Error, tripped: &Rc<Cell<bool>>| {
        if tripped.get() {
            UnpackError::TotalTooLarge {
                archive: archive.to_string(),
                member: what,
                limit: limits.max_total_bytes,
            }
        } else {
            UnpackError::Read {
                archive: archive.to_string(),
                what,
                source,
            }
        }
    };
    let entries = tar
        .entries()
        .map_err(|e| read_err("tar stream".into(), e, &tripped))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_err("tar header".into(), e, &tripped))?;
        let raw_name = entry.path_bytes().into_owned();
        let member = String::from_utf8_lossy(&raw_name).into_owned();
        let header = entry.header();
        let etype = header.entry_type();
        if etype.is_pax_global_extensions() || etype.is_pax_local_extensions() {
            continue;
        }
        let special = match etype {
            tar::EntryType::Char => Some("character device"),
            tar::EntryType::Block => Some("block device"),
            tar::EntryType::Fifo => Some("fifo"),
            tar::EntryType::GNUSparse => Some("sparse file"),
            t if !(t.is_file() || t.is_dir() || t.is_symlink() || t.is_hard_link()) => {
                Some("unknown-type")
            }
            _ => None,
        };
        if let Some(kind) = special {
            return Err(UnpackError::SpecialFile {
                archive: archive.to_string(),
                member,
                kind,
            });
        }
        let name = std::str::from_utf8(&raw_name).map_err(|_| UnpackError::NonUtf8 {
            archive: archive.to_string(),
            member: member.clone(),
        })?;
        let path = TreePath::from_archive(name).map_err(|source| UnpackError::UnsafePath {
            archive: archive.to_string(),
            member: member.clone(),
            source,
        })?;
        let Some(dest) = mapper(&path) else {
            continue;
        };
        let meta_err = |e| read_err(member.clone(), e, &tripped);
        let mode = header.mode().map_err(meta_err)? & 0o7777;
        let (uid, gid) = if keep_owner {
            (
                header.uid().map_err(meta_err)? as u32,
                header.gid().map_err(meta_err)? as u32,
            )
        } else {
            (0, 0)
        };
        let mtime = header.mtime().map_err(meta_err)?;
        let kind = if etype.is_dir() {
            Kind::Dir
        } else if etype.is_symlink() || etype.is_hard_link() {
            let raw = entry
                .link_name_bytes()
                .map(|b| b.into_owned())
                .unwrap_or_default();
            let target = String::from_utf8(raw).map_err(|_| UnpackError::NonUtf8 {
                archive: archive.to_string(),
                member: member.clone(),
            })?;
            if etype.is_symlink() {
                Kind::Symlink(target)
            } else {
                let tp =
                    TreePath::from_archive(&target).map_err(|source| UnpackError::UnsafePath {
                        archive: archive.to_string(),
                        member: format!("{member} (hard link to {target})"),
                        source,
                    })?;
                let Some(mapped) = mapper(&tp) else {
                    return Err(UnpackError::LinkOutsideExtract {
                        archive: archive.to_string(),
                        member,
                        target,
                    });
                };
                Kind::Hardlink(mapped)
            }
        } else {
            let claimed = entry.size();
            if claimed > limits.max_entry_bytes {
                return Err(UnpackError::EntryTooLarge {
                    archive: archive.to_string(),
                    member,
                    limit: limits.max_entry_bytes,
                });
            }
            let content = store
                .put(&mut entry, limits.max_entry_bytes)
                .map_err(|e| match e {
                    StoreError::TooLarge { limit } => UnpackError::EntryTooLarge {
                        archive: archive.to_string(),
                        member: member.clone(),
                        limit,
                    },
                    StoreError::Read(source) => read_err(member.clone(), source, &tripped),
                    other => UnpackError::Store {
                        archive: archive.to_string(),
                        member: member.clone(),
                        source: other,
                    },
                })?;
            total = total.saturating_add(content.size());
            if total > limits.max_total_bytes {
                return Err(UnpackError::TotalTooLarge {
                    archive: archive.to_string(),
                    member,
                    limit: limits.max_total_bytes,
                });
            }
            Kind::File(content)
        };
        members.push(Member {
            path: dest,
            kind,
            mode: if etype.is_symlink() { 0o777 } else { mode },
            uid,
            gid,
            mtime,
        });
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::from_definition(s).expect("path")
    }

    #[test]
    fn extract_map_picks_the_most_specific_rule() {
        let mut m = BTreeMap::new();
        m.insert("k/server/bin".to_string(), "/usr/bin".to_string());
        m.insert(
            "k/server/bin/kubectl".to_string(),
            "/opt/kubectl".to_string(),
        );
        m.insert(
            "./LICENSE".to_string(),
            "/usr/share/doc/k/LICENSE".to_string(),
        );
        let map = ExtractMap::new(&m, "t.tgz").expect("map");
        assert_eq!(
            map.map(&p("k/server/bin/kubelet")),
            Some(p("usr/bin/kubelet"))
        );
        assert_eq!(map.map(&p("k/server/bin/kubectl")), Some(p("opt/kubectl")));
        assert_eq!(map.map(&p("k/server/bin")), Some(p("usr/bin")));
        assert_eq!(map.map(&p("LICENSE")), Some(p("usr/share/doc/k/LICENSE")));
        assert_eq!(map.map(&p("k/server/binary")), None);
        assert_eq!(map.map(&p("README")), None);
        let all = ExtractMap::new(&BTreeMap::new(), "t.tgz").expect("empty");
        assert_eq!(all.map(&p("a/b")), Some(p("a/b")));
        let mut bad = BTreeMap::new();
        bad.insert("../x".to_string(), "/y".to_string());
        assert!(ExtractMap::new(&bad, "t.tgz").is_err());
    }

    #[test]
    fn magic_bytes_select_the_decoder() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::detect(b"\xfd7zXZ\0rest"),
            Some(Compression::Xz)
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(Compression::detect(&tar), Some(Compression::None));
        assert_eq!(Compression::detect(b"PK\x03\x04"), None);
        assert_eq!(
            Compression::from_member_name("data.tar.zst"),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::from_member_name("data.tar.bz2"), None);
    }

    #[test]
    fn limit_reader_trips() {
        let (mut r, tripped) = LimitReader::new(&[0u8; 10][..], 5);
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(tripped.get());
    }
}
