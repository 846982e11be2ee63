//! Operator-side secrets: `kiln secrets gen` and `kiln kubeconfig`, checked with openssl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use base64::Engine as _;
use kiln_tests::{kiln, text};

fn openssl(args: &[&str], dir: &std::path::Path) -> String {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn secrets_gen_and_admin_kubeconfig_chain_to_the_operators_ca() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.toml");
    let s = secrets.to_str().unwrap();
    let o = kiln(&["secrets", "gen", "--out", s], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let meta = std::fs::metadata(&secrets).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read(&secrets).unwrap();

    // A second gen refuses and leaves the file alone.
    let o = kiln(&["secrets", "gen", "--out", s], &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"));
    assert_eq!(std::fs::read(&secrets).unwrap(), first);

    let kc_path = dir.path().join("admin.kubeconfig");
    let o = kiln(
        &[
            "kubeconfig",
            "--secrets",
            s,
            "--server",
            "https://127.0.0.1:6443",
            "--out",
            kc_path.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let kc: serde_json::Value = serde_json::from_slice(&std::fs::read(&kc_path).unwrap()).unwrap();
    assert_eq!(
        kc["clusters"][0]["cluster"]["server"],
        "https://127.0.0.1:6443"
    );
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    std::fs::write(
        dir.path().join("ca.crt"),
        b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("admin.crt"),
        b64(&kc["users"][0]["user"]["client-certificate-data"]),
    )
    .unwrap();
    // The CA in the kubeconfig is the operator's.
    let t: toml::Value = toml::from_str(&String::from_utf8(first).unwrap()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
        t["ca"]["cert"].as_str().unwrap()
    );
    let verify = openssl(&["verify", "-CAfile", "ca.crt", "admin.crt"], dir.path());
    assert!(verify.contains("admin.crt: OK"), "{verify}");
    let subject = openssl(
        &["x509", "-in", "admin.crt", "-noout", "-subject"],
        dir.path(),
    );
    assert!(subject.contains("O = kiln:cluster-admins"), "{subject}");
    assert!(!subject.contains("system:masters"), "{subject}");

    // A damaged secrets file is named in the error and nothing is written.
    std::fs::write(&secrets, "ca = 1\n").unwrap();
    let out = dir.path().join("x.kubeconfig");
    let o = kiln(
        &[
            "kubeconfig",
            "--secrets",
            s,
            "--server",
            "https://127.0.0.1:6443",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("secrets.toml"),
        "{}",
        text(&o)
    );
    assert!(!out.exists());
}
