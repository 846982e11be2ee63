//! kubelet built twice from two empty Kiln caches (the second also from an empty Go build
//! cache) gives the same sha256. A cold kubelet build takes tens of minutes on 2 cores:
//! run with `cargo test -p kiln --test gobuild_kubelet_repro -- --ignored`.

#![allow(clippy::unwrap_used)]

use kiln::gobuild::{self, GoEnv, GoInput};

const EPOCH: u64 = 1_767_225_600;

#[test]
#[ignore = "cold kubelet builds take tens of minutes"]
fn kubelet_is_reproducible_from_empty_caches() {
    let input: GoInput = toml::from_str(
        r#"
name = "kubelet"
module = "k8s.io/kubernetes"
version = "v1.35.4"
packages = ["k8s.io/kubernetes/cmd/kubelet"]
tags = ["selinux", "notest", "grpcnotrace"]
stamp = "kubernetes"
"#,
    )
    .unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let go_cache = tempfile::tempdir().unwrap();
    let first = gobuild::build(&input, EPOCH, &GoEnv::new(a.path()).unwrap(), true).unwrap();
    let mut cold = GoEnv::new(b.path()).unwrap();
    cold.build_cache = go_cache.path().to_path_buf();
    let second = gobuild::build(&input, EPOCH, &cold, true).unwrap();
    assert!(!first.report.cache_hit && !second.report.cache_hit);
    assert_eq!(first.binaries[0].sha256, second.binaries[0].sha256);
}
