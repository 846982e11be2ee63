//! Real .debs unpacked into a Tree, checked against `dpkg-deb -x` (paths, modes,
//! symlink targets, mtimes, file sha256) and `tar -tv --numeric-owner` of the
//! package's data (uid/gid), with the merged-/usr mapping applied to the oracle.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kiln::digest::{Algorithm, Digest};
use kiln::tree::{Kind, Tree, TreePath};
use kiln::unpack::{add_deb, add_debs, merged_usr, ContentStore, DebInput, Limits};
use kiln_tests::{merged, mirror::fixture_deb, run_bytes};

#[derive(Debug, PartialEq)]
enum Node {
    /// Directory mtimes are not compared: `dpkg-deb -x` leaves some at extraction time.
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        mtime: u64,
        sha: Digest,
    },
    Link {
        target: String,
    },
}

/// Walks a `dpkg-deb -x` output directory into merged-/usr paths.
fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let p = e.path();
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let md = fs::symlink_metadata(&p).expect("lstat");
        let mode = md.permissions().mode() & 0o7777;
        let mtime = md.mtime() as u64;
        let node = if md.file_type().is_symlink() {
            Node::Link {
                target: fs::read_link(&p)
                    .expect("readlink")
                    .to_string_lossy()
                    .into_owned(),
            }
        } else if md.is_dir() {
            walk(root, &p, out);
            Node::Dir { mode }
        } else {
            let sha = Digest::of_reader(Algorithm::Sha256, fs::File::open(&p).expect("open"))
                .expect("hash");
            Node::File { mode, mtime, sha }
        };
        out.insert(merged(&rel), node);
    }
}

fn tree_node(tree: &Tree, path: &TreePath) -> Option<Node> {
    let e = tree.get(path)?;
    let content = match &e.kind {
        Kind::Dir => return Some(Node::Dir { mode: e.mode }),
        Kind::Symlink(t) => return Some(Node::Link { target: t.clone() }),
        Kind::File(c) => c.clone(),
        Kind::Hardlink(t) => match &tree.get(t)?.kind {
            Kind::File(c) => c.clone(),
            _ => return None,
        },
    };
    let sha = Digest::of_reader(Algorithm::Sha256, content.open().expect("open")).expect("hash");
    Some(Node::File {
        mode: e.mode,
        mtime: e.mtime,
        sha,
    })
}

/// uid/gid per merged path from `dpkg-deb --fsys-tarfile | tar -tv --numeric-owner`.
fn owners(deb: &Path) -> BTreeMap<String, (u32, u32)> {
    let tarball = run_bytes(Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb));
    let dir = tempfile::tempdir().expect("tmp");
    let tf = dir.path().join("data.tar");
    fs::write(&tf, tarball).expect("write");
    let listing = run_bytes(
        Command::new("tar")
            .args(["-tvf"])
            .arg(&tf)
            .arg("--numeric-owner"),
    );
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&listing).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (u, g) = cols[1].split_once('/').expect("uid/gid column");
        let name = cols[5].trim_start_matches("./").trim_end_matches('/');
        if name.is_empty() || name == "." {
            continue;
        }
        m.insert(
            merged(name),
            (u.parse().expect("uid"), g.parse().expect("gid")),
        );
    }
    m
}

