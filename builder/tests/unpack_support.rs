//! Helpers shared by the unpack tests (included with `mod unpack_support;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$KILN_CACHE` or `~/.cache/kiln`.
pub fn kiln_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    Path::new(&home).join(".cache").join("kiln")
}

/// A real .deb from the host's apt sources, downloaded once into `$KILN_CACHE/fixtures`.
pub fn fixture_deb(package: &str) -> PathBuf {
    // Tests of one binary run in parallel: download one package at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = kiln_cache().join("fixtures");
    std::fs::create_dir_all(&dir).expect("fixtures dir");
    if let Some(p) = find_deb(&dir, package) {
        return p;
    }
    let out = Command::new("apt-get")
        .args(["download", package])
        .current_dir(&dir)
        .output()
        .expect("run apt-get download");
    assert!(
        out.status.success(),
        "apt-get download {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    find_deb(&dir, package).unwrap_or_else(|| panic!("{package} .deb not found after download"))
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Runs a host tool, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Maps a path of an unmerged Debian tree to its merged-/usr place.
pub fn merged(path: &str) -> String {
    for top in ["bin", "sbin", "lib", "lib64"] {
        if path == top {
            return format!("usr/{top}");
        }
        if let Some(rest) = path.strip_prefix(&format!("{top}/")) {
            return format!("usr/{top}/{rest}");
        }
    }
    path.to_string()
}
