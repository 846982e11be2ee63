//! Builds every `[[go]]` input of images/single-node.toml into the Kiln cache, runs each
//! binary's version command and checks it reports the pinned version, then rebuilds warm
//! (must be all cache hits, ≤ 5 s). Prints cold/warm times and binary sizes.
//! Cold, this compiles Kubernetes: `cargo test -p kiln --test gobuild_all -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::gobuild::{self, GoInput};

const EPOCH: u64 = 1_767_225_600;

fn inputs() -> Vec<GoInput> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images/single-node.toml");
    let def = kiln::definition::load(&path).unwrap();
    assert_eq!(def.epoch, EPOCH);
    def.go
}

fn cache_root() -> PathBuf {
    match std::env::var_os("KILN_CACHE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kiln"),
    }
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

#[test]
fn fragment_parses_and_validates() {
    let all = inputs();
    assert!(all.len() >= 8);
    let mut bins = std::collections::BTreeSet::new();
    for i in &all {
        i.validate().unwrap();
        for p in &i.packages {
            assert!(
                bins.insert(p.binary().to_string()),
                "duplicate binary {}",
                p.binary()
            );
        }
    }
    for want in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "kubectl",
        "etcd",
        "etcdctl",
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "bridge",
        "host-local",
        "loopback",
        "portmap",
        "coredns",
        "crictl",
    ] {
        assert!(bins.contains(want), "single-node.toml builds no {want}");
    }
}

#[test]
#[ignore = "builds all of Kubernetes, etcd, containerd, runc, CNI, CoreDNS, crictl"]
fn all_go_inputs_build_and_report_pinned_versions() {
    let root = cache_root();
    let mut cold = Duration::ZERO;
    let mut built = Vec::new();
    for input in inputs() {
        let t = Instant::now();
        let out = gobuild::build(&input, EPOCH, &root, true)
            .unwrap_or_else(|e| panic!("{}: {e}", input.name));
        let took = t.elapsed();
        cold += took;
        eprintln!(
            "{:<24} {:>8.1?} cache_hit={} go={}",
            input.name, took, out.report.cache_hit, out.go_version
        );
        built.push((input, out));
    }
    let mut total_size = 0;
    for (input, out) in &built {
        let bare = input.version.trim_start_matches('v');
        for b in &out.binaries {
            total_size += b.size;
            let o = Command::new(&b.path)
                .args(version_args(&b.name))
                .env_remove("CNI_COMMAND")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                text.contains(bare),
                "{} does not report {bare}: {text}",
                b.name
            );
            if b.name == "kube-apiserver" {
                assert!(
                    text.contains(&format!("Kubernetes {}", input.version)),
                    "{text}"
                );
            }
            eprintln!(
                "{:<24} {:>10} bytes  {}",
                b.name,
                b.size,
                text.lines().next().unwrap_or("")
            );
        }
    }
    let t = Instant::now();
    for (input, first) in &built {
        let again = gobuild::build(input, EPOCH, &root, false).unwrap();
        assert!(again.report.cache_hit, "{} rebuilt", input.name);
        assert_eq!(
            again
                .report
                .commands
                .iter()
                .filter(|c| !c.starts_with("go version") && !c.starts_with("go env"))
                .count(),
            0
        );
        assert_eq!(again.binaries, first.binaries);
    }
    let warm = t.elapsed();
    eprintln!("first pass {cold:.1?}, warm pass {warm:.2?}, total size {total_size} bytes");
    assert!(warm <= Duration::from_secs(5), "warm rebuild took {warm:?}");
}
