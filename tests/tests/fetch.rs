//! Fetching into the content-addressed cache, against a local mirror on 127.0.0.1 serving
//! real .debs (from the host's Debian mirror, cached outside the repo) and hostile cases.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::cache::Cache;
use kiln::digest::{Algorithm, Digest};
use kiln::fetch::{FetchError, FetchRequest, Fetcher, FetcherOptions, Rewrite};
use kiln_tests::mirror::{self, Behaviour, Mirror};

/// Deterministic filler bytes, different per seed.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn sha256(b: &[u8]) -> Digest {
    Digest::of_bytes(Algorithm::Sha256, b)
}

fn opts() -> FetcherOptions {
    FetcherOptions {
        parallel: 3,
        retries: 2,
        backoff: Duration::from_millis(20),
        progress: false,
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(2),
        ..FetcherOptions::default()
    }
}

fn fetcher(cache: &Path, opts: FetcherOptions) -> Fetcher {
    Fetcher::new(Cache::at(cache), opts).expect("fetcher")
}

/// Every regular file under `dir` with its size, sorted.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.expect("dir entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta.len()));
            }
        }
    }
    out.sort();
    out
}

/// A request for generated content served by `mirror` at `path`.
fn request(mirror: &Mirror, name: &str, path: &str, content: &[u8]) -> FetchRequest {
    FetchRequest {
        name: name.to_string(),
        url: format!("{}{path}", mirror.url()),
        digest: sha256(content),
        size: Some(content.len() as u64),
    }
}

/// Assert a failed fetch left the cache as it was: same files, nothing in tmp/.
fn assert_cache_unchanged(cache: &Path, before: &[(PathBuf, u64)]) {
    assert_eq!(files(cache), before, "cache changed after a failed fetch");
    assert!(
        files(&cache.join("tmp")).is_empty(),
        "temporary files left behind"
    );
}

#[test]
fn real_debs_fetched_through_a_mirror_rewrite() {
    let debs: Vec<_> = ["hostname", "libcap2"]
        .iter()
        .map(|p| mirror::fixture_deb(p).expect("fixture .deb"))
        .collect();
    let uris = mirror::host_debian_uris();
    let mut routes = Vec::new();
    let mut from = None;
    for deb in &debs {
        let uri = uris
            .iter()
            .find(|u| deb.url.starts_with(&format!("{u}/")))
            .unwrap_or_else(|| panic!("{} is under none of the apt URIs {uris:?}", deb.url));
        from = Some(uri.clone());
        let rest = &deb.url[uri.len()..];
        routes.push((
            format!("/debian{rest}"),
            Behaviour::Serve(mirror::read(&deb.path).expect("fixture")),
        ));
    }
    let from = from.expect("an apt URI");
    let mirror = Mirror::start(routes).expect("mirror");
    let rewrite: Rewrite = format!("{from}={}/debian", mirror.url())
        .parse()
        .expect("rewrite");

    let dir = tempfile::tempdir().expect("tempdir");
    let reqs: Vec<FetchRequest> = debs
        .iter()
        .map(|d| FetchRequest {
            name: d.package.clone(),
            url: d.url.clone(),
            digest: d.digest.clone(),
            size: Some(d.size),
        })
        .collect();
    let f = fetcher(
        dir.path(),
        FetcherOptions {
            rewrites: vec![rewrite.clone()],
            ..opts()
        },
    );
    let (paths, report) = f.fetch_all_with_report(&reqs).expect("fetch real debs");
    assert_eq!(report.downloaded, 2);
    assert_eq!(report.cached, 0);
    assert_eq!(report.bytes, debs.iter().map(|d| d.size).sum::<u64>());
    assert_eq!(mirror.total_requests(), 2);
    for (deb, path) in debs.iter().zip(&paths) {
        assert_eq!(path, &Cache::at(dir.path()).blob_path(&deb.digest));
        assert_eq!(
            std::fs::read(path).expect("blob"),
            std::fs::read(&deb.path).expect("fixture")
        );
        // dpkg-deb as the oracle: the blob is the package it claims to be.
        let out = Command::new("dpkg-deb")
            .args(["--field"])
            .arg(path)
            .arg("Package")
            .output()
            .expect("dpkg-deb");
        assert!(
            out.status.success(),
            "dpkg-deb failed on {}",
            path.display()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), deb.package);
    }
    assert!(files(&dir.path().join("tmp")).is_empty());

    // Warm: nothing is downloaded again.
    let (again, report) = f.fetch_all_with_report(&reqs).expect("warm fetch");
    assert_eq!(again, paths);
    assert_eq!((report.downloaded, report.cached, report.bytes), (0, 2, 0));
    assert_eq!(mirror.total_requests(), 2);

    // Offline with everything cached: succeeds without a request.
    let offline = fetcher(
        dir.path(),
        FetcherOptions {
            offline: true,
            rewrites: vec![rewrite],
            ..opts()
        },
    );
    assert_eq!(
        offline.fetch_all(&reqs).expect("offline, all cached"),
        paths
    );
    assert_eq!(mirror.total_requests(), 2);
}

