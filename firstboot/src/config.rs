//! The machine configuration schema, shared with the builder (which validates baked defaults
//! with it and prints its JSON Schema).
//!
//! Every field has a default, so any sub-document of a valid config is itself a valid
//! config: this is what lets [`crate::sources`] validate each source key by key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the builder bakes the image's default machine config.
pub const DEFAULT_CONFIG_PATH: &str = "/usr/lib/kiln/config.toml";
/// Where stage 2 persists the last good effective config (on the data partition).
pub const LAST_GOOD_PATH: &str = "/var/lib/kiln/config.toml";

/// A machine configuration. All sections are optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MachineConfig {
    /// The node's hostname (RFC 1123; may be a fully qualified name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    /// Network interfaces.
    pub network: Network,
    /// Kubernetes cluster parameters.
    pub kubernetes: Kubernetes,
    /// Cluster CAs and service-account key from `kiln secrets gen`: the node issues its
    /// certificates from these instead of generating its own CAs (first boot only; an
    /// existing PKI on /var is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<crate::pki::Secrets>,
}

impl MachineConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: MachineConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// What the schema cannot say: operator secrets must hold matching keys and certificates.
    pub fn check(&self) -> Result<(), ConfigError> {
        match &self.secrets {
            Some(s) => s
                .check()
                .map_err(|e| ConfigError::Parse(format!("secrets: {e}"))),
            None => Ok(()),
        }
    }

    /// The hostname to use: the configured one or `fallback`.
    pub fn hostname_or<'a>(&'a self, fallback: &'a Hostname) -> &'a Hostname {
        self.hostname.as_ref().unwrap_or(fallback)
    }
}

/// Errors from building config values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The TOML did not parse or did not match the schema.
    #[error("parsing machine config: {0}")]
    Parse(String),
    /// A hostname is not a valid RFC 1123 name.
    #[error("invalid hostname {0:?}: {1}")]
    Hostname(String, &'static str),
    /// A CIDR is malformed.
    #[error("invalid CIDR {0:?}: {1}")]
    Cidr(String, &'static str),
}

/// `[network]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Network {
    /// Interfaces keyed by kernel name (`eth0`, `enp0s3`) or MAC address (`52:54:00:12:34:56`).
    /// A name is 1-15 of `A-Z a-z 0-9 _ . -`: no wildcard, space or newline (it is written
    /// into a networkd file), and never `lo`, `cni0` or a pod's `veth…`.
    #[serde(deserialize_with = "interfaces")]
    pub interfaces: BTreeMap<String, Interface>,
}

/// Why `key` cannot name an interface, if it cannot.
pub fn check_interface_key(key: &str) -> Result<(), String> {
    if matches!(Selector::of(key), Selector::Mac(_)) {
        return Ok(());
    }
    let why = if key.is_empty() || key.len() > 15 {
        "is not 1 to 15 characters long"
    } else if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        "holds a character other than A-Z, a-z, 0-9, `_`, `.` and `-`"
    } else if key == "." || key == ".." {
        "is not a name"
    } else if key == "lo" || key == "cni0" || key.starts_with("veth") {
        "is the node's own (loopback, the pod bridge or a pod's end)"
    } else {
        return Ok(());
    };
    Err(format!("interface {key:?} {why}"))
}

fn interfaces<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Interface>, D::Error> {
    let map = BTreeMap::<String, Interface>::deserialize(d)?;
    for k in map.keys() {
        check_interface_key(k).map_err(serde::de::Error::custom)?;
    }
    Ok(map)
}

/// One interface's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Interface {
    /// Use DHCP (default: true when no addresses are given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// Static addresses with prefix length, e.g. `192.168.1.10/24`.
    pub addresses: Vec<Cidr>,
    /// Static routes.
    pub routes: Vec<Route>,
    /// DNS servers.
    pub dns: Vec<IpAddr>,
    /// MTU in bytes (68..=65535).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<Mtu>,
}

/// How an interface key selects a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// By MAC address, lower-case, colon-separated.
    Mac(String),
    /// By kernel interface name.
    Name(String),
}

impl Selector {
    /// Interprets an `[network.interfaces]` key.
    pub fn of(key: &str) -> Selector {
        let parts: Vec<&str> = key.split(':').collect();
        if parts.len() == 6
            && parts
                .iter()
                .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        {
            Selector::Mac(key.to_ascii_lowercase())
        } else {
            Selector::Name(key.to_string())
        }
    }
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Route {
    /// Destination, e.g. `0.0.0.0/0`.
    pub to: Cidr,
    /// Gateway.
    pub via: IpAddr,
}

/// An MTU, 68..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "u32", into = "u32")]
pub struct Mtu(u32);

impl TryFrom<u32> for Mtu {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if (68..=65535).contains(&v) {
            Ok(Mtu(v))
        } else {
            Err(format!("mtu {v} is outside 68..=65535"))
        }
    }
}

impl From<Mtu> for u32 {
    fn from(m: Mtu) -> u32 {
        m.0
    }
}

