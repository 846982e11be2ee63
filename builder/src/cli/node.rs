//! `kiln health`, `kiln status` and `kiln logs`: a running node seen from the host, read-only,
//! through its API server with an admin kubeconfig. Nothing new listens on the node:
//! - the API server's own checks (`/readyz`, `/readyz/etcd`), the Node and the CoreDNS
//!   Deployment are API objects;
//! - firstboot's status (components, phases, certificates) is a file under /var/log that
//!   the kubelet serves (`/api/v1/nodes/NAME/proxy/logs/kiln/status.json`);
//! - the components' logs are firstboot.service's journal, which the kubelet's log query
//!   returns (`…/proxy/logs/?query=firstboot&boot=0`), each line tagged with the component.
//!
//! The kubelet serves both only to clients the API server authorizes for the node's
//! `proxy` subresource (the admin kubeconfig is).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Serialize;

/// Where the node's status file is, under the kubelet's `/logs/` (that is /var/log).
const STATUS_LOG: &str = "kiln/status.json";
/// Certificates closer than this to their expiry fail the health check.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// An admin connection to the API server, from a kubeconfig.
pub struct Api {
    server: String,
    agent: ureq::Agent,
}

/// The parts of a kubeconfig Kiln reads (its current context's cluster and user, embedded
/// PEM data).
#[derive(Debug, PartialEq, Eq)]
pub struct Kubeconfig {
    pub server: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Kubeconfig {
    /// Parses a kubeconfig in JSON (as `kiln run` and `kiln kubeconfig` write them);
    /// `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Kubeconfig> {
        let shown = path.display();
        let v: serde_json::Value = serde_json::from_str(text).with_context(|| {
            format!(
                "{shown}: not a JSON kubeconfig (Kiln writes JSON; convert another with \
                 `kubectl config view --raw --flatten -o json`)"
            )
        })?;
        let named = |list: &str, name: Option<&str>| -> Option<serde_json::Value> {
            let items = v[list].as_array()?;
            let item = match name {
                Some(n) => items.iter().find(|i| i["name"] == n)?,
                None => items.first()?,
            };
            Some(item.clone())
        };
        let current = v["current-context"].as_str().filter(|c| !c.is_empty());
        let context = current.and_then(|c| named("contexts", Some(c)));
        let cluster_name = context
            .as_ref()
            .and_then(|c| c["context"]["cluster"].as_str());
        let user_name = context.as_ref().and_then(|c| c["context"]["user"].as_str());
        let cluster =
            named("clusters", cluster_name).with_context(|| format!("{shown}: no cluster"))?;
        let user = named("users", user_name).with_context(|| format!("{shown}: no user"))?;
        let field = |v: &serde_json::Value, key: &str| -> Result<Vec<u8>> {
            let data = v[key]
                .as_str()
                .with_context(|| format!("{shown}: no {key} (Kiln needs the data embedded)"))?;
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .with_context(|| format!("{shown}: {key} is not base64"))
        };
        let server = cluster["cluster"]["server"]
            .as_str()
            .with_context(|| format!("{shown}: the cluster has no server"))?
            .trim_end_matches('/')
            .to_string();
        if !server.starts_with("https://") {
            bail!("{shown}: server {server:?} is not an https:// URL");
        }
        Ok(Kubeconfig {
            server,
            ca_pem: field(&cluster["cluster"], "certificate-authority-data")?,
            cert_pem: field(&user["user"], "client-certificate-data")?,
            key_pem: field(&user["user"], "client-key-data")?,
        })
    }
}

