//! `write_tar` read back by GNU tar (the oracle), byte-identical on a second
//! write; release tarballs made by GNU tar extracted through an extraction map.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use kiln::digest::{Algorithm, Digest};
use kiln::outputs::tar::write_tar;
use kiln::tree::{Kind, Tree, TreePath};
use kiln::unpack::{add_deb, add_tar_archive, merged_usr, ContentStore, Limits};
use kiln_tests::{mirror::fixture_deb, run_bytes};

fn mode_string(kind: char, mode: u32) -> String {
    let mut s = String::new();
    s.push(kind);
    for (i, c) in ['r', 'w', 'x', 'r', 'w', 'x', 'r', 'w', 'x']
        .iter()
        .enumerate()
    {
        let bit = 1 << (8 - i);
        let mut ch = if mode & bit != 0 { *c } else { '-' };
        let special = match i {
            2 => mode & 0o4000 != 0,
            5 => mode & 0o2000 != 0,
            8 => mode & 0o1000 != 0,
            _ => false,
        };
        if special {
            let up = if i == 8 { 't' } else { 's' };
            ch = if ch == 'x' {
                up
            } else {
                up.to_ascii_uppercase()
            };
        }
        s.push(ch);
    }
    s
}

#[test]
fn written_tar_is_read_back_by_gnu_tar_and_is_deterministic() {
    let cache = tempfile::tempdir().expect("cache");
    let store = ContentStore::open(cache.path()).expect("store");
    let mut tree = Tree::new(1_700_000_000);
    merged_usr(&mut tree).expect("merged");
    for p in ["hostname", "passwd", "busybox-static", "coreutils"] {
        add_deb(
            &mut tree,
            &fixture_deb(p).expect("fixture .deb").path,
            p,
            &store,
            &Limits::default(),
        )
        .expect("add");
    }
    // A long name and a long symlink target need GNU long-name records.
    let long = format!("usr/share/kiln/{}", "x".repeat(140));
    tree.insert(
        &TreePath::from_archive(&long).expect("long"),
        kiln::tree::Entry::symlink(&format!("/usr/{}", "y/".repeat(70)), "test"),
    )
    .expect("long link");
    let dir = tempfile::tempdir().expect("out");
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    write_tar(&tree, fs::File::create(&a).expect("a")).expect("write a");
    write_tar(&tree, fs::File::create(&b).expect("b")).expect("write b");
    assert_eq!(
        fs::read(&a).expect("a"),
        fs::read(&b).expect("b"),
        "two writes differ"
    );

    let listing = run_bytes(
        Command::new("tar")
            .arg("--numeric-owner")
            .arg("--full-time")
            .arg("-tvf")
            .arg(&a),
    );
    let listing = String::from_utf8(listing).expect("utf8 listing");
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), tree.len(), "one tar entry per tree entry");
    for ((path, entry), line) in tree.iter().zip(&lines) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let name = if path.is_root() {
            "./".to_string()
        } else if matches!(entry.kind, Kind::Dir) {
            format!("./{}/", path.as_str())
        } else {
            format!("./{}", path.as_str())
        };
        assert_eq!(cols[5], name, "{line}");
        let kind = match &entry.kind {
            Kind::Dir => 'd',
            Kind::Symlink(_) => 'l',
            Kind::File(_) => '-',
            Kind::Hardlink(_) => 'h',
        };
        // GNU tar shows hard links as `h` and the first of a group as a file.
        if kind != 'h' && !(kind == '-' && cols[0].starts_with('h')) {
            assert_eq!(cols[0], mode_string(kind, entry.mode), "{line}");
        }
        assert_eq!(cols[1], format!("{}/{}", entry.uid, entry.gid), "{line}");
        if let Kind::Symlink(t) = &entry.kind {
            assert_eq!(cols[7], t, "{line}");
        }
    }
    // Extracting with GNU tar gives the tree's contents.
    let x = dir.path().join("x");
    fs::create_dir(&x).expect("x");
    run_bytes(Command::new("tar").arg("-xf").arg(&a).arg("-C").arg(&x));
    let mut files = 0;
    for (path, entry) in tree.iter() {
        if let Kind::File(c) = &entry.kind {
            let on_disk = x.join(path.as_str());
            let got = Digest::of_reader(Algorithm::Sha256, fs::File::open(&on_disk).expect("open"))
                .expect("hash");
            let want = Digest::of_reader(Algorithm::Sha256, c.open().expect("open")).expect("hash");
            assert_eq!(got, want, "{path}");
            assert_eq!(
                fs::metadata(&on_disk).expect("md").permissions().mode() & 0o7777,
                entry.mode,
                "{path}"
            );
            files += 1;
        }
    }
    assert!(files > 100, "{files}");
    assert_eq!(
        fs::read_link(x.join("bin"))
            .expect("bin link")
            .to_string_lossy(),
        "usr/bin"
    );
}

