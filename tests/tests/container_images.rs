//! Baked container images from real inputs: Debian's busybox-static .deb (its applet
//! links found by running the extracted binary) and a Go binary built by the host
//! toolchain, written as OCI archives and checked with skopeo, tar, gzip and sha256sum;
//! the extracted layer's programs run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::container_image::bake;
use kiln::definition::container_image::ContainerImage;
use kiln::gobuild::GoBuilt;
use kiln::tree::{Tree, TreePath};
use kiln::unpack::{self, ContentStore, DebInput, Limits};
use kiln_tests::mirror::fixture_deb;
use kiln_tests::run;

const EPOCH: u64 = 1_767_225_600;

/// A static Go program built with the host toolchain (standard library only, no network),
/// with its own GOCACHE.
fn go_hello(dir: &Path) -> PathBuf {
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from go\") }\n",
    )
    .unwrap();
    std::fs::write(dir.join("go.mod"), "module example.com/hello\n\ngo 1.21\n").unwrap();
    let go = ["/usr/local/go/bin/go", "go"]
        .into_iter()
        .find(|g| Command::new(g).arg("version").output().is_ok())
        .expect("a Go toolchain");
    run(Command::new(go)
        .args(["build", "-trimpath", "-o", "hello", "."])
        .current_dir(dir)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath")));
    dir.join("hello")
}

fn go_built(binary: &Path) -> GoBuilt {
    let input: kiln::gobuild::GoInput = toml::from_str(
        "name = \"hello\"\nmodule = \"example.com/hello\"\nversion = \"v1.0.0\"\npackages = [\"example.com/hello\"]\n",
    )
    .unwrap();
    let bytes = std::fs::read(binary).unwrap();
    GoBuilt {
        input,
        output: kiln::gobuild::GoBuildOutput {
            key: "test".into(),
            dir: binary.parent().unwrap().to_path_buf(),
            binaries: vec![kiln::gobuild::GoBinary {
                name: "hello".into(),
                package: "example.com/hello".into(),
                path: binary.to_path_buf(),
                sha256: kiln::digest::Digest::of_bytes(kiln::digest::Algorithm::Sha256, &bytes),
                size: bytes.len() as u64,
            }],
            go_version: "host".into(),
            commit: None,
            toolchain: Vec::new(),
            go_sum: Vec::new(),
            report: kiln::gobuild::GoBuildReport {
                cache_hit: false,
                commands: Vec::new(),
                elapsed: std::time::Duration::ZERO,
                go_build: std::time::Duration::ZERO,
            },
        },
    }
}

const IMAGES: &str = r#"
[[container-image]]
name = "kiln.local/busybox:test"
cmd = ["sh"]
env = ["PATH=/bin"]
files = [{ from = "deb:busybox-static", path = "/bin/busybox", to = "/bin/busybox" }]
busybox-applets = "/bin/busybox"
symlinks = [{ path = "/bin/hello-link", target = "busybox" }]

[[container-image]]
name = "registry.example.org/tools/hello:v1"
entrypoint = ["/hello"]
workdir = "/"
files = [
  { from = "go:hello/hello", to = "/hello" },
  { from = "self:kiln-pause", to = "/pause", mode = 0o700 },
]
"#;

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Images {
    container_image: Vec<ContainerImage>,
}

fn bake_all(
    root: &Tree,
    go: &[GoBuilt],
    self_bins: &BTreeMap<String, PathBuf>,
    scratch: &Path,
) -> Vec<kiln::container_image::BakedImage> {
    let images: Images = toml::from_str(IMAGES).unwrap();
    let mut root = root.clone();
    let baked = bake(
        &images.container_image,
        EPOCH,
        &mut root,
        go,
        self_bins,
        scratch,
    )
    .unwrap();
    for b in &baked {
        let e = root.get(&b.at).expect("archive placed in the root tree");
        assert_eq!(&*e.origin, b.written.reference.as_str());
    }
    baked
}