/// A response: status code and body.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Api {
    pub fn open(path: &Path, timeout: Duration) -> Result<Api> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let kc = Kubeconfig::parse(&text, path)?;
        let bad = |what: &str| format!("{}: the {what} is not PEM", path.display());
        let ca = ureq::tls::Certificate::from_pem(&kc.ca_pem).with_context(|| bad("CA"))?;
        let cert = ureq::tls::Certificate::from_pem(&kc.cert_pem)
            .with_context(|| bad("client certificate"))?;
        let key =
            ureq::tls::PrivateKey::from_pem(&kc.key_pem).with_context(|| bad("client key"))?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
            .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)))
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Api {
            server: kc.server,
            agent,
        })
    }

    /// GET `path` (with its query); an error only when no answer came.
    pub fn get(&self, path: &str) -> Result<Reply> {
        let url = format!("{}{path}", self.server);
        let mut r = self
            .agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = r.status().as_u16();
        let body = r
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer to GET {url}"))?;
        Ok(Reply { status, body })
    }

    /// GET `path` as JSON, which must come with 200.
    pub fn json(&self, path: &str) -> Result<serde_json::Value> {
        let r = self.get(path)?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body.trim());
        }
        serde_json::from_str(&r.body).with_context(|| format!("GET {path}: not JSON"))
    }

    /// The node to ask: `name`, else the cluster's only (first) node.
    pub fn node(&self, name: Option<&str>) -> Result<String> {
        if let Some(n) = name {
            return Ok(n.to_string());
        }
        let nodes = self.json("/api/v1/nodes")?;
        nodes["items"][0]["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .context("the cluster has no node yet")
    }

    /// firstboot's status file on `node`.
    pub fn status(&self, node: &str) -> Result<firstboot::status::Status> {
        let path = format!("/api/v1/nodes/{node}/proxy/logs/{STATUS_LOG}");
        let r = self.get(&path)?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body.trim());
        }
        serde_json::from_str(&r.body)
            .with_context(|| format!("{STATUS_LOG} on {node}: not a firstboot status"))
    }
}

/// One line of `kiln health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        ok,
        detail: detail.into(),
    }
}

/// Every check, in order: the API server, etcd (as the API server sees it), each
/// supervised component (firstboot's status), the node's Ready condition, CoreDNS, the
/// certificates' expiry.
pub fn health(api: &Api, node: Option<&str>, now_unix: i64) -> Vec<Check> {
    let mut out = Vec::new();
    // One answer for both: the API server's readiness, and its own check of etcd in it.
    match api.get("/readyz?verbose") {
        Ok(r) => {
            let ok = r.status == 200;
            out.push(check(
                "apiserver",
                ok,
                if ok {
                    "ready".into()
                } else {
                    failing_checks(&r.body)
                },
            ));
            // `etcd` (a request through the storage client) and `etcd-readiness`.
            let etcd = ["etcd", "etcd-readiness"]
                .iter()
                .filter_map(|c| readyz_check(&r.body, c))
                .reduce(|a, b| a && b);
            out.push(match etcd {
                Some(true) => check("apiserver-etcd", true, "the API server reaches etcd"),
                Some(false) => check(
                    "apiserver-etcd",
                    false,
                    "the API server's check of etcd fails",
                ),
                None => check(
                    "apiserver-etcd",
                    false,
                    "the API server did not report on etcd",
                ),
            });
        }
        Err(e) => {
            out.push(check("apiserver", false, format!("{e:#}")));
            out.push(check(
                "apiserver-etcd",
                false,
                "unknown: the API server did not answer",
            ));
        }
    }
    match api.node(node) {
        Ok(node) => {
            match api.status(&node) {
                Ok(st) => {
                    out.extend(component_checks(&st.components));
                    out.push(certificate_check(&st, now_unix));
                }
                Err(e) => out.push(check("components", false, format!("{e:#}"))),
            }
            match api.json(&format!("/api/v1/nodes/{node}")) {
                Ok(n) => out.push(node_ready(&node, &n)),
                Err(e) => out.push(check("node", false, format!("{e:#}"))),
            }
        }
        Err(e) => out.push(check("node", false, format!("{e:#}"))),
    }
    match api.json("/apis/apps/v1/namespaces/kube-system/deployments/coredns") {
        Ok(d) => out.push(coredns(&d)),
        Err(e) => out.push(check("coredns", false, format!("{e:#}"))),
    }
    // The certificates last, after the API's view.
    if let Some(i) = out.iter().position(|c| c.name == "certificates") {
        let c = out.remove(i);
        out.push(c);
    }
    out
}