#[test]
fn release_tarball_goes_through_its_extraction_map() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("k/server/bin")).expect("mkdir");
    fs::create_dir_all(src.join("k/docs")).expect("mkdir");
    fs::write(src.join("k/server/bin/kubelet"), vec![5u8; 200_000]).expect("w");
    fs::write(src.join("k/server/bin/kubectl"), b"ctl").expect("w");
    fs::write(src.join("k/docs/README"), b"readme").expect("w");
    fs::set_permissions(
        src.join("k/server/bin/kubelet"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    for (ext, flag) in [("tar.gz", "-z"), ("tar.xz", "-J"), ("tar", "-H")] {
        let archive = dir.path().join(format!("k.{ext}"));
        let mut cmd = Command::new("tar");
        cmd.arg("-C")
            .arg(&src)
            .arg("--owner=1000")
            .arg("--group=1000");
        if flag == "-H" {
            cmd.args(["-H", "gnu"]);
        } else {
            cmd.arg(flag);
        }
        run_bytes(cmd.arg("-cf").arg(&archive).arg("k"));
        let cache = tempfile::tempdir().expect("cache");
        let store = ContentStore::open(cache.path()).expect("store");
        let mut map = BTreeMap::new();
        map.insert("k/server/bin".to_string(), "/usr/bin".to_string());
        map.insert(
            "k/server/bin/kubectl".to_string(),
            "/opt/kubectl".to_string(),
        );
        for _ in 0..2 {
            // Second round: served from the index.
            let mut tree = Tree::new(2_000_000_000);
            merged_usr(&mut tree).expect("merged");
            add_tar_archive(
                &mut tree,
                &archive,
                "kubernetes",
                &map,
                &store,
                &Limits::default(),
            )
            .expect("extract");
            let kubelet = tree
                .get(&TreePath::from_archive("usr/bin/kubelet").expect("p"))
                .expect("kubelet");
            assert_eq!(kubelet.mode, 0o755);
            assert_eq!((kubelet.uid, kubelet.gid), (0, 0));
            let Kind::File(c) = &kubelet.kind else {
                panic!("kubelet is not a file")
            };
            assert_eq!(c.read_all().expect("read"), vec![5u8; 200_000]);
            assert!(tree
                .get(&TreePath::from_archive("opt/kubectl").expect("p"))
                .is_some());
            assert!(tree
                .get(&TreePath::from_archive("usr/bin/kubectl").expect("p"))
                .is_none());
            assert!(
                !tree.iter().any(|(p, _)| p.as_str().contains("README")),
                "{ext}: unmapped file extracted"
            );
        }
        let mut all = Tree::new(2_000_000_000);
        let store = ContentStore::open(cache.path()).expect("store");
        add_tar_archive(
            &mut all,
            &archive,
            "k",
            &BTreeMap::new(),
            &store,
            &Limits::default(),
        )
        .expect("all");
        assert!(all
            .get(&TreePath::from_archive("k/docs/README").expect("p"))
            .is_some());
    }
    // Not an archive at all.
    let junk = dir.path().join("junk.tgz");
    fs::write(&junk, b"PK\x03\x04 not a tarball").expect("w");
    let store = ContentStore::open(&dir.path().join("c2")).expect("store");
    let err = add_tar_archive(
        &mut Tree::new(0),
        &junk,
        "junk",
        &BTreeMap::new(),
        &store,
        &Limits::default(),
    )
    .expect_err("junk");
    assert!(err.to_string().contains("junk.tgz"), "{err}");
}
