//! Downloading pinned inputs into the content-addressed cache.
//!
//! Every blob is hashed while it streams into a partial file under the cache's `tmp/`, checked
//! against its pinned size and digest, and only then renamed into `blobs/`. Transient failures
//! (connection errors, stalls, HTTP 5xx, bodies that break off) are retried with exponential
//! backoff, resuming the partial file with a `Range` request; 4xx answers are final. On any
//! final error the partial file is removed, so the cache holds only verified blobs.
//!
//! Downloads run on a bounded number of std threads over `ureq` (blocking, HTTP/1.1, rustls).
//! A stall is a single socket read that waits longer than the stall timeout (ureq's
//! `timeout_per_read`), so a slow download that keeps making progress is never cut off.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ureq::http::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use ureq::http::{Response, StatusCode};
use ureq::{Agent, Body};

use crate::cache::{Cache, CacheError};
use crate::digest::{Digest, Hasher};

/// One pinned blob to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// The object's name for messages, e.g. the package name.
    pub name: String,
    pub url: String,
    pub digest: Digest,
    /// The pinned size, when known.
    pub size: Option<u64>,
}

/// A `--mirror FROM=TO` rewrite: URLs starting with `from` have that prefix replaced by `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
}

impl std::str::FromStr for Rewrite {
    type Err = FetchError;
    /// Parses `FROM=TO` (split at the first `=`; both sides non-empty).
    fn from_str(s: &str) -> Result<Self, FetchError> {
        match s.split_once('=') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => Ok(Rewrite {
                from: from.to_string(),
                to: to.to_string(),
            }),
            _ => Err(FetchError::BadRewrite(s.to_string())),
        }
    }
}

/// Apply the rewrite with the longest matching prefix, if any.
pub fn rewrite_url(rewrites: &[Rewrite], url: &str) -> String {
    rewrites
        .iter()
        .filter(|r| url.starts_with(&r.from))
        .max_by_key(|r| r.from.len())
        .map(|r| format!("{}{}", r.to, &url[r.from.len()..]))
        .unwrap_or_else(|| url.to_string())
}

/// How the fetcher behaves.
#[derive(Debug, Clone)]
pub struct FetcherOptions {
    /// Refuse all network access; missing blobs are an error.
    pub offline: bool,
    /// URL prefix rewrites (`--mirror FROM=TO`).
    pub rewrites: Vec<Rewrite>,
    /// Downloads at once (at least 1).
    pub parallel: usize,
    /// Retries after the first attempt, for transient failures only.
    pub retries: u32,
    /// The first retry waits this long; each further retry doubles it (capped at 30 s).
    pub backoff: Duration,
    /// Draw progress bars; they are drawn only when stderr is a terminal.
    pub progress: bool,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for waiting on response headers or on any single read of the body.
    pub stall_timeout: Duration,
    /// The most an unpinned file ([`Fetcher::get_bytes`]) may hold.
    pub max_unpinned_bytes: u64,
}

/// The default [`FetcherOptions::max_unpinned_bytes`]: far above any Debian index Kiln reads
/// (bookworm's main Packages.xz is about 9 MiB), far below what would exhaust memory.
pub const MAX_UNPINNED_BYTES: u64 = 256 << 20;

impl Default for FetcherOptions {
    fn default() -> Self {
        FetcherOptions {
            offline: false,
            rewrites: Vec::new(),
            parallel: 4,
            retries: 4,
            backoff: Duration::from_millis(500),
            progress: true,
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(30),
            max_unpinned_bytes: MAX_UNPINNED_BYTES,
        }
    }
}

/// What a `fetch_all` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Blobs downloaded in this run.
    pub downloaded: usize,
    /// Blobs already in the cache.
    pub cached: usize,
    /// Bytes received over the network in this run.
    pub bytes: u64,
}