/// Whether a verbose readyz answer lists check `name` as passing (`[+]name ok`) or failing
/// (`[-]name failed…`); None when it does not list it.
fn readyz_check(body: &str, name: &str) -> Option<bool> {
    body.lines().find_map(|l| {
        let (ok, rest) = match (l.strip_prefix("[+]"), l.strip_prefix("[-]")) {
            (Some(r), _) => (true, r),
            (_, Some(r)) => (false, r),
            _ => return None,
        };
        (rest.split_whitespace().next() == Some(name)).then_some(ok)
    })
}

/// The `[-]name failed` lines of a verbose readyz answer.
fn failing_checks(body: &str) -> String {
    let failed: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("[-]"))
        .map(|l| l.split_whitespace().next().unwrap_or(l))
        .collect();
    if failed.is_empty() {
        body.trim().to_string()
    } else {
        format!("failing: {}", failed.join(", "))
    }
}

/// A check per supervised component: running and ready.
pub fn component_checks(components: &serde_json::Value) -> Vec<Check> {
    let Some(rows) = components.as_array() else {
        return vec![check("components", false, "the node reports none yet")];
    };
    rows.iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap_or("?");
            let state = r["state"].as_str().unwrap_or("?");
            let ready = r["ready"].as_bool().unwrap_or(false);
            let restarts = r["restarts"].as_u64().unwrap_or(0);
            let mut detail = format!("{state}, {restarts} restarts");
            if let Some(f) = r["last_failure"].as_str() {
                detail.push_str(&format!(", last failure: {f}"));
            }
            check(name, ready && state == "running", detail)
        })
        .collect()
}

fn node_ready(name: &str, node: &serde_json::Value) -> Check {
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    let ok = ready["status"] == "True";
    let detail = if ok {
        format!("{name} Ready")
    } else {
        format!(
            "{name} not Ready: {}",
            ready["message"].as_str().unwrap_or("no Ready condition")
        )
    };
    check("node", ok, detail)
}

fn coredns(d: &serde_json::Value) -> Check {
    let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
    let available = d["status"]["availableReplicas"].as_u64().unwrap_or(0);
    check(
        "coredns",
        available >= want && want > 0,
        format!("{available} of {want} replicas available"),
    )
}

/// Passes when every certificate has more than [`EXPIRY_WARNING_DAYS`] left.
pub fn certificate_check(st: &firstboot::status::Status, now_unix: i64) -> Check {
    if let Some(e) = &st.certificates_error {
        return check("certificates", false, e.clone());
    }
    let Some(first) = st.certificates.iter().min_by_key(|c| c.not_after) else {
        return check("certificates", false, "the node lists none");
    };
    let days = (first.not_after - now_unix).div_euclid(86_400);
    let soon: Vec<&str> = st
        .certificates
        .iter()
        .filter(|c| c.not_after - now_unix < EXPIRY_WARNING_DAYS * 86_400)
        .map(|c| c.file.as_str())
        .collect();
    let detail = format!(
        "{} certificates; the first to expire is {} in {days} days ({})",
        st.certificates.len(),
        first.file,
        first.not_after_rfc3339
    );
    if soon.is_empty() {
        check("certificates", true, detail)
    } else {
        check(
            "certificates",
            false,
            format!(
                "{detail}; within {EXPIRY_WARNING_DAYS} days: {}",
                soon.join(", ")
            ),
        )
    }
}

