//! Reproducibility of `go` inputs: the same input built from two empty Kiln caches, one with
//! the host's warm Go build cache and one with an empty Go build cache, gives the same bytes.
//! One test per file: it points GOCACHE at a temp dir for the second build.

#![allow(clippy::unwrap_used)]

use kiln::gobuild::{self, GoInput};

const EPOCH: u64 = 1_767_225_600;

pub fn assert_reproducible(input: &GoInput) {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let go_cache = tempfile::tempdir().unwrap();
    let first = gobuild::build(input, EPOCH, a.path(), false).unwrap();
    // The only test in this binary, so no other thread reads the environment meanwhile.
    std::env::set_var("GOCACHE", go_cache.path());
    let second = gobuild::build(input, EPOCH, b.path(), false).unwrap();
    std::env::remove_var("GOCACHE");
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
