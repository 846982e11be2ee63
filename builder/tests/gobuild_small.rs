//! `go` inputs against the real Go toolchain and module proxy, with a small real command
//! (the CNI loopback plugin). Needs `go` on PATH and the module proxy reachable.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln::digest::{Algorithm, Digest};
use kiln::gobuild::{self, GoEnv, GoError, GoInput, GoLock};

const EPOCH: u64 = 1_767_225_600;

/// Kiln's Go environment for a cache root, with the module and build caches shared by the
/// tests of this file (what they hold is addressed by content; each test's binaries still
/// go to its own root).
fn env(root: &Path) -> GoEnv {
    let mut env = GoEnv::new(root).unwrap();
    env.module_cache = std::env::temp_dir().join("kiln-test-go-mod");
    env.build_cache = std::env::temp_dir().join("kiln-test-go-build");
    env
}

fn loopback() -> GoInput {
    toml::from_str(
        r#"
name = "loopback"
module = "github.com/containernetworking/plugins"
version = "v1.8.0"
packages = ["github.com/containernetworking/plugins/plugins/main/loopback"]
ldflags = ["-X=github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion={version}"]
"#,
    )
    .unwrap()
}

/// Entries under `<root>/go`, temp dirs included: a failed build must leave none.
fn cache_entries(root: &Path) -> Vec<String> {
    match fs::read_dir(root.join("go")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn builds_runs_and_rebuilds_from_cache_without_go_work() {
    let root = tempfile::tempdir().unwrap();
    let input = loopback();
    let first = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap();
    assert!(!first.report.cache_hit);
    assert!(first.go_version.starts_with("go1."), "{}", first.go_version);
    assert_eq!(first.binaries.len(), 1);
    let bin = &first.binaries[0];
    assert_eq!(bin.name, "loopback");
    assert_eq!(
        bin.path,
        root.path().join("go").join(&first.key).join("bin/loopback")
    );
    // The recorded digest is the file's.
    let on_disk = Digest::of_reader(Algorithm::Sha256, fs::File::open(&bin.path).unwrap()).unwrap();
    assert_eq!(on_disk, bin.sha256);
    assert_eq!(fs::metadata(&bin.path).unwrap().len(), bin.size);
    // The binary runs and reports the pinned version (CNI plugins print it without CNI_COMMAND).
    let out = Command::new(&bin.path)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("plugin {}", input.version)),
        "{text}"
    );
    // Static, as CGO_ENABLED=0 promises.
    let file = Command::new("file").arg(&bin.path).output();
    if let Ok(f) = file {
        let f = String::from_utf8_lossy(&f.stdout);
        assert!(f.contains("statically linked"), "{f}");
    }

    // Warm: only `go version` runs, same outputs.
    let second = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap();
    assert!(second.report.cache_hit);
    assert_eq!(second.report.commands, vec!["go version".to_string()]);
    assert_eq!(second.binaries, first.binaries);
    assert_eq!(second.key, first.key);
    // No temp dirs left behind: just the one entry.
    assert_eq!(cache_entries(root.path()), vec![first.key.clone()]);

    // The epoch does not change an input that does not use it; a different tag set does.
    let other_epoch = gobuild::build(&input, EPOCH + 1, &env(root.path()), false).unwrap();
    assert!(other_epoch.report.cache_hit);

    // The lock written from this build passes; a build checked against a matching lock is fine.
    let lock = first.lock();
    gobuild::build_locked(&input, EPOCH, &env(root.path()), false, &lock).unwrap();
}