/// The lines of a journal (`short-precise` output) that `component` wrote.
pub fn component_lines<'a>(journal: &'a str, component: &str) -> Vec<&'a str> {
    let tag = format!("{component}[");
    journal
        .lines()
        .filter(|l| {
            // `Mon DD HH:MM:SS.ffffff host ident[pid]: message`: the tag is the 5th field.
            l.split_whitespace()
                .nth(4)
                .is_some_and(|f| f.starts_with(&tag) && f.ends_with("]:"))
        })
        .collect()
}

/// The components `kiln logs` knows: the supervised ones and firstboot itself.
pub const COMPONENTS: &[&str] = {
    use firstboot::k8s::components as c;
    &[
        c::ETCD,
        c::APISERVER,
        c::CONTROLLER_MANAGER,
        c::SCHEDULER,
        c::CONTAINERD,
        c::KUBELET,
        c::KUBE_PROXY,
        "firstboot",
    ]
};

/// The journal query for this boot's firstboot.service (the components log into it).
pub fn journal_query(node: &str, since: Option<&str>) -> String {
    let mut q = format!("/api/v1/nodes/{node}/proxy/logs/?query=firstboot&boot=0");
    if let Some(s) = since {
        q.push_str("&sinceTime=");
        q.push_str(&s.replace(':', "%3A").replace('+', "%2B"));
    }
    q
}

