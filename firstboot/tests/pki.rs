//! PKI generation checked with openssl as the oracle.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use firstboot::pki::{Pki, PkiParams, Secrets};

const NOW: i64 = 1_790_000_000; // 2026-09

fn params() -> PkiParams {
    PkiParams {
        hostname: "node-1".into(),
        node_ips: vec!["10.0.2.15".parse().unwrap(), "fd00::15".parse().unwrap()],
        service_ip: "10.96.0.1".parse::<IpAddr>().unwrap(),
        cluster_domain: "cluster.local".into(),
        server: "https://127.0.0.1:6443".into(),
        now: NOW,
    }
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(dir: &Path, crt: &str) -> String {
    openssl(&["x509", "-in", crt, "-text", "-noout"], dir)
}

/// Verifies at the generation time (the test's NOW), not the wall clock.
fn verify(dir: &Path, ca: &str, crt: &str, purpose: &str) {
    verify_at(dir, ca, crt, purpose, NOW)
}

fn verify_at(dir: &Path, ca: &str, crt: &str, purpose: &str, at: i64) {
    let at = at.to_string();
    let out = openssl(
        &[
            "verify", "-attime", &at, "-purpose", purpose, "-CAfile", ca, crt,
        ],
        dir,
    );
    assert!(out.contains(": OK"), "{crt}: {out}");
}

const LEAVES: &[(&str, &str, &str)] = &[
    ("apiserver.crt", "ca.crt", "sslserver"),
    ("apiserver-kubelet-client.crt", "ca.crt", "sslclient"),
    ("apiserver-etcd-client.crt", "etcd/ca.crt", "sslclient"),
    ("etcd/server.crt", "etcd/ca.crt", "sslserver"),
    ("etcd/server.crt", "etcd/ca.crt", "sslclient"),
    ("etcd/peer.crt", "etcd/ca.crt", "sslserver"),
    ("etcd/peer.crt", "etcd/ca.crt", "sslclient"),
    ("front-proxy-client.crt", "front-proxy-ca.crt", "sslclient"),
    ("kubelet.crt", "ca.crt", "sslserver"),
    ("kubelet-client.crt", "ca.crt", "sslclient"),
    ("admin.crt", "ca.crt", "sslclient"),
    ("super-admin.crt", "ca.crt", "sslclient"),
    ("controller-manager.crt", "ca.crt", "sslclient"),
    ("scheduler.crt", "ca.crt", "sslclient"),
    ("kube-proxy.crt", "ca.crt", "sslclient"),
    ("controller-manager-server.crt", "ca.crt", "sslserver"),
    ("scheduler-server.crt", "ca.crt", "sslserver"),
];

#[test]
fn generates_a_verifiable_pki() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let report = Pki::ensure(&dir, &params(), None).unwrap();

    for (crt, ca, purpose) in LEAVES {
        verify(&dir, ca, crt, purpose);
    }
    // Leaves do not verify against the wrong CA.
    let bad = Command::new("openssl")
        .args([
            "verify",
            "-attime",
            &NOW.to_string(),
            "-CAfile",
            "ca.crt",
            "etcd/server.crt",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let api = text(&dir, "apiserver.crt");
    for san in [
        "DNS:node-1",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:127.0.0.1",
        "IP Address:10.0.2.15",
        "IP Address:FD00:0:0:0:0:0:0:15",
        "IP Address:10.96.0.1",
    ] {
        assert!(api.contains(san), "apiserver SAN {san} missing:\n{api}");
    }
    assert!(api.contains("CN=kube-apiserver") || api.contains("CN = kube-apiserver"));
    // The controller manager and the scheduler serve on the loopback address only.
    for crt in ["controller-manager-server.crt", "scheduler-server.crt"] {
        let t = text(&dir, crt);
        for san in ["DNS:localhost", "IP Address:127.0.0.1"] {
            assert!(t.contains(san), "{crt} SAN {san} missing:\n{t}");
        }
        assert!(!t.contains("DNS:node-1"), "{crt}:\n{t}");
    }

    let subject = |crt: &str| {
        openssl(
            &[
                "x509", "-in", crt, "-noout", "-subject", "-nameopt", "RFC2253",
            ],
            &dir,
        )
    };
    assert_eq!(
        subject("kubelet-client.crt").trim(),
        "subject=CN=system:node:node-1,O=system:nodes"
    );
    assert_eq!(
        subject("admin.crt").trim(),
        "subject=CN=kiln-admin,O=kiln:cluster-admins"
    );
    assert_eq!(
        subject("super-admin.crt").trim(),
        "subject=CN=kiln-super-admin,O=system:masters"
    );
    assert_eq!(
        subject("controller-manager.crt").trim(),
        "subject=CN=system:kube-controller-manager"
    );
    assert_eq!(
        subject("scheduler.crt").trim(),
        "subject=CN=system:kube-scheduler"
    );
    assert_eq!(
        subject("kube-proxy.crt").trim(),
        "subject=CN=system:kube-proxy"
    );
    let etcd = text(&dir, "etcd/server.crt");
    assert!(
        etcd.contains("IP Address:127.0.0.1") && etcd.contains("DNS:node-1"),
        "{etcd}"
    );
    let kubelet = text(&dir, "kubelet.crt");
    assert!(kubelet.contains("IP Address:10.0.2.15") && kubelet.contains("DNS:node-1"));
    let ca = text(&dir, "ca.crt");
    assert!(
        ca.contains("CA:TRUE") && ca.contains("Certificate Sign"),
        "{ca}"
    );
    assert!(!api.contains("CA:TRUE"));

    // Keys and kubeconfigs are 0600, certificates 0644; openssl can read the keys.
    for entry in walk(&dir) {
        let mode = std::fs::metadata(&entry).unwrap().mode() & 0o777;
        let name = entry.to_string_lossy().into_owned();
        if name.ends_with(".key") || name.ends_with(".conf") || name.ends_with(".json") {
            assert_eq!(mode, 0o600, "{name}");
        } else {
            assert_eq!(mode, 0o644, "{name}");
        }
        if name.ends_with(".key") {
            openssl(&["pkey", "-in", &name, "-noout"], &dir);
        }
    }
    // Service-account public key matches the private key.
    let derived = openssl(&["pkey", "-in", "sa.key", "-pubout"], &dir);
    assert_eq!(
        derived,
        std::fs::read_to_string(dir.join("sa.pub")).unwrap()
    );

    // Kubeconfigs embed a client cert that verifies against the embedded CA, plus its key.
    for (conf, cn) in [
        ("admin.conf", "kiln-admin"),
        ("kubelet.conf", "system:node:node-1"),
        ("controller-manager.conf", "system:kube-controller-manager"),
        ("scheduler.conf", "system:kube-scheduler"),
        ("kube-proxy.conf", "system:kube-proxy"),
        ("super-admin.conf", "kiln-super-admin"),
    ] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(conf)).unwrap()).unwrap();
        assert_eq!(v["kind"], "Config");
        let cluster = &v["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://127.0.0.1:6443");
        let user = &v["users"][0]["user"];
        let decode = |s: &serde_json::Value| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(s.as_str().unwrap())
                .unwrap()
        };
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(
            scratch.join("ca.pem"),
            decode(&cluster["certificate-authority-data"]),
        )
        .unwrap();
        std::fs::write(
            scratch.join("c.pem"),
            decode(&user["client-certificate-data"]),
        )
        .unwrap();
        std::fs::write(scratch.join("k.pem"), decode(&user["client-key-data"])).unwrap();
        verify(&scratch, "ca.pem", "c.pem", "sslclient");
        let s = openssl(
            &[
                "x509", "-in", "c.pem", "-noout", "-subject", "-nameopt", "RFC2253",
            ],
            &scratch,
        );
        assert!(s.contains(&format!("CN={cn}")), "{conf}: {s}");
        let cert_pub = openssl(&["x509", "-in", "c.pem", "-noout", "-pubkey"], &scratch);
        let key_pub = openssl(&["pkey", "-in", "k.pem", "-pubout"], &scratch);
        assert_eq!(cert_pub, key_pub, "{conf}: key does not match cert");
    }

    // Encryption config: secretbox with a 32-byte key, then identity.
    let enc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("encryption-config.json")).unwrap())
            .unwrap();
    assert_eq!(enc["apiVersion"], "apiserver.config.k8s.io/v1");
    assert_eq!(enc["resources"][0]["resources"][0], "secrets");
    let key = enc["resources"][0]["providers"][0]["secretbox"]["keys"][0]["secret"]
        .as_str()
        .unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap()
            .len(),
        32
    );
    assert_eq!(
        enc["resources"][0]["providers"][1]["identity"],
        serde_json::json!({})
    );

    // Report: every certificate, expiry one year (leaves) or ten years (CAs) from NOW.
    let certs: BTreeMap<_, _> = report.certs.iter().map(|c| (c.file.as_str(), c)).collect();
    assert_eq!(certs.len(), 3 + 15, "{:?}", certs.keys());
    assert_eq!(certs["apiserver.crt"].not_after, NOW + 365 * 86_400);
    assert_eq!(certs["ca.crt"].not_after, NOW + 10 * 365 * 86_400);
    let enddate = openssl(
        &["x509", "-in", "apiserver.crt", "-noout", "-enddate"],
        &dir,
    );
    assert!(enddate.contains("2027"), "{enddate}");
    assert!(report.written.contains(&"sa.key".to_string()));

    // A second run changes nothing.
    let before = snapshot(&dir);
    let again = Pki::ensure(&dir, &params(), None).unwrap();
    assert!(again.written.is_empty(), "{:?}", again.written);
    assert_eq!(before, snapshot(&dir));
    assert_eq!(again.certs, report.certs);
}

