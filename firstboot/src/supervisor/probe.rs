//! Health probes: a minimal blocking HTTP/1.1 GET, over plain TCP or rustls (verifying the
//! server against a given CA, optionally presenting a client certificate).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

/// TLS settings for an HTTPS probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsProbe {
    /// CA bundle (PEM) the server certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate and key (PEM), for servers that require mTLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// An HTTP(S) GET that must answer 200; then, if any, a GET of each of `then_paths` on the
/// same server, in order, each of which must answer 200 too (all within one timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProbe {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub tls: Option<TlsProbe>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then_paths: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("parsing probe URL {0}")]
    Url(String),
    #[error("connecting to {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("exchanging with {0}")]
    Io(String, #[source] std::io::Error),
    #[error("loading TLS material {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("configuring TLS for {0}: {1}")]
    Config(String, String),
    #[error("{0} answered {1:?}")]
    Status(String, String),
}

impl HttpProbe {
    /// Parses `http://host:port/path` or `https://host:port/path` (`tls` given separately).
    pub fn from_url(url: &str, tls: Option<TlsProbe>) -> Result<HttpProbe, ProbeError> {
        let bad = || ProbeError::Url(url.to_string());
        let (rest, default_port, is_tls) = if let Some(r) = url.strip_prefix("http://") {
            (r, 80, false)
        } else if let Some(r) = url.strip_prefix("https://") {
            (r, 443, true)
        } else {
            return Err(bad());
        };
        if is_tls != tls.is_some() {
            return Err(bad());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HttpProbe {
            host: host.to_string(),
            port,
            path: path.to_string(),
            tls,
            then_paths: vec![],
        })
    }

    /// The same probe, also requiring `path` to answer 200 (after the paths before it).
    pub fn then(mut self, path: &str) -> HttpProbe {
        self.then_paths.push(path.to_string());
        self
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}{path}", self.host, self.port)
    }

    /// Performs the GETs; Ok only if each answers status 200, all within `timeout`.
    pub fn check(&self, timeout: Duration) -> Result<(), ProbeError> {
        let deadline = Instant::now() + timeout;
        for path in std::iter::once(&self.path).chain(&self.then_paths) {
            self.get(path, deadline)?;
        }
        Ok(())
    }

    fn get(&self, path: &str, deadline: Instant) -> Result<(), ProbeError> {
        let url = self.url(path);
        let head = self.exchange("GET", path, None, deadline, None)?;
        let status_line =
            String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default())
                .trim_end()
                .to_string();
        let mut parts = status_line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(()),
            _ => Err(ProbeError::Status(url, status_line)),
        }
    }

    /// GETs `path` on the probe's server (its TLS settings and client certificate) and
    /// returns the status code and the body (at most `max_body` bytes), all within
    /// `timeout`. An HTTP/1.0 request: the server sends the body whole and closes.
    pub fn fetch(
        &self,
        path: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Vec<u8>), ProbeError> {
        self.send("GET", path, None, timeout, max_body)
    }

    /// As [`HttpProbe::fetch`], with any method and, if given, a body with its content type.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, Vec<u8>), ProbeError> {
        let url = self.url(path);
        let deadline = Instant::now() + timeout;
        let response = self.exchange(method, path, body, deadline, Some(max_body))?;
        let bad = |why: &str| ProbeError::Status(url.clone(), why.to_string());
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = String::from_utf8_lossy(&response[..split]);
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| {
                let mut parts = l.split_whitespace();
                parts.next().filter(|v| v.starts_with("HTTP/1."))?;
                parts.next()?.parse::<u16>().ok()
            })
            .ok_or_else(|| bad("no status line"))?;
        let mut body = response[split + 4..].to_vec();
        let length = lines.find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        });
        if let Some(n) = length {
            if body.len() < n {
                return Err(bad("body shorter than its Content-Length"));
            }
            body.truncate(n);
        }
        Ok((status, body))
    }

    /// Connects, sends `method path` (with the body, if any), and reads: the first line
    /// only (`body_cap` None: a probe), or the whole response up to `body_cap` bytes past
    /// the headers.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        deadline: Instant,
        body_cap: Option<usize>,
    ) -> Result<Vec<u8>, ProbeError> {
        let url = self.url(path);
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| ProbeError::Connect(url.clone(), e))?
            .next()
            .ok_or_else(|| ProbeError::Url(url.clone()))?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| ProbeError::Connect(url.clone(), e))?;
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let io = |e| ProbeError::Io(url.clone(), e);
        tcp.set_read_timeout(Some(remaining)).map_err(io)?;
        tcp.set_write_timeout(Some(remaining)).map_err(io)?;
        let version = if body_cap.is_some() { "1.0" } else { "1.1" };
        let content = match body {
            Some((kind, bytes)) => format!(
                "Content-Type: {kind}\r\nContent-Length: {}\r\n",
                bytes.len()
            ),
            None => String::new(),
        };
        let mut request = format!(
            "{method} {path} HTTP/{version}\r\nHost: {}\r\nUser-Agent: kiln-firstboot\r\nAccept: application/json, */*\r\n{content}Connection: close\r\n\r\n",
            self.host
        )
        .into_bytes();
        if let Some((_, bytes)) = body {
            request.extend_from_slice(bytes);
        }
        match &self.tls {
            None => exchange(tcp, &request, deadline, body_cap),
            Some(tls) => {
                let config = client_config(tls, &url)?;
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| ProbeError::Config(url.clone(), e.to_string()))?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| ProbeError::Config(url.clone(), e.to_string()))?;
                exchange(
                    rustls::StreamOwned::new(conn, tcp),
                    &request,
                    deadline,
                    body_cap,
                )
            }
        }
        .map_err(io)
    }
}