/// Prints `component`'s lines of this boot; with `follow`, keeps printing new ones.
pub fn logs(api: &Api, node: Option<&str>, component: &str, follow: bool) -> Result<()> {
    let node = api.node(node)?;
    let mut printed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut since: Option<String> = None;
    let stdout = std::io::stdout();
    loop {
        let path = journal_query(&node, since.as_deref());
        let r = api.get(&path)?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body.trim());
        }
        let mut out = stdout.lock();
        for l in component_lines(&r.body, component) {
            if printed.insert(l.to_string()) {
                writeln!(out, "{l}")?;
            }
        }
        out.flush()?;
        if !follow {
            return Ok(());
        }
        // The next query starts a little before now (UTC, as the lines are); the lines
        // already printed are skipped.
        since = Some(firstboot::utc::seconds(
            u64::try_from(crate::cli::dispatch::now() - 60).unwrap_or_default(),
        ));
        if printed.len() > 100_000 {
            printed.clear();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The kubeconfig named by the arguments: `--kubeconfig`, else the state directory's.
pub fn kubeconfig_path(kubeconfig: Option<&Path>, state_dir: Option<&Path>) -> Result<PathBuf> {
    match (kubeconfig, state_dir) {
        (Some(k), _) => Ok(k.to_path_buf()),
        (None, Some(s)) => Ok(s.join("admin.kubeconfig")),
        (None, None) => bail!("give --kubeconfig FILE or --state-dir DIR (of `kiln run`)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_is_read_by_its_current_context() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = serde_json::json!({
            "current-context": "b",
            "clusters": [
                {"name": "a", "cluster": {"server": "https://a:1", "certificate-authority-data": b64("CA-A")}},
                {"name": "cb", "cluster": {"server": "https://127.0.0.1:6443/", "certificate-authority-data": b64("CA-B")}},
            ],
            "contexts": [{"name": "b", "context": {"cluster": "cb", "user": "ub"}}],
            "users": [
                {"name": "ua", "user": {"client-certificate-data": b64("x"), "client-key-data": b64("y")}},
                {"name": "ub", "user": {"client-certificate-data": b64("CERT"), "client-key-data": b64("KEY")}},
            ],
        })
        .to_string();
        let kc = Kubeconfig::parse(&text, Path::new("k.json")).expect("parses");
        assert_eq!(kc.server, "https://127.0.0.1:6443");
        assert_eq!(kc.ca_pem, b"CA-B");
        assert_eq!(kc.cert_pem, b"CERT");
        assert_eq!(kc.key_pem, b"KEY");
        let e = Kubeconfig::parse("apiVersion: v1\n", Path::new("k.yaml")).expect_err("yaml");
        assert!(
            format!("{e:#}").contains("k.yaml: not a JSON kubeconfig"),
            "{e:#}"
        );
        let plain = text.replace("https://127.0.0.1:6443/", "http://127.0.0.1:8080");
        let e = Kubeconfig::parse(&plain, Path::new("k.json")).expect_err("http");
        assert!(format!("{e:#}").contains("not an https:// URL"), "{e:#}");
    }

    #[test]
    fn components_pass_when_running_and_ready() {
        let rows = serde_json::json!([
            {"name": "etcd", "state": "running", "ready": true, "restarts": 0},
            {"name": "kube-apiserver", "state": "backoff", "ready": false, "restarts": 2,
             "last_failure": "exited with status 1"},
            {"name": "kubelet", "state": "starting", "ready": false, "restarts": 0},
        ]);
        let c = component_checks(&rows);
        assert_eq!(
            c.iter()
                .map(|c| (c.name.as_str(), c.ok))
                .collect::<Vec<_>>(),
            [
                ("etcd", true),
                ("kube-apiserver", false),
                ("kubelet", false)
            ]
        );
        assert!(c[1].detail.contains("last failure: exited with status 1"));
        assert!(!component_checks(&serde_json::Value::Null)[0].ok);
    }

    #[test]
    fn certificates_fail_within_thirty_days_of_expiry() {
        let cert = |file: &str, not_after: i64| firstboot::pki::CertInfo {
            file: file.into(),
            subject: String::new(),
            subject_cn: String::new(),
            issuer: String::new(),
            not_after,
            not_after_rfc3339: String::new(),
        };
        let now = 1_800_000_000;
        let mut st = firstboot::status::Status {
            certificates: vec![
                cert("ca.crt", now + 3650 * 86_400),
                cert("apiserver.crt", now + 365 * 86_400),
            ],
            ..Default::default()
        };
        let c = certificate_check(&st, now);
        assert!(c.ok, "{c:?}");
        assert!(c.detail.contains("apiserver.crt in 365 days"), "{c:?}");
        st.certificates
            .push(cert("etcd/server.crt", now + 29 * 86_400));
        let c = certificate_check(&st, now);
        assert!(!c.ok);
        assert!(
            c.detail.ends_with("within 30 days: etcd/server.crt"),
            "{c:?}"
        );
    }

    #[test]
    fn readyz_failures_are_named() {
        let body = "[+]ping ok\n[-]etcd failed: reason withheld\n[+]etcd-readiness ok\n\
                    [+]log ok\nreadyz check failed\n";
        assert_eq!(failing_checks(body), "failing: etcd");
        assert_eq!(readyz_check(body, "etcd"), Some(false));
        assert_eq!(readyz_check(body, "etcd-readiness"), Some(true));
        assert_eq!(readyz_check(body, "informer-sync"), None);
    }

    #[test]
    fn journal_lines_are_picked_by_component() {
        let j = "Dec 07 15:00:00.000001 n1 firstboot[100]: kiln: etcd ready\n\
                 Dec 07 15:00:00.000002 n1 kube-apiserver[200]: I1207 serving\n\
                 Dec 07 15:00:00.000003 n1 kube-apiserver-x[201]: other\n\
                 Dec 07 15:00:00.000004 n1 etcd[300]: {\"msg\":\"kube-apiserver[9]: not mine\"}\n";
        assert_eq!(
            component_lines(j, "kube-apiserver"),
            ["Dec 07 15:00:00.000002 n1 kube-apiserver[200]: I1207 serving"]
        );
        assert_eq!(component_lines(j, "etcd").len(), 1);
        assert_eq!(component_lines(j, "firstboot").len(), 1);
        assert_eq!(
            journal_query("n1", Some("2026-12-07T15:00:00Z")),
            "/api/v1/nodes/n1/proxy/logs/?query=firstboot&boot=0&sinceTime=2026-12-07T15%3A00%3A00Z"
        );
    }
}
