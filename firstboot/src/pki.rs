//! The node's PKI under /var/lib/kiln/pki: CAs, leaf certificates, the service-account key
//! pair, kubeconfigs and the secrets EncryptionConfiguration.
//!
//! [`Pki::ensure`] creates only what is missing (and re-issues a leaf certificate that is
//! within [`RENEW_BEFORE_SECS`] of its expiry). CAs either come from an operator-provided
//! [`Secrets`] set or are generated on first boot. File names follow kubeadm. Keys and
//! kubeconfigs are written 0600, atomically (temp file, fsync, rename); a key and its
//! certificate are written as one ([`put_pair`]: a power cut leaves the old pair or the new
//! one), and every key's and kubeconfig's mode is put back to 0600 if it drifted. Time is
//! injected.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::atomic::Replace;

/// CA validity: ten years.
pub const CA_VALIDITY_SECS: i64 = 10 * 365 * 86_400;
/// Leaf validity: one year (kubeadm's default).
pub const LEAF_VALIDITY_SECS: i64 = 365 * 86_400;
/// A leaf expiring within this window is re-issued by `ensure`.
pub const RENEW_BEFORE_SECS: i64 = 30 * 86_400;
/// Backdating of notBefore, for small clock skew.
const BACKDATE_SECS: i64 = 300;
/// The RBAC group the admin kubeconfig carries; bind it to `cluster-admin` (revocable).
pub const ADMIN_GROUP: &str = "kiln:cluster-admins";
/// The apiserver's client identity towards kubelets; bind it to `system:kubelet-api-admin`.
pub const APISERVER_KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// The controller manager's identity (its client certificate's CN).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// Default location on the node.
pub const DEFAULT_DIR: &str = "/var/lib/kiln/pki";

/// Errors from PKI generation; each names the file or the certificate concerned.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("generating key or certificate for {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("incomplete key pair: {present} exists but {missing} does not")]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("invalid time {0} (unix seconds)")]
    Time(i64),
    #[error("reading random bytes for {what}")]
    Random {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing secrets: {0}")]
    Secrets(String),
}

/// Inputs that shape the node's certificates.
#[derive(Debug, Clone)]
pub struct PkiParams {
    pub hostname: String,
    pub node_ips: Vec<IpAddr>,
    /// First IP of the service range (the `kubernetes` Service's ClusterIP).
    pub service_ip: IpAddr,
    /// e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Where the node's own kubeconfigs point, e.g. `https://127.0.0.1:6443`.
    pub server: String,
    /// Current time, unix seconds (injected).
    pub now: i64,
}

/// A CA (or any) certificate with its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CertKeyPem {
    pub cert: String,
    pub key: String,
}

/// The service-account signing key pair, PEM (PKCS#8 private, SPKI public).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeyPairPem {
    pub private: String,
    pub public: String,
}

/// Cluster secrets an operator can generate (`kiln secrets gen`) and hand to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Secrets {
    pub ca: CertKeyPem,
    pub etcd_ca: CertKeyPem,
    pub front_proxy_ca: CertKeyPem,
    pub service_account: KeyPairPem,
}

impl Secrets {
    /// Generates the three CAs and the service-account key pair, valid from `now`.
    pub fn generate(now: i64) -> Result<Secrets, PkiError> {
        let sa = new_key("service-account")?;
        Ok(Secrets {
            ca: generate_ca("kubernetes", now)?,
            etcd_ca: generate_ca("etcd-ca", now)?,
            front_proxy_ca: generate_ca("front-proxy-ca", now)?,
            service_account: KeyPairPem {
                private: sa.serialize_pem(),
                public: sa.public_key_pem(),
            },
        })
    }

    pub fn to_toml(&self) -> Result<String, PkiError> {
        toml::to_string(self).map_err(|e| PkiError::Secrets(e.to_string()))
    }

