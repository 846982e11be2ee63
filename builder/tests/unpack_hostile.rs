//! Hostile .debs, generated here with the `ar` and `tar` crates: each is refused
//! with an error naming the .deb and the member; none leaves an index behind.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kiln::tree::Tree;
use kiln::unpack::{add_deb, merged_usr, ContentStore, Limits, UnpackError};

enum Raw<'a> {
    Dir(&'a str),
    File(&'a str, Vec<u8>),
    Zeros(&'a str, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Fifo(&'a str),
}

/// A header whose name is written raw, so `..` and absolute names get through.
fn header(name: &str, ty: tar::EntryType, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(ty);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    h
}

fn data_tar(entries: &[Raw], w: impl Write) -> io::Result<()> {
    let mut b = tar::Builder::new(w);
    for e in entries {
        match e {
            Raw::Dir(n) => b.append(&header(n, tar::EntryType::Directory, 0, ""), io::empty())?,
            Raw::File(n, d) => b.append(
                &header(n, tar::EntryType::Regular, d.len() as u64, ""),
                &d[..],
            )?,
            Raw::Zeros(n, len) => b.append(
                &header(n, tar::EntryType::Regular, *len, ""),
                io::repeat(0).take(*len),
            )?,
            Raw::Symlink(n, t) => {
                b.append(&header(n, tar::EntryType::Symlink, 0, t), io::empty())?
            }
            Raw::Hardlink(n, t) => b.append(&header(n, tar::EntryType::Link, 0, t), io::empty())?,
            Raw::Char(n) => b.append(&header(n, tar::EntryType::Char, 0, ""), io::empty())?,
            Raw::Fifo(n) => b.append(&header(n, tar::EntryType::Fifo, 0, ""), io::empty())?,
        }
    }
    b.into_inner()?.flush()
}

/// Writes `<dir>/<name>.deb` with a control file and the given data entries (xz).
fn make_deb(dir: &Path, name: &str, entries: &[Raw]) -> PathBuf {
    let mut control = Vec::new();
    {
        let gz = flate2::write::GzEncoder::new(&mut control, flate2::Compression::fast());
        let text = format!("Package: {name}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@example.invalid>\nDescription: test\n");
        data_tar(
            &[
                Raw::Dir("./"),
                Raw::File("./control", text.into_bytes()),
                Raw::File("./postinst", b"#!/bin/sh\nexit 1\n".to_vec()),
            ],
            gz,
        )
        .expect("control.tar");
    }
    let mut data = Vec::new();
    {
        let xz = liblzma::write::XzEncoder::new(&mut data, 1);
        data_tar(entries, xz).expect("data.tar");
    }
    let path = dir.join(format!("{name}.deb"));
    let mut ar = ar::Builder::new(std::fs::File::create(&path).expect("create"));
    for (member, bytes) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", control),
        ("data.tar.xz", data),
    ] {
        let mut h = ar::Header::new(member.as_bytes().to_vec(), bytes.len() as u64);
        h.set_mode(0o644);
        ar.append(&h, &bytes[..]).expect("ar append");
    }
    path
}

struct Env {
    dir: tempfile::TempDir,
    store: ContentStore,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tmp");
    let store = ContentStore::open(&dir.path().join("cache")).expect("store");
    Env { dir, store }
}

fn limits() -> Limits {
    Limits {
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
    }
}

/// Adds the hostile deb twice (the second time must not be served from a cache)
/// and returns the error.
fn refused(name: &str, entries: &[Raw]) -> (String, UnpackError) {
    let env = env();
    let deb = make_deb(env.dir.path(), name, entries);
    let mut last = None;
    for _ in 0..2 {
        let mut tree = Tree::new(2_000_000_000);
        merged_usr(&mut tree).expect("merged");
        last = Some(
            add_deb(&mut tree, &deb, name, &env.store, &limits())
                .expect_err("hostile deb accepted"),
        );
    }
    let err = last.expect("error");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{name}.deb")),
        "error does not name the .deb: {msg}"
    );
    (msg, err)
}

#[test]
fn a_well_formed_generated_deb_is_accepted() {
    let env = env();
    let deb = make_deb(
        env.dir.path(),
        "good",
        &[
            Raw::Dir("./"),
            Raw::Dir("./usr/"),
            Raw::File("./usr/bin/tool", b"#!/bin/sh\n".to_vec()),
            Raw::Symlink("./usr/bin/alias", "tool"),
            Raw::Symlink("./etc/abs", "/usr/bin/tool"),
            Raw::Hardlink("./usr/bin/tool2", "./usr/bin/tool"),
        ],
    );
    let mut tree = Tree::new(2_000_000_000);
    merged_usr(&mut tree).expect("merged");
    let c = add_deb(&mut tree, &deb, "good", &env.store, &limits()).expect("good deb");
    assert_eq!(c.package, "good");
    assert_eq!(c.maintainer_scripts, ["postinst"]);
}