#[test]
fn wrong_checksum_names_url_and_both_digests_and_caches_nothing() {
    let good = bytes(1, 70_000);
    let mut bad = good.clone();
    if let Some(b) = bad.last_mut() {
        *b ^= 0xff;
    }
    let mirror =
        Mirror::start([("/pool/w.deb", Behaviour::WrongBytes(good.clone()))]).expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = files(dir.path());
    let req = request(&mirror, "wpkg", "/pool/w.deb", &good);
    let err = fetcher(dir.path(), opts())
        .fetch_all(std::slice::from_ref(&req))
        .expect_err("mismatch must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, FetchError::Mismatch { .. }), "{msg}");
    for part in [
        "wpkg",
        req.url.as_str(),
        &sha256(&good).to_string(),
        &sha256(&bad).to_string(),
    ] {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    assert_eq!(
        mirror.requests("/pool/w.deb"),
        1,
        "a mismatch is not retried"
    );
    assert_cache_unchanged(dir.path(), &before);
}

#[test]
fn truncated_body_is_retried_then_fails_cleanly() {
    let content = bytes(2, 100_000);
    let mirror = Mirror::start([(
        "/pool/t.deb",
        Behaviour::Truncate {
            bytes: content.clone(),
            at: 40_000,
        },
    )])
    .expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = files(dir.path());
    let req = request(&mirror, "tpkg", "/pool/t.deb", &content);
    let err = fetcher(dir.path(), opts())
        .fetch_all(std::slice::from_ref(&req))
        .expect_err("truncated body must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, FetchError::Truncated { .. }), "{msg}");
    assert!(msg.contains("tpkg") && msg.contains(&req.url), "{msg}");
    assert!(msg.contains("of 100000 bytes"), "{msg}");
    // First attempt plus two retries; the retries try to resume what arrived, and the
    // server (ignoring Range) makes the fetcher restart.
    let seen = mirror.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=40000-"));
    assert_cache_unchanged(dir.path(), &before);
}

#[test]
fn not_found_is_not_retried() {
    let mirror = Mirror::start([("/pool/gone.deb", Behaviour::Status(404))]).expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = files(dir.path());
    let req = request(&mirror, "gonepkg", "/pool/gone.deb", b"whatever");
    let err = fetcher(dir.path(), opts())
        .fetch_all(std::slice::from_ref(&req))
        .expect_err("404 must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(err, FetchError::NotFound { status: 404, .. }),
        "{msg}"
    );
    assert!(msg.contains("gonepkg") && msg.contains(&req.url), "{msg}");
    assert_eq!(mirror.requests("/pool/gone.deb"), 1);
    assert_cache_unchanged(dir.path(), &before);
}

#[test]
fn server_error_then_success_is_retried() {
    let content = bytes(3, 50_000);
    let mirror = Mirror::start([(
        "/pool/f.deb",
        Behaviour::FailThenServe {
            failures: 1,
            status: 500,
            bytes: content.clone(),
        },
    )])
    .expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let req = request(&mirror, "fpkg", "/pool/f.deb", &content);
    let paths = fetcher(dir.path(), opts())
        .fetch_all(&[req])
        .expect("succeeds on retry");
    assert_eq!(mirror.requests("/pool/f.deb"), 2);
    assert_eq!(std::fs::read(&paths[0]).expect("blob"), content);
}

#[test]
fn persistent_server_error_fails_after_retries() {
    let mirror = Mirror::start([("/pool/e.deb", Behaviour::Status(503))]).expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = files(dir.path());
    let req = request(&mirror, "epkg", "/pool/e.deb", b"x");
    let err = fetcher(dir.path(), opts())
        .fetch_all(std::slice::from_ref(&req))
        .expect_err("503 forever must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("epkg") && msg.contains(&req.url) && msg.contains("503"),
        "{msg}"
    );
    assert_eq!(mirror.requests("/pool/e.deb"), 3);
    assert_cache_unchanged(dir.path(), &before);
}

#[test]
fn stalled_body_times_out() {
    let content = bytes(4, 100_000);
    let mirror = Mirror::start([(
        "/pool/s.deb",
        Behaviour::Stall {
            bytes: content.clone(),
            after: 10_000,
        },
    )])
    .expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = files(dir.path());
    let req = request(&mirror, "spkg", "/pool/s.deb", &content);
    let start = Instant::now();
    let err = fetcher(
        dir.path(),
        FetcherOptions {
            retries: 1,
            stall_timeout: Duration::from_secs(1),
            ..opts()
        },
    )
    .fetch_all(std::slice::from_ref(&req))
    .expect_err("stall must fail");
    let took = start.elapsed();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("spkg") && msg.contains(&req.url), "{msg}");
    assert!(msg.contains("stalled"), "{msg}");
    assert_eq!(mirror.requests("/pool/s.deb"), 2);
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    assert_cache_unchanged(dir.path(), &before);
}

#[test]
fn size_mismatch_is_final() {
    let content = bytes(5, 10_000);
    let mirror =
        Mirror::start([("/pool/z.deb", Behaviour::Serve(content.clone()))]).expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = files(dir.path());
    let mut req = request(&mirror, "zpkg", "/pool/z.deb", &content);
    req.size = Some(9_999);
    let err = fetcher(dir.path(), opts())
        .fetch_all(std::slice::from_ref(&req))
        .expect_err("wrong size must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, FetchError::SizeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("zpkg") && msg.contains("9999") && msg.contains("10000"),
        "{msg}"
    );
    assert_eq!(mirror.requests("/pool/z.deb"), 1);
    assert_cache_unchanged(dir.path(), &before);
}

#[test]
fn offline_names_the_first_missing_blob() {
    let a = bytes(6, 1000);
    let b = bytes(7, 1000);
    let c = bytes(8, 1000);
    let mirror = Mirror::start([
        ("/a", Behaviour::Serve(a.clone())),
        ("/b", Behaviour::Serve(b.clone())),
        ("/c", Behaviour::Serve(c.clone())),
    ])
    .expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::at(dir.path());
    cache.insert_bytes(&a, &sha256(&a)).expect("seed cache");
    let before = files(dir.path());
    let reqs = [
        request(&mirror, "apkg", "/a", &a),
        request(&mirror, "bpkg", "/b", &b),
        request(&mirror, "cpkg", "/c", &c),
    ];
    let offline = fetcher(
        dir.path(),
        FetcherOptions {
            offline: true,
            ..opts()
        },
    );
    let err = offline.fetch_all(&reqs).expect_err("offline must fail");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, FetchError::Offline { .. }), "{msg}");
    assert!(msg.contains("first missing blob bpkg"), "{msg}");
    assert!(msg.contains(&reqs[1].url) && !msg.contains("cpkg"), "{msg}");
    assert_eq!(mirror.total_requests(), 0);
    assert_cache_unchanged(dir.path(), &before);
    let err = offline.get_bytes(&reqs[1].url).expect_err("offline get");
    assert!(matches!(err, FetchError::Offline { .. }), "{err}");
    assert_eq!(mirror.total_requests(), 0);

    // Online, only the missing two are downloaded; then offline succeeds with no request.
    let (_, report) = fetcher(dir.path(), opts())
        .fetch_all_with_report(&reqs)
        .expect("online");
    assert_eq!((report.downloaded, report.cached), (2, 1));
    assert_eq!(mirror.total_requests(), 2);
    let (paths, report) = offline.fetch_all_with_report(&reqs).expect("offline");
    assert_eq!((report.downloaded, report.cached), (0, 3));
    assert_eq!(std::fs::read(&paths[2]).expect("blob"), c);
    assert_eq!(mirror.total_requests(), 2);
}

