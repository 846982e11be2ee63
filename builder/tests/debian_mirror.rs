//! The Debian index download path against a local HTTP mirror on 127.0.0.1: a good
//! index locks, a tampered one is rejected naming the file and both digests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

use kiln::debian::{self, DebianError, DebianRequest};
use kiln::digest::{Algorithm, Digest};

/// Serves `files` (path -> bytes) over HTTP/1.0 on 127.0.0.1 for a bounded number of
/// requests; 404 for anything else. Returns the base URL.
fn serve(files: HashMap<String, Vec<u8>>, max_requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("addr");
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max_requests) {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Drain headers.
            let mut h = String::new();
            while reader.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let resp = match files.get(&path) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            };
            let _ = stream.write_all(&resp);
        }
    });
    format!("http://{addr}/debian")
}

/// GET into memory; a 4xx or 5xx is an error (ureq's default).
fn http_get(url: &str) -> Result<Vec<u8>, ureq::Error> {
    ureq::get(url)
        .call()?
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
}

fn stanza(name: &str, version: &str, deps: &str) -> String {
    let d = Digest::of_bytes(Algorithm::Sha256, format!("{name}{version}").as_bytes());
    format!(
        "Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: pool/main/{name}.deb\n\
         Size: 42\nSHA256: {}\n{deps}\n",
        d.hex()
    )
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gz");
    e.finish().expect("gz")
}

/// A mirror whose Release lists the digest of `listed` but which serves `served`.
fn mirror(listed: &[u8], served: &[u8]) -> String {
    let d = Digest::of_bytes(Algorithm::Sha256, listed);
    let release = format!(
        "Suite: stable\nCodename: test\nArchitectures: amd64\nComponents: main\nSHA256:\n \
         {} {} main/binary-amd64/Packages.gz\n",
        d.hex(),
        listed.len()
    );
    let mut files = HashMap::new();
    // No InRelease: exercises the fallback to Release.
    files.insert(
        "/debian/dists/test/Release".to_string(),
        release.into_bytes(),
    );
    files.insert(
        "/debian/dists/test/main/binary-amd64/Packages.gz".to_string(),
        served.to_vec(),
    );
    serve(files, 16)
}

fn request(mirror: String) -> DebianRequest {
    DebianRequest {
        mirror,
        suite: "test".into(),
        components: vec!["main".into()],
        arch: "amd64".into(),
        packages: vec!["top".into()],
        exclude: vec![],
        essential: false,
    }
}

fn packages_text() -> String {
    [
        stanza("top", "1", "Depends: lib (>= 2)"),
        stanza("lib", "2", ""),
    ]
    .join("\n")
}

#[test]
fn good_index_locks_through_http() {
    let packages = gz(packages_text().as_bytes());
    let req = request(mirror(&packages, &packages));
    let lock = debian::lock(&req, &[], &http_get).expect("locks");
    let names: Vec<&str> = lock.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, vec!["lib", "top"]);
    assert_eq!(
        debian::deb_url(&req.mirror, &lock[0].filename),
        format!("{}/pool/main/lib.deb", req.mirror)
    );
}

#[test]
fn tampered_index_is_rejected() {
    let packages = gz(packages_text().as_bytes());
    let tampered = gz(packages_text().replace("(>= 2)", "(>= 1)").as_bytes());
    let req = request(mirror(&packages, &tampered));
    let err = debian::lock(&req, &[], &http_get).expect_err("tampered index");
    let msg = err.to_string();
    assert!(
        matches!(err, DebianError::IndexDigestMismatch { .. }),
        "{msg}"
    );
    assert!(msg.contains("main/binary-amd64/Packages.gz"), "{msg}");
    assert!(
        msg.contains(&Digest::of_bytes(Algorithm::Sha256, &packages).to_string()),
        "{msg}"
    );
    assert!(
        msg.contains(&Digest::of_bytes(Algorithm::Sha256, &tampered).to_string()),
        "{msg}"
    );
}

#[test]
fn missing_suite_is_a_fetch_error_naming_the_url() {
    let packages = gz(packages_text().as_bytes());
    let mut req = request(mirror(&packages, &packages));
    req.suite = "nosuch".into();
    let err = debian::lock(&req, &[], &http_get).expect_err("no suite");
    assert!(err.to_string().contains("/dists/nosuch/InRelease"), "{err}");
}

#[test]
fn superseded_pin_names_both_ways_out() {
    let packages = gz(packages_text().as_bytes());
    let req = request(mirror(&packages, &packages));
    let mut lock = debian::lock(&req, &[], &http_get).expect("locks");
    let index = debian::fetch_index(&req.mirror, "test", &req.components, "amd64", &http_get)
        .expect("index");
    debian::check_pinned(&index, &lock).expect("all present");
    lock[0].version = "1".into();
    lock[0].filename = "pool/main/lib_1.deb".into();
    let err = debian::check_pinned(&index, &lock).expect_err("superseded");
    let msg = err.to_string();
    assert!(msg.contains("lib 1 (pool/main/lib_1.deb)"), "{msg}");
    assert!(
        msg.contains("kiln lock") && msg.contains("snapshot"),
        "{msg}"
    );
}

#[test]
fn clearsigned_in_release_and_by_hash_fetch() {
    let packages = gz(packages_text().as_bytes());
    let d = Digest::of_bytes(Algorithm::Sha256, &packages);
    let in_release = format!(
        "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nSuite: stable\nCodename: test\n\
         Acquire-By-Hash: yes\nArchitectures: all amd64\nComponents: main\nSHA256:\n \
         {} {} main/binary-amd64/Packages.gz\n-----BEGIN PGP SIGNATURE-----\n\nAAAA\n=AAAA\n\
         -----END PGP SIGNATURE-----\n",
        d.hex(),
        packages.len()
    );
    let mut files = HashMap::new();
    files.insert(
        "/debian/dists/test/InRelease".to_string(),
        in_release.into_bytes(),
    );
    // Only the by-hash path exists: the plain path would 404.
    files.insert(
        format!(
            "/debian/dists/test/main/binary-amd64/by-hash/SHA256/{}",
            d.hex()
        ),
        packages,
    );
    let req = request(serve(files, 16));
    let lock = debian::lock(&req, &[], &http_get).expect("locks via by-hash");
    assert_eq!(lock.len(), 2);
}
