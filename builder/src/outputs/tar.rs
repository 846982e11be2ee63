//! Deterministic tar of a Tree: entries in Tree order (sorted), names `./path`
//! with a trailing slash on directories, numeric uid/gid and no user or group
//! names, mtimes as in the Tree (already clamped to the epoch), GNU headers with
//! no atime/ctime, `././@LongLink` records for long names and link targets, hard
//! links as links to the first path of their group in sorted order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufWriter, Read, Write};

use crate::tree::{Entry, Kind, Tree, TreePath};

const BLOCK: usize = 512;

/// Writes the tree as a tar stream to `out`.
pub fn write_tar(tree: &Tree, out: impl Write) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, out);
    // Hard-link groups: a target file and the links to it. In sorted order a link
    // may come before its target, so the first path of each group carries the data
    // and every other path of the group links to it.
    let mut groups: BTreeMap<&TreePath, BTreeSet<&TreePath>> = BTreeMap::new();
    for (path, entry) in tree.iter() {
        if let Kind::Hardlink(target) = &entry.kind {
            groups.entry(target).or_default().insert(path);
        }
    }
    let mut leader: BTreeMap<&TreePath, &TreePath> = BTreeMap::new();
    for (target, links) in &groups {
        let first = links
            .iter()
            .next()
            .copied()
            .filter(|l| l < target)
            .unwrap_or(target);
        leader.insert(*target, first);
        for l in links {
            leader.insert(*l, first);
        }
    }
    for (path, entry) in tree.iter() {
        let name = if path.is_root() {
            "./".to_string()
        } else if matches!(entry.kind, Kind::Dir) {
            format!("./{}/", path.as_str())
        } else {
            format!("./{}", path.as_str())
        };
        match &entry.kind {
            Kind::Dir => write_entry(&mut w, &name, entry, b'5', "", 0, None)?,
            Kind::Symlink(target) => write_entry(&mut w, &name, entry, b'2', target, 0, None)?,
            Kind::File(_) | Kind::Hardlink(_) => {
                let group_leader = leader.get(path).copied();
                // The entry whose data this path shares (itself for a plain file).
                let data_path = match &entry.kind {
                    Kind::Hardlink(t) => t,
                    _ => path,
                };
                let data_entry = tree.get(data_path).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{path}: hard link target {data_path} is not in the tree"),
                    )
                })?;
                let Kind::File(content) = &data_entry.kind else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{path}: hard link target {data_path} is not a regular file"),
                    ));
                };
                match group_leader {
                    Some(l) if l != path => {
                        let link = format!("./{}", l.as_str());
                        write_entry(&mut w, &name, data_entry, b'1', &link, 0, None)?;
                    }
                    _ => {
                        let mut r = content.open().map_err(|e| {
                            io::Error::new(e.kind(), format!("reading content of {path}: {e}"))
                        })?;
                        write_entry(
                            &mut w,
                            &name,
                            data_entry,
                            b'0',
                            "",
                            content.size(),
                            Some(&mut r),
                        )?;
                    }
                }
            }
        }
    }
    w.write_all(&[0u8; BLOCK * 2])?;
    w.flush()
}

fn write_entry(
    w: &mut impl Write,
    name: &str,
    entry: &Entry,
    typeflag: u8,
    link: &str,
    size: u64,
    data: Option<&mut dyn Read>,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    if link.len() > 100 {
        write_long(w, b'K', link)?;
    }
    if name.len() > 100 {
        write_long(w, b'L', name)?;
    }
    set_bytes(&mut h.as_old_mut().name, name.as_bytes());
    set_bytes(&mut h.as_old_mut().linkname, link.as_bytes());
    h.set_mode(entry.mode & 0o7777);
    h.set_uid(u64::from(entry.uid));
    h.set_gid(u64::from(entry.gid));
    h.set_mtime(entry.mtime);
    h.set_size(size);
    h.as_old_mut().linkflag = [typeflag];
    h.set_cksum();
    w.write_all(h.as_bytes())?;
    if let Some(r) = data {
        let copied = io::copy(&mut r.take(size), w)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: content shrank from {size} to {copied} bytes while writing"),
            ));
        }
        pad(w, size)?;
    }
    Ok(())
}

/// A GNU long name (`L`) or long link (`K`) record before the real header.
fn write_long(w: &mut impl Write, typeflag: u8, value: &str) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    set_bytes(&mut h.as_old_mut().name, b"././@LongLink");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let size = value.len() as u64 + 1;
    h.set_size(size);
    h.as_old_mut().linkflag = [typeflag];
    h.set_cksum();
    w.write_all(h.as_bytes())?;
    w.write_all(value.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, size)
}

fn set_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    for b in &mut field[n..] {
        *b = 0;
    }
}

fn pad(w: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;

    fn p(s: &str) -> TreePath {
        TreePath::from_definition(s).expect("path")
    }

    #[test]
    fn round_trips_through_the_tar_reader() {
        let mut t = Tree::new(1000);
        let long = format!("d/{}", "n".repeat(150));
        t.insert(
            &p("z"),
            Entry::file(Content::inline(b"zzz".to_vec()), 0o4755, "x")
                .owned(7, 8)
                .at(5),
        )
        .expect("z");
        t.insert(&p("a"), Entry::new(Kind::Hardlink(p("z")), 0o4755, "x"))
            .expect("a");
        t.insert(&p(&long), Entry::symlink(&"t/".repeat(60), "x"))
            .expect("long");
        let mut out = Vec::new();
        write_tar(&t, &mut out).expect("write");
        let mut again = Vec::new();
        write_tar(&t, &mut again).expect("write");
        assert_eq!(out, again);
        let mut ar = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let ty = e.header().entry_type();
            let link = e
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("data");
            seen.push((path, ty, link, data));
        }
        // "a" sorts first, so it carries the data and "z" links to it.
        assert_eq!(seen[0].0, "./");
        assert_eq!(seen[1].0, "./a");
        assert_eq!(seen[1].1, tar::EntryType::Regular);
        assert_eq!(seen[1].3, b"zzz");
        let z = seen.iter().find(|s| s.0 == "./z").expect("z");
        assert_eq!(z.1, tar::EntryType::Link);
        assert_eq!(z.2.as_deref(), Some("./a"));
        let l = seen
            .iter()
            .find(|s| s.0 == format!("./{long}"))
            .expect("long");
        assert_eq!(l.2.as_deref(), Some("t/".repeat(60).as_str()));
        assert!(seen.iter().any(|s| s.0 == "./d/"));
    }
}