#[test]
fn partial_download_is_resumed_with_a_range_request() {
    let content = bytes(9, 200_000);
    let mirror =
        Mirror::start([("/pool/r.deb", Behaviour::Serve(content.clone()))]).expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::at(dir.path());
    let req = request(&mirror, "rpkg", "/pool/r.deb", &content);
    let part = cache.partial_path(&req.digest).expect("partial path");
    std::fs::write(&part, &content[..81_920]).expect("seed partial");
    let (paths, report) = fetcher(dir.path(), opts())
        .fetch_all_with_report(&[req])
        .expect("resume");
    let seen = mirror.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=81920-"));
    assert_eq!(report.bytes, 200_000 - 81_920);
    assert_eq!(std::fs::read(&paths[0]).expect("blob"), content);
    assert!(!part.exists());
}

#[test]
fn corrupt_partial_download_is_restarted() {
    let content = bytes(10, 100_000);
    let mirror =
        Mirror::start([("/pool/c.deb", Behaviour::Serve(content.clone()))]).expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::at(dir.path());
    let req = request(&mirror, "cpkg", "/pool/c.deb", &content);
    let part = cache.partial_path(&req.digest).expect("partial path");
    std::fs::write(&part, bytes(99, 30_000)).expect("seed corrupt partial");
    let paths = fetcher(dir.path(), opts())
        .fetch_all(&[req])
        .expect("restart after corrupt resume");
    let seen = mirror.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=30000-"));
    assert_eq!(seen[1].range, None);
    assert_eq!(std::fs::read(&paths[0]).expect("blob"), content);
    assert!(files(&dir.path().join("tmp")).is_empty());
}