/// Fetch errors; each names the object and the URL it came from.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("offline and not in the cache: first missing blob {name} ({url})")]
    Offline { name: String, url: String },
    #[error("fetching {name}: {url} not found (HTTP {status})")]
    NotFound {
        name: String,
        url: String,
        status: u16,
    },
    #[error("fetching {name}: {url} answered HTTP {status}")]
    Http {
        name: String,
        url: String,
        status: u16,
    },
    #[error("fetching {name}: checksum mismatch for {url}: expected {expected}, got {actual}")]
    Mismatch {
        name: String,
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("fetching {name}: size mismatch for {url}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        name: String,
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("fetching {name}: download from {url} broke off after {got} of {} bytes: {reason}",
        expected.map_or_else(|| "?".to_string(), |e| e.to_string()))]
    Truncated {
        name: String,
        url: String,
        got: u64,
        expected: Option<u64>,
        reason: String,
    },
    #[error("fetching {name}: cannot reach {url}: {reason}")]
    Network {
        name: String,
        url: String,
        reason: String,
    },
    #[error("fetching {name}: {action} {}: {source}", path.display())]
    Io {
        name: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fetching {name}: {source}")]
    Cache {
        name: String,
        #[source]
        source: CacheError,
    },
    #[error(
        "fetching {name}: {url} is larger than the {} MiB an unpinned file may be; not read",
        limit >> 20
    )]
    TooLarge {
        name: String,
        url: String,
        limit: u64,
    },
    #[error("invalid mirror rewrite {0:?}: expected FROM=TO")]
    BadRewrite(String),
    #[error("setting up the HTTP client: {0}")]
    Client(String),
}

/// The error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// Whether a ureq error is one of its timeouts (connect, headers, or a single read or write).
fn is_timeout(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => io.kind() == io::ErrorKind::TimedOut,
        _ => false,
    }
}

/// How one attempt ended badly.
enum Failure {
    /// Worth another attempt (after backoff).
    Transient(FetchError),
    /// Final: no retry.
    Fatal(FetchError),
}

/// Downloads pinned blobs into a [`Cache`].
pub struct Fetcher {
    cache: Cache,
    opts: FetcherOptions,
    agent: Agent,
}

