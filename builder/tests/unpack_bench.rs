//! Benchmark (ignored by default; run with `cargo test --release -p kiln --test
//! unpack_bench -- --ignored --nocapture`): a cold and a warm assembly of every
//! .deb in `$KILN_BENCH_DEBS` (default `$KILN_CACHE/benchdebs`) into a Tree written
//! as tar, next to `dpkg-deb -x` of the same .debs plus `tar --sort=name`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use kiln::outputs::tar::write_tar;
use kiln::tree::Tree;
use kiln::unpack::{add_debs, merged_usr, ContentStore, DebInput, Limits};
use kiln_tests::{kiln_cache, run_bytes};

fn peak_rss_kib() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[ignore]
fn bench_assembly_against_dpkg_deb() {
    let dir = std::env::var_os("KILN_BENCH_DEBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| kiln_cache().join("benchdebs"));
    let mut debs: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("bench deb dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    assert!(!debs.is_empty(), "no .debs in {}", dir.display());
    let inputs: Vec<DebInput> = debs
        .iter()
        .map(|p| DebInput {
            path: p.clone(),
            origin: p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('_').next())
                .unwrap_or("?")
                .to_string(),
            sha256: None,
        })
        .collect();
    let work = kiln_cache().join("bench-work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("work");
    let store_dir = work.join("cache");
    let store = ContentStore::open(&store_dir).expect("store");
    let out = work.join("kiln.tar");
    let build = |label: &str| -> f64 {
        let t = Instant::now();
        let mut tree = Tree::new(1_700_000_000);
        merged_usr(&mut tree).expect("merged");
        add_debs(&mut tree, &inputs, &store, &Limits::default()).expect("add_debs");
        let assembled = t.elapsed().as_secs_f64();
        write_tar(&tree, fs::File::create(&out).expect("out")).expect("write");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{label}: {secs:.2} s ({assembled:.2} s assembly), {} entries, tar {} MB, peak RSS {} MiB",
            tree.len(),
            fs::metadata(&out).map(|m| m.len()).unwrap_or(0) / 1_000_000,
            peak_rss_kib() / 1024
        );
        secs
    };
    let cold = build("kiln cold");
    let warm = build("kiln warm");

    let t = Instant::now();
    let root = work.join("dpkg-root");
    fs::create_dir_all(&root).expect("root");
    for d in &debs {
        run_bytes(Command::new("dpkg-deb").arg("-x").arg(d).arg(&root));
    }
    let oracle_tar = work.join("dpkg.tar");
    run_bytes(
        Command::new("tar")
            .arg("--sort=name")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&oracle_tar)
            .arg("."),
    );
    let oracle = t.elapsed().as_secs_f64();
    println!(
        "dpkg-deb -x + tar --sort=name: {oracle:.2} s, tar {} MB ({} debs)",
        fs::metadata(&oracle_tar).map(|m| m.len()).unwrap_or(0) / 1_000_000,
        debs.len()
    );
    println!(
        "ratio warm/oracle {:.3}, cold/oracle {:.3}",
        warm / oracle,
        cold / oracle
    );
    let _ = fs::remove_dir_all(&work);
}