    pub fn from_toml(text: &str) -> Result<Secrets, PkiError> {
        let s: Secrets = toml::from_str(text).map_err(|e| PkiError::Secrets(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    /// Checks that every key parses, every certificate is a CA certificate, and each key is
    /// the one its certificate (or public key) names: secrets that fail are never used.
    pub fn check(&self) -> Result<(), PkiError> {
        for (what, pair) in [
            ("ca", &self.ca),
            ("etcd-ca", &self.etcd_ca),
            ("front-proxy-ca", &self.front_proxy_ca),
        ] {
            load_issuer(&pair.cert, &pair.key, Path::new(what))?;
            let bad = |m: String| PkiError::Secrets(format!("{what}: {m}"));
            let key = KeyPair::from_pem(&pair.key).map_err(|e| bad(e.to_string()))?;
            let (_, pem) = x509_parser::pem::parse_x509_pem(pair.cert.as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
            if !cert.is_ca() {
                return Err(bad("the certificate is not a CA certificate".into()));
            }
            if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(bad("the key is not the certificate's".into()));
            }
        }
        let sa = KeyPair::from_pem(&self.service_account.private)
            .map_err(|e| PkiError::Secrets(format!("service-account private key: {e}")))?;
        if sa.public_key_pem().trim() != self.service_account.public.trim() {
            return Err(PkiError::Secrets(
                "service-account: the public key is not the private key's".into(),
            ));
        }
        Ok(())
    }
}

/// One certificate as shown by `firstboot status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// Path relative to the PKI directory, e.g. `etcd/server.crt`.
    pub file: String,
    pub subject: String,
    /// The subject's common name (empty if it has none).
    #[serde(default)]
    pub subject_cn: String,
    pub issuer: String,
    /// notAfter, unix seconds.
    pub not_after: i64,
    /// notAfter, RFC 3339.
    pub not_after_rfc3339: String,
}

/// What `ensure` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkiReport {
    /// Files written in this run, relative to the PKI directory, sorted.
    pub written: Vec<String>,
    /// Every certificate, sorted by file.
    pub certs: Vec<CertInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ca {
    Cluster,
    Etcd,
    FrontProxy,
}

impl Ca {
    fn stem(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd/ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }
    fn cn(self) -> &'static str {
        match self {
            Ca::Cluster => "kubernetes",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }
    fn pair_in(self, s: &Secrets) -> &CertKeyPem {
        match self {
            Ca::Cluster => &s.ca,
            Ca::Etcd => &s.etcd_ca,
            Ca::FrontProxy => &s.front_proxy_ca,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Usage {
    Server,
    Client,
    Both,
}

struct Leaf {
    stem: &'static str,
    ca: Ca,
    cn: String,
    orgs: Vec<&'static str>,
    sans: Vec<SanType>,
    usage: Usage,
}

/// Kubeconfig file, the leaf whose certificate it embeds, and its user name.
const KUBECONFIGS: &[(&str, &str, &str)] = &[
    ("admin.conf", "admin", "kiln-admin"),
    ("super-admin.conf", "super-admin", "kiln-super-admin"),
    (
        "controller-manager.conf",
        "controller-manager",
        CONTROLLER_MANAGER_USER,
    ),
    ("scheduler.conf", "scheduler", "system:kube-scheduler"),
    ("kubelet.conf", "kubelet-client", "kubelet"),
    ("kube-proxy.conf", "kube-proxy", "system:kube-proxy"),
];

fn leaves(p: &PkiParams) -> Result<Vec<Leaf>, PkiError> {
    let dns = |s: &str| -> Result<SanType, PkiError> {
        Ok(SanType::DnsName(s.try_into().map_err(|e| {
            PkiError::Generate {
                what: format!("SAN {s}"),
                source: e,
            }
        })?))
    };
    let mut node_sans = vec![dns(&p.hostname)?, dns("localhost")?];
    let mut ips: BTreeSet<IpAddr> = p.node_ips.iter().copied().collect();
    ips.insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
    ips.insert(IpAddr::V6(Ipv6Addr::LOCALHOST));
    node_sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));

    // The controller manager and the scheduler serve on 127.0.0.1 only.
    let loopback_sans = vec![
        dns("localhost")?,
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    let mut api_sans = node_sans.clone();
    let domain = &p.cluster_domain;
    for name in [
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        format!("kubernetes.default.svc.{domain}"),
    ] {
        api_sans.push(dns(&name)?);
    }
    if !ips.contains(&p.service_ip) {
        api_sans.push(SanType::IpAddress(p.service_ip));
    }
    let node_user = format!("system:node:{}", p.hostname);
    let leaf = |stem, ca, cn: &str, orgs: Vec<&'static str>, sans: Vec<SanType>, usage| Leaf {
        stem,
        ca,
        cn: cn.to_string(),
        orgs,
        sans,
        usage,
    };
    use Ca::*;
    use Usage::*;
    Ok(vec![
        leaf(
            "apiserver",
            Cluster,
            "kube-apiserver",
            vec![],
            api_sans,
            Server,
        ),
        leaf(
            "apiserver-kubelet-client",
            Cluster,
            APISERVER_KUBELET_CLIENT_USER,
            vec![],
            vec![],
            Client,
        ),
        leaf(
            "apiserver-etcd-client",
            Etcd,
            "kube-apiserver-etcd-client",
            vec![],
            vec![],
            Client,
        ),
        leaf(
            "etcd/server",
            Etcd,
            &p.hostname,
            vec![],
            node_sans.clone(),
            Both,
        ),
        leaf(
            "etcd/peer",
            Etcd,
            &p.hostname,
            vec![],
            node_sans.clone(),
            Both,
        ),
        leaf(
            "front-proxy-client",
            FrontProxy,
            "front-proxy-client",
            vec![],
            vec![],
            Client,
        ),
        leaf("kubelet", Cluster, &p.hostname, vec![], node_sans, Server),
        leaf(
            "kubelet-client",
            Cluster,
            &node_user,
            vec!["system:nodes"],
            vec![],
            Client,
        ),
        leaf(
            "admin",
            Cluster,
            "kiln-admin",
            vec![ADMIN_GROUP],
            vec![],
            Client,
        ),
        leaf(
            "super-admin",
            Cluster,
            "kiln-super-admin",
            vec!["system:masters"],
            vec![],
            Client,
        ),
        leaf(
            "controller-manager",
            Cluster,
            CONTROLLER_MANAGER_USER,
            vec![],
            vec![],
            Client,
        ),
        leaf(
            "scheduler",
            Cluster,
            "system:kube-scheduler",
            vec![],
            vec![],
            Client,
        ),
        // Their serving certificates: without one each would generate two RSA keys on its
        // first start (seconds of CPU on an emulated node, on the way to CoreDNS).
        leaf(
            "controller-manager-server",
            Cluster,
            "kube-controller-manager",
            vec![],
            loopback_sans.clone(),
            Server,
        ),
        leaf(
            "scheduler-server",
            Cluster,
            "kube-scheduler",
            vec![],
            loopback_sans,
            Server,
        ),
        leaf(
            "kube-proxy",
            Cluster,
            "system:kube-proxy",
            vec![],
            vec![],
            Client,
        ),
    ])
}

fn ts(secs: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| PkiError::Time(secs))
}

fn new_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::Generate {
        what: what.to_string(),
        source: e,
    })
}