#[test]
fn renews_only_leaves_close_to_expiry_and_their_kubeconfigs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Pki::ensure(dir, &params(), None).unwrap();
    let mut later = params();
    later.now = NOW + 340 * 86_400; // 25 days before leaf expiry
    let r = Pki::ensure(dir, &later, None).unwrap();
    assert!(r.written.contains(&"apiserver.crt".to_string()));
    assert!(r.written.contains(&"admin.conf".to_string()));
    assert!(!r
        .written
        .iter()
        .any(|f| f == "ca.crt" || f == "sa.key" || f == "encryption-config.json"));
    verify_at(dir, "ca.crt", "apiserver.crt", "sslserver", later.now);
    let info = r.certs.iter().find(|c| c.file == "apiserver.crt").unwrap();
    assert_eq!(info.not_after, later.now + 365 * 86_400);
}

#[test]
fn operator_secrets_are_used() {
    let secrets = Secrets::generate(NOW).unwrap();
    let parsed = Secrets::from_toml(&secrets.to_toml().unwrap()).unwrap();
    assert_eq!(parsed, secrets);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Pki::ensure(dir, &params(), Some(&parsed)).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        secrets.ca.cert
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("etcd/ca.key")).unwrap(),
        secrets.etcd_ca.key
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("front-proxy-ca.crt")).unwrap(),
        secrets.front_proxy_ca.cert
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("sa.pub")).unwrap(),
        secrets.service_account.public
    );

    // The operator mints an admin kubeconfig that the node's CA accepts.
    let conf = firstboot::pki::admin_kubeconfig(&secrets, "https://10.0.2.15:6443", NOW).unwrap();
    let v: serde_json::Value = serde_json::from_str(&conf).unwrap();
    std::fs::write(
        dir.join("minted.crt"),
        user_data(&conf, "client-certificate-data"),
    )
    .unwrap();
    verify(dir, "ca.crt", "minted.crt", "sslclient");
    assert_eq!(
        v["clusters"][0]["cluster"]["server"],
        "https://10.0.2.15:6443"
    );
}