/// `[kubernetes]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Kubernetes {
    /// Pod network range.
    pub pod_cidr: Cidr,
    /// Service network range.
    pub service_cidr: Cidr,
    /// Cluster DNS domain.
    pub cluster_domain: Hostname,
    /// How the node's components start: `parallel` (the default) starts each one as soon
    /// as what it needs is ready (containerd and the kubelet beside the control plane);
    /// `serial` starts them one after another (etcd, kube-apiserver, controller-manager
    /// and scheduler, containerd, kubelet, kube-proxy): a lower peak of CPU and memory
    /// for a small machine, and a later node Ready.
    pub startup: Startup,
    /// The Pod Security Standard enforced in every namespace but kube-system (a namespace
    /// may set its own with the `pod-security.kubernetes.io/enforce` label): `baseline` (the
    /// default) refuses privileged pods, host namespaces, host paths and host ports;
    /// `restricted` also requires non-root, no privilege escalation and dropped
    /// capabilities; `privileged` enforces nothing. Pods that `restricted` would refuse are
    /// warned about and audited at every level.
    pub pod_security: PodSecurity,
}

/// `[kubernetes] pod-security`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PodSecurity {
    Privileged,
    #[default]
    Baseline,
    Restricted,
}

impl PodSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Privileged => "privileged",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Restricted => "restricted",
        }
    }
}

/// `[kubernetes] startup`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Startup {
    #[default]
    Parallel,
    Serial,
}

impl Default for Kubernetes {
    fn default() -> Self {
        Kubernetes {
            pod_cidr: Cidr::new(IpAddr::from([10, 244, 0, 0]), 16),
            service_cidr: Cidr::new(IpAddr::from([10, 96, 0, 0]), 12),
            cluster_domain: Hostname("cluster.local".to_string()),
            startup: Startup::Parallel,
            pod_security: PodSecurity::Baseline,
        }
    }
}

/// An RFC 1123 host name: labels of 1–63 letters, digits or hyphens, not starting or
/// ending with a hyphen, separated by dots, at most 253 characters. Can only be built valid.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);