fn generate_ca(cn: &str, now: i64) -> Result<CertKeyPem, PkiError> {
    let key = new_key(cn)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = ts(now - BACKDATE_SECS)?;
    params.not_after = ts(now + CA_VALIDITY_SECS)?;
    let cert = params.self_signed(&key).map_err(|e| PkiError::Generate {
        what: cn.to_string(),
        source: e,
    })?;
    Ok(CertKeyPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn load_issuer(cert: &str, key: &str, what: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let parse = |reason: String| PkiError::Parse {
        path: what.to_path_buf(),
        reason,
    };
    let key = KeyPair::from_pem(key).map_err(|e| parse(format!("CA key: {e}")))?;
    Issuer::from_ca_cert_pem(cert, key).map_err(|e| parse(format!("CA certificate: {e}")))
}

fn sign_leaf(leaf: &Leaf, issuer: &Issuer<'_, KeyPair>, now: i64) -> Result<CertKeyPem, PkiError> {
    let key = new_key(leaf.stem)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in &leaf.orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, leaf.cn.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = leaf.sans.clone();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match leaf.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Both => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = ts(now - BACKDATE_SECS)?;
    params.not_after = ts(now + LEAF_VALIDITY_SECS)?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| PkiError::Generate {
            what: leaf.stem.to_string(),
            source: e,
        })?;
    Ok(CertKeyPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Writes `data` to `path` durably with `mode`, creating parent directories owner-only
/// ([`crate::atomic`]).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    Replace::durable(mode)
        .private_parents()
        .write(path, data)
        .map_err(|source| PkiError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a PEM certificate's subject, issuer and notAfter.
pub fn cert_info(file: &str, pem_text: &str) -> Result<CertInfo, PkiError> {
    let perr = |reason: String| PkiError::Parse {
        path: PathBuf::from(file),
        reason,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).map_err(|e| perr(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| perr(e.to_string()))?;
    let not_after = cert.validity().not_after.timestamp();
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let not_after_rfc3339 = ts(not_after)?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| perr(e.to_string()))?;
    Ok(CertInfo {
        file: file.to_string(),
        subject: cert.subject().to_string(),
        subject_cn,
        issuer: cert.issuer().to_string(),
        not_after,
        not_after_rfc3339,
    })
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A kubeconfig (JSON) embedding the CA and a client certificate and key.
pub fn kubeconfig_json(server: &str, ca_pem: &str, user: &str, client: &CertKeyPem) -> String {
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kiln", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(&client.cert),
            "client-key-data": b64(&client.key),
        }}],
        "contexts": [{"name": "default", "context": {"cluster": "kiln", "user": user}}],
        "current-context": "default",
    });
    format!("{v:#}\n")
}