#[test]
fn incomplete_pair_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    Pki::ensure(tmp.path(), &params(), None).unwrap();
    std::fs::remove_file(tmp.path().join("etcd/ca.key")).unwrap();
    let e = Pki::ensure(tmp.path(), &params(), None).unwrap_err();
    assert!(e.to_string().contains("etcd/ca.key"), "{e}");
}

/// What a power cut inside a pair's write leaves, and the next start: the pair staged
/// completely is put in place (even when its key was already renamed), a pair staged only
/// as far as its key is dropped and the old pair stands; either way the PKI is whole again
/// and its kubeconfigs match their pairs.
#[test]
fn a_power_cut_inside_a_pair_leaves_the_old_pair_or_the_new() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Pki::ensure(dir, &params(), None).unwrap();
    let read = |rel: &str| std::fs::read_to_string(dir.join(rel)).unwrap();
    let old = (read("apiserver.key"), read("apiserver.crt"));
    // A second PKI's pairs stand for "the new ones" (same names, different keys).
    let other = tempfile::tempdir().unwrap();
    Pki::ensure(other.path(), &params(), None).unwrap();
    let other_read = |rel: &str| std::fs::read_to_string(other.path().join(rel)).unwrap();
    let pending = dir.join(".pending");
    std::fs::create_dir_all(&pending).unwrap();

    // Cut after the key was staged, before the certificate was: the old pair stands.
    std::fs::write(pending.join("apiserver.key"), other_read("apiserver.key")).unwrap();
    std::fs::write(pending.join(".apiserver.crt.tmp"), "half a cert").unwrap();
    let r = Pki::ensure(dir, &params(), None).unwrap();
    assert_eq!((read("apiserver.key"), read("apiserver.crt")), old);
    assert!(
        !r.written.iter().any(|f| f.starts_with("apiserver")),
        "{:?}",
        r.written
    );
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0);

    // Cut after both were staged and the key renamed, before the certificate was: the new
    // pair is completed, and the admin kubeconfig follows its new pair.
    std::fs::write(dir.join("admin.key"), other_read("admin.key")).unwrap();
    std::fs::write(pending.join("admin.crt"), other_read("admin.crt")).unwrap();
    // And a pair in a subdirectory staged completely, nothing renamed yet.
    std::fs::write(
        pending.join("etcd%server.key"),
        other_read("etcd/server.key"),
    )
    .unwrap();
    std::fs::write(
        pending.join("etcd%server.crt"),
        other_read("etcd/server.crt"),
    )
    .unwrap();
    let r = Pki::ensure(dir, &params(), None).unwrap();
    assert_eq!(read("admin.crt"), other_read("admin.crt"));
    assert_eq!(read("etcd/server.key"), other_read("etcd/server.key"));
    assert_eq!(read("etcd/server.crt"), other_read("etcd/server.crt"));
    for f in [
        "admin.crt",
        "etcd/server.crt",
        "etcd/server.key",
        "admin.conf",
    ] {
        assert!(r.written.iter().any(|w| w == f), "{f} in {:?}", r.written);
    }
    assert_eq!(
        user_data(&read("admin.conf"), "client-key-data"),
        other_read("admin.key")
    );
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0);
    // (The new pairs are signed by the other PKI's CAs; a real cut never mixes CAs.)

    // Nothing pending and nothing due: a further start writes nothing.
    let before = snapshot(dir);
    assert!(Pki::ensure(dir, &params(), None)
        .unwrap()
        .written
        .is_empty());
    assert_eq!(snapshot(dir), before);
}

#[test]
fn keys_and_kubeconfigs_are_put_back_to_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Pki::ensure(dir, &params(), None).unwrap();
    for f in [
        "ca.key",
        "etcd/ca.key",
        "admin.conf",
        "encryption-config.json",
    ] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let r = Pki::ensure(dir, &params(), None).unwrap();
    for f in [
        "ca.key",
        "etcd/ca.key",
        "admin.conf",
        "encryption-config.json",
    ] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
        assert!(r.written.iter().any(|w| w == f), "{f} in {:?}", r.written);
    }
    // Certificates stay world-readable.
    let mode = std::fs::metadata(dir.join("ca.crt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644);
}

/// A base64 field of a kubeconfig's first user, decoded.
fn user_data(kubeconfig: &str, field: &str) -> String {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(kubeconfig).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["users"][0]["user"][field].as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>, i64, i64)> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (
                p.clone(),
                std::fs::read(&p).unwrap(),
                m.mtime(),
                m.mtime_nsec(),
            )
        })
        .collect()
}
