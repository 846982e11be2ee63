//! The Tree: Kiln's one central data structure. Every source adds to it and every
//! writer (tar, squashfs, cpio, disk) reads from it. Ownership, modes and times live
//! here, never on the host file system, so building needs no root.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// A normalised path inside the tree: relative, `/`-separated, no `.`/`..`/empty
/// components. The root itself is the empty path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreePath(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path {0:?} has a `..` component")]
    DotDot(String),
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
}

impl TreePath {
    pub fn root() -> Self {
        TreePath(String::new())
    }

    /// Parses a path from an archive or a definition. A leading `./` is dropped,
    /// `.` and empty components are ignored; `..` and absolute paths are refused
    /// unless `allow_absolute` (definitions write `/etc/x`).
    pub fn parse(raw: &str, allow_absolute: bool) -> Result<Self, PathError> {
        if raw.contains('\0') {
            return Err(PathError::Nul(raw.into()));
        }
        if raw.starts_with('/') && !allow_absolute {
            return Err(PathError::Absolute(raw.into()));
        }
        let mut parts = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(PathError::DotDot(raw.into())),
                c => parts.push(c),
            }
        }
        Ok(TreePath(parts.join("/")))
    }

    /// Path of an entry from an archive: relative, `./` prefixes allowed.
    pub fn from_archive(raw: &str) -> Result<Self, PathError> {
        Self::parse(raw, false)
    }

    /// Path written in a definition: `/etc/hostname` or `etc/hostname`.
    pub fn from_definition(raw: &str) -> Result<Self, PathError> {
        Self::parse(raw, true)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|c| !c.is_empty())
    }

    pub fn parent(&self) -> Option<TreePath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => TreePath(self.0[..i].to_string()),
            None => TreePath::root(),
        })
    }

    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    pub fn join(&self, name: &str) -> TreePath {
        if self.0.is_empty() {
            TreePath(name.to_string())
        } else {
            TreePath(format!("{}/{}", self.0, name))
        }
    }

    pub fn depth(&self) -> usize {
        self.components().count()
    }
}

impl fmt::Display for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl fmt::Debug for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"/{}\"", self.0)
    }
}

/// The bytes of a regular file. Small contents stay in memory; large ones are
/// referenced on disk (the cache or a spill file) so a build stays within bounded RSS.
#[derive(Clone)]
pub enum Content {
    Inline(Arc<[u8]>),
    /// A whole file on disk, immutable while the tree lives (cache or spill store).
    OnDisk {
        path: PathBuf,
        size: u64,
    },
}

impl Content {
    pub fn inline(bytes: impl Into<Vec<u8>>) -> Self {
        Content::Inline(Arc::from(bytes.into().into_boxed_slice()))
    }

    pub fn size(&self) -> u64 {
        match self {
            Content::Inline(b) => b.len() as u64,
            Content::OnDisk { size, .. } => *size,
        }
    }

    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        match self {
            Content::Inline(b) => Ok(Box::new(Cursor::new(b.clone()))),
            Content::OnDisk { path, .. } => Ok(Box::new(File::open(path)?)),
        }
    }

    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(self.size() as usize);
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }

    /// Same bytes? Compares sizes first, then contents.
    pub fn same_as(&self, other: &Content) -> io::Result<bool> {
        if self.size() != other.size() {
            return Ok(false);
        }
        if let (Content::OnDisk { path: a, .. }, Content::OnDisk { path: b, .. }) = (self, other) {
            if a == b {
                return Ok(true);
            }
        }
        Ok(self.read_all()? == other.read_all()?)
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Inline(b) => write!(f, "Inline({} bytes)", b.len()),
            Content::OnDisk { path, size } => write!(f, "OnDisk({}, {size} bytes)", path.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Content),
    /// Target as written; absolute targets are relative to the tree root.
    Symlink(String),
    /// A hard link to another regular file of the tree.
    Hardlink(TreePath),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File(_) => "file",
            Kind::Symlink(_) => "symlink",
            Kind::Hardlink(_) => "hardlink",
        }
    }
}

/// One node of the tree.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`0o7777` mask).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the Unix epoch, clamped to the image epoch on insert.
    pub mtime: u64,
    /// Which input put it here (package or artifact name), for error messages and the SBOM.
    pub origin: Arc<str>,
}