#[test]
fn dotdot_member_is_refused() {
    let (msg, err) = refused(
        "dotdot",
        &[Raw::File("./usr/../../etc/passwd", b"x".to_vec())],
    );
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{msg}");
    assert!(msg.contains("./usr/../../etc/passwd"), "{msg}");
}

#[test]
fn absolute_member_is_refused() {
    let (msg, err) = refused("absolute", &[Raw::File("/etc/passwd", b"x".to_vec())]);
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{msg}");
    assert!(msg.contains("/etc/passwd"), "{msg}");
}

#[test]
fn escaping_symlink_is_refused() {
    let (msg, err) = refused(
        "symlink",
        &[Raw::Symlink("./etc/evil", "../../../etc/shadow")],
    );
    assert!(matches!(err, UnpackError::Tree { .. }), "{msg}");
    assert!(
        msg.contains("/etc/evil") && msg.contains("outside the root"),
        "{msg}"
    );
}

#[test]
fn escaping_hardlink_is_refused() {
    let (msg, err) = refused(
        "hardlink",
        &[Raw::Hardlink("./etc/passwd-copy", "../../etc/passwd")],
    );
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{msg}");
    assert!(msg.contains("./etc/passwd-copy"), "{msg}");
    let (msg, _) = refused(
        "hardlink-abs",
        &[Raw::Hardlink("./etc/shadow-copy", "/etc/shadow")],
    );
    assert!(msg.contains("./etc/shadow-copy"), "{msg}");
    // A hard link to a path that is not a regular file of the tree.
    let (msg, err) = refused(
        "hardlink-missing",
        &[Raw::Hardlink("./etc/x", "./etc/nothing")],
    );
    assert!(matches!(err, UnpackError::Tree { .. }), "{msg}");
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    let (msg, err) = refused("device", &[Raw::Dir("./dev/"), Raw::Char("./dev/mem")]);
    assert!(matches!(err, UnpackError::SpecialFile { .. }), "{msg}");
    assert!(
        msg.contains("./dev/mem") && msg.contains("character device"),
        "{msg}"
    );
    let (msg, _) = refused("fifo", &[Raw::Fifo("./run/pipe")]);
    assert!(msg.contains("./run/pipe") && msg.contains("fifo"), "{msg}");
}

#[test]
fn decompression_bomb_is_refused() {
    // 64 MiB of zeros compresses to a few KiB of xz; the limit is 1 MiB per entry.
    let (msg, err) = refused("bomb", &[Raw::Zeros("./var/bomb", 64 << 20)]);
    assert!(matches!(err, UnpackError::EntryTooLarge { .. }), "{msg}");
    assert!(msg.contains("./var/bomb"), "{msg}");
    // Many entries each under the per-entry limit, over the total of 4 MiB.
    let names: Vec<String> = (0..8).map(|i| format!("./var/part{i}")).collect();
    let entries: Vec<Raw> = names.iter().map(|n| Raw::Zeros(n, 900 << 10)).collect();
    let (msg, err) = refused("bomb-total", &entries);
    assert!(matches!(err, UnpackError::TotalTooLarge { .. }), "{msg}");
}

#[test]
fn two_packages_writing_one_path_differently_is_an_error_naming_both() {
    let env = env();
    let a = make_deb(
        env.dir.path(),
        "pkg-a",
        &[Raw::File("./bin/tool", b"one".to_vec())],
    );
    let b = make_deb(
        env.dir.path(),
        "pkg-b",
        &[Raw::File("./usr/bin/tool", b"two".to_vec())],
    );
    let same = make_deb(
        env.dir.path(),
        "pkg-same",
        &[Raw::File("./usr/bin/tool", b"one".to_vec())],
    );
    let mut tree = Tree::new(2_000_000_000);
    merged_usr(&mut tree).expect("merged");
    add_deb(&mut tree, &a, "pkg-a", &env.store, &limits()).expect("a");
    add_deb(&mut tree, &same, "pkg-same", &env.store, &limits()).expect("same content is fine");
    let msg = add_deb(&mut tree, &b, "pkg-b", &env.store, &limits())
        .expect_err("conflict")
        .to_string();
    assert!(
        msg.contains("pkg-a") && msg.contains("pkg-b") && msg.contains("/usr/bin/tool"),
        "{msg}"
    );
}
