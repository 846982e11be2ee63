//! `kiln cache`: what the cache holds, by kind, and pruning it down to what given locks pin.
//!
//! The kinds, under the cache root:
//! - blobs: `blobs/<alg>/<hex>`, downloaded .debs and artifacts by checksum;
//! - unpacked: `unpacked/deb-<sha256>.json` (a .deb's unpacked index) and the large file
//!   contents the indexes name, `contents/sha256/<hex>`;
//! - go builds: `go/<key>/`, each Go input's binaries and manifest;
//! - Go build cache: `go-build/`, Go's compiled packages (no lock names them: only speed);
//! - Go module cache: `go-mod/`, modules by path and version (the download cache and the
//!   extracted trees), the toolchains named by `go = "…"` among them;
//! - temporary: `tmp/`, `contents/tmp/`, `go/.tmp-*`, partial downloads and builds.
//!
//! Anything else under the root (a test's fixtures, a user's files) is listed as other and
//! never touched.
//!
//! Pruning keeps everything a kept lock pins: its .debs and artifacts, their unpacked
//! indexes and the contents those name, the go builds whose binaries equal a locked input's,
//! and every module version of a locked closure or toolchain. A tree is first renamed out of
//! the way, then removed, so an interrupted prune leaves no half-removed entry that a build
//! could take for a whole one (a leftover renamed tree is removed by the next prune).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, IsTerminal as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::digest::Digest;
use crate::lock::Lock;

/// The kinds of cache content, each with the directories (relative to the root) it lives in.
pub const KINDS: &[(&str, &[&str])] = &[
    ("blobs", &["blobs"]),
    ("unpacked", &["unpacked", "contents/sha256"]),
    ("go builds", &["go"]),
    ("Go build cache", &["go-build"]),
    ("Go module cache", &["go-mod"]),
    ("temporary", &["tmp", "contents/tmp"]),
];

/// Top-level names that are Kiln's (the parents of [`KINDS`]' directories).
const OWN: &[&str] = &[
    "blobs", "unpacked", "contents", "go", "go-build", "go-mod", "tmp",
];

/// Temporary files younger than this may belong to a build that is running: left alone.
const TMP_GRACE: Duration = Duration::from_secs(3600);

/// The suffix of a tree renamed for removal.
const DOOMED: &str = ".kiln-prune";

/// How much one kind holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindUsage {
    pub kind: String,
    pub bytes: u64,
    pub files: u64,
}

/// What `kiln cache` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub root: PathBuf,
    pub kinds: Vec<KindUsage>,
    /// Entries under the root that are not Kiln's, each with its size; never pruned.
    pub other: Vec<KindUsage>,
    pub total_bytes: u64,
}

