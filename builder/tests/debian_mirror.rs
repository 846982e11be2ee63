//! The Debian index download path against a local HTTP mirror on 127.0.0.1: a good
//! index locks, a tampered one is rejected naming the file and both digests; the Release
//! counts only when signed by a key of the keyring and fresh (tampered, unsigned, foreign,
//! expired and revoked cases are refused naming the file).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

use kiln::debian::{self, DebianError, DebianRequest, Keyring};
use kiln::digest::{Algorithm, Digest};
use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, DetachedSignature, KeyType, SecretKeyParamsBuilder,
    SignedPublicKey, SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::ser::Serialize;
use pgp::types::Password;
use rand::SeedableRng;

/// A signing key for a test archive; `seed` makes it the same key every run. With
/// `subkey`, signatures are made by a signing subkey (as some archives do) and the primary
/// key may only certify.
fn archive_key(seed: u64, subkey: bool) -> SignedSecretKey {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(!subkey)
        .primary_user_id(format!("Kiln test archive {seed}"));
    if subkey {
        params.subkey(
            SubkeyParamsBuilder::default()
                .key_type(KeyType::Ed25519Legacy)
                .can_sign(true)
                .build()
                .expect("subkey params"),
        );
    }
    params
        .build()
        .expect("key params")
        .generate(&mut rng)
        .expect("generate key")
}

fn keyring_of(keys: &[&SignedSecretKey]) -> Keyring {
    let mut bytes = Vec::new();
    for k in keys {
        bytes.extend(
            SignedPublicKey::from((*k).clone())
                .to_bytes()
                .expect("serialize"),
        );
    }
    Keyring::parse(&bytes, "test.gpg").expect("keyring")
}

/// `text` clear-signed by `key` (its signing subkey when it has one), as an InRelease.
fn clearsign(text: &str, key: &SignedSecretKey) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let msg = match key.secret_subkeys.first() {
        Some(sub) => CleartextSignedMessage::sign(&mut rng, text, &sub.key, &Password::empty()),
        None => CleartextSignedMessage::sign(&mut rng, text, &key.primary_key, &Password::empty()),
    };
    msg.expect("sign")
        .to_armored_string(ArmorOptions::default())
        .expect("armor")
}

/// A detached, armored signature of `bytes`, as a Release.gpg.
fn detached(bytes: &[u8], key: &SignedSecretKey) -> Vec<u8> {
    let rng = rand::rngs::StdRng::seed_from_u64(8);
    DetachedSignature::sign_binary_data(
        rng,
        &key.primary_key,
        &Password::empty(),
        HashAlgorithm::Sha256,
        bytes,
    )
    .expect("sign")
    .to_armored_bytes(ArmorOptions::default())
    .expect("armor")
}

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

/// Release text listing `listed` as the Packages.gz index, with `extra` fields.
fn release_text(listed: &[u8], extra: &str) -> String {
    let d = Digest::of_bytes(Algorithm::Sha256, listed);
    format!(
        "Suite: stable\nCodename: test\n{extra}Architectures: amd64\nComponents: main\n\
         SHA256:\n {} {} main/binary-amd64/Packages.gz\n",
        d.hex(),
        listed.len()
    )
}

/// A mirror serving `in_release` as its InRelease and `served` as the Packages.gz index.
fn mirror_with(in_release: String, served: &[u8]) -> String {
    let mut files = HashMap::new();
    files.insert(
        "/debian/dists/test/InRelease".to_string(),
        in_release.into_bytes(),
    );
    files.insert(
        "/debian/dists/test/main/binary-amd64/Packages.gz".to_string(),
        served.to_vec(),
    );
    serve(files, 16)
}

/// A mirror whose (signed) Release lists the digest of `listed` but which serves `served`.
fn mirror(listed: &[u8], served: &[u8]) -> String {
    mirror_with(
        clearsign(&release_text(listed, ""), &archive_key(1, false)),
        served,
    )
}

/// The keyring of the archive [`mirror`] signs with.
fn trusted() -> Keyring {
    keyring_of(&[&archive_key(1, false)])
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
    let (lock, signer) = debian::lock(&req, &[], &trusted(), &http_get).expect("locks");
    assert_eq!(signer.user_id, "Kiln test archive 1");
    assert_eq!(signer.keyring, "test.gpg");
    assert_eq!(vec![signer.fingerprint], trusted().fingerprints());
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
    let err = debian::lock(&req, &[], &trusted(), &http_get).expect_err("tampered index");
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
    let err = debian::lock(&req, &[], &trusted(), &http_get).expect_err("no suite");
    assert!(err.to_string().contains("/dists/nosuch/InRelease"), "{err}");
}

