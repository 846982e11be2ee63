//! The upstream commit of a `[[go]]` input, with no network: a file-based Go module proxy
//! (`GOPROXY=file://…`) that this test writes, holding one tiny command module whose `.info`
//! carries an Origin commit or none. `kiln lock` takes the commit from the definition's
//! `commit` or the proxy's Origin, fails when they disagree or when neither is known, and
//! records it in the lock; `kiln build` stamps the binary with the lock's commit and never
//! asks the proxy for one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_tests::{goproxy, kiln, snapshot, tar_member, text};

const MODULE: &str = "example.com/kiln/stamped";
const VERSION: &str = "v1.0.0";
const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";
const C3: &str = "3333333333333333333333333333333333333333";

const MAIN_GO: &str = r#"package main

import "os"

var commit = "unset"

func main() { os.Stdout.WriteString("commit=" + commit + "\n") }
"#;

/// Writes the module into a file proxy at `proxy`; `origin` is the commit its `.info`
/// reports (none: the `.info` has Version and Time only, as the proxy gives for some tags).
fn write_proxy(proxy: &Path, origin: Option<&str>) {
    goproxy::write_module(proxy, MODULE, VERSION, origin, MAIN_GO);
}

/// A definition building the module, its binary stamped through `{commit}`.
fn definition(dir: &Path, commit: Option<&str>) -> PathBuf {
    let commit = commit.map_or(String::new(), |c| format!("commit = \"{c}\"\n"));
    let text = format!(
        r#"[image]
name = "stamped"
version = "1"
epoch = 1767225600
outputs = ["tar"]

[[go]]
name = "stamped"
module = "{MODULE}"
version = "{VERSION}"
packages = ["{MODULE}"]
ldflags = ["-X=main.commit={{commit}}"]
no-sumdb = ["{MODULE}"]
{commit}"#
    );
    let path = dir.join("stamped.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Everything one `kiln` run sees: its own Kiln cache (so its own Go module cache), Go's
/// build cache shared by the runs (it holds compiled packages only), the file proxy put in
/// place of the toolchain's proxy by `--mirror`, and the test module kept from the checksum
/// database (`no-sumdb`: it is in none).
struct World {
    dir: tempfile::TempDir,
    /// The Kiln caches, apart from `dir` so that a run that must change nothing can be
    /// checked by a snapshot of `dir`.
    caches: tempfile::TempDir,
    proxy: PathBuf,
    go_cache: PathBuf,
}

impl World {
    fn new(origin: Option<&str>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let proxy = dir.path().join("proxy");
        write_proxy(&proxy, origin);
        // One Go build cache for the whole test: it only holds compiled packages.
        let go_cache = std::env::temp_dir().join("kiln-go-commit-test-gocache");
        std::fs::create_dir_all(&go_cache).unwrap();
        World {
            dir,
            caches: tempfile::tempdir().unwrap(),
            proxy,
            go_cache,
        }
    }

    /// Runs kiln with a fresh Kiln cache named `fresh` (its module cache empty).
    fn kiln(&self, args: &[&str], fresh: &str) -> Output {
        self.kiln_env(args, fresh, &[])
    }

    /// Like [`World::kiln`], with more environment for kiln.
    fn kiln_env(&self, args: &[&str], fresh: &str, env: &[(&str, &Path)]) -> Output {
        let cache = self.caches.path().join(fresh);
        std::fs::create_dir_all(&cache).unwrap();
        let build_cache = cache.join(kiln::gobuild::BUILD_CACHE_DIR);
        if !build_cache.exists() {
            std::os::unix::fs::symlink(&self.go_cache, &build_cache).unwrap();
        }
        let mirror = format!(
            "{}=file://{}",
            goproxy::toolchain_proxy(),
            self.proxy.display()
        );
        let mut args: Vec<&str> = args.to_vec();
        if !args.contains(&"--offline") {
            args.extend(["--mirror", mirror.as_str()]);
        }
        let mut all: Vec<(&str, &Path)> = vec![("KILN_CACHE", &cache)];
        all.extend(env);
        kiln(&args, &all)
    }

    /// The definition with `commit`, locked with the Kiln cache "a" (which must succeed);
    /// its path and its lock's.
    fn locked(&self, commit: Option<&str>) -> (String, PathBuf) {
        let (def, lock) = self.def(commit);
        let o = self.kiln(&["lock", &def], "a");
        assert!(o.status.success(), "{}", text(&o));
        (def, lock)
    }

    fn def(&self, commit: Option<&str>) -> (String, PathBuf) {
        let d = definition(self.dir.path(), commit);
        let lock = d.with_extension("lock");
        (d.to_str().unwrap().to_string(), lock)
    }
}

/// The go input's commit as the lock records it.
fn locked_commit(lock: &Path) -> Option<String> {
    let text = std::fs::read_to_string(lock).unwrap();
    let l: toml::Value = toml::from_str(&text).unwrap();
    l["go"][0]
        .get("commit")
        .and_then(|c| c.as_str())
        .map(str::to_string)
}

/// Builds with fresh caches (so the binary is compiled from the lock, not reused), runs the
/// binary from the image and returns its output and the `go` commands the build ran.
fn build_and_run(w: &World, def: &str, fresh: &str) -> (String, Vec<String>) {
    let out = w.dir.path().join(fresh).join("out");
    let o = w.kiln(
        &["build", def, "--json", "--out", out.to_str().unwrap()],
        fresh,
    );
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &summary["go"][0];
    assert_eq!(g["cache-hit"], false, "{summary}");
    let commands: Vec<String> = g["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let bin = w.dir.path().join(fresh).join("stamped-bin");
    std::fs::write(
        &bin,
        tar_member(&out.join("stamped.tar"), "usr/bin/stamped"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = std::process::Command::new(&bin).output().unwrap();
    assert!(run.status.success(), "{}", text(&run));
    (
        String::from_utf8_lossy(&run.stdout).trim().to_string(),
        commands,
    )
}

/// Only `kiln lock` asks the proxy for the commit: the build downloads the module without
/// `-json` (which is what reports the Origin).
fn assert_never_asked(commands: &[String]) {
    assert!(
        commands
            .iter()
            .any(|c| c == &format!("go mod download {MODULE}@{VERSION}")),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.contains("download -json")),
        "the build asked the proxy: {commands:?}"
    );
}

#[test]
fn no_origin_and_no_commit_fails_naming_the_key() {
    let w = World::new(None);
    let (def, lock) = w.def(None);
    let o = w.kiln(&["lock", &def], "a");
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in ["go input stamped", "`commit = ", "no Origin", "{commit}"] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert!(!lock.exists(), "a failed lock wrote {}", lock.display());
}

#[test]
fn commit_in_the_definition_is_locked_and_stamped() {
    let w = World::new(None);
    let (def, lock) = w.locked(Some(C1));
    assert_eq!(locked_commit(&lock).as_deref(), Some(C1));
    let (said, commands) = build_and_run(&w, &def, "b");
    assert_eq!(said, format!("commit={C1}"));
    assert_never_asked(&commands);
}

#[test]
fn origin_is_locked_and_the_build_never_asks_again() {
    let w = World::new(Some(C2));
    let (def, lock) = w.locked(None);
    assert_eq!(locked_commit(&lock).as_deref(), Some(C2));
    // The proxy now reports another commit; a build from empty caches still stamps the
    // locked one, because it takes the commit from the lock alone.
    write_proxy(&w.proxy, Some(C3));
    let (said, commands) = build_and_run(&w, &def, "b");
    assert_eq!(said, format!("commit={C2}"));
    assert_never_asked(&commands);
}

#[test]
fn origin_that_disagrees_with_the_definition_fails_naming_both() {
    let w = World::new(Some(C2));
    let (def, lock) = w.def(Some(C1));
    let o = w.kiln(&["lock", &def], "a");
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in ["go input stamped", C1, C2, "Origin"] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert!(!lock.exists());
}

#[test]
fn a_commit_that_is_not_40_hex_digits_is_located_and_changes_nothing() {
    let w = World::new(Some(C2));
    for bad in ["2222222", "22222222222222222222222222222222222222ZZ"] {
        let (def, lock) = w.def(Some(bad));
        let before = snapshot(w.dir.path());
        let o = w.kiln(&["lock", &def], "a");
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        // `commit = ...` is line 14 of the definition, its value starts at column 10.
        assert!(err.contains("stamped.toml:14:10"), "{err}");
        assert!(err.contains("40 lowercase hex digits"), "{err}");
        assert!(!lock.exists());
        assert_eq!(
            snapshot(w.dir.path()),
            before,
            "a refused definition changed files"
        );
    }
}

/// The sha256 of the binary in the image a `kiln build` wrote to `<dir>/<fresh>/out`.
fn built_binary_sha(w: &World, fresh: &str) -> String {
    let out = w.dir.path().join(fresh).join("out");
    let bytes = tar_member(&out.join("stamped.tar"), "usr/bin/stamped");
    kiln::digest::Digest::of_bytes(kiln::digest::Algorithm::Sha256, &bytes).to_string()
}

/// `kiln build DEF --out <dir>/<out>/out`, more arguments and environment, with the Kiln
/// cache `fresh`.
fn build(
    w: &World,
    def: &str,
    out: &str,
    more: &[&str],
    env: &[(&str, &Path)],
    fresh: &str,
) -> Output {
    let out = w.dir.path().join(out).join("out");
    let mut args = vec!["build", def, "--out", out.to_str().unwrap()];
    args.extend(more);
    w.kiln_env(&args, fresh, env)
}

#[test]
fn the_callers_go_environment_changes_nothing() {
    let w = World::new(None);
    let (def, _) = w.locked(Some(C1));
    let o = build(&w, &def, "b", &[], &[], "b");
    assert!(o.status.success(), "{}", text(&o));
    let plain = built_binary_sha(&w, "b");

    // Each of these, if Go saw it, would fail the build (no proxy, no vendor directory, a
    // toolchain that does not exist) or change the binary (another instruction set, cgo).
    let go_env_file = w.caches.path().join("hostile-go-env");
    std::fs::write(&go_env_file, "GOPROXY=off\nGOFLAGS=-mod=vendor\n").unwrap();
    let p = Path::new;
    let hostile: Vec<(&str, &Path)> = vec![
        ("GOPROXY", p("off")),
        ("GOFLAGS", p("-mod=vendor")),
        ("GONOSUMDB", p("*")),
        ("GOSUMDB", p("off")),
        ("GOTOOLCHAIN", p("go1.99.0")),
        ("GOAMD64", p("v3")),
        ("CGO_ENABLED", p("1")),
        ("GOENV", &go_env_file),
        ("GOMODCACHE", p("/nonexistent/kiln-test")),
        ("GOCACHE", p("/nonexistent/kiln-test")),
        ("GOWORK", p("/nonexistent/go.work")),
    ];
    let o = build(&w, &def, "c", &[], &hostile, "c");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(built_binary_sha(&w, "c"), plain);
}

#[test]
fn offline_builds_after_kiln_fetch_or_names_the_missing_module() {
    let w = World::new(None);
    let (def, _) = w.locked(Some(C1));

    // An empty Kiln cache: the first module is named, and nothing is written.
    let before = snapshot(w.dir.path());
    let o = build(&w, &def, "b", &["--offline"], &[], "b");
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in ["offline", &format!("{MODULE}@{VERSION}"), "module cache"] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert_eq!(snapshot(w.dir.path()), before, "a failed build wrote files");

    // `kiln fetch` fills Kiln's module cache; with the proxy gone, the offline build
    // succeeds from it, and gives the binary an online build gives.
    let o = w.kiln(&["fetch", &def, "--json"], "c");
    assert!(o.status.success(), "{}", text(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["go-modules"], 1, "{summary}");
    assert!(w
        .caches
        .path()
        .join("c/go-mod/cache/download")
        .join(MODULE)
        .is_dir());
    let o = build(&w, &def, "e", &[], &[], "e");
    assert!(o.status.success(), "{}", text(&o));
    let sha = built_binary_sha(&w, "e");
    std::fs::remove_dir_all(&w.proxy).unwrap();
    let o = build(&w, &def, "d", &["--offline"], &[], "c");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(built_binary_sha(&w, "d"), sha);

    // The SBOM is valid SPDX and lists exactly the binary's one module, linked from it.
    let sbom_path = w.dir.path().join("d/out/sbom.spdx.json");
    kiln_tests::validate_spdx(&sbom_path);
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sbom_path).unwrap()).unwrap();
    let modules: Vec<String> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-gomod-"))
        .map(|p| {
            format!(
                "{} {}",
                p["externalRefs"][0]["referenceLocator"].as_str().unwrap(),
                p["sourceInfo"].as_str().unwrap()
            )
        })
        .collect();
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(w.dir.path().join("stamped.lock")).unwrap())
            .unwrap();
    let zip_sum = lock["go"][0]["go-sum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .find(|l| l.starts_with(&format!("{MODULE} {VERSION} h1:")))
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        modules,
        [format!(
            "pkg:golang/{MODULE}@{VERSION} Go module, go.sum hash {zip_sum}"
        )]
    );
    let links: Vec<&serde_json::Value> = sbom["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "STATIC_LINK")
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["spdxElementId"], "SPDXRef-go-stamped");
}