#[test]
fn oversized_partial_without_pinned_size_is_restarted() {
    let content = bytes(12, 20_000);
    let mirror =
        Mirror::start([("/pool/o.deb", Behaviour::Serve(content.clone()))]).expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = Cache::at(dir.path());
    let mut req = request(&mirror, "opkg", "/pool/o.deb", &content);
    req.size = None;
    let part = cache.partial_path(&req.digest).expect("partial path");
    std::fs::write(&part, bytes(98, 25_000)).expect("seed oversized partial");
    let paths = fetcher(dir.path(), opts())
        .fetch_all(&[req])
        .expect("restart after 416");
    let seen = mirror.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].range.as_deref(), Some("bytes=25000-"));
    assert_eq!(seen[1].range, None);
    assert!(std::fs::read(&paths[0]).expect("blob") == content);
}

#[test]
fn many_blobs_in_parallel_keep_input_order() {
    let contents: Vec<Vec<u8>> = (0..8)
        .map(|i| bytes(100 + i, 30_000 + i as usize))
        .collect();
    let mirror = Mirror::start(
        contents
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("/m/{i}"), Behaviour::Serve(c.clone()))),
    )
    .expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut reqs: Vec<FetchRequest> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| request(&mirror, &format!("p{i}"), &format!("/m/{i}"), c))
        .collect();
    // A duplicate is fetched once.
    reqs.push(reqs[3].clone());
    let (paths, report) = fetcher(dir.path(), opts())
        .fetch_all_with_report(&reqs)
        .expect("parallel fetch");
    assert_eq!(report.downloaded, 8);
    assert_eq!(mirror.total_requests(), 8);
    for (i, p) in paths.iter().enumerate() {
        let want = if i < 8 { &contents[i] } else { &contents[3] };
        assert!(&std::fs::read(p).expect("blob") == want, "blob {i} differs");
    }
}

#[test]
fn parallelism_is_bounded() {
    let contents: Vec<Vec<u8>> = (0..6).map(|i| bytes(200 + i, 1_000)).collect();
    let mirror = Mirror::start(contents.iter().enumerate().map(|(i, c)| {
        (
            format!("/s/{i}"),
            Behaviour::Slow {
                bytes: c.clone(),
                delay: Duration::from_millis(300),
            },
        )
    }))
    .expect("mirror");
    let reqs: Vec<FetchRequest> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| request(&mirror, &format!("s{i}"), &format!("/s/{i}"), c))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    fetcher(
        dir.path(),
        FetcherOptions {
            parallel: 2,
            ..opts()
        },
    )
    .fetch_all(&reqs)
    .expect("fetch");
    assert_eq!(mirror.total_requests(), 6);
    assert_eq!(mirror.max_in_flight(), 2, "parallel = 2 means two at once");
}

#[test]
fn get_bytes_uses_rewrites_and_retries() {
    let index = bytes(11, 5_000);
    let mirror = Mirror::start([
        (
            "/dists/x/Release",
            Behaviour::FailThenServe {
                failures: 1,
                status: 502,
                bytes: index.clone(),
            },
        ),
        ("/dists/x/missing", Behaviour::Status(404)),
    ])
    .expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fetcher(
        dir.path(),
        FetcherOptions {
            rewrites: vec![format!("http://origin.invalid/debian={}", mirror.url())
                .parse()
                .expect("rewrite")],
            ..opts()
        },
    );
    let got = f
        .get_bytes("http://origin.invalid/debian/dists/x/Release")
        .expect("get_bytes");
    assert_eq!(got, index);
    assert_eq!(mirror.requests("/dists/x/Release"), 2);
    let err = f
        .get_bytes("http://origin.invalid/debian/dists/x/missing")
        .expect_err("404");
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("/dists/x/missing"), "{err}");
    assert_eq!(mirror.requests("/dists/x/missing"), 1);
}

#[test]
fn an_unpinned_file_over_the_limit_is_refused_once_and_not_retried() {
    let mirror = Mirror::start([
        ("/big", Behaviour::Serve(bytes(12, 4_096))),
        ("/fits", Behaviour::Serve(bytes(13, 1_024))),
    ])
    .expect("mirror");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fetcher(
        dir.path(),
        FetcherOptions {
            max_unpinned_bytes: 1_024,
            ..opts()
        },
    );
    let url = format!("{}/big", mirror.url());
    let err = f.get_bytes(&url).expect_err("too large");
    assert!(matches!(err, FetchError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert_eq!(mirror.requests("/big"), 1, "a size refusal is not retried");
    assert_eq!(
        f.get_bytes(&format!("{}/fits", mirror.url()))
            .expect("at the limit"),
        bytes(13, 1_024)
    );
}