impl Fetcher {
    pub fn new(cache: Cache, opts: FetcherOptions) -> Result<Fetcher, FetchError> {
        let stall = Some(opts.stall_timeout);
        let agent = Agent::config_builder()
            // Every status comes back as a response; `send` sorts them.
            .http_status_as_error(false)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .timeout_resolve(Some(opts.connect_timeout))
            .timeout_connect(Some(opts.connect_timeout))
            // Waiting for the response headers, in total.
            .timeout_recv_response(stall)
            // Each single socket read or write, body included: a stall, not a slow body
            // (`timeout_recv_body` would bound the whole body).
            .timeout_per_read(stall)
            .timeout_per_write(stall)
            .build()
            .new_agent();
        Ok(Fetcher { cache, opts, agent })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn options(&self) -> &FetcherOptions {
        &self.opts
    }

    /// Fetch every request; returns the cache paths in input order.
    pub fn fetch_all(&self, requests: &[FetchRequest]) -> Result<Vec<PathBuf>, FetchError> {
        self.fetch_all_with_report(requests).map(|(paths, _)| paths)
    }

    /// Fetch one request; returns its cache path.
    pub fn fetch_one(&self, request: &FetchRequest) -> Result<PathBuf, FetchError> {
        let mut paths = self.fetch_all(std::slice::from_ref(request))?;
        paths.pop().ok_or_else(|| FetchError::Offline {
            name: request.name.clone(),
            url: request.url.clone(),
        })
    }

    /// Fetch every request; returns the cache paths in input order and what was done.
    /// Blobs already cached are not downloaded. The first failure (in input order, among
    /// those attempted) is returned; no new downloads start after a failure.
    pub fn fetch_all_with_report(
        &self,
        requests: &[FetchRequest],
    ) -> Result<(Vec<PathBuf>, FetchReport), FetchError> {
        let mut report = FetchReport::default();
        // Unique digests still missing, first occurrence wins.
        let mut missing: Vec<&FetchRequest> = Vec::new();
        let mut seen: HashMap<&Digest, ()> = HashMap::new();
        for req in requests {
            if seen.insert(&req.digest, ()).is_some() {
                continue;
            }
            if self.cache.contains(&req.digest) {
                report.cached += 1;
            } else if self.opts.offline {
                return Err(FetchError::Offline {
                    name: req.name.clone(),
                    url: rewrite_url(&self.opts.rewrites, &req.url),
                });
            } else {
                missing.push(req);
            }
        }

        if !missing.is_empty() {
            let progress = Progress::new(self.opts.progress, &missing);
            let next = AtomicUsize::new(0);
            let failed = AtomicBool::new(false);
            let bytes = AtomicU64::new(0);
            let results: Mutex<Vec<Option<Result<PathBuf, FetchError>>>> =
                Mutex::new(missing.iter().map(|_| None).collect());
            let workers = self.opts.parallel.clamp(1, missing.len());
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(|| loop {
                        if failed.load(Ordering::SeqCst) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(req) = missing.get(i) else { break };
                        let r = self.download(req, &progress, &bytes);
                        if r.is_err() {
                            failed.store(true, Ordering::SeqCst);
                        }
                        if let Ok(mut res) = results.lock() {
                            res[i] = Some(r);
                        }
                    });
                }
            });
            progress.finish();
            report.bytes = bytes.load(Ordering::SeqCst);
            let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
            for r in results.into_iter().flatten() {
                r?;
                report.downloaded += 1;
            }
        }

        // Every blob is now in the cache (a worker that did not run means an error above).
        let paths = requests
            .iter()
            .map(|req| {
                let p = self.cache.blob_path(&req.digest);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(FetchError::Offline {
                        name: req.name.clone(),
                        url: req.url.clone(),
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((paths, report))
    }

    /// Fetch a small unpinned file (e.g. a Debian Release or Packages index) into memory, with
    /// the same rewrites and retries. The caller verifies it. Offline, this is an error; so is
    /// a body over [`MAX_UNPINNED_BYTES`] (announced or sent), before more is read.
    pub fn get_bytes(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let real = rewrite_url(&self.opts.rewrites, url);
        if self.opts.offline {
            return Err(FetchError::Offline {
                name: url.to_string(),
                url: real,
            });
        }
        self.with_retries(url, &real, || self.get_bytes_once(url, &real))
    }

    fn get_bytes_once(&self, name: &str, url: &str) -> Result<Vec<u8>, Failure> {
        let mut resp = self.send(name, url, 0)?;
        let expected = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let too_large = || {
            Failure::Fatal(FetchError::TooLarge {
                name: name.to_string(),
                url: url.to_string(),
                limit: self.opts.max_unpinned_bytes,
            })
        };
        if expected.is_some_and(|n| n > self.opts.max_unpinned_bytes) {
            return Err(too_large());
        }
        let mut body = resp.body_mut().as_reader();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if (out.len() + n) as u64 > self.opts.max_unpinned_bytes => {
                    return Err(too_large())
                }
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => {
                    return Err(Failure::Transient(self.broke_off(
                        name,
                        url,
                        out.len() as u64,
                        expected,
                        &e,
                    )))
                }
            }
        }
        if let Some(expected) = expected {
            if (out.len() as u64) < expected {
                return Err(Failure::Transient(FetchError::Truncated {
                    name: name.to_string(),
                    url: url.to_string(),
                    got: out.len() as u64,
                    expected: Some(expected),
                    reason: "connection closed early".into(),
                }));
            }
        }
        Ok(out)
    }

    /// Run `attempt` until it succeeds, fails fatally or runs out of retries.
    fn with_retries<T>(
        &self,
        name: &str,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, FetchError> {
        let mut n = 0u32;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(e)) if n >= self.opts.retries => return Err(e),
                Err(Failure::Transient(e)) => {
                    let wait = self
                        .opts
                        .backoff
                        .saturating_mul(1u32 << n.min(16))
                        .min(Duration::from_secs(30));
                    n += 1;
                    log::warn!(
                        "{e}; retry {n}/{} for {name} ({url}) in {:.1}s",
                        self.opts.retries,
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Send a GET (with `Range: bytes=offset-` when `offset > 0`) and sort the status.
    fn send(&self, name: &str, url: &str, offset: u64) -> Result<Response<Body>, Failure> {
        let mut req = self.agent.get(url);
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = req.call().map_err(|e| {
            Failure::Transient(FetchError::Network {
                name: name.to_string(),
                url: url.to_string(),
                reason: if is_timeout(&e) {
                    format!(
                        "no answer within {:.1}s",
                        self.opts.stall_timeout.as_secs_f64()
                    )
                } else {
                    chain(&e)
                },
            })
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let (name, url, code) = (name.to_string(), url.to_string(), status.as_u16());
        Err(match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => Failure::Fatal(FetchError::NotFound {
                name,
                url,
                status: code,
            }),
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                Failure::Transient(FetchError::Http {
                    name,
                    url,
                    status: code,
                })
            }
            s if s.is_server_error()
                || s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::TOO_MANY_REQUESTS =>
            {
                Failure::Transient(FetchError::Http {
                    name,
                    url,
                    status: code,
                })
            }
            _ => Failure::Fatal(FetchError::Http {
                name,
                url,
                status: code,
            }),
        })
    }

    fn broke_off(
        &self,
        name: &str,
        url: &str,
        got: u64,
        expected: Option<u64>,
        e: &io::Error,
    ) -> FetchError {
        // ureq's body reader hands its own errors over wrapped in an `io::Error`.
        let timed_out = e.kind() == io::ErrorKind::TimedOut
            || e.get_ref()
                .and_then(|i| i.downcast_ref::<ureq::Error>())
                .is_some_and(is_timeout);
        FetchError::Truncated {
            name: name.to_string(),
            url: url.to_string(),
            got,
            expected,
            reason: if timed_out {
                format!(
                    "stalled: no data for {:.1}s",
                    self.opts.stall_timeout.as_secs_f64()
                )
            } else {
                chain(e)
            },
        }
    }

    /// Download one blob into the cache, with retries; nothing is left behind on failure.
    fn download(
        &self,
        req: &FetchRequest,
        progress: &Progress,
        bytes: &AtomicU64,
    ) -> Result<PathBuf, FetchError> {
        let url = rewrite_url(&self.opts.rewrites, &req.url);
        let part = self
            .cache
            .partial_path(&req.digest)
            .map_err(|source| FetchError::Cache {
                name: req.name.clone(),
                source,
            })?;
        let bar = progress.start(&req.name, req.size);
        let result = self.with_retries(&req.name, &url, || {
            self.attempt(req, &url, &part, &bar, progress, bytes)
        });
        bar.finish_and_clear();
        match result {
            Ok(()) => self
                .cache
                .insert_verified(&part, &req.digest)
                .map_err(|source| {
                    let _ = fs::remove_file(&part);
                    FetchError::Cache {
                        name: req.name.clone(),
                        source,
                    }
                }),
            Err(e) => {
                let _ = fs::remove_file(&part);
                Err(e)
            }
        }
    }

    /// One attempt: resume or start `part`, stream, verify. `Ok` means `part` holds exactly
    /// the pinned content.
    fn attempt(
        &self,
        req: &FetchRequest,
        url: &str,
        part: &Path,
        bar: &ProgressBar,
        progress: &Progress,
        bytes: &AtomicU64,
    ) -> Result<(), Failure> {
        let name = req.name.as_str();
        let io = |action: &'static str| {
            move |source| {
                Failure::Fatal(FetchError::Io {
                    name: name.to_string(),
                    action,
                    path: part.to_path_buf(),
                    source,
                })
            }
        };
        let mut offset = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if req.size.is_some_and(|size| offset > size) {
            offset = 0;
        }
        // A complete partial from an interrupted run: verify it without asking the server.
        if offset > 0 && Some(offset) == req.size {
            let file = File::open(part).map_err(io("reading partial download"))?;
            let actual = Digest::of_reader(req.digest.algorithm(), file)
                .map_err(io("reading partial download"))?;
            if actual == req.digest {
                return Ok(());
            }
            offset = 0;
        }

        let mut resp = match self.send(name, url, offset) {
            // Our partial is at or past the end of what the server has: start over.
            Err(Failure::Transient(e @ FetchError::Http { status: 416, .. })) => {
                let _ = fs::remove_file(part);
                return Err(Failure::Transient(e));
            }
            r => r?,
        };
        let resumed = offset > 0 && resp.status() == StatusCode::PARTIAL_CONTENT && {
            // Content-Range: bytes <offset>-<end>/<total>
            resp.headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok())
                == Some(offset)
        };
        if offset > 0 && !resumed && resp.status() == StatusCode::PARTIAL_CONTENT {
            // A range we did not ask for: start over on the next attempt.
            let _ = fs::remove_file(part);
            return Err(Failure::Transient(FetchError::Http {
                name: name.to_string(),
                url: url.to_string(),
                status: resp.status().as_u16(),
            }));
        }
        let start = if resumed { offset } else { 0 };
        let body_len = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let total = body_len.map(|l| l + start);
        if let (Some(size), Some(total)) = (req.size, total) {
            if size != total {
                return Err(Failure::Fatal(FetchError::SizeMismatch {
                    name: name.to_string(),
                    url: url.to_string(),
                    expected: size,
                    actual: total,
                }));
            }
        }
        let expected = req.size.or(total);

        let mut hasher = Hasher::new(req.digest.algorithm());
        let mut file = if resumed {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(part)
                .map_err(io("opening partial download"))?;
            let copied = io::copy(&mut (&mut f).take(start), &mut hasher)
                .map_err(io("reading partial download"))?;
            if copied != start {
                return Err(Failure::Transient(FetchError::Truncated {
                    name: name.to_string(),
                    url: url.to_string(),
                    got: copied,
                    expected,
                    reason: "partial download changed while resuming".into(),
                }));
            }
            f.seek(SeekFrom::Start(start))
                .map_err(io("opening partial download"))?;
            f.set_len(start).map_err(io("opening partial download"))?;
            f
        } else {
            File::create(part).map_err(io("creating partial download"))?
        };
        bar.set_position(start);
        if let Some(len) = expected {
            bar.set_length(len);
        }

        let mut body = resp.body_mut().as_reader();
        let mut got = start;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = file.flush();
                    return Err(Failure::Transient(
                        self.broke_off(name, url, got, expected, &e),
                    ));
                }
            };
            got += n as u64;
            if let Some(size) = expected {
                if got > size {
                    drop(file);
                    let _ = fs::remove_file(part);
                    return Err(Failure::Fatal(FetchError::SizeMismatch {
                        name: name.to_string(),
                        url: url.to_string(),
                        expected: size,
                        actual: got,
                    }));
                }
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(io("writing partial download"))?;
            bytes.fetch_add(n as u64, Ordering::Relaxed);
            bar.inc(n as u64);
            progress.total.inc(n as u64);
        }
        file.flush().map_err(io("writing partial download"))?;
        drop(file);

        if let Some(size) = expected {
            if got < size {
                return Err(Failure::Transient(FetchError::Truncated {
                    name: name.to_string(),
                    url: url.to_string(),
                    got,
                    expected: Some(size),
                    reason: "connection closed early".into(),
                }));
            }
        }
        let actual = hasher.finish();
        if actual != req.digest {
            let _ = fs::remove_file(part);
            let err = FetchError::Mismatch {
                name: name.to_string(),
                url: url.to_string(),
                expected: req.digest.clone(),
                actual,
            };
            // A resumed download may have started from a corrupt partial: try once afresh.
            return Err(if resumed {
                Failure::Transient(err)
            } else {
                Failure::Fatal(err)
            });
        }
        Ok(())
    }
}

