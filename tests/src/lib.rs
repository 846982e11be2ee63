//! Kiln's test support: local mirror server, the `kiln` binary, directory snapshots,
//! QEMU harness.
pub mod boot;
pub mod goproxy;
pub mod images;
pub mod mirror;
pub mod qemu;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// Whether process `pid` is running: it exists and is not a zombie waiting to be reaped.
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    state.is_some_and(|s| s != "Z")
}

/// The workspace root (where Cargo.toml and images/ are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Copies the project's definitions and locks (images/*.toml, *.lock) into `dir`, so that a
/// test's own definition there can extend them (a definition reads only files inside its
/// own directory).
pub fn copy_definitions(dir: &Path) {
    let images = workspace_root().join("images");
    for entry in std::fs::read_dir(&images).expect("images/") {
        let path = entry.expect("images/ entry").path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml" | "lock")
        ) {
            let name = path.file_name().expect("a file name");
            std::fs::copy(&path, dir.join(name)).expect("copying a definition");
        }
    }
}

/// The `kiln` binary of this build profile, built on demand.
pub fn kiln_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/kiln
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    let bin = profile_dir.join("kiln");
    if !bin.exists() {
        let release = profile_dir.ends_with("release");
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "--bin", "kiln"])
            .current_dir(workspace_root());
        if release {
            c.arg("--release");
        }
        let st = c.status().expect("cargo build runs");
        assert!(st.success(), "building kiln failed");
    }
    bin
}

/// Kiln's cache directory as `kiln` sees it: `$KILN_CACHE`, else `~/.cache/kiln`.
pub fn kiln_cache() -> PathBuf {
    kiln::cache::Cache::from_env()
        .expect("KILN_CACHE or HOME is set")
        .root()
        .to_path_buf()
}

/// Runs `kiln` with `args` in the workspace root; `env` adds variables.
pub fn kiln(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(kiln_bin());
    c.args(args).current_dir(workspace_root());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("kiln runs")
}

/// The file at `path` inside the tar `tar_path` (a leading `./` in member names ignored).
/// Panics, naming both, when it is not there: for tests.
pub fn tar_member(tar_path: &Path, path: &str) -> Vec<u8> {
    let file = std::fs::File::open(tar_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", tar_path.display()));
    let mut ar = tar::Archive::new(file);
    let entries = ar
        .entries()
        .unwrap_or_else(|e| panic!("reading {}: {e}", tar_path.display()));
    for e in entries {
        let mut e = e.unwrap_or_else(|e| panic!("reading {}: {e}", tar_path.display()));
        let name = e.path().map(|p| p.to_string_lossy().into_owned());
        if name.is_ok_and(|n| n.trim_start_matches("./") == path) {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v)
                .unwrap_or_else(|e| panic!("reading {path} in {}: {e}", tar_path.display()));
            return v;
        }
    }
    panic!("{path} not in {}", tar_path.display());
}

/// Runs `cmd` to completion and returns its stdout (lossy UTF-8). Panics, naming the command
/// with its status, stdout and stderr, unless it ran and succeeded.
pub fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_bytes(cmd)).into_owned()
}

/// [`run`], returning stdout as bytes.
pub fn run_bytes(cmd: &mut Command) -> Vec<u8> {
    succeeded(cmd).stdout
}

/// [`run`], returning stdout followed by stderr (for tools that report on stderr).
pub fn run_combined(cmd: &mut Command) -> String {
    let o = succeeded(cmd);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The output of `cmd`, which must have run and succeeded (else a panic naming it, with its
/// status and both streams).
fn succeeded(cmd: &mut Command) -> Output {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    o
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

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` (relative path -> sha256 hex, or `<dir>`/`-> target`),
/// to assert that a failed command changed nothing.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap_or_default();
                out.insert(rel, format!("-> {}", t.display()));
            } else if meta.is_dir() {
                out.insert(rel, "<dir>".into());
                walk(root, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.insert(rel, hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Validates an SPDX document with the SPDX project's own validator (spdx-tools, which
/// `ci/setup` installs); panics with its findings when the document is not valid SPDX.
pub fn validate_spdx(path: &Path) {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let tool = PathBuf::from(home).join(".cache/kiln-ci/spdx-venv/bin/pyspdxtools");
    assert!(
        tool.is_file(),
        "{} is missing: run ci/setup",
        tool.display()
    );
    let o = Command::new(&tool)
        .arg("-i")
        .arg(path)
        .output()
        .expect("running pyspdxtools");
    assert!(
        o.status.success(),
        "{} is not valid SPDX:\n{}",
        path.display(),
        text(&o)
    );
}
