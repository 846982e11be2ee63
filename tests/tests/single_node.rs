//! The single-node images: images/single-node.toml (Kubernetes and friends built from their
//! pinned Go modules) and images/single-node-upstream.toml (the release binaries, pinned by
//! published checksums, which this machine cannot download).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tests::mirror::{Behaviour, Mirror};
use kiln_tests::{kiln, text, workspace_root};

fn cache_root() -> PathBuf {
    kiln_tests::kiln_cache()
}

/// How each binary reports its version.
fn version_args(binary: &str) -> &'static [&'static str] {
    match binary {
        "kubectl" => &["version", "--client"],
        "etcdctl" => &["version"],
        "containerd-shim-runc-v2" => &["-v"],
        "coredns" => &["-version"],
        "bridge" | "host-local" | "loopback" | "portmap" => &[],
        _ => &["--version"],
    }
}

fn build_json(out: &Path) -> serde_json::Value {
    let o = kiln(
        &[
            "build",
            "images/single-node.toml",
            "--format",
            "tar",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every Go binary of single-node is in the image, is the pinned one, and reports its pinned
/// version; a rebuild takes every one from the cache without compiling or downloading.
#[test]
fn single_node_binaries_are_pinned_cached_and_report_their_versions() {
    let o = kiln(&["lock", "--check", "images/single-node.toml"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let def = kiln::definition::load(&workspace_root().join("images/single-node.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    build_json(&dir.path().join("first"));
    let s = build_json(&dir.path().join("second"));
    let go = s["go"].as_array().unwrap();
    assert_eq!(go.len(), def.go.len(), "{s}");
    for g in go {
        assert_eq!(g["cache-hit"], true, "{g}");
        // Only queries of the toolchain (`go version`, and `go env CC` for cgo inputs):
        // no `go build`, no `go mod download`.
        for c in g["commands"].as_array().unwrap() {
            let c = c.as_str().unwrap();
            assert!(c == "go version" || c.starts_with("go env "), "{g}");
        }
    }
    assert!(
        s["seconds"]["go"].as_f64().unwrap() <= 5.0,
        "warm go inputs took {}",
        s["seconds"]["go"]
    );

    // Unpack the image's tar and run each binary from it.
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(dir.path().join("second/single-node.tar"))
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let mut seen = 0;
    for input in &def.go {
        let bare = input.version.trim_start_matches('v');
        for p in &input.packages {
            let name = p.binary();
            let path = root.join(input.dest().trim_start_matches('/')).join(name);
            let o = Command::new(&path)
                .args(version_args(name))
                .env_remove("CNI_COMMAND")
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let out = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(out.contains(bare), "{name} does not report {bare}: {out}");
            if name == "kube-apiserver" {
                assert!(out.contains("Kubernetes v1.35.4"), "{out}");
            }
            // Binaries that print their commit carry the one pinned in the definition.
            if matches!(name, "runc" | "etcd") {
                let commit = input.commit.as_ref().expect("a pinned commit");
                assert!(
                    out.contains(commit.as_str()),
                    "{name} lacks {commit}: {out}"
                );
            }
            eprintln!("{name:<24} {}", out.lines().next().unwrap_or(""));
            seen += 1;
        }
    }
    assert!(seen >= 18, "only {seen} binaries");

    // kubectl's own account of its build: the pinned v1.35.4 commit, a clean tree.
    let o = Command::new(root.join("usr/bin/kubectl"))
        .args(["version", "--client", "-o", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let client = &v["clientVersion"];
    eprintln!("kubectl version --client: {client}");
    assert_eq!(
        client["gitCommit"], "7b8c6cf0edd376b3d7c2f255142977c7f93db258",
        "{v}"
    );
    assert_eq!(client["gitVersion"], "v1.35.4", "{v}");
    assert_eq!(client["gitTreeState"], "clean", "{v}");
}

/// The upstream variant's pins are in its definition, so it locks and checks offline.
#[test]
fn upstream_variant_checks_offline_and_names_the_first_missing_blob() {
    let o = kiln(
        &["lock", "--check", "images/single-node-upstream.toml"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let empty = tempfile::tempdir().unwrap();
    let out = empty.path().join("out");
    let o = kiln(
        &[
            "build",
            "images/single-node-upstream.toml",
            "--offline",
            "--format",
            "tar",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("KILN_CACHE", empty.path())],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    // In lock order the Debian packages come first; the first of them is named.
    let lock: toml::Value = toml::from_str(
        &std::fs::read_to_string(workspace_root().join("images/single-node-upstream.lock"))
            .unwrap(),
    )
    .unwrap();
    let first = lock["debian"]["deb"][0]["name"].as_str().unwrap();
    assert!(
        err.contains("first missing blob") && err.contains(&format!("blob {first} ")),
        "{err}"
    );
    assert!(!out.exists());
}

/// Through `--mirror` to a server on 127.0.0.1: a release file with the wrong content is
/// rejected naming both digests; a file whose digest matches its pin is accepted.
#[test]
fn upstream_artifacts_through_a_mirror_are_verified() {
    let probe = b"kiln single-node-upstream mirror probe\n".to_vec();
    let probe_sha = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&probe))
    };
    let dir = tempfile::tempdir().unwrap();
    kiln_tests::copy_definitions(dir.path());
    let def = dir.path().join("mirror-probe.toml");
    std::fs::write(
        &def,
        format!(
            "extends = \"single-node-upstream.toml\"\n\n[[artifact]]\nname = \"probe\"\n\
             url = \"https://dl.k8s.io/kiln-test/probe\"\nchecksum = \"sha256:{probe_sha}\"\n\
             dest = \"/usr/share/kiln/probe\"\nmode = 0o644\n"
        ),
    )
    .unwrap();
    let o = kiln(&["lock", def.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    // Every release file of the variant answers with wrong bytes, slowly: the fetcher starts
    // no new download after a failure, so a fast failure could leave the probe unattempted
    // on a loaded machine. With every failure seconds away, all of them and the probe are
    // in flight before the first one fails.
    let upstream: toml::Value = toml::from_str(
        &std::fs::read_to_string(workspace_root().join("images/single-node-upstream.toml"))
            .unwrap(),
    )
    .unwrap();
    let mut routes: Vec<(String, Behaviour)> = upstream["artifact"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let url = a["url"].as_str().unwrap();
            let path = url
                .strip_prefix("https://dl.k8s.io")
                .map(|p| format!("/k8s{p}"))
                .or_else(|| {
                    url.strip_prefix("https://github.com")
                        .map(|p| format!("/gh{p}"))
                })
                .unwrap_or_else(|| panic!("{url} is not rewritten by this test"));
            let wrong = format!("not {}", a["name"].as_str().unwrap()).into_bytes();
            let slow = Behaviour::Slow {
                bytes: wrong,
                delay: std::time::Duration::from_secs(5),
            };
            (path, slow)
        })
        .collect();
    assert!(routes
        .iter()
        .any(|(p, _)| p == "/k8s/release/v1.35.4/bin/linux/amd64/kubelet"));
    routes.push((
        "/k8s/kiln-test/probe".into(),
        Behaviour::Serve(probe.clone()),
    ));
    let mirror = Mirror::start(routes).unwrap();
    let probe_blob = cache_root().join("blobs/sha256").join(&probe_sha);
    let _ = std::fs::remove_file(&probe_blob);
    let out = dir.path().join("out");
    let rewrite_k8s = format!("https://dl.k8s.io={}/k8s", mirror.url());
    let rewrite_gh = format!("https://github.com={}/gh", mirror.url());
    let run = || {
        kiln(
            &[
                "build",
                def.to_str().unwrap(),
                "--format",
                "tar",
                "--jobs",
                "16",
                "--mirror",
                &rewrite_k8s,
                "--mirror",
                &rewrite_gh,
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    // The first run may spend its workers on Debian packages not cached yet; the second
    // has only the artifacts left, all fetched at once.
    let mut o = run();
    if !probe_blob.is_file() {
        o = run();
    }
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("checksum mismatch")
            && err.contains("kubelet")
            && err.contains(
                "sha256:983a6ba5a49823dcdd745c674e5e2416377dd27d6ad1b42d2befa0fb961a19f6"
            )
            && err.contains(&format!("{}/k8s/release/v1.35.4", mirror.url())),
        "{err}"
    );
    // The served digest is named too, and nothing of the wrong file entered the cache.
    let got = err
        .split("got ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .trim_end_matches(|c: char| !c.is_ascii_hexdigit());
    assert!(got.starts_with("sha256:") && got.len() == 71, "{err}");
    assert!(!cache_root()
        .join("blobs/sha256")
        .join(&got["sha256:".len()..])
        .exists());
    assert!(probe_blob.is_file(), "the matching file was not accepted");
    assert!(!out.exists());
}