#[test]
fn lock_mismatch_fails_naming_the_binary_and_caches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let input = loopback();
    let go_version = {
        let out = Command::new("go")
            .arg("version")
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    let wrong = Digest::of_bytes(Algorithm::Sha256, b"not the loopback plugin");
    let lock = GoLock {
        commit: None,
        go_version: go_version.clone(),
        binaries: [("loopback".to_string(), wrong.clone())].into(),
        toolchain: Vec::new(),
        go_sum: Vec::new(),
    };
    let err = gobuild::build_locked(&input, EPOCH, &env(root.path()), false, &lock).unwrap_err();
    match &err {
        GoError::LockMismatch {
            binary, expected, ..
        } => {
            assert_eq!(binary, "loopback");
            assert_eq!(expected, &wrong);
        }
        other => panic!("expected LockMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("loopback") && msg.contains("--relock"),
        "{msg}"
    );
    assert!(
        cache_entries(root.path()).is_empty(),
        "{:?}",
        cache_entries(root.path())
    );

    // A lock from another Go version fails naming both versions.
    let lock = GoLock {
        commit: None,
        go_version: "go1.0.0".into(),
        binaries: Default::default(),
        toolchain: Vec::new(),
        go_sum: Vec::new(),
    };
    let err = gobuild::build_locked(&input, EPOCH, &env(root.path()), false, &lock).unwrap_err();
    assert!(
        err.to_string().contains("go1.0.0") && err.to_string().contains(&go_version),
        "{err}"
    );
    assert!(cache_entries(root.path()).is_empty());
}

/// The lock's closure with one module's `h1:` changed: the build fails naming that module,
/// from an empty module cache (Go checks the download), from a module cache that holds it
/// (Go checks the cached copy), and from Kiln's own cache entry; nothing is cached.
#[test]
fn a_changed_module_hash_in_the_lock_fails_naming_the_module() {
    let input = loopback();
    let root = tempfile::tempdir().unwrap();
    let built = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap();
    let lock = built.lock();
    // Every module the loopback plugin compiles from, and the go.mod of each in the graph.
    assert!(lock.go_sum.len() > 4, "{:?}", lock.go_sum);
    assert!(lock
        .go_sum
        .iter()
        .any(|l| l.starts_with("github.com/containernetworking/plugins v1.8.0 h1:")));
    // A dependency's zip hash (not the main module's, not a go.mod line) gets another value.
    let i = lock
        .go_sum
        .iter()
        .position(|l| {
            !l.contains("/go.mod ") && !l.starts_with("github.com/containernetworking/plugins ")
        })
        .unwrap();
    let mut parts: Vec<String> = lock.go_sum[i].split(' ').map(str::to_string).collect();
    let module_version = format!("{}@{}", parts[0], parts[1]);
    parts[2] = "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    let mut tampered = lock.clone();
    tampered.go_sum[i] = parts.join(" ");
    tampered.go_sum.sort();

    let check = |err: GoError, root: &Path| {
        let msg = err.to_string();
        assert!(matches!(err, GoError::Closure { .. }), "{msg}");
        assert!(msg.contains(&module_version), "{msg}");
        // Go itself refused the module: its hash is checked against the lock's go.sum.
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert!(cache_entries(root).is_empty(), "{:?}", cache_entries(root));
    };
    // Empty module cache.
    let fresh = tempfile::tempdir().unwrap();
    let mut cold = env(fresh.path());
    cold.module_cache = fresh.path().join("go-mod");
    check(
        gobuild::build_locked(&input, EPOCH, &cold, false, &tampered).unwrap_err(),
        fresh.path(),
    );
    // The shared module cache, which holds the module.
    let warm = tempfile::tempdir().unwrap();
    check(
        gobuild::build_locked(&input, EPOCH, &env(warm.path()), false, &tampered).unwrap_err(),
        warm.path(),
    );
    // Kiln's cache entry of the untampered build.
    let err =
        gobuild::build_locked(&input, EPOCH, &env(root.path()), false, &tampered).unwrap_err();
    assert!(err.to_string().contains(&module_version), "{err}");
    // The untampered lock still builds.
    gobuild::build_locked(&input, EPOCH, &env(warm.path()), false, &lock).unwrap();
}

/// An input that names its Go release builds with that toolchain, fetched as a module and
/// pinned in the lock; a lock with another hash for it fails naming it and caches nothing.
#[test]
fn a_named_toolchain_is_fetched_pinned_and_checked() {
    const RELEASE: &str = "1.25.9";
    let module = format!("golang.org/toolchain@v0.0.1-go{RELEASE}.linux-amd64");
    let mut input = loopback();
    input.go = Some(RELEASE.parse().unwrap());
    let root = tempfile::tempdir().unwrap();
    let built = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap();
    assert_eq!(built.go_version, format!("go{RELEASE}"));
    let lock = built.lock();
    let version = format!("v0.0.1-go{RELEASE}.linux-amd64");
    assert_eq!(lock.toolchain.len(), 2, "{:?}", lock.toolchain);
    assert!(lock.toolchain[0].starts_with(&format!("golang.org/toolchain {version} h1:")));
    assert!(lock.toolchain[1].starts_with(&format!("golang.org/toolchain {version}/go.mod h1:")));
    // The binary says so itself.
    let info = gobuild::buildinfo::read(&built.binaries[0].path).unwrap();
    assert_eq!(info.go_version, format!("go{RELEASE}"));
    // The host's own toolchain (another release here) gives another binary and cache entry.
    let host = gobuild::build(&loopback(), EPOCH, &env(root.path()), false).unwrap();
    if host.go_version != built.go_version {
        assert_ne!(host.key, built.key);
        assert_ne!(host.binaries[0].sha256, built.binaries[0].sha256);
    }
    // Locked: the same again, from Kiln's cache.
    let again = gobuild::build_locked(&input, EPOCH, &env(root.path()), false, &lock).unwrap();
    assert!(again.report.cache_hit);
    // A lock pinning another hash for the toolchain.
    let mut other = lock.clone();
    other.toolchain[0] =
        format!("golang.org/toolchain {version} h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let fresh = tempfile::tempdir().unwrap();
    let err = gobuild::build_locked(&input, EPOCH, &env(fresh.path()), false, &other).unwrap_err();
    assert!(matches!(err, GoError::Toolchain { .. }), "{err}");
    assert!(err.to_string().contains(&module), "{err}");
    assert!(
        cache_entries(fresh.path()).is_empty(),
        "{:?}",
        cache_entries(fresh.path())
    );
}

/// The packages of one input are built by one `go build` and then named: a package with an
/// explicit binary name gets it; each binary is the one a build of that package alone gives.
#[test]
fn an_inputs_packages_build_together_and_get_their_names() {
    let mut input = loopback();
    input.packages.push(gobuild::GoPackage::Named {
        path: "github.com/containernetworking/plugins/plugins/meta/portmap".into(),
        binary: "kiln-portmap".into(),
    });
    let root = tempfile::tempdir().unwrap();
    let both = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap();
    let builds: Vec<&String> = both
        .report
        .commands
        .iter()
        .filter(|c| c.starts_with("go build "))
        .collect();
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert!(
        builds[0].ends_with(
            "/plugins/main/loopback github.com/containernetworking/plugins/plugins/meta/portmap"
        ),
        "{}",
        builds[0]
    );
    let names: Vec<&str> = both.binaries.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["loopback", "kiln-portmap"]);
    for b in &both.binaries {
        assert!(b.path.is_file(), "{}", b.path.display());
    }
    let alone = gobuild::build(&loopback(), EPOCH, &env(root.path()), false).unwrap();
    assert_eq!(alone.binaries[0].sha256, both.binaries[0].sha256);
    // Nothing but the binaries and the manifest in the entry.
    let mut entry: Vec<String> = fs::read_dir(both.dir.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entry.sort();
    assert_eq!(entry, ["kiln-portmap", "loopback"]);
    assert!(!both.dir.join("built").exists());
}

/// Kiln's reading of a binary's module list (for the SBOM) against `go version -m`.
#[test]
fn build_info_lists_the_modules_go_version_m_lists() {
    let root = tempfile::tempdir().unwrap();
    let built = gobuild::build(&loopback(), EPOCH, &env(root.path()), false).unwrap();
    let bin = &built.binaries[0].path;
    let info = gobuild::buildinfo::read(bin).unwrap();
    assert_eq!(info.go_version, built.go_version);
    let ours: Vec<String> = info
        .modules
        .iter()
        .map(|m| {
            format!(
                "{}\t{}\t{}\t{}",
                if m.main { "mod" } else { "dep" },
                m.path,
                m.version,
                m.sum
            )
        })
        .collect();
    let out = Command::new("go")
        .args(["version", "-m"])
        .arg(bin)
        .output()
        .unwrap();
    assert!(out.status.success());
    let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("mod\t") || l.starts_with("dep\t"))
        .map(str::to_string)
        .collect();
    assert!(theirs.len() > 3, "{theirs:?}");
    assert_eq!(ours, theirs);
    // Every module the binary links is pinned by the closure.
    for m in &info.modules {
        let line = format!("{} {} {}", m.path, m.version, m.sum);
        assert!(
            built.go_sum.contains(&line),
            "{line} not in {:?}",
            built.go_sum
        );
    }
}

#[test]
fn unknown_module_fails_naming_it_and_caches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut input = loopback();
    input.module = "github.com/containernetworking/plugins-no-such-module".into();
    input.packages = vec![gobuild::GoPackage::Path(format!("{}/x", input.module))];
    let err = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap_err();
    assert!(matches!(err, GoError::ModuleNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("{}@v1.8.0", input.module)),
        "{err}"
    );
    assert!(cache_entries(root.path()).is_empty());
}

