//! The command line as a user meets it: completion scripts the shells accept, manual pages
//! groff renders without a warning, and one clear line with the documented exit code for
//! every path argument that is missing, a directory, or of the wrong kind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use kiln_tests::{kiln, text};

#[test]
fn completions_load_in_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = kiln(&["completions", shell], &[]);
        assert!(o.status.success(), "{shell}: {}", text(&o));
        let script = String::from_utf8(o.stdout).unwrap();
        for sub in ["build", "inspect", "completions"] {
            assert!(script.contains(sub), "{shell} completes {sub}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("kiln.{shell}"));
        std::fs::write(&file, &script).unwrap();
        // bash sources the script and registers the function; zsh and fish parse it.
        let f = file.to_str().unwrap();
        let o = match shell {
            "bash" => Command::new("bash")
                .args(["-c", &format!("source {f} && complete -p kiln")])
                .output(),
            _ => Command::new(shell).args(["-n", f]).output(),
        }
        .unwrap();
        assert!(
            o.status.success(),
            "{shell} rejects its script: {}",
            text(&o)
        );
        if shell == "bash" {
            assert!(
                String::from_utf8_lossy(&o.stdout).contains("_kiln"),
                "{}",
                text(&o)
            );
        }
    }
    let o = kiln(&["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn manual_pages_render_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let o = kiln(&["man", "--out", out.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let mut pages: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "kiln.1",
        "kiln-build.1",
        "kiln-lock.1",
        "kiln-secrets-gen.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} in {pages:?}");
    }
    for page in &pages {
        let o = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(out.join(page))
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{page}: {}",
            text(&o)
        );
    }
    let o = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .arg(out.join("kiln.1"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("EXIT CODES"), "{shown}");
    assert!(shown.contains("kiln lock --check"), "{shown}");
}

/// Runs kiln with `args`, `{}` in them replaced by `path`; expects exit code 2 and one line
/// on stderr that names the path and says `want`.
fn refused(args: &[&str], path: &Path, want: &str) {
    let p = path.to_str().unwrap();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "{}" { p } else { a })
        .collect();
    // A cache that is not there: were a check missing, `cache prune` would find nothing.
    let o = kiln(
        &args,
        &[("KILN_CACHE", Path::new("/nonexistent/kiln-cache"))],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "kiln {args:?}: {}", text(&o));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line for kiln {args:?}: {err}");
    assert!(
        lines[0].starts_with(&format!("kiln: error: {p}: ")) && lines[0].contains(want),
        "kiln {args:?}: {err}"
    );
}

#[test]
fn every_path_argument_is_checked_with_one_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, b"\x7fELF\x02\x01\x01\0\0\0").unwrap();
    let text_file = dir.path().join("notes.txt");
    std::fs::write(&text_file, "not an image\n").unwrap();
    let fake = dir.path().join("fake.qcow2");
    std::fs::write(&fake, "not a qcow2\n").unwrap();
    let d = dir.path();

    for args in [
        vec!["build", "{}"],
        vec!["lock", "{}"],
        vec!["lock", "--check", "{}"],
        vec!["fetch", "{}"],
        vec!["cache", "prune", "--keep-locked", "{}"],
    ] {
        refused(&args, &missing, "no such file; wanted an image definition");
        refused(&args, d, "a directory; wanted an image definition");
        refused(&args, &binary, "binary data; wanted an image definition");
    }
    for args in [vec!["inspect", "{}"], vec!["run", "{}"]] {
        refused(
            &args,
            &missing,
            "no such file; wanted a built .raw, .qcow2 or .iso",
        );
        refused(&args, &text_file, "(told by the file name's extension)");
        refused(&args, &fake, "not a qcow2 image (no qcow2 header)");
    }
    refused(&["inspect", "{}"], d, "a directory; wanted a built");
    refused(
        &["run", "{}"],
        d,
        "not a PXE bundle (no vmlinuz, no initramfs",
    );
    let image = kiln_tests::workspace_root().join("images/minimal.toml");
    let image = image.to_str().unwrap();
    let kubeconfig = [
        "kubeconfig",
        "--secrets",
        "{}",
        "--server",
        "https://127.0.0.1:6443",
    ];
    refused(&kubeconfig, &missing, "no such file; wanted a secrets file");
    refused(&kubeconfig, &binary, "binary data; wanted a secrets file");
    let qcow2 = dir.path().join("header-only.qcow2");
    std::fs::write(&qcow2, b"QFI\xfb\0\0\0\x03").unwrap();
    let qcow2 = qcow2.to_str().unwrap();
    refused(
        &["run", qcow2, "--config", "{}"],
        &missing,
        "no such file; wanted a machine config",
    );
    refused(
        &["run", qcow2, "--secrets", "{}"],
        d,
        "a directory; wanted a secrets file",
    );
    for args in [
        vec!["health", "--kubeconfig", "{}"],
        vec!["status", "--kubeconfig", "{}"],
        vec!["logs", "etcd", "--kubeconfig", "{}"],
    ] {
        refused(&args, &missing, "no such file; wanted an admin kubeconfig");
        refused(&args, &binary, "binary data; wanted an admin kubeconfig");
    }
    refused(
        &["health", "--state-dir", "{}"],
        &text_file,
        "not a directory",
    );
    refused(&["run", "--stop", "{}"], &text_file, "not a directory");
    let o = kiln(&["logs", "no-such-component", "--kubeconfig", "x"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // A directory that no `kiln run` used: a failure naming it.
    let o = kiln(&["run", "--stop", d.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no qemu.pid"),
        "{}",
        text(&o)
    );
    // The image is checked first; these name a definition where an image is wanted.
    refused(
        &["run", "{}"],
        Path::new(image),
        "told by the file name's extension",
    );
    refused(
        &["build", "--out", "{}"],
        &text_file,
        "a file, not an output directory",
    );
    // Nothing was created by any of them.
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "binary.toml",
            "fake.qcow2",
            "header-only.qcow2",
            "notes.txt"
        ]
    );
}
