//! HTTPS probes against `openssl s_server` serving the generated apiserver certificate and
//! requiring a client certificate.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firstboot::pki::{Pki, PkiParams};
use firstboot::supervisor::{HttpProbe, TlsProbe};

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn https_probe_checks_ca_and_presents_client_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Pki::ensure(
        dir,
        &PkiParams {
            hostname: "node-1".into(),
            node_ips: vec![],
            service_ip: "10.96.0.1".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            server: "https://127.0.0.1:6443".into(),
            now,
        },
        None,
    )
    .unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", "apiserver.crt", "-key", "apiserver.key"])
            .args([
                "-CAfile",
                "ca.crt",
                "-Verify",
                "1",
                "-verify_return_error",
                "-www",
                "-quiet",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probe = |ca: &str, client: Option<&str>| {
        HttpProbe::from_url(
            &format!("https://127.0.0.1:{port}/livez"),
            Some(TlsProbe {
                ca: dir.join(ca),
                client: client
                    .map(|c| (dir.join(format!("{c}.crt")), dir.join(format!("{c}.key")))),
            }),
        )
        .unwrap()
        .check(Duration::from_secs(5))
    };
    let start = Instant::now();
    while let Err(e) = probe("ca.crt", Some("admin")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server never answered: {e:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Wrong CA: the server certificate is rejected.
    let e = probe("etcd/ca.crt", Some("admin")).unwrap_err();
    assert!(format!("{e:?}").contains("UnknownIssuer"), "{e:?}");
    // No client certificate: the server refuses the handshake.
    assert!(probe("ca.crt", None).is_err());
    // A client certificate from another CA is refused too.
    assert!(probe("ca.crt", Some("apiserver-etcd-client")).is_err());
    // And the right combination still works.
    probe("ca.crt", Some("kubelet-client")).unwrap();
}
