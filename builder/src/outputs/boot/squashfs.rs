//! Root file system: squashfs of a Tree, through `mksquashfs`.
//!
//! The Tree is staged as plain files owned by the builder (no root, no chown), then a
//! pseudo file of `m` (modify) lines gives every entry its mode, uid and gid from the
//! Tree. Times: staged entries get their Tree mtime and `SOURCE_DATE_EPOCH` (the Tree
//! epoch) pins the superblock time and clamps the rest.

use std::fmt::Write as _;
use std::fs::{self, File, FileTimes};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use super::{io_err, persist, temp_dir_near, temp_sibling, BootError, Result};
use crate::process::{self, Tool, ToolVersion};
use crate::tree::{Kind, Tree, TreePath};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd at the given level (1-22).
    Zstd(u32),
    Xz,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(19)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub compression: Compression,
}

/// Writes `tree` as a squashfs image at `out`. Returns the mksquashfs version.
pub fn write(tree: &Tree, out: &Path, opts: &Options) -> Result<ToolVersion> {
    let version = process::version("mksquashfs", &["-version"])?;
    let stage = temp_dir_near(out)?;
    let root = stage.path().join("root");
    let pseudo = stage.path().join("pseudo");
    stage_tree(tree, &root)?;
    fs::write(&pseudo, pseudo_file(tree)?).map_err(io_err("writing", &pseudo))?;

    let tmp = temp_sibling(out)?;
    let comp = match opts.compression {
        Compression::Zstd(level) => vec![
            "-comp".to_string(),
            "zstd".into(),
            "-Xcompression-level".into(),
            level.to_string(),
        ],
        Compression::Xz => vec![
            "-comp".into(),
            "xz".into(),
            "-Xdict-size".into(),
            "100%".into(),
        ],
    };
    Tool::new("mksquashfs")
        .reproducible(tree.epoch())
        .arg(&root)
        .arg(tmp.path())
        .arg("-noappend")
        .args(comp)
        .args(["-no-xattrs", "-no-progress", "-quiet", "-pf"])
        .arg(&pseudo)
        .args(root_args(tree))
        .run()?;
    persist(tmp, out)?;
    Ok(version)
}

/// Copies the Tree into `root` as files owned by the caller.
pub fn stage_tree(tree: &Tree, root: &Path) -> Result<()> {
    fs::create_dir_all(root).map_err(io_err("creating", root))?;
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    for (path, entry) in tree.iter() {
        let dest = root.join(path.as_str());
        match &entry.kind {
            Kind::Dir => {
                if !path.is_root() {
                    fs::create_dir(&dest).map_err(io_err("creating directory", &dest))?;
                }
                dirs.push((dest, entry.mtime));
            }
            Kind::File(content) => {
                let mut reader = content.open().map_err(|source| BootError::TreeRead {
                    path: path.to_string(),
                    source,
                })?;
                let mut f = File::create(&dest).map_err(io_err("creating", &dest))?;
                std::io::copy(&mut reader, &mut f).map_err(io_err("writing", &dest))?;
                f.set_times(times(entry.mtime))
                    .map_err(io_err("setting times of", &dest))?;
            }
            Kind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &dest)
                    .map_err(io_err("creating symlink", &dest))?;
            }
            Kind::Hardlink(target) => links.push((dest, root.join(target.as_str()))),
        }
    }
    // Hard links once every target exists (a link may sort before its target).
    for (dest, src) in &links {
        fs::hard_link(src, dest).map_err(io_err("creating hard link", dest))?;
    }
    // Directory times last, deepest first, once their contents are in place.
    for (dir, mtime) in dirs.iter().rev() {
        File::open(dir)
            .and_then(|f| f.set_times(times(*mtime)))
            .map_err(io_err("setting times of", dir))?;
    }
    Ok(())
}

fn times(mtime: u64) -> FileTimes {
    let t = UNIX_EPOCH + Duration::from_secs(mtime);
    FileTimes::new().set_modified(t).set_accessed(t)
}

/// Mode, owner and time of the root directory (pseudo files cannot address `/`).
fn root_args(tree: &Tree) -> Vec<String> {
    let (mode, uid, gid, mtime) = match tree.get(&TreePath::root()) {
        Some(e) => (e.mode, e.uid, e.gid, e.mtime),
        None => (0o755, 0, 0, tree.epoch()),
    };
    vec![
        "-root-mode".into(),
        format!("{mode:o}"),
        "-root-uid".into(),
        uid.to_string(),
        "-root-gid".into(),
        gid.to_string(),
        "-root-time".into(),
        mtime.to_string(),
    ]
}

/// `"/path" m MODE UID GID` for every entry: owners and modes come from the Tree.
pub fn pseudo_file(tree: &Tree) -> Result<String> {
    let mut s = String::new();
    for (path, entry) in tree.iter() {
        if path.is_root() || matches!(entry.kind, Kind::Hardlink(_)) {
            // The root takes -root-* options; a hard link shares its target's inode.
            continue;
        }
        let mode = match entry.kind {
            Kind::Symlink(_) => 0o777,
            _ => entry.mode & 0o7777,
        };
        let _ = writeln!(
            s,
            "{} m {:o} {} {}",
            quote(path)?,
            mode,
            entry.uid,
            entry.gid
        );
    }
    Ok(s)
}

/// Pseudo-file names are quoted; `"` and `\` are backslash-escaped. Newlines cannot
/// be expressed and are refused.
fn quote(path: &TreePath) -> Result<String> {
    let p = path.to_string();
    if p.contains('\n') {
        return Err(BootError::BadPath {
            path: p,
            reason: "newline in a file name",
        });
    }
    Ok(format!(
        "\"{}\"",
        p.replace('\\', r"\\").replace('"', "\\\"")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Content, Entry};

    #[test]
    fn pseudo_lines_carry_tree_owners_and_quote_names() {
        let mut t = Tree::new(10);
        t.insert(
            &TreePath::from_definition("/etc/a \"b\"").expect("p"),
            Entry::file(Content::inline(b"x".to_vec()), 0o4750, "t").owned(0, 42),
        )
        .expect("ins");
        let s = pseudo_file(&t).expect("pseudo");
        assert!(s.contains("\"/etc/a \\\"b\\\"\" m 4750 0 42\n"), "{s}");
        assert!(s.starts_with("\"/etc\" m 755 0 0\n"), "{s}");
    }
}