impl Entry {
    pub fn dir(mode: u32, origin: &str) -> Self {
        Self::new(Kind::Dir, mode, origin)
    }
    pub fn file(content: Content, mode: u32, origin: &str) -> Self {
        Self::new(Kind::File(content), mode, origin)
    }
    pub fn symlink(target: &str, origin: &str) -> Self {
        Self::new(Kind::Symlink(target.to_string()), 0o777, origin)
    }
    pub fn new(kind: Kind, mode: u32, origin: &str) -> Self {
        Entry {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
            origin: Arc::from(origin),
        }
    }
    pub fn owned(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn at(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path}: {new_origin} and {old_origin} both write it with different content")]
    Conflict {
        path: TreePath,
        old_origin: String,
        new_origin: String,
    },
    #[error("{path} ({origin}): a {new_kind} would replace the {old_kind} from {old_origin}")]
    KindConflict {
        path: TreePath,
        origin: String,
        new_kind: &'static str,
        old_kind: &'static str,
        old_origin: String,
    },
    #[error("{path} ({origin}): symlink target {target:?} resolves outside the root")]
    EscapingSymlink {
        path: TreePath,
        origin: String,
        target: String,
    },
    #[error("{path} ({origin}): hard link to {target}, which is not a regular file in the tree")]
    BadHardlink {
        path: TreePath,
        origin: String,
        target: TreePath,
    },
    #[error("{path} ({origin}): parent {parent} is a {kind}, not a directory")]
    NotADirectory {
        path: TreePath,
        origin: String,
        parent: TreePath,
        kind: &'static str,
    },
    #[error("{path}: too many levels of symbolic links")]
    Loop { path: TreePath },
    #[error("reading content of {path}: {source}")]
    Io {
        path: TreePath,
        #[source]
        source: io::Error,
    },
}

/// Symlink hops followed before giving up, as the kernel's ELOOP limit.
const MAX_HOPS: usize = 40;

/// A file tree held in memory, sorted by path.
#[derive(Debug, Clone)]
pub struct Tree {
    entries: BTreeMap<TreePath, Entry>,
    epoch: u64,
}

impl Tree {
    /// A tree holding only the root directory; every mtime is clamped to `epoch`.
    pub fn new(epoch: u64) -> Self {
        let mut entries = BTreeMap::new();
        entries.insert(TreePath::root(), Entry::dir(0o755, "kiln").at(epoch));
        Tree { entries, epoch }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn get(&self, path: &TreePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn get_mut(&mut self, path: &TreePath) -> Option<&mut Entry> {
        self.entries.get_mut(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    /// Every entry in path order; the root comes first.
    pub fn iter(&self) -> impl Iterator<Item = (&TreePath, &Entry)> {
        self.entries.iter()
    }

    /// Entries below `dir` (not `dir` itself), in path order.
    pub fn children<'a>(
        &'a self,
        dir: &'a TreePath,
    ) -> impl Iterator<Item = (&'a TreePath, &'a Entry)> + 'a {
        self.entries
            .range(dir.clone()..)
            .skip(1)
            .take_while(move |(p, _)| {
                dir.is_root() || p.as_str().starts_with(&format!("{}/", dir.as_str()))
            })
            .filter(move |(p, _)| p.parent().as_ref() == Some(dir))
    }

    pub fn remove(&mut self, path: &TreePath) -> Option<Entry> {
        // Remove the entry and, for a directory, everything under it.
        let prefix = format!("{}/", path.as_str());
        let under: Vec<TreePath> = self
            .entries
            .range(path.clone()..)
            .skip(1)
            .take_while(|(p, _)| p.as_str().starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for p in under {
            self.entries.remove(&p);
        }
        self.entries.remove(path)
    }

    /// Resolves a symlink target relative to the directory holding the link, purely
    /// lexically. Returns `None` when `..` climbs above the root.
    pub fn lexical_target(link: &TreePath, target: &str) -> Option<TreePath> {
        let parent = link.parent()?;
        let mut parts: Vec<&str> = if target.starts_with('/') {
            Vec::new()
        } else {
            parent.components().collect()
        };
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                c => parts.push(c),
            }
        }
        Some(TreePath(parts.join("/")))
    }

    /// Follows symlinks in the directories leading to `path` (not in its last
    /// component), as the kernel does when creating a file there. The result never
    /// leaves the tree: an escape is an error.
    pub fn resolve_parent(&self, path: &TreePath, origin: &str) -> Result<TreePath, TreeError> {
        let mut hops = 0;
        let mut current = TreePath::root();
        let comps: Vec<&str> = path.components().collect();
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(TreePath::root());
        };
        let mut pending: Vec<String> = dirs.iter().rev().map(|s| s.to_string()).collect();
        while let Some(c) = pending.pop() {
            let next = current.join(&c);
            match self.entries.get(&next).map(|e| &e.kind) {
                Some(Kind::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(TreeError::Loop { path: path.clone() });
                    }
                    let resolved = Self::lexical_target(&next, target).ok_or_else(|| {
                        TreeError::EscapingSymlink {
                            path: next.clone(),
                            origin: origin.to_string(),
                            target: target.clone(),
                        }
                    })?;
                    current = TreePath::root();
                    for rc in resolved.components().collect::<Vec<_>>().into_iter().rev() {
                        pending.push(rc.to_string());
                    }
                }
                Some(Kind::Dir) | None => current = next,
                Some(other) => {
                    return Err(TreeError::NotADirectory {
                        path: path.clone(),
                        origin: origin.to_string(),
                        parent: next,
                        kind: other.name(),
                    })
                }
            }
        }
        Ok(current.join(last))
    }

