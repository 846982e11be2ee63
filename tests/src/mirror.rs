//! A small HTTP/1.1 server on 127.0.0.1 for tests: serves real files and hostile cases
//! (wrong bytes, truncated bodies, stalls, error statuses), counts requests per path and
//! records the `Range` headers it saw. Std only; one thread per connection; stops on drop.
//!
//! Also: real .deb fixtures from the host's Debian mirror (as configured for apt), downloaded
//! once with `apt-get download` into `$KILN_CACHE/fixtures/` (outside the repository).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln::digest::{Algorithm, Digest};

/// What the mirror does for one path.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with the bytes; honours `Range: bytes=N-[M]` with 206 (416 past the end).
    Serve(Vec<u8>),
    /// Answer with this status and an empty body.
    Status(u16),
    /// The first `failures` requests get `status`, later ones are served like `Serve`.
    FailThenServe {
        failures: usize,
        status: u16,
        bytes: Vec<u8>,
    },
    /// 200 with the full Content-Length, but the connection closes after `at` bytes.
    /// Ignores `Range`.
    Truncate { bytes: Vec<u8>, at: usize },
    /// 200 with the full Content-Length, sends `after` bytes, then sends nothing more until
    /// the mirror stops (at most a minute). Ignores `Range`.
    Stall { bytes: Vec<u8>, after: usize },
    /// Like `Serve`, but the last byte is flipped: right size, wrong content.
    WrongBytes(Vec<u8>),
    /// Like `Serve`, after waiting `delay` (to observe concurrent requests).
    Slow { bytes: Vec<u8>, delay: Duration },
}

/// One request as the mirror saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