/// Mints an admin kubeconfig (group [`ADMIN_GROUP`]) from operator secrets, for
/// `kiln kubeconfig --secrets F --server URL`.
pub fn admin_kubeconfig(secrets: &Secrets, server: &str, now: i64) -> Result<String, PkiError> {
    let issuer = load_issuer(&secrets.ca.cert, &secrets.ca.key, Path::new("secrets: ca"))?;
    let leaf = Leaf {
        stem: "admin",
        ca: Ca::Cluster,
        cn: "kiln-admin".into(),
        orgs: vec![ADMIN_GROUP],
        sans: vec![],
        usage: Usage::Client,
    };
    let client = sign_leaf(&leaf, &issuer, now)?;
    Ok(kubeconfig_json(
        server,
        &secrets.ca.cert,
        "kiln-admin",
        &client,
    ))
}

/// The EncryptionConfiguration (JSON) for secrets, with a fresh 32-byte secretbox key.
pub fn encryption_config_json() -> Result<String, PkiError> {
    let mut key = [0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        let n = rustix::rand::getrandom(&mut key[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| PkiError::Random {
                what: "encryption key".into(),
                source: e.into(),
            })?;
        filled += n;
    }
    let v = serde_json::json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{
            "resources": ["secrets"],
            "providers": [
                {"secretbox": {"keys": [{
                    "name": "key1",
                    "secret": base64::engine::general_purpose::STANDARD.encode(key),
                }]}},
                {"identity": {}},
            ],
        }],
    });
    Ok(format!("{v:#}\n"))
}

/// The node's PKI directory.
pub struct Pki;