fn sha256sum(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn baked_images_are_reproducible_and_valid() {
    let deb = fixture_deb("busybox-static").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(&tmp.path().join("cache")).unwrap();
    let mut root = Tree::new(EPOCH);
    unpack::merged_usr(&mut root).unwrap();
    unpack::add_debs(
        &mut root,
        &[DebInput {
            path: deb.path.clone(),
            origin: "busybox-static".into(),
            sha256: Some(deb.digest.clone()),
        }],
        &store,
        &Limits::default(),
    )
    .unwrap();
    let godir = tmp.path().join("go");
    std::fs::create_dir(&godir).unwrap();
    let hello = go_hello(&godir);
    let go = vec![go_built(&hello)];
    let self_bins = BTreeMap::from([("kiln-pause".to_string(), hello.clone())]);

    let s1 = tmp.path().join("s1");
    let s2 = tmp.path().join("s2");
    std::fs::create_dir(&s1).unwrap();
    std::fs::create_dir(&s2).unwrap();
    let a = bake_all(&root, &go, &self_bins, &s1);
    let b = bake_all(&root, &go, &self_bins, &s2);
    assert_eq!(a.len(), 2);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            std::fs::read(&x.archive).unwrap(),
            std::fs::read(&y.archive).unwrap(),
            "{} differs between two builds",
            x.written.reference
        );
    }

    for img in &a {
        let w = &img.written;
        let file = &img.archive;
        // skopeo as the reader of the format.
        let ins: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", file.display()))))
        .unwrap();
        assert_eq!(ins["layers"][0]["digest"], w.layer.to_string());
        let ins: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", file.display()))))
        .unwrap();
        assert_eq!(ins["Digest"], w.manifest.to_string(), "{ins}");
        assert_eq!(ins["Layers"], serde_json::json!([w.layer.to_string()]));
        assert_eq!(ins["Architecture"], "amd64");
        assert_eq!(ins["Os"], "linux");
        let date = run(Command::new("date").args([
            "-u",
            "-d",
            &format!("@{EPOCH}"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ]));
        assert_eq!(ins["Created"], date.trim());
        let cfg: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", file.display()))))
        .unwrap();

        // tar + sha256sum: every blob is named by its digest; sizes match the manifest.
        let x = tmp.path().join(format!("x-{}", w.reference.file_stem()));
        std::fs::create_dir(&x).unwrap();
        let listing = run(Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(file));
        for line in listing.lines() {
            assert!(line.contains(" 0/0 "), "owner not 0/0: {line}");
        }
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "archive entries not sorted");
        run(Command::new("tar").arg("-xf").arg(file).arg("-C").arg(&x));
        for e in std::fs::read_dir(x.join("blobs/sha256")).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(
                sha256sum(&p),
                p.file_name().unwrap().to_str().unwrap(),
                "blob {} is not its digest",
                p.display()
            );
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(x.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            w.reference.as_str()
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            w.reference.tag()
        );
        let blob = |d: &serde_json::Value| x.join("blobs/sha256").join(&d.as_str().unwrap()[7..]);
        assert_eq!(
            std::fs::metadata(blob(&m["digest"])).unwrap().len(),
            m["size"].as_u64().unwrap()
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob(&m["digest"])).unwrap()).unwrap();
        for d in [&manifest["config"], &manifest["layers"][0]] {
            assert_eq!(
                std::fs::metadata(blob(&d["digest"])).unwrap().len(),
                d["size"].as_u64().unwrap()
            );
        }
        let layer = blob(&manifest["layers"][0]["digest"]);
        // gzip: header mtime 0; the uncompressed tar's sha256 is the config's diff_id.
        let gz = std::fs::read(&layer).unwrap();
        assert_eq!(&gz[..2], b"\x1f\x8b");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip header mtime is not 0");
        let plain = tmp
            .path()
            .join(format!("{}.layer.tar", w.reference.file_stem()));
        let out = Command::new("gzip")
            .args(["-dc"])
            .arg(&layer)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(&plain, &out.stdout).unwrap();
        assert_eq!(
            format!("sha256:{}", sha256sum(&plain)),
            cfg["rootfs"]["diff_ids"][0].as_str().unwrap()
        );
        let layer_list = run(Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvf"])
            .arg(&plain));
        for line in layer_list.lines() {
            assert!(line.contains(" 0/0 "), "{line}");
            assert!(
                line.contains(date.trim().trim_end_matches('Z').replace('T', " ").as_str()),
                "mtime not the epoch: {line}"
            );
        }
        let root = tmp
            .path()
            .join(format!("{}.rootfs", w.reference.file_stem()));
        std::fs::create_dir(&root).unwrap();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&plain)
            .arg("-C")
            .arg(&root));

        if w.reference.as_str().starts_with("kiln.local/busybox") {
            assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["sh"]));
            assert_eq!(cfg["config"]["Env"], serde_json::json!(["PATH=/bin"]));
            // The applet links point at busybox and work.
            for applet in ["sh", "httpd", "wget", "nslookup", "ls"] {
                let l = root.join("bin").join(applet);
                assert_eq!(
                    std::fs::read_link(&l).unwrap_or_else(|e| panic!("{applet}: {e}")),
                    Path::new("busybox")
                );
            }
            assert_eq!(
                std::fs::read_link(root.join("bin/hello-link")).unwrap(),
                Path::new("busybox")
            );
            let said = run(Command::new(root.join("bin/sh")).args(["-c", "echo applets work"]));
            assert_eq!(said.trim(), "applets work");
            // The applet list is the binary's own.
            let list = run(Command::new(root.join("bin/busybox")).arg("--list"));
            let links = std::fs::read_dir(root.join("bin")).unwrap().count();
            assert_eq!(links, list.lines().filter(|l| *l != "busybox").count() + 2);
        } else {
            assert_eq!(cfg["config"]["Entrypoint"], serde_json::json!(["/hello"]));
            assert_eq!(cfg["config"]["WorkingDir"], "/");
            assert_eq!(
                run(&mut Command::new(root.join("hello"))).trim(),
                "hello from go"
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(root.join("pause"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o700);
        }
    }
}

#[test]
fn a_deb_file_must_come_from_the_named_package() {
    let deb = fixture_deb("busybox-static").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = ContentStore::open(&tmp.path().join("cache")).unwrap();
    let mut root = Tree::new(EPOCH);
    unpack::merged_usr(&mut root).unwrap();
    unpack::add_debs(
        &mut root,
        &[DebInput {
            path: deb.path.clone(),
            origin: "busybox-static".into(),
            sha256: None,
        }],
        &store,
        &Limits::default(),
    )
    .unwrap();
    assert!(root
        .get(&TreePath::from_definition("/usr/bin/busybox").unwrap())
        .is_some());
    let images: Images = toml::from_str(
        "[[container-image]]\nname = \"kiln.local/b:1\"\nfiles = [{ from = \"deb:coreutils\", path = \"/bin/busybox\", to = \"/b\" }]\n",
    )
    .unwrap();
    let err = bake(
        &images.container_image,
        EPOCH,
        &mut root,
        &[],
        &BTreeMap::new(),
        tmp.path(),
    )
    .expect_err("wrong package");
    let msg = err.to_string();
    assert!(
        msg.contains("comes from busybox-static, not coreutils"),
        "{msg}"
    );
}