/// Sizes by kind (apparent sizes of regular files; symlinks are not followed).
pub fn usage(root: &Path) -> io::Result<Usage> {
    let mut kinds = Vec::new();
    for (kind, dirs) in KINDS {
        let mut u = KindUsage {
            kind: (*kind).to_string(),
            ..KindUsage::default()
        };
        // `go/.tmp-*` counts as temporary, not as a go build.
        let skip = |name: &str| *kind == "go builds" && name.starts_with(".tmp-");
        for d in *dirs {
            add_tree(&root.join(d), &skip, &mut u)?;
        }
        if *kind == "temporary" {
            for e in kind_entries(root, "go")? {
                if e.name.starts_with(".tmp-") {
                    add_tree(&e.path, &|_| false, &mut u)?;
                }
            }
        }
        kinds.push(u);
    }
    let mut other = Vec::new();
    for e in read_dir_or_empty(root)? {
        if OWN.contains(&e.name.as_str()) {
            continue;
        }
        let mut u = KindUsage {
            kind: e.name.clone(),
            ..KindUsage::default()
        };
        add_tree(&e.path, &|_| false, &mut u)?;
        other.push(u);
    }
    let total_bytes = kinds.iter().chain(&other).map(|k| k.bytes).sum();
    Ok(Usage {
        root: root.to_path_buf(),
        kinds,
        other,
        total_bytes,
    })
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The entries of the kind directory `root/rel`: none when it is missing or not a directory
/// of its own (a symlink to elsewhere, say a shared Go build cache, is not the cache's to
/// prune).
fn kind_entries(root: &Path, rel: &str) -> io::Result<Vec<Entry>> {
    let dir = root.join(rel);
    if is_real_dir(&dir) {
        read_dir_or_empty(&dir)
    } else {
        Ok(Vec::new())
    }
}

/// Removes the empty directories under `dir` (not `dir` itself), deepest first.
fn remove_empty_dirs(dir: &Path) -> io::Result<bool> {
    let mut empty = true;
    for e in read_dir_or_empty(dir)? {
        if e.meta.is_dir() && remove_empty_dirs(&e.path)? {
            fs::remove_dir(&e.path)?;
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

struct Entry {
    name: String,
    path: PathBuf,
    meta: fs::Metadata,
}

/// The entries of `dir` (none if it does not exist), sorted by name, not following symlinks.
fn read_dir_or_empty(dir: &Path) -> io::Result<Vec<Entry>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        let path = e.path();
        let meta = fs::symlink_metadata(&path)?;
        out.push(Entry {
            name: e.file_name().to_string_lossy().into_owned(),
            path,
            meta,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Adds every file under `path` (or `path` itself) to `u`; top-level names `skip` says
/// are left out.
fn add_tree(path: &Path, skip: &dyn Fn(&str) -> bool, u: &mut KindUsage) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        u.bytes += meta.len();
        u.files += 1;
        return Ok(());
    }
    let mut stack = vec![path.to_path_buf()];
    let mut top = true;
    while let Some(dir) = stack.pop() {
        for e in read_dir_or_empty(&dir)? {
            if top && skip(&e.name) {
                continue;
            }
            if e.meta.is_dir() {
                stack.push(e.path);
            } else {
                u.bytes += e.meta.len();
                u.files += 1;
            }
        }
        top = false;
    }
    Ok(())
}

/// What the kept locks pin.
#[derive(Debug, Default)]
pub struct Keep {
    /// `(algorithm, hex)` of every pinned blob.
    blobs: HashSet<(String, String)>,
    /// sha256 hex of every pinned .deb (their unpacked indexes are kept).
    debs: HashSet<String>,
    /// Each locked go input's binaries (name -> sha256).
    go_builds: Vec<BTreeMap<String, Digest>>,
    /// `(path, version)` of every module of a locked closure or toolchain, as the module
    /// cache spells them (upper case escaped).
    modules: HashSet<(String, String)>,
}

impl Keep {
    /// Adds what `lock` pins.
    pub fn add(&mut self, lock: &Lock) {
        let mut blob = |d: &Digest| {
            self.blobs
                .insert((d.algorithm().name().to_string(), d.hex().to_string()));
        };
        if let Some(debian) = &lock.debian {
            for deb in &debian.debs {
                blob(&deb.sha256);
                self.debs.insert(deb.sha256.hex().to_string());
            }
        }
        for a in &lock.artifact {
            blob(&a.checksum);
        }
        for g in &lock.go {
            self.go_builds.push(g.binaries.clone());
            for line in g.go_sum.iter().chain(&g.toolchain) {
                let mut words = line.split_whitespace();
                if let (Some(path), Some(version)) = (words.next(), words.next()) {
                    let version = version.trim_end_matches("/go.mod");
                    self.modules.insert((
                        crate::gobuild::escape_module_path(path),
                        crate::gobuild::escape_module_path(version),
                    ));
                }
            }
        }
    }
}

/// What one kind lost (or, in a dry run, would lose) and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub kind: String,
    pub removed_files: u64,
    pub removed_bytes: u64,
    pub kept_files: u64,
    pub kept_bytes: u64,
}

/// What `kiln cache prune` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub root: PathBuf,
    pub dry_run: bool,
    pub kinds: Vec<Pruned>,
    pub removed_bytes: u64,
}

/// Removes from the cache at `root` everything `keep` does not pin (see the module's
/// documentation); with `dry_run`, only says what it would remove.
pub fn prune(root: &Path, keep: &Keep, dry_run: bool) -> io::Result<PruneReport> {
    let mut p = Pruner::new(dry_run);
    // Blobs.
    p.kind("blobs");
    for alg in kind_entries(root, "blobs")? {
        for b in read_dir_or_empty(&alg.path)? {
            let pinned = keep.blobs.contains(&(alg.name.clone(), b.name.clone()));
            p.decide(&b, pinned)?;
        }
    }
    // Unpacked indexes first, then the contents no kept index names.
    p.kind("unpacked");
    let mut contents: HashSet<String> = HashSet::new();
    for e in kind_entries(root, "unpacked")? {
        let deb = e
            .name
            .strip_prefix("deb-")
            .and_then(|n| n.strip_suffix(".json"));
        let named = match deb.filter(|hex| keep.debs.contains(*hex)) {
            Some(_) => crate::unpack::indexed_contents(&e.path),
            None => None,
        };
        let pinned = named.is_some();
        contents.extend(named.unwrap_or_default());
        p.decide(&e, pinned)?;
    }
    for e in kind_entries(root, "contents/sha256")? {
        p.decide(&e, contents.contains(&e.name))?;
    }
    // Go builds.
    p.kind("go builds");
    for e in kind_entries(root, "go")? {
        if e.name.starts_with(".tmp-") {
            continue;
        }
        let pinned = e.name.len() == 64
            && crate::gobuild::cached_binaries(&e.path)
                .is_some_and(|b| keep.go_builds.contains(&b));
        p.decide(&e, pinned)?;
    }
    // Go's build cache: nothing in it is pinned.
    p.kind("Go build cache");
    for e in kind_entries(root, "go-build")? {
        p.decide(&e, false)?;
    }
    // The module cache: the download cache's files per version, the extracted trees.
    p.kind("Go module cache");
    let go_mod = root.join("go-mod");
    if is_real_dir(&go_mod) {
        p.download_cache(&go_mod.join("cache/download"), "", keep)?;
        p.extracted_modules(&go_mod, "", keep)?;
        if !dry_run {
            remove_empty_dirs(&go_mod)?;
        }
    }
    // Temporary files old enough not to be a running build's.
    p.kind("temporary");
    let now = SystemTime::now();
    let old = |e: &Entry| {
        e.meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= TMP_GRACE)
    };
    for dir in ["tmp", "contents/tmp"] {
        for e in kind_entries(root, dir)? {
            p.decide(&e, !old(&e))?;
        }
    }
    for e in kind_entries(root, "go")? {
        if e.name.starts_with(".tmp-") {
            p.decide(&e, !old(&e))?;
        }
    }
    p.finish();
    let removed_bytes = p.done.iter().map(|k| k.removed_bytes).sum();
    Ok(PruneReport {
        root: root.to_path_buf(),
        dry_run,
        kinds: p.done,
        removed_bytes,
    })
}

struct Pruner {
    dry_run: bool,
    done: Vec<Pruned>,
    current: Option<Pruned>,
    bar: indicatif::ProgressBar,
}

impl Pruner {
    fn new(dry_run: bool) -> Pruner {
        let bar = if io::stderr().is_terminal() {
            indicatif::ProgressBar::new_spinner()
        } else {
            indicatif::ProgressBar::hidden()
        };
        Pruner {
            dry_run,
            done: Vec::new(),
            current: None,
            bar,
        }
    }

    fn kind(&mut self, kind: &str) {
        self.finish();
        self.bar.set_message(format!("pruning {kind}"));
        self.current = Some(Pruned {
            kind: kind.to_string(),
            ..Pruned::default()
        });
    }

    fn finish(&mut self) {
        if let Some(k) = self.current.take() {
            self.done.push(k);
        }
        self.bar.finish_and_clear();
    }

    /// Keeps `e` (counted) or removes it.
    fn decide(&mut self, e: &Entry, keep: bool) -> io::Result<()> {
        let mut u = KindUsage::default();
        if e.meta.is_dir() {
            add_tree(&e.path, &|_| false, &mut u)?;
        } else {
            // A file's size is in the entry already: no second stat per blob or content.
            u.bytes = e.meta.len();
            u.files = 1;
        }
        let Some(k) = self.current.as_mut() else {
            return Ok(());
        };
        if keep {
            k.kept_files += u.files;
            k.kept_bytes += u.bytes;
            return Ok(());
        }
        k.removed_files += u.files;
        k.removed_bytes += u.bytes;
        self.bar.inc(u.files);
        if self.dry_run {
            return Ok(());
        }
        remove(e)
    }

    /// `cache/download/<module path>/@v/<version>.{info,mod,zip,ziphash,lock}`: each
    /// version's files go or stay together; a module's `list` stays while a version does.
    fn download_cache(&mut self, dir: &Path, module: &str, keep: &Keep) -> io::Result<()> {
        for e in read_dir_or_empty(dir)? {
            if !e.meta.is_dir() {
                continue;
            }
            if e.name == "@v" && !module.is_empty() {
                let files = read_dir_or_empty(&e.path)?;
                let pinned = |f: &Entry| {
                    let version = version_of_download(&f.name);
                    keep.modules
                        .contains(&(module.to_string(), version.to_string()))
                };
                let any = files.iter().any(|f| !is_list(&f.name) && pinned(f));
                for f in &files {
                    let stays = if is_list(&f.name) { any } else { pinned(f) };
                    self.decide(f, stays)?;
                }
                continue;
            }
            if module.is_empty() && e.name == "sumdb" {
                continue;
            }
            let sub = if module.is_empty() {
                e.name.clone()
            } else {
                format!("{module}/{}", e.name)
            };
            self.download_cache(&e.path, &sub, keep)?;
        }
        Ok(())
    }

    /// The extracted trees, `<module path>@<version>/` (read-only, as Go leaves them).
    fn extracted_modules(&mut self, dir: &Path, prefix: &str, keep: &Keep) -> io::Result<()> {
        for e in read_dir_or_empty(dir)? {
            if prefix.is_empty() && e.name == "cache" {
                continue;
            }
            if e.name.ends_with(DOOMED) {
                self.decide(&e, false)?;
                continue;
            }
            if !e.meta.is_dir() {
                continue;
            }
            let path = if prefix.is_empty() {
                e.name.clone()
            } else {
                format!("{prefix}/{}", e.name)
            };
            match path.split_once('@') {
                Some((module, version)) => {
                    let pinned = keep
                        .modules
                        .contains(&(module.to_string(), version.to_string()));
                    self.decide(&e, pinned)?;
                }
                None => self.extracted_modules(&e.path, &path, keep)?,
            }
        }
        Ok(())
    }
}

fn is_list(name: &str) -> bool {
    name == "list" || name == "list.lock"
}

/// The version a download cache file is of: `v1.2.3.zip`, `v1.2.3.info`, … -> `v1.2.3`.
fn version_of_download(name: &str) -> &str {
    for ext in [".ziphash", ".zip", ".info", ".mod", ".lock", ".partial"] {
        if let Some(v) = name.strip_suffix(ext) {
            return v;
        }
    }
    name
}

/// Removes a file, or a directory tree by renaming it aside first (so no half-removed tree
/// stays under its own name), making read-only directories writable on the way.
fn remove(e: &Entry) -> io::Result<()> {
    let named = |err: io::Error| io::Error::new(err.kind(), format!("{}: {err}", e.path.display()));
    if !e.meta.is_dir() {
        return fs::remove_file(&e.path).map_err(named);
    }
    let doomed = if e.name.ends_with(DOOMED) {
        e.path.clone()
    } else {
        let mut p = e.path.clone().into_os_string();
        p.push(DOOMED);
        let p = PathBuf::from(p);
        fs::rename(&e.path, &p).map_err(named)?;
        p
    };
    make_writable(&doomed).map_err(named)?;
    fs::remove_dir_all(&doomed).map_err(named)
}

fn make_writable(dir: &Path) -> io::Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let meta = fs::symlink_metadata(&d)?;
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            fs::set_permissions(&d, fs::Permissions::from_mode(mode | 0o700))?;
        }
        for e in fs::read_dir(&d)? {
            stack.push(e?.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Algorithm;

    fn put(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, bytes).expect("write");
    }

    fn exists(root: &Path, rel: &str) -> bool {
        fs::symlink_metadata(root.join(rel)).is_ok()
    }

    #[test]
    fn download_cache_files_are_told_by_version() {
        assert_eq!(version_of_download("v1.2.3.zip"), "v1.2.3");
        assert_eq!(version_of_download("v1.2.3.ziphash"), "v1.2.3");
        assert_eq!(
            version_of_download("v0.0.0-2024-abc.mod"),
            "v0.0.0-2024-abc"
        );
        assert!(is_list("list") && !is_list("v1.0.0.info"));
    }

    #[test]
    fn the_module_cache_keeps_locked_versions_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for v in ["v1.0.0", "v1.1.0"] {
            for ext in ["info", "mod", "zip", "ziphash"] {
                put(
                    root,
                    &format!("go-mod/cache/download/example.com/!big/@v/{v}.{ext}"),
                    b"x",
                );
            }
            put(root, &format!("go-mod/example.com/!big@{v}/main.go"), b"x");
        }
        put(root, "go-mod/cache/download/example.com/!big/@v/list", b"x");
        put(
            root,
            "go-mod/cache/download/example.com/other/@v/v2.0.0.mod",
            b"x",
        );
        put(
            root,
            "go-mod/cache/download/example.com/other/@v/list",
            b"x",
        );
        put(
            root,
            "go-mod/cache/download/sumdb/sum.example/lookup/x",
            b"x",
        );
        put(root, "go-mod/example.com/gone@v1.0.0.kiln-prune/a.go", b"x");
        // Go leaves extracted trees read-only.
        let ro = root.join("go-mod/example.com/!big@v1.1.0");
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).expect("chmod");
        let mut keep = Keep::default();
        keep.modules
            .insert(("example.com/!big".into(), "v1.0.0".into()));

        let dry = prune(root, &keep, true).expect("dry run");
        assert!(
            exists(root, "go-mod/example.com/!big@v1.1.0/main.go"),
            "dry run"
        );
        let m = dry
            .kinds
            .iter()
            .find(|k| k.kind == "Go module cache")
            .expect("kind");
        assert_eq!((m.removed_files, m.kept_files), (8, 6), "{m:?}");

        prune(root, &keep, false).expect("prune");
        for kept in [
            "go-mod/cache/download/example.com/!big/@v/v1.0.0.zip",
            "go-mod/cache/download/example.com/!big/@v/v1.0.0.mod",
            "go-mod/cache/download/example.com/!big/@v/list",
            "go-mod/example.com/!big@v1.0.0/main.go",
            "go-mod/cache/download/sumdb/sum.example/lookup/x",
        ] {
            assert!(exists(root, kept), "{kept}");
        }
        for gone in [
            "go-mod/cache/download/example.com/!big/@v/v1.1.0.zip",
            "go-mod/example.com/!big@v1.1.0",
            "go-mod/cache/download/example.com/other/@v/v2.0.0.mod",
            "go-mod/cache/download/example.com/other/@v/list",
            "go-mod/example.com/gone@v1.0.0.kiln-prune",
            "go-mod/cache/download/example.com/other",
        ] {
            assert!(!exists(root, gone), "{gone}");
        }
    }

    #[test]
    fn blobs_indexes_and_contents_follow_the_kept_debs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let kept = Digest::of_bytes(Algorithm::Sha256, b"kept deb");
        let other = Digest::of_bytes(Algorithm::Sha256, b"other deb");
        for d in [&kept, &other] {
            put(root, &format!("blobs/sha256/{}", d.hex()), b"deb");
        }
        let index = |content: &str| {
            format!(
                r#"{{"format":1,"entries":[{{"p":"/usr/bin/x","k":"f","m":493,"u":0,"g":0,"t":0,"size":70000,"sha256":"{content}"}}]}}"#
            )
        };
        let (c1, c2) = ("c1".repeat(32), "c2".repeat(32));
        put(
            root,
            &format!("unpacked/deb-{}.json", kept.hex()),
            index(&c1).as_bytes(),
        );
        put(
            root,
            &format!("unpacked/deb-{}.json", other.hex()),
            index(&c2).as_bytes(),
        );
        put(root, &format!("contents/sha256/{c1}"), b"x");
        put(root, &format!("contents/sha256/{c2}"), b"x");
        put(root, "fixtures/a.deb", b"not Kiln's");
        put(root, "go-build/00/abc-d", b"compiled");
        // A Go build cache shared through a symlink is not the cache's to prune.
        let shared = tempfile::tempdir().expect("tempdir");
        put(shared.path(), "00/abc-d", b"compiled");
        std::os::unix::fs::symlink(shared.path(), root.join("go-mod")).expect("symlink");
        let mut keep = Keep::default();
        keep.blobs.insert(("sha256".into(), kept.hex().to_string()));
        keep.debs.insert(kept.hex().to_string());

        let before = usage(root).expect("usage");
        let blobs = before
            .kinds
            .iter()
            .find(|k| k.kind == "blobs")
            .expect("blobs");
        assert_eq!((blobs.files, blobs.bytes), (2, 6));
        assert_eq!(before.other.len(), 1);
        assert_eq!(before.other[0].kind, "fixtures");

        let r = prune(root, &keep, false).expect("prune");
        assert!(!r.dry_run);
        assert!(exists(root, &format!("blobs/sha256/{}", kept.hex())));
        assert!(!exists(root, &format!("blobs/sha256/{}", other.hex())));
        assert!(exists(root, &format!("unpacked/deb-{}.json", kept.hex())));
        assert!(!exists(root, &format!("unpacked/deb-{}.json", other.hex())));
        assert!(exists(root, &format!("contents/sha256/{c1}")));
        assert!(!exists(root, &format!("contents/sha256/{c2}")));
        assert!(!exists(root, "go-build/00"));
        assert!(
            shared.path().join("00/abc-d").is_file(),
            "not through a symlink"
        );
        assert!(
            exists(root, "fixtures/a.deb"),
            "other files are never touched"
        );
    }
}