    /// Adds an entry. Missing parent directories are created (0755, root). Parent
    /// symlinks are followed (so `/bin -> usr/bin` merges `bin/ls` into `usr/bin/ls`).
    /// Two different contents at one path is an error naming both origins; the same
    /// content, or a directory over a directory, is accepted (first metadata wins).
    /// Returns the path the entry was stored at.
    pub fn insert(&mut self, path: &TreePath, mut entry: Entry) -> Result<TreePath, TreeError> {
        entry.mtime = entry.mtime.min(self.epoch);
        let origin = entry.origin.clone();
        if path.is_root() {
            if let Kind::Dir = entry.kind {
                return Ok(TreePath::root());
            }
        }
        let path = self.resolve_parent(path, &origin)?;
        if let Kind::Symlink(target) = &entry.kind {
            if Self::lexical_target(&path, target).is_none() {
                return Err(TreeError::EscapingSymlink {
                    path,
                    origin: origin.to_string(),
                    target: target.clone(),
                });
            }
        }
        if let Kind::Hardlink(target) = &entry.kind {
            let target = self.resolve_parent(target, &origin)?;
            match self.entries.get(&target).map(|e| &e.kind) {
                Some(Kind::File(_)) => entry.kind = Kind::Hardlink(target),
                _ => {
                    return Err(TreeError::BadHardlink {
                        path,
                        origin: origin.to_string(),
                        target,
                    })
                }
            }
        }
        self.ensure_parents(&path, &origin)?;
        if let Some(old) = self.entries.get(&path) {
            let same = match (&old.kind, &entry.kind) {
                (Kind::Dir, Kind::Dir) => true,
                (Kind::File(a), Kind::File(b)) => a.same_as(b).map_err(|source| TreeError::Io {
                    path: path.clone(),
                    source,
                })?,
                (Kind::Symlink(a), Kind::Symlink(b)) => a == b,
                (Kind::Hardlink(a), Kind::Hardlink(b)) => a == b,
                (a, b) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                    return Err(TreeError::KindConflict {
                        path: path.clone(),
                        origin: origin.to_string(),
                        new_kind: b.name(),
                        old_kind: a.name(),
                        old_origin: old.origin.to_string(),
                    })
                }
                _ => false,
            };
            if !same {
                return Err(TreeError::Conflict {
                    path: path.clone(),
                    old_origin: old.origin.to_string(),
                    new_origin: origin.to_string(),
                });
            }
            return Ok(path);
        }
        self.entries.insert(path.clone(), entry);
        Ok(path)
    }

    /// Adds or replaces an entry (definition overrides: files, symlinks, modes).
    pub fn replace(&mut self, path: &TreePath, mut entry: Entry) -> Result<TreePath, TreeError> {
        entry.mtime = entry.mtime.min(self.epoch);
        let origin = entry.origin.clone();
        let path = self.resolve_parent(path, &origin)?;
        if let Some(old) = self.entries.get(&path) {
            if !matches!((&old.kind, &entry.kind), (Kind::Dir, Kind::Dir)) {
                self.remove(&path);
            }
        }
        self.entries.remove(&path);
        self.insert(&path, entry)
    }

    fn ensure_parents(&mut self, path: &TreePath, origin: &str) -> Result<(), TreeError> {
        let mut current = TreePath::root();
        let comps: Vec<&str> = path.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            current = current.join(c);
            match self.entries.get(&current).map(|e| &e.kind) {
                None => {
                    self.entries
                        .insert(current.clone(), Entry::dir(0o755, origin).at(self.epoch));
                }
                Some(Kind::Dir) => {}
                Some(other) => {
                    return Err(TreeError::NotADirectory {
                        path: path.clone(),
                        origin: origin.to_string(),
                        parent: current,
                        kind: other.name(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Total bytes of regular file contents (hard links counted once).
    pub fn payload_size(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match &e.kind {
                Kind::File(c) => c.size(),
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::from_definition(s).expect("valid path")
    }

    #[test]
    fn paths_are_normalised_and_checked() {
        assert_eq!(
            TreePath::from_archive("./usr//bin/./ls")
                .expect("ok")
                .as_str(),
            "usr/bin/ls"
        );
        assert!(matches!(
            TreePath::from_archive("/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            TreePath::from_archive("usr/../../x"),
            Err(PathError::DotDot(_))
        ));
        assert_eq!(p("/etc/hostname").to_string(), "/etc/hostname");
    }

    #[test]
    fn parents_are_created_and_clamped() {
        let mut t = Tree::new(100);
        t.insert(
            &p("a/b/c"),
            Entry::file(Content::inline(b"x".to_vec()), 0o644, "t").at(5000),
        )
        .expect("insert");
        assert!(matches!(t.get(&p("a/b")).map(|e| &e.kind), Some(Kind::Dir)));
        assert_eq!(t.get(&p("a/b/c")).map(|e| e.mtime), Some(100));
    }

    #[test]
    fn conflicting_content_names_both_origins() {
        let mut t = Tree::new(0);
        t.insert(
            &p("etc/x"),
            Entry::file(Content::inline(b"1".to_vec()), 0o644, "pkg-a"),
        )
        .expect("first");
        t.insert(
            &p("etc/x"),
            Entry::file(Content::inline(b"1".to_vec()), 0o644, "pkg-c"),
        )
        .expect("same content is fine");
        let err = t
            .insert(
                &p("etc/x"),
                Entry::file(Content::inline(b"2".to_vec()), 0o644, "pkg-b"),
            )
            .expect_err("conflict");
        let msg = err.to_string();
        assert!(
            msg.contains("pkg-a") && msg.contains("pkg-b") && msg.contains("/etc/x"),
            "{msg}"
        );
    }

    #[test]
    fn merged_usr_follows_parent_symlinks() {
        let mut t = Tree::new(0);
        t.insert(&p("bin"), Entry::symlink("usr/bin", "kiln"))
            .expect("link");
        let at = t
            .insert(
                &p("bin/ls"),
                Entry::file(Content::inline(b"elf".to_vec()), 0o755, "coreutils"),
            )
            .expect("insert through link");
        assert_eq!(at.as_str(), "usr/bin/ls");
        assert!(t.get(&p("usr/bin/ls")).is_some());
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let mut t = Tree::new(0);
        let err = t
            .insert(&p("etc/evil"), Entry::symlink("../../../etc/shadow", "bad"))
            .expect_err("escape");
        assert!(matches!(err, TreeError::EscapingSymlink { .. }));
        // Absolute targets resolve inside the root.
        t.insert(
            &p("etc/ok"),
            Entry::symlink("/usr/share/zoneinfo/UTC", "good"),
        )
        .expect("ok");
        // Writing through a link that escapes is refused too.
        t.entries.insert(p("up"), Entry::symlink("../..", "bad"));
        assert!(t.insert(&p("up/x"), Entry::dir(0o755, "bad")).is_err());
    }

    #[test]
    fn hardlinks_need_a_regular_file() {
        let mut t = Tree::new(0);
        assert!(matches!(
            t.insert(
                &p("a"),
                Entry::new(Kind::Hardlink(p("missing")), 0o644, "x")
            ),
            Err(TreeError::BadHardlink { .. })
        ));
        t.insert(
            &p("f"),
            Entry::file(Content::inline(b"1".to_vec()), 0o644, "x"),
        )
        .expect("f");
        t.insert(&p("a"), Entry::new(Kind::Hardlink(p("f")), 0o644, "x"))
            .expect("link");
    }

    #[test]
    fn children_lists_direct_entries() {
        let mut t = Tree::new(0);
        for f in ["d/a", "d/b/c", "dd/x", "d/z"] {
            t.insert(&p(f), Entry::file(Content::inline(Vec::new()), 0o644, "x"))
                .expect("ins");
        }
        let names: Vec<_> = t
            .children(&p("d"))
            .map(|(p, _)| p.as_str().to_string())
            .collect();
        assert_eq!(names, ["d/a", "d/b", "d/z"]);
    }
}
