//! The upstream commit of a `[[go]]` input, with no network: a file-based Go module proxy
//! (`GOPROXY=file://…`) that this test writes, holding one tiny command module whose `.info`
//! carries an Origin commit or none. `kiln lock` takes the commit from the definition's
//! `commit` or the proxy's Origin, fails when they disagree or when neither is known, and
//! records it in the lock; `kiln build` stamps the binary with the lock's commit and never
//! asks the proxy for one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_tests::{kiln, snapshot, tar_member, text};

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

/// A stored (uncompressed) zip archive of `files`, as the module proxy protocol serves.
fn zip(files: &[(String, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let size = data.len() as u32;
        let head = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u16.to_le_bytes()); // time
            h.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            h.extend(crc.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0u8; 6]); // comment, disk, internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(head(0x0403_4b50, false));
        out.extend(*data);
        central.extend(head(0x0201_4b50, true));
    }
    let dir_offset = out.len() as u32;
    let n = files.len() as u16;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// Writes the module into a file proxy at `proxy`; `origin` is the commit its `.info`
/// reports (none: the `.info` has Version and Time only, as the proxy gives for some tags).
fn write_proxy(proxy: &Path, origin: Option<&str>) {
    let v = proxy.join(MODULE).join("@v");
    std::fs::create_dir_all(&v).unwrap();
    let go_mod = format!("module {MODULE}\n\ngo 1.21\n");
    let mut info = serde_json::json!({ "Version": VERSION, "Time": "2026-01-01T00:00:00Z" });
    if let Some(hash) = origin {
        info["Origin"] = serde_json::json!({
            "VCS": "git",
            "URL": format!("https://{MODULE}"),
            "Ref": format!("refs/tags/{VERSION}"),
            "Hash": hash,
        });
    }
    std::fs::write(v.join("list"), format!("{VERSION}\n")).unwrap();
    std::fs::write(v.join(format!("{VERSION}.info")), info.to_string()).unwrap();
    std::fs::write(v.join(format!("{VERSION}.mod")), &go_mod).unwrap();
    let prefix = format!("{MODULE}@{VERSION}");
    let archive = zip(&[
        (format!("{prefix}/go.mod"), go_mod.as_bytes()),
        (format!("{prefix}/main.go"), MAIN_GO.as_bytes()),
    ]);
    std::fs::write(v.join(format!("{VERSION}.zip")), archive).unwrap();
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
{commit}"#
    );
    let path = dir.join("stamped.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Everything one `kiln` run sees: its own Kiln cache and Go module cache, the file proxy,
/// and no checksum database (the test module is in none).
struct World {
    dir: tempfile::TempDir,
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
        World {
            dir,
            proxy,
            go_cache,
        }
    }

    /// Runs kiln with a fresh Kiln cache and module cache named `fresh`.
    fn kiln(&self, args: &[&str], fresh: &str) -> Output {
        let cache = self.dir.path().join(fresh).join("kiln");
        let modcache = self.dir.path().join(fresh).join("gomod");
        let goproxy = PathBuf::from(format!("file://{}", self.proxy.display()));
        kiln(
            args,
            &[
                ("KILN_CACHE", &cache),
                ("GOMODCACHE", &modcache),
                ("GOCACHE", &self.go_cache),
                ("GOPROXY", &goproxy),
                ("GOSUMDB", Path::new("off")),
            ],
        )
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
    let (def, lock) = w.def(Some(C1));
    let o = w.kiln(&["lock", &def], "a");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(locked_commit(&lock).as_deref(), Some(C1));
    let (said, commands) = build_and_run(&w, &def, "b");
    assert_eq!(said, format!("commit={C1}"));
    assert_never_asked(&commands);
}

#[test]
fn origin_is_locked_and_the_build_never_asks_again() {
    let w = World::new(Some(C2));
    let (def, lock) = w.def(None);
    let o = w.kiln(&["lock", &def], "a");
    assert!(o.status.success(), "{}", text(&o));
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
        // `commit = ...` is line 13 of the definition, its value starts at column 10.
        assert!(err.contains("stamped.toml:13:10"), "{err}");
        assert!(err.contains("40 lowercase hex digits"), "{err}");
        assert!(!lock.exists());
        assert_eq!(
            snapshot(w.dir.path()),
            before,
            "a refused definition changed files"
        );
    }
}
