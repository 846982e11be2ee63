//! `kiln cache` and `kiln cache prune` on a real cache: two definitions, each with artifacts
//! (from a mirror on 127.0.0.1) and a go input (from a file module proxy, at two versions),
//! locked and built into one cache; pruning down to one lock keeps everything it pins, so
//! its build still succeeds offline, and removes the other's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use kiln::digest::{Algorithm, Digest};
use kiln_tests::mirror::{Behaviour, Mirror};
use kiln_tests::{goproxy, kiln, snapshot, text};

const MODULE: &str = "example.com/kiln/pruned";

fn main_go(says: &str) -> String {
    format!(
        "package main\n\nimport \"os\"\n\nfunc main() {{ os.Stdout.WriteString(\"{says}\\n\") }}\n"
    )
}

struct World {
    dir: tempfile::TempDir,
    cache: PathBuf,
    mirrors: Vec<String>,
    _http: Mirror,
}

impl World {
    fn kiln(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let fetches = matches!(args.first(), Some(&("lock" | "build" | "fetch")));
        if fetches && !args.contains(&"--offline") {
            for m in &self.mirrors {
                all.extend(["--mirror", m.as_str()]);
            }
        }
        kiln(&all, &[("KILN_CACHE", &self.cache)])
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.kiln(args);
        assert!(o.status.success(), "kiln {args:?}: {}", text(&o));
        o
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

fn sha(b: &[u8]) -> Digest {
    Digest::of_bytes(Algorithm::Sha256, b)
}

/// A definition with the go input at `version` and the artifacts `names` (served at /NAME).
fn definition(dir: &Path, name: &str, version: &str, artifacts: &[(&str, &[u8])]) {
    let mut text = format!(
        "[image]\nname = \"{name}\"\nversion = \"1\"\nepoch = 1767225600\noutputs = [\"tar\"]\n\n\
         [[go]]\nname = \"tool\"\nmodule = \"{MODULE}\"\nversion = \"{version}\"\n\
         packages = [\"{MODULE}\"]\nno-sumdb = [\"{MODULE}\"]\n"
    );
    for (a, bytes) in artifacts {
        text.push_str(&format!(
            "\n[[artifact]]\nname = \"{a}\"\nurl = \"https://dl.example.invalid/{a}\"\n\
             checksum = \"{}\"\ndest = \"/opt/{a}\"\n",
            sha(bytes)
        ));
    }
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2, b1) = (
        b"first of a".as_slice(),
        b"second of a".as_slice(),
        b"b's".as_slice(),
    );
    let http = Mirror::start([
        ("/a1", Behaviour::Serve(a1.to_vec())),
        ("/a2", Behaviour::Serve(a2.to_vec())),
        ("/b1", Behaviour::Serve(b1.to_vec())),
    ])
    .unwrap();
    let proxy = dir.path().join("proxy");
    goproxy::write_module(&proxy, MODULE, "v1.0.0", None, &main_go("one"));
    goproxy::write_module(&proxy, MODULE, "v1.1.0", None, &main_go("one point one"));
    definition(dir.path(), "a", "v1.0.0", &[("a1", a1), ("a2", a2)]);
    definition(dir.path(), "b", "v1.1.0", &[("b1", b1)]);
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    // Go's build cache is shared with the other tests that build this way (compiled
    // packages only); a symlink, which pruning must leave alone.
    let go_cache = std::env::temp_dir().join("kiln-go-commit-test-gocache");
    std::fs::create_dir_all(&go_cache).unwrap();
    std::os::unix::fs::symlink(&go_cache, cache.join(kiln::gobuild::BUILD_CACHE_DIR)).unwrap();
    let mirrors = vec![
        format!("https://dl.example.invalid={}", http.url()),
        format!("{}=file://{}", goproxy::toolchain_proxy(), proxy.display()),
    ];
    World {
        dir,
        cache,
        mirrors,
        _http: http,
    }
}

fn blob(cache: &Path, content: &[u8]) -> PathBuf {
    cache.join("blobs/sha256").join(sha(content).hex())
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn kind<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == name)
        .unwrap_or_else(|| panic!("no kind {name} in {v}"))
}

