//! `[[go]]` inputs through the `kiln` CLI: `kiln lock` pins each binary, `kiln build` puts
//! them in the image and checks a fresh build against the pins (`--relock` accepts a new
//! one), and a cached rebuild runs no compile and no download. The small input is the real
//! CNI loopback plugin from the Go module proxy, built into a throwaway Kiln cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use kiln_tests::{kiln, snapshot, tar_member, text};

const DEF: &str = r#"
[image]
name = "gotest"
version = "1"
epoch = 1767225600
outputs = ["tar"]

[[go]]
name = "cni"
module = "github.com/containernetworking/plugins"
version = "v1.8.0"
packages = ["github.com/containernetworking/plugins/plugins/main/loopback"]
ldflags = ["-X=github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion={version}"]
dest = "/opt/cni/bin"
"#;

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn summary(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn lock_pins_build_checks_and_relock_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let def = dir.path().join("g.toml");
    let lock = dir.path().join("g.lock");
    std::fs::write(&def, DEF).unwrap();
    let env = [("KILN_CACHE", cache.path())];
    let d = def.to_str().unwrap();

    let o = kiln(&["lock", d], &env);
    assert!(o.status.success(), "{}", text(&o));
    let pinned = std::fs::read_to_string(&lock).unwrap();
    let l: toml::Value = toml::from_str(&pinned).unwrap();
    let pin = l["go"][0]["binaries"]["loopback"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(l["go"][0]["go-version"]
        .as_str()
        .unwrap()
        .starts_with("go1."));

    // Built from the cache the lock filled: no compile, no download, only `go version`.
    let out = dir.path().join("out");
    let s = summary(&kiln(
        &["build", d, "--json", "--out", out.to_str().unwrap()],
        &env,
    ));
    let g = &s["go"][0];
    assert_eq!(g["cache-hit"], true, "{s}");
    assert_eq!(g["commands"], serde_json::json!(["go version"]), "{s}");
    // The binary in the image is the pinned one, at the input's dest.
    let bin = tar_member(&out.join("gotest.tar"), "opt/cni/bin/loopback");
    assert_eq!(format!("sha256:{}", sha256_hex(&bin)), pin);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "go" && i["name"] == "loopback" && i["checksum"] == pin),
        "{manifest}"
    );

    // A lock whose sha256 the fresh build does not match: the build fails naming the input,
    // the binary and both digests, and writes nothing.
    let zero = format!("sha256:{}", "0".repeat(64));
    std::fs::write(&lock, pinned.replace(&pin, &zero)).unwrap();
    let out2 = dir.path().join("out2");
    let before = snapshot(dir.path());
    let o = kiln(&["build", d, "--out", out2.to_str().unwrap()], &env);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for want in ["cni", "loopback", &zero, &pin, "--relock"] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert_eq!(snapshot(dir.path()), before, "a failed build changed files");

    // `--relock` accepts the fresh build and rewrites the pin.
    let o = kiln(
        &["build", d, "--relock", "--out", out2.to_str().unwrap()],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), pinned);

    // A changed recipe makes the lock stale for `lock --check` and for `build`.
    std::fs::write(
        &def,
        DEF.replace("{version}\"]", "{version}\", \"-X=main.x=1\"]"),
    )
    .unwrap();
    for args in [vec!["lock", "--check", d], vec!["build", d, "--out", "o3"]] {
        let o = kiln(&args, &env);
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("go input cni") && err.contains("recipe"),
            "{err}"
        );
    }
}

#[test]
fn an_input_that_cannot_build_names_itself_and_pins_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let def = dir.path().join("g.toml");
    std::fs::write(
        &def,
        DEF.replace("plugins/main/loopback\"", "plugins/main/no-such-plugin\""),
    )
    .unwrap();
    let o = kiln(
        &["lock", def.to_str().unwrap()],
        &[("KILN_CACHE", cache.path())],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("go input cni") && err.contains("no-such-plugin"),
        "{err}"
    );
    assert!(!dir.path().join("g.lock").exists());
    let go_dir = cache.path().join("go");
    let left: Vec<_> = std::fs::read_dir(&go_dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "cache entries left: {left:?}");
}