#[test]
fn unknown_version_fails_naming_it_and_caches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut input = loopback();
    input.version = "v1.8.99".into();
    let err = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap_err();
    assert!(matches!(err, GoError::ModuleNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("github.com/containernetworking/plugins@v1.8.99"),
        "{err}"
    );
    assert!(cache_entries(root.path()).is_empty());
}

#[test]
fn missing_or_non_main_package_fails_naming_it_and_caches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut input = loopback();
    let missing = "github.com/containernetworking/plugins/plugins/main/no-such-plugin";
    input.packages = vec![gobuild::GoPackage::Path(missing.into())];
    let err = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap_err();
    assert!(matches!(err, GoError::PackageNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(missing), "{err}");
    assert!(cache_entries(root.path()).is_empty());

    let library = "github.com/containernetworking/plugins/pkg/ns";
    input.packages = vec![gobuild::GoPackage::Path(library.into())];
    let err = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap_err();
    assert!(matches!(err, GoError::NotMain { .. }), "{err:?}");
    assert!(err.to_string().contains(library), "{err}");
    assert!(cache_entries(root.path()).is_empty());
}

#[test]
fn compile_failure_carries_go_stderr_and_caches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut input = loopback();
    // An -X on a non-string variable is a link error from the real toolchain.
    input.ldflags = vec![
        "-X=github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion".into(),
    ];
    let err = gobuild::build(&input, EPOCH, &env(root.path()), false).unwrap_err();
    assert!(matches!(err, GoError::Build { .. }), "{err:?}");
    assert!(err.to_string().contains("-X"), "{err}");
    assert!(cache_entries(root.path()).is_empty());
}