/// Progress bars on stderr: one per running download plus a total. Hidden unless asked for
/// and stderr is a terminal.
struct Progress {
    multi: MultiProgress,
    total: ProgressBar,
    visible: bool,
}

impl Progress {
    fn new(wanted: bool, missing: &[&FetchRequest]) -> Progress {
        let visible = wanted && io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let known: u64 = missing.iter().filter_map(|r| r.size).sum();
        let total = multi.add(ProgressBar::new(known));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix(format!("{} files", missing.len()));
        Progress {
            multi,
            total,
            visible,
        }
    }

    fn start(&self, name: &str, size: Option<u64>) -> ProgressBar {
        if !self.visible {
            return ProgressBar::hidden();
        }
        let bar = self.multi.add(ProgressBar::new(size.unwrap_or(0)));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let short: String = name.chars().take(12).collect();
        bar.set_prefix(short);
        bar
    }

    fn finish(&self) {
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rewrites() {
        let r: Rewrite = "http://a/debian=http://127.0.0.1:8/d"
            .parse()
            .expect("parse");
        assert_eq!(r.from, "http://a/debian");
        assert_eq!(r.to, "http://127.0.0.1:8/d");
        assert!("nothing".parse::<Rewrite>().is_err());
        assert!("=x".parse::<Rewrite>().is_err());
        assert!("x=".parse::<Rewrite>().is_err());
    }

    #[test]
    fn longest_prefix_wins() {
        let rw = vec![
            Rewrite {
                from: "http://a/".into(),
                to: "http://b/".into(),
            },
            Rewrite {
                from: "http://a/debian/".into(),
                to: "http://c/d/".into(),
            },
        ];
        assert_eq!(
            rewrite_url(&rw, "http://a/debian/x.deb"),
            "http://c/d/x.deb"
        );
        assert_eq!(rewrite_url(&rw, "http://a/other"), "http://b/other");
        assert_eq!(rewrite_url(&rw, "https://z/"), "https://z/");
    }

    /// A fetcher with no retries and a stall timeout of one second, caching under `dir`.
    fn one_second_stall(dir: &Path) -> Fetcher {
        let opts = FetcherOptions {
            retries: 0,
            progress: false,
            stall_timeout: Duration::from_secs(1),
            ..FetcherOptions::default()
        };
        Fetcher::new(Cache::at(dir), opts).expect("fetcher")
    }

    /// A body that keeps coming, though slower in total than the stall timeout, is not a
    /// stall: the timeout bounds each read, not the whole body.
    #[test]
    fn slow_but_steady_body_is_not_a_stall() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).expect("request");
                head.push(byte[0]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
                .expect("headers");
            for b in b"12345678" {
                std::thread::sleep(Duration::from_millis(250));
                conn.write_all(&[*b]).expect("body");
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let fetcher = one_second_stall(dir.path());
        let got = fetcher
            .get_bytes(&format!("http://{addr}/slow"))
            .expect("a slow body that keeps coming");
        assert_eq!(got, b"12345678");
        server.join().expect("server");
    }

    /// A server that takes the request and never answers is given up on after the stall
    /// timeout, as a network error.
    #[test]
    fn silent_server_is_no_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let conn = listener.accept();
            std::thread::sleep(Duration::from_secs(5));
            drop(conn);
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let fetcher = one_second_stall(dir.path());
        let start = std::time::Instant::now();
        let err = fetcher
            .get_bytes(&format!("http://{addr}/silent"))
            .expect_err("no answer");
        let took = start.elapsed();
        assert!(matches!(err, FetchError::Network { .. }), "{err}");
        assert!(err.to_string().contains("no answer within 1.0s"), "{err}");
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }
}