impl Pki {
    /// Creates whatever is missing under `dir`; see the module documentation.
    pub fn ensure(
        dir: &Path,
        params: &PkiParams,
        secrets: Option<&Secrets>,
    ) -> Result<PkiReport, PkiError> {
        let now = params.now;
        let mut written: Vec<String> = finish_pending(dir)?;
        let mut put = |rel: &str, data: &str, mode: u32| -> Result<(), PkiError> {
            write_atomic(&dir.join(rel), data.as_bytes(), mode)?;
            written.push(rel.to_string());
            Ok(())
        };
        let mut pairs: Vec<String> = Vec::new();
        let mut put_pair = |key_rel: &str, key: &str, rel: &str, data: &str, mode: u32| {
            put_pair(dir, key_rel, key, rel, data, mode)?;
            pairs.extend([key_rel.to_string(), rel.to_string()]);
            Ok::<(), PkiError>(())
        };

        // CAs.
        let mut issuers = Vec::new();
        let mut ca_pems = Vec::new();
        for ca in [Ca::Cluster, Ca::Etcd, Ca::FrontProxy] {
            let crt = format!("{}.crt", ca.stem());
            let key = format!("{}.key", ca.stem());
            let pair = match read_pair(dir, &crt, &key)? {
                Some(pair) => pair,
                None => {
                    let pair = match secrets {
                        Some(s) => ca.pair_in(s).clone(),
                        None => generate_ca(ca.cn(), now)?,
                    };
                    put_pair(&key, &pair.key, &crt, &pair.cert, 0o644)?;
                    pair
                }
            };
            issuers.push((ca, load_issuer(&pair.cert, &pair.key, &dir.join(&crt))?));
            ca_pems.push((ca, pair.cert));
        }
        let issuer = |ca: Ca| {
            issuers
                .iter()
                .find(|(c, _)| *c == ca)
                .map(|(_, i)| i)
                .ok_or(PkiError::Secrets(format!("no issuer for {ca:?}")))
        };

        // Service-account key pair.
        if read_pair(dir, "sa.pub", "sa.key")?.is_none() {
            let pair = match secrets {
                Some(s) => s.service_account.clone(),
                None => {
                    let k = new_key("service-account")?;
                    KeyPairPem {
                        private: k.serialize_pem(),
                        public: k.public_key_pem(),
                    }
                }
            };
            put_pair("sa.key", &pair.private, "sa.pub", &pair.public, 0o644)?;
        }

        // Leaves.
        let mut leaf_pems = Vec::new();
        for leaf in leaves(params)? {
            let crt = format!("{}.crt", leaf.stem);
            let key = format!("{}.key", leaf.stem);
            let existing = match read_pair(dir, &crt, &key)? {
                Some(pair) if cert_info(&crt, &pair.cert)?.not_after > now + RENEW_BEFORE_SECS => {
                    Some(pair)
                }
                _ => None,
            };
            let pair = match existing {
                Some(pair) => pair,
                None => {
                    let pair = sign_leaf(&leaf, issuer(leaf.ca)?, now)?;
                    put_pair(&key, &pair.key, &crt, &pair.cert, 0o644)?;
                    pair
                }
            };
            leaf_pems.push((leaf.stem, pair));
        }

        // Kubeconfigs.
        let cluster_ca = ca_pems
            .iter()
            .find(|(c, _)| *c == Ca::Cluster)
            .map(|(_, p)| p.as_str())
            .unwrap_or_default();
        // Each is written whenever it differs from what the pair on disk gives: after a new
        // pair, and after a power cut that fell between a pair and its kubeconfig.
        for (file, stem, user) in KUBECONFIGS {
            let Some((_, client)) = leaf_pems.iter().find(|(s, _)| s == stem) else {
                continue;
            };
            let want = kubeconfig_json(&params.server, cluster_ca, user, client);
            if fs::read_to_string(dir.join(file)).ok().as_deref() == Some(want.as_str()) {
                continue;
            }
            put(file, &want, 0o600)?;
        }

        // Secrets encryption at rest.
        if !dir.join("encryption-config.json").exists() {
            put("encryption-config.json", &encryption_config_json()?, 0o600)?;
        }

        written.extend(pairs);
        written.extend(restrict_modes(dir)?);
        written.sort();
        written.dedup();
        Ok(PkiReport {
            written,
            certs: Self::certs(dir)?,
        })
    }

    /// Subject, issuer and expiry of every `.crt` under `dir` (for `firstboot status`).
    pub fn certs(dir: &Path) -> Result<Vec<CertInfo>, PkiError> {
        let mut out = Vec::new();
        for sub in ["", "etcd"] {
            let d = dir.join(sub);
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(PkiError::Read { path: d, source }),
            };
            for entry in rd {
                let entry = entry.map_err(|source| PkiError::Read {
                    path: d.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".crt") {
                    continue;
                }
                let rel = if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                };
                out.push(cert_info(&rel, &read(&entry.path())?)?);
            }
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }
}

/// Where a key and its certificate (or public key) wait, both complete, before they are
/// renamed into place: the journal that makes [`put_pair`] atomic.
const PENDING: &str = ".pending";