/// Sends the request and reads until the end of the status line (at most 4 KiB), or with
/// `body_cap` until the server closes (the headers and at most `body_cap` bytes more; a TLS
/// peer that closes without close_notify ends the response too).
fn exchange(
    mut s: impl Read + Write,
    request: &[u8],
    deadline: Instant,
    body_cap: Option<usize>,
) -> std::io::Result<Vec<u8>> {
    s.write_all(request)?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let limit = body_cap.map_or(4096, |cap| cap.saturating_add(16 * 1024));
    loop {
        if body_cap.is_none() && buf.contains(&b'\n') {
            break;
        }
        if buf.len() > limit {
            return Err(std::io::Error::other(format!(
                "response larger than {limit} bytes"
            )));
        }
        if Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

fn client_config(tls: &TlsProbe, url: &str) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    let terr = |path: &PathBuf, reason: String| ProbeError::Tls {
        path: path.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.ca)
        .map_err(|e| terr(&tls.ca, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| terr(&tls.ca, e.to_string()))?;
    for ca in cas {
        roots.add(ca).map_err(|e| terr(&tls.ca, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Config(url.to_string(), e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| terr(cert, e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| terr(cert, e.to_string()))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| terr(key, e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ProbeError::Config(url.to_string(), e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_urls() {
        let p = HttpProbe::from_url("http://127.0.0.1:2381/livez", None).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("127.0.0.1", 2381, "/livez")
        );
        let p = HttpProbe::from_url("http://[::1]:10248", None).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("::1", 10248, "/")
        );
        let tls = TlsProbe {
            ca: "/ca.crt".into(),
            client: None,
        };
        let p = HttpProbe::from_url("https://localhost/readyz?verbose", Some(tls.clone())).unwrap();
        assert_eq!((p.port, p.path.as_str()), (443, "/readyz?verbose"));
        assert!(HttpProbe::from_url("https://127.0.0.1:6443/livez", None).is_err());
        assert!(HttpProbe::from_url("http://127.0.0.1:x/", None).is_err());
        assert!(HttpProbe::from_url("ftp://h/", Some(tls)).is_err());
    }

    #[test]
    fn non_200_is_a_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 500 Internal Server Error\r\n\r\n",
                "HTTP/1.1 200 OK\r\n\r\n",
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let p = HttpProbe::from_url(&format!("http://127.0.0.1:{port}/healthz"), None).unwrap();
        assert!(matches!(
            p.check(Duration::from_secs(5)),
            Err(ProbeError::Status(..))
        ));
        p.check(Duration::from_secs(5)).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn fetch_returns_the_status_and_the_body() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut asked = Vec::new();
            let big = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(20_000));
            for answer in [
                // Until the server closes; then cut at its Content-Length.
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}",
                "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}trailing",
                "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
                big.as_str(),
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap();
                asked.push(
                    String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .next()
                        .unwrap()
                        .to_string(),
                );
                s.write_all(answer.as_bytes()).unwrap();
            }
            asked
        });
        let p = HttpProbe::from_url(&format!("http://127.0.0.1:{port}/"), None).unwrap();
        let t = Duration::from_secs(5);
        let (status, body) = p.fetch("/api/v1/nodes/n1", t, 1024).unwrap();
        assert_eq!((status, body.as_slice()), (200, br#"{"a": 1}"#.as_slice()));
        let (status, body) = p.fetch("/x", t, 1024).unwrap();
        assert_eq!((status, body.as_slice()), (404, b"{}".as_slice()));
        // A body cut short is an error, not a short document.
        assert!(p.fetch("/x", t, 1024).is_err());
        // So is one over the cap (the headers get 16 KiB of their own).
        let e = p.fetch("/x", t, 1024).unwrap_err();
        let why = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(
            why.as_deref().is_some_and(|w| w.contains("larger than")),
            "{why:?}"
        );
        assert_eq!(
            server.join().unwrap(),
            [
                "GET /api/v1/nodes/n1 HTTP/1.0",
                "GET /x HTTP/1.0",
                "GET /x HTTP/1.0",
                "GET /x HTTP/1.0"
            ]
        );
    }

    #[test]
    fn send_carries_the_method_and_the_body() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !String::from_utf8_lossy(&got).ends_with("{\"k\":1}") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.0 201 Created\r\n\r\n{}").unwrap();
            String::from_utf8(got).unwrap()
        });
        let p = HttpProbe::from_url(&format!("http://127.0.0.1:{port}/"), None).unwrap();
        let body = br#"{"k":1}"#;
        let (status, _) = p
            .send(
                "PATCH",
                "/o?force=true",
                Some(("application/apply-patch+yaml", body)),
                Duration::from_secs(5),
                64,
            )
            .unwrap();
        assert_eq!(status, 201);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("PATCH /o?force=true HTTP/1.0\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nContent-Type: application/apply-patch+yaml\r\n"));
        assert!(request.contains("\r\nContent-Length: 7\r\n"), "{request}");
    }

    #[test]
    fn every_path_must_answer_200_in_order() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut asked = Vec::new();
            // First check: both answer 200. Second: the first 200, the second 403.
            for answer in ["200 OK", "200 OK", "200 OK", "403 Forbidden"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap();
                let line = String::from_utf8_lossy(&buf[..n]);
                asked.push(
                    line.split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string(),
                );
                s.write_all(format!("HTTP/1.1 {answer}\r\n\r\n").as_bytes())
                    .unwrap();
            }
            asked
        });
        let p = HttpProbe::from_url(&format!("http://127.0.0.1:{port}/readyz"), None)
            .unwrap()
            .then("/api/v1/namespaces/kube-system");
        p.check(Duration::from_secs(5)).unwrap();
        let e = p.check(Duration::from_secs(5)).unwrap_err();
        assert!(
            e.to_string().contains("/api/v1/namespaces/kube-system"),
            "{e}"
        );
        assert!(matches!(e, ProbeError::Status(..)), "{e}");
        let asked = server.join().unwrap();
        assert_eq!(
            asked,
            ["/readyz", "/api/v1/namespaces/kube-system"].repeat(2)
        );
    }
}
