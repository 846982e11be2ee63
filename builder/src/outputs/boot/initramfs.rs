//! Initramfs: a newc cpio (sorted, renumbered inodes, epoch mtimes, root-owned)
//! compressed with gzip (header mtime 0) or zstd. It holds `/init` (the firstboot
//! binary), the stage-1 kernel modules with their dependency closure under
//! `/lib/modules/<kver>/`, and `/etc/kiln/modules.load` listing their absolute paths in
//! load order. Large payloads (the PXE root squashfs) go in a second, uncompressed
//! cpio appended after the first, which the kernel unpacks the same way.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use super::cpio::{Node, Writer};
use super::modules::ModuleIndex;
use super::{io_err, persist, temp_sibling, BootError, Result};
use crate::tree::{Content, Entry, Kind, Tree, TreePath};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// gzip, header mtime 0, OS byte "unknown"; every kernel reads it.
    #[default]
    Gzip,
    Zstd,
}

pub struct Spec<'a> {
    pub kver: &'a str,
    /// Module names or `prefix*` globs; see [`super::modules::STAGE1`].
    pub modules: &'a [&'a str],
    /// Becomes `/init` (mode 0755).
    pub init: &'a Path,
    /// More entries for the compressed archive.
    pub extra: &'a [(TreePath, Entry)],
    /// Files stored uncompressed in the appended archive (mode 0644), e.g.
    /// (`root.squashfs`, path) for PXE.
    pub embedded: &'a [(TreePath, PathBuf)],
    pub compression: Compression,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Module names in load order.
    pub modules: Vec<String>,
    pub size: u64,
}

/// Builds the initramfs from the kernel modules in `root` (the image Tree, or a Tree
/// of the unpacked kernel package) and writes it to `out`.
pub fn build(root: &Tree, spec: &Spec<'_>, out: &Path) -> Result<Report> {
    let epoch = root.epoch();
    let index = ModuleIndex::from_tree(root, spec.kver)?;
    let modules = index.closure(spec.modules)?;

    let mut t = Tree::new(epoch);
    let ins = |t: &mut Tree, p: &str, e: Entry| -> Result<()> {
        let path = TreePath::from_archive(p).map_err(|_| BootError::BadPath {
            path: p.to_string(),
            reason: "not a relative path",
        })?;
        t.insert(&path, e.at(epoch))
            .map(|_| ())
            .map_err(|e| BootError::BadPath {
                path: p.to_string(),
                reason: if matches!(e, crate::tree::TreeError::Conflict { .. }) {
                    "two initramfs entries with different content"
                } else {
                    "cannot be placed in the initramfs tree"
                },
            })
    };
    let init_size = std::fs::metadata(spec.init)
        .map_err(io_err("reading firstboot binary", spec.init))?
        .len();
    ins(
        &mut t,
        "init",
        Entry::file(
            Content::OnDisk {
                path: spec.init.to_path_buf(),
                size: init_size,
            },
            0o755,
            "firstboot",
        ),
    )?;
    for d in ["dev", "proc", "sys", "run", "tmp", "sysroot"] {
        ins(&mut t, d, Entry::dir(0o755, "kiln"))?;
    }
    let mut load = String::new();
    for m in &modules {
        let p = format!("lib/modules/{}/{}", spec.kver, m.rel);
        load.push_str(&format!("/{p}\n"));
        ins(
            &mut t,
            &p,
            Entry::file(Content::inline(m.bytes.clone()), 0o644, "kernel"),
        )?;
    }
    ins(
        &mut t,
        "etc/kiln/modules.load",
        Entry::file(Content::inline(load.into_bytes()), 0o644, "kiln"),
    )?;
    for (p, e) in spec.extra {
        ins(&mut t, p.as_str(), e.clone())?;
    }

    let tmp = temp_sibling(out)?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io_err("opening", tmp.path()))?;
    let mut w = BufWriter::new(file);
    let werr = io_err("writing", out);
    match spec.compression {
        Compression::Gzip => {
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(&mut w, flate2::Compression::best());
            write_tree(&t, gz)
                .and_then(|gz| gz.finish())
                .map_err(werr)?;
        }
        Compression::Zstd => {
            let enc = zstd::Encoder::new(&mut w, 19).map_err(io_err("compressing", out))?;
            write_tree(&t, enc).and_then(|e| e.finish()).map_err(werr)?;
        }
    }
    if !spec.embedded.is_empty() {
        // The kernel only recognises an uncompressed cpio at a 4-byte-aligned offset;
        // zero bytes between archives are skipped.
        let at = w.stream_position().map_err(io_err("writing", out))?;
        w.write_all(&[0u8; 3][..((4 - at % 4) % 4) as usize])
            .map_err(io_err("writing", out))?;
        let mut cw = Writer::new(&mut w, epoch);
        for (p, src) in spec.embedded {
            let f = File::open(src).map_err(io_err("opening", src))?;
            let size = f.metadata().map_err(io_err("reading", src))?.len();
            cw.add(Node::File {
                name: p.as_str(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                size,
                data: Box::new(f),
            })
            .map_err(io_err("writing", out))?;
        }
        cw.finish().map_err(io_err("writing", out))?;
    }
    w.flush().map_err(io_err("writing", out))?;
    drop(w);
    let size = tmp
        .as_file()
        .metadata()
        .map_err(io_err("reading", tmp.path()))?
        .len();
    persist(tmp, out)?;
    Ok(Report {
        modules: modules.into_iter().map(|m| m.name).collect(),
        size,
    })
}

/// Writes every Tree entry (sorted, root first) plus `/dev/console`, which the kernel
/// needs to give PID 1 a console.
pub fn write_tree<W: Write>(t: &Tree, w: W) -> std::io::Result<W> {
    let mut cw = Writer::new(w, t.epoch());
    for (p, e) in t.iter() {
        let name = if p.is_root() { "." } else { p.as_str() };
        match &e.kind {
            Kind::Dir => cw.add(Node::Dir {
                name,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
            })?,
            Kind::File(c) => cw.add(Node::File {
                name,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                size: c.size(),
                data: c.open()?,
            })?,
            Kind::Symlink(target) => cw.add(Node::Symlink {
                name,
                target,
                uid: e.uid,
                gid: e.gid,
            })?,
            Kind::Hardlink(target) => {
                let c = match t.get(target).map(|e| &e.kind) {
                    Some(Kind::File(c)) => c,
                    _ => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("hard link {p} -> {target}: target is not a file"),
                        ))
                    }
                };
                cw.add(Node::File {
                    name,
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    size: c.size(),
                    data: c.open()?,
                })?
            }
        }
        if p.as_str() == "dev" {
            cw.add(Node::CharDev {
                name: "dev/console",
                mode: 0o600,
                major: 5,
                minor: 1,
            })?;
        }
    }
    cw.finish()
}