fn check_against_dpkg(package: &str) {
    let deb = fixture_deb(package).expect("fixture .deb").path;
    let cache = tempfile::tempdir().expect("cache");
    let store = ContentStore::open(cache.path()).expect("store");
    let mut tree = Tree::new(u64::MAX);
    merged_usr(&mut tree).expect("merged usr");
    let control = add_deb(&mut tree, &deb, package, &store, &Limits::default()).expect("add_deb");
    assert_eq!(control.package, package);
    let fields = run_bytes(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .args(["Version", "Architecture"]),
    );
    let fields = String::from_utf8_lossy(&fields);
    assert!(
        fields.contains(&format!("Version: {}", control.version)),
        "{fields}"
    );
    assert!(
        fields.contains(&format!("Architecture: {}", control.architecture)),
        "{fields}"
    );

    let out = tempfile::tempdir().expect("out");
    run_bytes(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(out.path()));
    let mut oracle = BTreeMap::new();
    walk(out.path(), out.path(), &mut oracle);
    assert!(
        oracle.len() > 3,
        "{package}: oracle saw {} entries",
        oracle.len()
    );
    for (path, want) in &oracle {
        let tp = TreePath::from_archive(path).expect("path");
        let got = tree_node(&tree, &tp)
            .unwrap_or_else(|| panic!("{package}: {path} missing from the tree"));
        // The merged-/usr top directories are ours, not the package's.
        let ours = tree.get(&tp).is_some_and(|e| e.origin.as_ref() == "kiln");
        if ours && matches!(got, Node::Dir { .. }) && matches!(want, Node::Dir { .. }) {
            continue;
        }
        assert_eq!(&got, want, "{package}: {path}");
    }
    let ours: Vec<_> = tree
        .iter()
        .map(|(p, _)| p.as_str().to_string())
        .filter(|p| {
            ![
                "",
                "bin",
                "sbin",
                "lib",
                "lib64",
                "usr",
                "usr/bin",
                "usr/sbin",
                "usr/lib",
                "usr/lib64",
            ]
            .contains(&p.as_str())
        })
        .filter(|p| !oracle.contains_key(p))
        .collect();
    assert!(
        ours.is_empty(),
        "{package}: tree has paths dpkg-deb did not extract: {ours:?}"
    );
    for (path, (uid, gid)) in owners(&deb) {
        let tp = TreePath::from_archive(&path).expect("path");
        let e = tree
            .get(&tp)
            .unwrap_or_else(|| panic!("{package}: {path} missing"));
        if e.origin.as_ref() == "kiln" {
            continue;
        }
        assert_eq!((e.uid, e.gid), (uid, gid), "{package}: owner of {path}");
    }
}

#[test]
fn hostname_matches_dpkg_deb() {
    check_against_dpkg("hostname");
}

#[test]
fn coreutils_matches_dpkg_deb() {
    check_against_dpkg("coreutils");
}

#[test]
fn libc6_matches_dpkg_deb() {
    check_against_dpkg("libc6");
}

#[test]
fn busybox_static_matches_dpkg_deb() {
    check_against_dpkg("busybox-static");
}

#[test]
fn passwd_setgid_and_group_owner_match_dpkg_deb() {
    check_against_dpkg("passwd");
}

#[test]
fn warm_build_reads_the_index_and_matches_the_cold_one() {
    let names = ["hostname", "libc6", "coreutils", "busybox-static"];
    let inputs: Vec<DebInput> = names
        .iter()
        .map(|n| DebInput {
            path: fixture_deb(n).expect("fixture .deb").path,
            origin: n.to_string(),
            sha256: None,
        })
        .collect();
    let cache = tempfile::tempdir().expect("cache");
    let store = ContentStore::open(cache.path()).expect("store");
    let build = || {
        let mut t = Tree::new(1_700_000_000);
        merged_usr(&mut t).expect("merged");
        let controls = add_debs(&mut t, &inputs, &store, &Limits::default()).expect("add_debs");
        (t, controls)
    };
    let (cold, cold_controls) = build();
    let indexes = fs::read_dir(cache.path().join("unpacked"))
        .expect("index dir")
        .count();
    assert_eq!(indexes, names.len());
    let (warm, warm_controls) = build();
    assert_eq!(cold_controls, warm_controls);
    let order: Vec<_> = cold_controls.iter().map(|c| c.package.as_str()).collect();
    assert_eq!(order, names);
    let a: Vec<_> = cold
        .iter()
        .map(|(p, e)| {
            (
                p.clone(),
                format!("{:?} {} {} {} {}", e.kind, e.mode, e.uid, e.gid, e.mtime),
            )
        })
        .collect();
    let b: Vec<_> = warm
        .iter()
        .map(|(p, e)| {
            (
                p.clone(),
                format!("{:?} {} {} {} {}", e.kind, e.mode, e.uid, e.gid, e.mtime),
            )
        })
        .collect();
    assert_eq!(a, b);
    // Large contents are in the store, not in memory.
    let on_disk = cold
        .iter()
        .filter(|(_, e)| matches!(&e.kind, Kind::File(kiln::tree::Content::OnDisk { .. })))
        .count();
    assert!(on_disk > 0);
    assert!(cold
        .get(&TreePath::from_archive("usr/bin/busybox").expect("p"))
        .is_some());
}
