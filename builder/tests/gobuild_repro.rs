//! Reproducibility of `go` inputs: the same input built from two empty Kiln caches, one with
//! a warm Go build cache and one with an empty Go build cache, gives the same bytes, even
//! with a hostile Go environment in the caller (which Kiln must not pass on). One test per
//! file: it sets environment variables for the second build.

#![allow(clippy::unwrap_used)]

use kiln::gobuild::{self, GoEnv, GoInput};

const EPOCH: u64 = 1_767_225_600;

pub fn assert_reproducible(input: &GoInput) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let go_cache = tempfile::tempdir().unwrap();
    let mut warm = GoEnv::new(a.path()).unwrap();
    warm.build_cache = std::env::temp_dir().join("kiln-test-go-build");
    let first = gobuild::build(input, EPOCH, &warm, false).unwrap();
    let mut cold = GoEnv::new(b.path()).unwrap();
    cold.build_cache = go_cache.path().to_path_buf();
    // Each would change the binary, or break the build, if Go saw it. The only test in this
    // binary, so no other thread reads the environment meanwhile.
    let hostile = [
        ("GOFLAGS", "-mod=vendor -ldflags=-X=main.x=y"),
        ("GOPROXY", "direct"),
        ("GONOSUMDB", "*"),
        ("GOSUMDB", "off"),
        ("GOTOOLCHAIN", "go1.99.0"),
        ("GOAMD64", "v3"),
        ("GOEXPERIMENT", "nosynchashtriemap"),
        ("CGO_ENABLED", "1"),
        ("CGO_CFLAGS", "-O0"),
        ("GOMODCACHE", "/nonexistent/kiln-test"),
        ("GOCACHE", "/nonexistent/kiln-test"),
        ("GOENV", "/nonexistent/kiln-test"),
        ("GOWORK", "/nonexistent/go.work"),
    ];
    for (k, v) in hostile {
        std::env::set_var(k, v);
    }
    let second = gobuild::build(input, EPOCH, &cold, false);
    for (k, _) in hostile {
        std::env::remove_var(k);
    }
    let second = second.unwrap();
    assert!(!first.report.cache_hit && !second.report.cache_hit);
    // The second build really compiled into the empty Go cache.
    assert!(std::fs::read_dir(go_cache.path()).unwrap().count() > 0);
    assert_eq!(first.key, second.key);
    assert_eq!(first.binaries.len(), second.binaries.len());
    for (x, y) in first.binaries.iter().zip(&second.binaries) {
        assert_eq!(x.name, y.name);
        assert_eq!(
            x.sha256, y.sha256,
            "{} differs between the two builds",
            x.name
        );
        assert_ne!(x.path, y.path);
    }
}

#[test]
fn loopback_is_reproducible_from_empty_caches() {
    let input: GoInput = toml::from_str(
        r#"
name = "loopback"
module = "github.com/containernetworking/plugins"
version = "v1.8.0"
packages = ["github.com/containernetworking/plugins/plugins/main/loopback"]
ldflags = ["-X=github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion={version}"]
"#,
    )
    .unwrap();
    assert_reproducible(&input);
}