/// A file's name in [`PENDING`]: its path under the PKI directory, flattened.
fn pending_name(rel: &str) -> String {
    rel.replace('/', "%")
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes a private key (`key_rel`, 0600) and what goes with it (`rel`, a certificate or a
/// public key, `mode`) so that a power cut at any point leaves the old pair or the new one:
/// both are written durably into [`PENDING`], the key first, then renamed into place, the
/// key first. The second file in [`PENDING`] means the pair is complete there;
/// [`finish_pending`] at the next start completes such a pair and drops a lone key.
fn put_pair(
    dir: &Path,
    key_rel: &str,
    key: &str,
    rel: &str,
    data: &str,
    mode: u32,
) -> Result<(), PkiError> {
    let pending = dir.join(PENDING);
    write_atomic(&pending.join(pending_name(key_rel)), key.as_bytes(), 0o600)?;
    write_atomic(&pending.join(pending_name(rel)), data.as_bytes(), mode)?;
    commit_pair(dir, key_rel, rel)
}

/// Renames a complete pending pair into place (the key first; either may already be there)
/// and makes the renames durable.
fn commit_pair(dir: &Path, key_rel: &str, rel: &str) -> Result<(), PkiError> {
    let pending = dir.join(PENDING);
    for r in [key_rel, rel] {
        let from = pending.join(pending_name(r));
        if !from.exists() {
            continue;
        }
        let to = dir.join(r);
        if let Some(parent) = to.parent() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| PkiError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        fs::rename(&from, &to).map_err(|source| PkiError::Write {
            path: to.clone(),
            source,
        })?;
        if let Some(parent) = to.parent() {
            sync_dir(parent)?;
        }
    }
    sync_dir(&pending)
}

/// Completes what an interrupted [`put_pair`] left in [`PENDING`]: a pair whose second file
/// is there is renamed into place; anything else there (a lone key, a temp file) is removed,
/// and the pair on disk stays the old one. Returns the files put in place.
fn finish_pending(dir: &Path) -> Result<Vec<String>, PkiError> {
    let pending = dir.join(PENDING);
    let rd = match fs::read_dir(&pending) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(PkiError::Read {
                path: pending,
                source,
            })
        }
    };
    let names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut done = Vec::new();
    for name in &names {
        let Some(stem) = name
            .strip_suffix(".crt")
            .or_else(|| name.strip_suffix(".pub"))
            .filter(|_| !name.starts_with('.'))
        else {
            continue;
        };
        let rel = name.replace('%', "/");
        let key_rel = format!("{}.key", stem.replace('%', "/"));
        commit_pair(dir, &key_rel, &rel)?;
        done.push(rel);
    }
    for e in fs::read_dir(&pending)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let _ = fs::remove_file(e.path());
    }
    done.sort();
    Ok(done)
}

/// Puts the mode of every private key and kubeconfig under `dir` back to 0600 if it is
/// anything else; returns the files changed.
fn restrict_modes(dir: &Path) -> Result<Vec<String>, PkiError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut changed = Vec::new();
    for sub in ["", "etcd"] {
        let Ok(rd) = fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let secret = name.ends_with(".key")
                || name.ends_with(".conf")
                || name == "encryption-config.json";
            let Ok(meta) = e.metadata() else { continue };
            if !secret || !meta.is_file() || meta.permissions().mode() & 0o777 == 0o600 {
                continue;
            }
            fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600)).map_err(|source| {
                PkiError::Write {
                    path: e.path(),
                    source,
                }
            })?;
            changed.push(if sub.is_empty() {
                name
            } else {
                format!("{sub}/{name}")
            });
        }
    }
    Ok(changed)
}

/// Reads a cert/key pair; `None` if neither exists, an error if only one does.
fn read_pair(dir: &Path, crt: &str, key: &str) -> Result<Option<CertKeyPem>, PkiError> {
    let (c, k) = (dir.join(crt), dir.join(key));
    match (c.exists(), k.exists()) {
        (false, false) => Ok(None),
        (true, true) => Ok(Some(CertKeyPem {
            cert: read(&c)?,
            key: read(&k)?,
        })),
        (true, false) => Err(PkiError::Incomplete {
            present: c,
            missing: k,
        }),
        (false, true) => Err(PkiError::Incomplete {
            present: k,
            missing: c,
        }),
    }
}

/// RBAC objects (JSON) binding [`ADMIN_GROUP`] to `cluster-admin` and the apiserver's kubelet
/// client to `system:kubelet-api-admin`; apply them with the super-admin kubeconfig.
pub fn rbac_bindings_json() -> serde_json::Value {
    let binding = |name: &str, role: &str, kind: &str, subject: &str| {
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
        })
    };
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            binding("kiln:cluster-admins", "cluster-admin", "Group", ADMIN_GROUP),
            // The controller manager runs every controller with its own credentials (no
            // service account and token for each of about 40 controllers before they run,
            // on the way to CoreDNS's ReplicaSet on an emulated node). It holds the
            // cluster CA's and the service-account signing keys, so it can act as anyone
            // already; this grants nothing it could not take.
            binding(
                "kiln:controller-manager",
                "cluster-admin",
                "User",
                CONTROLLER_MANAGER_USER,
            ),
            binding(
                "kiln:apiserver-kubelet-client",
                "system:kubelet-api-admin",
                "User",
                APISERVER_KUBELET_CLIENT_USER,
            ),
        ],
    })
}