#[test]
fn prune_keeps_what_the_kept_lock_pins_and_removes_the_rest() {
    let w = world();
    let (a, b) = (w.path("a.toml"), w.path("b.toml"));
    let (oa, ob) = (w.path("oa"), w.path("ob"));
    w.ok(&["lock", &a]);
    w.ok(&["lock", &b]);
    w.ok(&["build", &a, "--out", &oa]);
    w.ok(&["build", &b, "--out", &ob]);

    let usage = json(&w.ok(&["cache", "--json"]));
    assert_eq!(kind(&usage, "blobs")["files"], 3, "{usage}");
    assert_eq!(kind(&usage, "go builds")["files"].as_u64().unwrap() % 2, 0);
    assert!(kind(&usage, "Go module cache")["bytes"].as_u64().unwrap() > 0);
    let shown = w.ok(&["cache"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("Go module cache"));

    // No lock to keep named: a usage error, nothing removed.
    let before = snapshot(&w.cache);
    let o = w.kiln(&["cache", "prune"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = w.ok(&["cache", "prune", "--keep-locked", &a, "--dry-run", "--json"]);
    assert_eq!(kind(&json(&o), "blobs")["removed_files"], 1);
    assert_eq!(snapshot(&w.cache), before, "a dry run removes nothing");

    let o = w.ok(&["cache", "prune", "--keep-locked", &a, "--json"]);
    let r = json(&o);
    assert_eq!(kind(&r, "blobs")["removed_files"], 1, "{r}");
    assert_eq!(kind(&r, "blobs")["kept_files"], 2, "{r}");
    assert_eq!(kind(&r, "go builds")["kept_files"].as_u64(), Some(2), "{r}");
    assert!(blob(&w.cache, b"first of a").is_file());
    assert!(blob(&w.cache, b"second of a").is_file());
    assert!(!blob(&w.cache, b"b's").exists());
    let extracted = w.cache.join("go-mod").join(MODULE);
    assert!(Path::new(&format!("{}@v1.0.0", extracted.display())).is_dir());
    assert!(!Path::new(&format!("{}@v1.1.0", extracted.display())).exists());
    let downloads = w
        .cache
        .join("go-mod/cache/download")
        .join(MODULE)
        .join("@v");
    assert!(downloads.join("v1.0.0.zip").is_file());
    assert!(!downloads.join("v1.1.0.zip").exists());
    assert!(
        w.cache.join(kiln::gobuild::BUILD_CACHE_DIR).is_symlink(),
        "the shared Go build cache's link stays"
    );

    // The kept definition builds offline to the same bytes; the other cannot.
    let oa2 = w.path("oa2");
    w.ok(&["build", &a, "--offline", "--out", &oa2]);
    let sums = |d: &str| std::fs::read_to_string(Path::new(d).join("SHA256SUMS")).unwrap();
    assert_eq!(sums(&oa2), sums(&oa));
    let ob2 = w.path("ob2");
    let o = w.kiln(&["build", &b, "--offline", "--out", &ob2]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!Path::new(&ob2).exists());

    // --all keeps nothing of Kiln's.
    w.ok(&["cache", "prune", "--all"]);
    let usage = json(&w.ok(&["cache", "--json"]));
    for k in ["blobs", "unpacked", "go builds"] {
        assert_eq!(kind(&usage, k)["files"], 0, "{k}: {usage}");
    }
    // Go's own empty lock file (`cache/lock`) may stay.
    assert_eq!(kind(&usage, "Go module cache")["bytes"], 0, "{usage}");
    assert!(!extracted.with_file_name("pruned@v1.0.0").exists());
}