struct State {
    routes: HashMap<String, Behaviour>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a request as in flight while alive.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn new(st: &'a State) -> Self {
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(st)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running mirror; stops when dropped.
pub struct Mirror {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Mirror {
    /// Bind 127.0.0.1 on a free port and serve `routes` (path → behaviour; paths start with
    /// `/`, compared after percent-decoding).
    pub fn start<P: Into<String>>(
        routes: impl IntoIterator<Item = (P, Behaviour)>,
    ) -> io::Result<Mirror> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            routes: routes
                .into_iter()
                .map(|(p, b)| (percent_decode(&p.into()), b))
                .collect(),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                std::thread::spawn(move || {
                    let _ = serve_connection(conn, &st);
                });
            }
        });
        Ok(Mirror {
            addr,
            state,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen for `path` (percent-decoded comparison).
    pub fn requests(&self, path: &str) -> usize {
        let path = percent_decode(path);
        self.seen().iter().filter(|s| s.path == path).count()
    }

    /// All requests, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn total_requests(&self) -> usize {
        self.seen().len()
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
}

/// Read one request head; `None` at a clean end of the connection.
fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/");
    let path = percent_decode(target.split('?').next().unwrap_or("/"));
    let mut range = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    Ok(Some(Request {
        method,
        path,
        range,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn head(w: &mut impl Write, status: u16, len: u64, extra: &str) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n{extra}\r\n",
        reason(status)
    )
}

/// `Range: bytes=N-[M]` against a body of `len` bytes: `Ok(Some((start, end_exclusive)))`,
/// `Ok(None)` when absent or not understood (serve whole), `Err(())` when unsatisfiable.
fn parse_range(range: Option<&str>, len: usize) -> Result<Option<(usize, usize)>, ()> {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Ok(None);
    };
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let Ok(start) = a.trim().parse::<usize>() else {
        return Ok(None);
    };
    let end = match b.trim() {
        "" => len,
        e => match e.parse::<usize>() {
            Ok(e) => (e + 1).min(len),
            Err(_) => return Ok(None),
        },
    };
    if start >= len || start >= end {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn serve_bytes(w: &mut TcpStream, req: &Request, bytes: &[u8]) -> io::Result<()> {
    let body_for_head = req.method != "HEAD";
    match parse_range(req.range.as_deref(), bytes.len()) {
        Ok(None) => {
            head(w, 200, bytes.len() as u64, "Accept-Ranges: bytes\r\n")?;
            if body_for_head {
                w.write_all(bytes)?;
            }
        }
        Ok(Some((start, end))) => {
            let extra = format!(
                "Accept-Ranges: bytes\r\nContent-Range: bytes {start}-{}/{}\r\n",
                end - 1,
                bytes.len()
            );
            head(w, 206, (end - start) as u64, &extra)?;
            if body_for_head {
                w.write_all(&bytes[start..end])?;
            }
        }
        Err(()) => {
            head(
                w,
                416,
                0,
                &format!("Content-Range: bytes */{}\r\n", bytes.len()),
            )?;
        }
    }
    w.flush()
}

/// Serve requests on one connection (keep-alive) until it closes or a behaviour closes it.
fn serve_connection(conn: TcpStream, st: &State) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r)? {
        if st.stop.load(Ordering::SeqCst) {
            break;
        }
        let nth = {
            let mut seen = st.seen.lock().unwrap_or_else(|p| p.into_inner());
            let nth = seen.iter().filter(|s| s.path == req.path).count();
            seen.push(Seen {
                path: req.path.clone(),
                range: req.range.clone(),
            });
            nth
        };
        let _busy = InFlight::new(st);
        match st.routes.get(&req.path) {
            None => {
                head(&mut w, 404, 0, "")?;
            }
            Some(Behaviour::Serve(bytes)) => serve_bytes(&mut w, &req, bytes)?,
            Some(Behaviour::Slow { bytes, delay }) => {
                std::thread::sleep(*delay);
                serve_bytes(&mut w, &req, bytes)?;
            }
            Some(Behaviour::WrongBytes(bytes)) => {
                let mut wrong = bytes.clone();
                if let Some(last) = wrong.last_mut() {
                    *last ^= 0xff;
                }
                serve_bytes(&mut w, &req, &wrong)?;
            }
            Some(Behaviour::Status(code)) => head(&mut w, *code, 0, "")?,
            Some(Behaviour::FailThenServe {
                failures,
                status,
                bytes,
            }) => {
                if nth < *failures {
                    head(&mut w, *status, 0, "")?;
                } else {
                    serve_bytes(&mut w, &req, bytes)?;
                }
            }
            Some(Behaviour::Truncate { bytes, at }) => {
                head(&mut w, 200, bytes.len() as u64, "")?;
                w.write_all(&bytes[..(*at).min(bytes.len())])?;
                w.flush()?;
                let _ = w.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Behaviour::Stall { bytes, after }) => {
                head(&mut w, 200, bytes.len() as u64, "")?;
                w.write_all(&bytes[..(*after).min(bytes.len())])?;
                w.flush()?;
                let until = Instant::now() + Duration::from_secs(60);
                while !st.stop.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = w.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
        w.flush()?;
    }
    Ok(())
}

/// The URIs of the host's Debian archive (not the security archive) from its apt
/// configuration: deb822 `*.sources` files and one-line `*.list` files.
pub fn host_debian_uris() -> Vec<String> {
    host_debian_uris_in(Path::new("/etc/apt"))
}

/// [`host_debian_uris`] under another apt configuration directory, read by the builder's
/// own apt sources parser. Panics, naming the error, when it cannot be read: for tests.
pub fn host_debian_uris_in(etc_apt: &Path) -> Vec<String> {
    let (entries, _) = kiln::debian::sources::read_sources(etc_apt)
        .unwrap_or_else(|e| panic!("reading the apt sources under {}: {e}", etc_apt.display()));
    let mut out: Vec<String> = entries
        .into_iter()
        .filter(|e| e.types.iter().any(|t| t == "deb"))
        .flat_map(|e| e.uris)
        .map(|u| u.trim_end_matches('/').to_string())
        .filter(|u| !u.ends_with("-security"))
        .collect();
    out.dedup();
    out
}

/// A real .deb from the host's Debian mirror, cached outside the repository.
#[derive(Debug, Clone)]
pub struct DebFixture {
    pub package: String,
    /// The URL apt would download it from (percent-encoded as apt prints it).
    pub url: String,
    pub size: u64,
    pub digest: Digest,
    /// The verified file under `$KILN_CACHE/fixtures/`.
    pub path: PathBuf,
}

/// Where test fixtures live: `$KILN_CACHE/fixtures` (default `~/.cache/kiln/fixtures`).
pub fn fixtures_dir() -> anyhow::Result<PathBuf> {
    let cache = kiln::cache::Cache::from_env()?;
    let dir = cache.root().join("fixtures");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The .deb of `package` for the host's architecture: located with
/// `apt-get download --print-uris`, downloaded once with `apt-get download`, verified
/// against apt's SHA256.
pub fn fixture_deb(package: &str) -> anyhow::Result<DebFixture> {
    let out = Command::new("apt-get")
        .args(["download", "--print-uris", package])
        .output()
        .context("running apt-get download --print-uris")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "apt-get download --print-uris {package} failed (run apt-get update?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // 'URL' FILENAME SIZE SHA256:HEX
    let line = stdout
        .lines()
        .find(|l| l.starts_with('\''))
        .with_context(|| format!("no URI for {package} in: {stdout}"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 4 {
        bail!("unexpected apt-get output: {line}");
    }
    let url = f[0].trim_matches('\'').to_string();
    let size: u64 = f[2].parse().with_context(|| format!("size in {line}"))?;
    let hex = f[3]
        .strip_prefix("SHA256:")
        .with_context(|| format!("no SHA256 in {line}"))?;
    let digest = Digest::sha256_hex(hex)?;
    let dir = fixtures_dir()?;
    let path = dir.join(format!("{hex}.deb"));
    let ok = |p: &Path| -> bool {
        std::fs::File::open(p)
            .ok()
            .and_then(|f| Digest::of_reader(Algorithm::Sha256, f).ok())
            .is_some_and(|d| d == digest)
    };
    if !ok(&path) {
        let tmp = tempfile::tempdir_in(&dir)?;
        let st = Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(tmp.path())
            .status()
            .context("running apt-get download")?;
        if !st.success() {
            bail!("apt-get download {package} failed");
        }
        let deb = std::fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        if !ok(&deb) {
            bail!("apt-get download {package}: file does not match {digest}");
        }
        std::fs::rename(&deb, &path)
            .with_context(|| format!("moving fixture to {}", path.display()))?;
    }
    Ok(DebFixture {
        package: package.to_string(),
        url,
        size,
        digest,
        path,
    })
}

/// Read a whole file (for serving fixtures).
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=3-"), 10), Ok(Some((3, 10))));
        assert_eq!(parse_range(Some("bytes=3-4"), 10), Ok(Some((3, 5))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
    }

    #[test]
    fn decodes() {
        assert_eq!(percent_decode("/a%2bb%3A"), "/a+b:");
        assert_eq!(percent_decode("/x%2"), "/x%2");
    }

    #[test]
    fn reads_apt_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("sources.list.d")).expect("mkdir");
        std::fs::write(
            dir.path().join("sources.list"),
            "# c\ndeb [arch=amd64 signed-by=/k] http://m.example/debian bookworm main\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("sources.list.d/d.sources"),
            "Types: deb\nURIs: http://n.example/debian/\nSuites: bookworm\n\nTypes: deb\nURIs: http://n.example/debian-security\nSuites: bookworm-security\n",
        )
        .expect("write");
        assert_eq!(
            host_debian_uris_in(dir.path()),
            vec!["http://m.example/debian", "http://n.example/debian"]
        );
    }
}