#[test]
fn superseded_pin_names_both_ways_out() {
    let packages = gz(packages_text().as_bytes());
    let req = request(mirror(&packages, &packages));
    let (mut lock, _) = debian::lock(&req, &[], &trusted(), &http_get).expect("locks");
    let (index, _) = debian::fetch_index(
        &req.mirror,
        "test",
        &req.components,
        "amd64",
        &trusted(),
        &http_get,
    )
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
    let in_release = clearsign(
        &release_text(&packages, "Acquire-By-Hash: yes\n"),
        &archive_key(1, false),
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
    let (lock, _) = debian::lock(&req, &[], &trusted(), &http_get).expect("locks via by-hash");
    assert_eq!(lock.len(), 2);
}

#[test]
fn release_with_detached_signature_when_there_is_no_in_release() {
    let packages = gz(packages_text().as_bytes());
    let release = release_text(&packages, "");
    let key = archive_key(1, false);
    let mut files = HashMap::new();
    files.insert(
        "/debian/dists/test/main/binary-amd64/Packages.gz".to_string(),
        packages,
    );
    files.insert(
        "/debian/dists/test/Release".to_string(),
        release.clone().into_bytes(),
    );
    // Unsigned: refused.
    let req = request(serve(files.clone(), 16));
    let err = debian::lock(&req, &[], &trusted(), &http_get).expect_err("unsigned");
    assert!(matches!(err, DebianError::Unsigned { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/dists/test/Release is not signed"),
        "{err}"
    );
    // With Release.gpg: locks.
    files.insert(
        "/debian/dists/test/Release.gpg".to_string(),
        detached(release.as_bytes(), &key),
    );
    let req = request(serve(files.clone(), 16));
    debian::lock(&req, &[], &trusted(), &http_get).expect("detached signature verifies");
    // Release changed after signing: refused.
    files.insert(
        "/debian/dists/test/Release".to_string(),
        release
            .replace("Codename: test", "Codename: tesT")
            .into_bytes(),
    );
    let req = request(serve(files, 16));
    let err = debian::lock(&req, &[], &trusted(), &http_get).expect_err("tampered Release");
    assert!(matches!(err, DebianError::BadSignature { .. }), "{err}");
}

/// Every way a Release may not be believed, each refused naming the file, and nothing
/// else fetched after it (the index is never read).
#[test]
fn tampered_foreign_unsigned_and_stale_releases_are_refused() {
    let packages = gz(packages_text().as_bytes());
    let key = archive_key(1, false);
    let good = clearsign(&release_text(&packages, ""), &key);
    let refused = |in_release: String, keyring: &Keyring| {
        let req = request(mirror_with(in_release, &packages));
        let err = debian::lock(&req, &[], keyring, &http_get).expect_err("refused");
        assert!(
            err.to_string().contains("/debian/dists/test/InRelease"),
            "names the file: {err}"
        );
        err
    };

    // One byte of the signed text changed, the signature kept.
    let tampered = good.replacen("Codename: test", "Codename: tesu", 1);
    assert_ne!(tampered, good);
    let err = refused(tampered, &trusted());
    assert!(matches!(err, DebianError::BadSignature { .. }), "{err}");
    assert!(
        err.to_string().contains("test.gpg"),
        "names the keyring: {err}"
    );

    // Signed by a key the keyring does not hold.
    let err = refused(
        clearsign(&release_text(&packages, ""), &archive_key(2, false)),
        &trusted(),
    );
    assert!(matches!(err, DebianError::BadSignature { .. }), "{err}");

    // Not signed at all.
    let err = refused(release_text(&packages, ""), &trusted());
    assert!(matches!(err, DebianError::Unsigned { .. }), "{err}");

    // Valid-Until has passed (properly signed).
    let stale = clearsign(
        &release_text(
            &packages,
            "Date: Sat, 02 Nov 2024 10:15:42 UTC\nValid-Until: Sat, 09 Nov 2024 10:15:42 UTC\n",
        ),
        &key,
    );
    let err = refused(stale, &trusted());
    assert!(matches!(err, DebianError::Expired { .. }), "{err}");
    assert!(
        err.to_string().contains("Sat, 09 Nov 2024 10:15:42 UTC"),
        "{err}"
    );

    // Dated in the future.
    let ahead = clearsign(
        &release_text(&packages, "Date: Sat, 09 Nov 2999 10:15:42 UTC\n"),
        &key,
    );
    let err = refused(ahead, &trusted());
    assert!(matches!(err, DebianError::NotYetValid { .. }), "{err}");

    // A fresh Valid-Until passes; so does a key among others in the keyring, and a
    // signing subkey bound to its primary key.
    let fresh = clearsign(
        &release_text(&packages, "Valid-Until: Sat, 09 Nov 2999 10:15:42 UTC\n"),
        &key,
    );
    let both = keyring_of(&[&archive_key(2, false), &key]);
    let req = request(mirror_with(fresh, &packages));
    debian::lock(&req, &[], &both, &http_get).expect("fresh and trusted");
    let sub = archive_key(3, true);
    let req = request(mirror_with(
        clearsign(&release_text(&packages, ""), &sub),
        &packages,
    ));
    let (_, signer) =
        debian::lock(&req, &[], &keyring_of(&[&sub]), &http_get).expect("signed by a bound subkey");
    assert_ne!(
        vec![signer.fingerprint],
        keyring_of(&[&sub]).fingerprints(),
        "the subkey signed, not the primary key"
    );
}