impl Hostname {
    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first label (what goes into the kernel hostname and /etc/hostname).
    pub fn short(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
    /// Whether the name has more than one label.
    pub fn is_fqdn(&self) -> bool {
        self.0.contains('.')
    }
}

impl FromStr for Hostname {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why| Err(ConfigError::Hostname(s.to_string(), why));
        let name = s.strip_suffix('.').unwrap_or(s);
        if name.is_empty() {
            return bad("empty");
        }
        if name.len() > 253 {
            return bad("longer than 253 characters");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return bad("empty label");
            }
            if label.len() > 63 {
                return bad("label longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return bad("only letters, digits, '-' and '.' are allowed");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label starts or ends with '-'");
            }
        }
        Ok(Hostname(name.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for Hostname {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<Hostname> for String {
    fn from(h: Hostname) -> String {
        h.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IP address with a prefix length, e.g. `10.244.0.0/16` or `fd00::1/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(gen: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(gen)
    }
}

impl Cidr {
    fn new(addr: IpAddr, prefix: u8) -> Self {
        Cidr { addr, prefix }
    }
    /// The address part.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

impl FromStr for Cidr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why| Err(ConfigError::Cidr(s.to_string(), why));
        let Some((a, p)) = s.split_once('/') else {
            return bad("missing '/prefix'");
        };
        let Ok(addr) = a.parse::<IpAddr>() else {
            return bad("not an IP address");
        };
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
            return bad("prefix is not a number");
        }
        let prefix: u8 = match p.parse() {
            Ok(v) => v,
            Err(_) => return bad("prefix is not a number"),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return bad("prefix too long for the address family");
        }
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The JSON Schema of [`MachineConfig`], for the builder and editors.
pub fn json_schema() -> schemars::Schema {
    schemars::schema_for!(MachineConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for ok in ["node1", "a", "Node-1.example.com", "x.y.", &"a".repeat(63)] {
            assert!(ok.parse::<Hostname>().is_ok(), "{ok}");
        }
        assert_eq!(
            "Node-1.Example".parse::<Hostname>().unwrap().as_str(),
            "node-1.example"
        );
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "under_score",
            "sp ace",
            "ünï",
            &"a".repeat(64),
            &["abc"; 64].join("."),
        ] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad:?}");
        }
        let h: Hostname = "web.example.com".parse().unwrap();
        assert_eq!(h.short(), "web");
        assert!(h.is_fqdn());
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(c.prefix(), 16);
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!("fd00::1/64".parse::<Cidr>().is_ok());
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "x/8",
            "1.2.3.4/-1",
            "1.2.3.4/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn full_document_and_defaults() {
        let c = MachineConfig::from_toml(
            r#"
hostname = "node1"
[network.interfaces.eth0]
dhcp = false
addresses = ["192.168.1.10/24"]
routes = [{ to = "0.0.0.0/0", via = "192.168.1.1" }]
dns = ["1.1.1.1"]
mtu = 1400
[network.interfaces."52:54:00:AA:bb:cc"]
dhcp = true
[kubernetes]
pod-cidr = "10.42.0.0/16"
startup = "serial"
"#,
        )
        .unwrap();
        assert_eq!(c.hostname.as_ref().map(Hostname::as_str), Some("node1"));
        let eth0 = &c.network.interfaces["eth0"];
        assert_eq!(eth0.mtu, Some(Mtu(1400)));
        assert_eq!(eth0.routes[0].via.to_string(), "192.168.1.1");
        assert_eq!(c.kubernetes.pod_cidr.to_string(), "10.42.0.0/16");
        assert_eq!(c.kubernetes.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(c.kubernetes.cluster_domain.as_str(), "cluster.local");
        assert_eq!(c.kubernetes.startup, Startup::Serial);
        assert_eq!(Kubernetes::default().startup, Startup::Parallel);
        assert_eq!(
            Selector::of("52:54:00:AA:bb:cc"),
            Selector::Mac("52:54:00:aa:bb:cc".into())
        );
        assert_eq!(Selector::of("eth0"), Selector::Name("eth0".into()));
        // Round trip through TOML.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(MachineConfig::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(MachineConfig::from_toml("hostnme = \"x\"").is_err());
        assert!(MachineConfig::from_toml("[kubernetes]\npod_cidr = \"10.0.0.0/8\"").is_err());
        assert!(MachineConfig::from_toml("[network.interfaces.eth0]\nmtu = 10").is_err());
        assert!(MachineConfig::from_toml("hostname = \"bad_name\"").is_err());
        assert!(MachineConfig::from_toml("hostname = ").is_err());
        assert!(MachineConfig::from_toml("[kubernetes]\nstartup = \"fast\"").is_err());
        assert!(MachineConfig::from_toml("[kubernetes]\npod-security = \"none\"").is_err());
    }

    #[test]
    fn interface_names_cannot_inject_or_match_the_nodes_own_links() {
        for bad in [
            "eth*",
            "en?",
            "eth0\nName=*",
            "a b",
            "lo",
            "cni0",
            "veth1234",
            "",
            "a-very-long-interface",
            "..",
            "eth0/1",
        ] {
            let text = format!(
                "[network.interfaces.{}]\ndhcp = true\n",
                toml::Value::from(bad)
            );
            let err = MachineConfig::from_toml(&text).expect_err(bad);
            assert!(err.to_string().contains("interface"), "{bad:?}: {err}");
        }
        for good in ["eth0", "enp0s3", "br-lan", "bond0.100", "52:54:00:12:34:56"] {
            let text = format!(
                "[network.interfaces.{}]\ndhcp = true\n",
                toml::Value::from(good)
            );
            MachineConfig::from_toml(&text).expect(good);
        }
    }

    #[test]
    fn pod_security_defaults_to_baseline_and_can_be_set() {
        assert_eq!(Kubernetes::default().pod_security, PodSecurity::Baseline);
        let c = MachineConfig::from_toml("[kubernetes]\npod-security = \"restricted\"").unwrap();
        assert_eq!(c.kubernetes.pod_security, PodSecurity::Restricted);
    }

    #[test]
    fn schema_names_the_sections() {
        let s = serde_json::to_string(&json_schema()).unwrap();
        for key in [
            "hostname",
            "pod-cidr",
            "service-cidr",
            "cluster-domain",
            "startup",
            "interfaces",
            "mtu",
        ] {
            assert!(s.contains(key), "{key} missing from schema");
        }
    }

    #[test]
    fn operator_secrets_ride_in_the_machine_config() {
        let secrets = crate::pki::Secrets::generate(1_700_000_000).unwrap();
        let text = format!(
            "hostname = \"n1\"\n\n{}",
            format!("\n{}", secrets.to_toml().unwrap()).replace("\n[", "\n[secrets.")
        );
        let c = MachineConfig::from_toml(&text).unwrap();
        assert_eq!(c.secrets.as_ref(), Some(&secrets));
        // Round trip through the persisted (last good) form.
        let again = MachineConfig::from_toml(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let bad = text.replace("[secrets.ca]", "[secrets.cx]");
        assert!(MachineConfig::from_toml(&bad).is_err());
        // A CA key that is not its certificate's (another CA's) is refused.
        let other = crate::pki::Secrets::generate(1_700_000_000).unwrap();
        let mut mixed = secrets.clone();
        mixed.etcd_ca.key = other.etcd_ca.key.clone();
        let err = mixed.check().unwrap_err().to_string();
        assert!(
            err.contains("etcd-ca: the key is not the certificate's"),
            "{err}"
        );
        let mut mixed = secrets.clone();
        mixed.service_account.public = other.service_account.public.clone();
        assert!(mixed.check().is_err());
        let mut whole_other = secrets;
        whole_other.ca = other.ca;
        whole_other.check().expect("another CA, whole, is fine");
    }
}
