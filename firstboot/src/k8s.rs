//! Kubernetes component configuration (kubeadm style), as pure functions of [`ClusterParams`]:
//! the supervised components ([`components`]), their configuration files ([`files`]) and the
//! addon objects applied once through the API ([`addons`]). Nothing here does IO: the node
//! driver ([`crate::driver`]) writes the files and runs the components.
//!
//! Component configs are written as JSON (every component reads JSON where it reads YAML);
//! containerd's config is TOML.

pub mod addons;
pub mod components;
pub mod files;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::config::{Cidr, Hostname, Kubernetes, PodSecurity, Startup};

/// etcd client port (mTLS).
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd peer port (mTLS).
pub const ETCD_PEER_PORT: u16 = 2380;
/// etcd metrics and health, plain HTTP on 127.0.0.1 only.
pub const ETCD_METRICS_PORT: u16 = 2381;
/// kube-apiserver's default secure port.
pub const APISERVER_PORT: u16 = 6443;
/// kube-controller-manager's secure port (health on `/healthz`).
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
/// kube-scheduler's secure port (health on `/healthz`).
pub const SCHEDULER_PORT: u16 = 10259;
/// kubelet's plain-HTTP healthz port (127.0.0.1).
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// kube-proxy's plain-HTTP healthz port.
pub const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
/// containerd's Prometheus metrics, plain HTTP on 127.0.0.1 only: its one HTTP endpoint,
/// so its liveness probe.
pub const CONTAINERD_METRICS_PORT: u16 = 1338;
/// The sandbox image containerd pins (baked into the image). CoreDNS's container runs it
/// too, with the root's own `coredns` mounted in ([`addons::coredns`]).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";
/// Where CoreDNS's container finds the root's `coredns` binary.
pub const COREDNS_IN_POD: &str = "/kiln/coredns";

/// Errors from computing or writing component configuration.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("service range {cidr} has no address number {n}")]
    RangeTooSmall { cidr: String, n: u128 },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::pki::PkiError,
    },
    #[error("creating directory {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serializing {what}: {reason}")]
    Serialize { what: String, reason: String },
    #[error("building the probe for {component}")]
    Probe {
        component: String,
        #[source]
        source: crate::supervisor::probe::ProbeError,
    },
}

/// kube-proxy's dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    Iptables,
    Nftables,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Iptables => "iptables",
            ProxyMode::Nftables => "nftables",
        }
    }
}

/// Where things live. [`Paths::node`] is the layout inside the image; [`Paths::under`] puts
/// everything under one directory (host mode, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The PKI written by [`crate::pki::Pki::ensure`].
    pub pki: PathBuf,
    /// State: `etcd/` (0700), `kubelet/`, `containerd/`, the controllers' generated serving certs.
    pub data: PathBuf,
    /// Generated component configuration files.
    pub config: PathBuf,
    /// Kubernetes, etcd, containerd and runc binaries.
    pub bin: PathBuf,
    /// CNI plugin binaries.
    pub cni_bin: PathBuf,
    /// CNI network configuration.
    pub cni_conf: PathBuf,
    /// Runtime state (containerd's socket and state).
    pub run: PathBuf,
    /// Logs the components write as files (the apiserver's audit log).
    pub log: PathBuf,
}

impl Paths {
    /// The layout on the node.
    pub fn node() -> Paths {
        Paths {
            pki: PathBuf::from(crate::pki::DEFAULT_DIR),
            data: PathBuf::from("/var/lib"),
            config: PathBuf::from("/var/lib/kiln/k8s"),
            bin: PathBuf::from("/usr/bin"),
            cni_bin: PathBuf::from("/opt/cni/bin"),
            cni_conf: PathBuf::from("/etc/cni/net.d"),
            run: PathBuf::from("/run"),
            log: PathBuf::from("/var/log/kubernetes"),
        }
    }

    /// Everything under `root`, binaries from `bin`.
    pub fn under(root: &Path, bin: &Path) -> Paths {
        Paths {
            pki: root.join("pki"),
            data: root.join("data"),
            config: root.join("config"),
            bin: bin.to_path_buf(),
            cni_bin: bin.to_path_buf(),
            cni_conf: root.join("cni"),
            run: root.join("run"),
            log: root.join("log"),
        }
    }

    pub fn etcd_data(&self) -> PathBuf {
        self.data.join("etcd")
    }
    pub fn kubelet_data(&self) -> PathBuf {
        self.data.join("kubelet")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.data.join("containerd")
    }
    pub fn containerd_state(&self) -> PathBuf {
        self.run.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.run.join("containerd/containerd.sock")
    }
    pub fn pki_file(&self, rel: &str) -> PathBuf {
        self.pki.join(rel)
    }
    pub fn config_file(&self, name: &str) -> PathBuf {
        self.config.join(name)
    }
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
    /// The apiserver's audit log (rotated by the apiserver itself).
    pub fn audit_log(&self) -> PathBuf {
        self.log.join("audit.log")
    }
}

/// Everything the component configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterParams {
    pub hostname: Hostname,
    /// The node's addresses (kubelet `--node-ip` takes the first).
    pub node_ips: Vec<IpAddr>,
    pub pod_cidr: Cidr,
    pub service_cidr: Cidr,
    pub cluster_domain: Hostname,
    /// kube-apiserver's bind and advertise address; etcd's client port also listens here
    /// when it is not loopback. `127.0.0.1` in host mode.
    pub listen: IpAddr,
    pub apiserver_port: u16,
    pub proxy_mode: ProxyMode,
    /// Whether the node's components start beside the control plane or after it.
    pub startup: Startup,
    /// The Pod Security Standard enforced by default.
    pub pod_security: PodSecurity,
    /// The resolv.conf the kubelet hands to `dnsPolicy: Default` pods (CoreDNS forwards to it).
    pub resolv_conf: PathBuf,
    /// `resolv_conf` names upstream resolvers; CoreDNS forwards other names to them.
    pub upstream_dns: bool,
    pub paths: Paths,
}

impl ClusterParams {
    /// Parameters from the machine config's `[kubernetes]` section.
    pub fn new(
        k: &Kubernetes,
        hostname: Hostname,
        node_ips: Vec<IpAddr>,
        listen: IpAddr,
        paths: Paths,
    ) -> ClusterParams {
        ClusterParams {
            hostname,
            node_ips,
            pod_cidr: k.pod_cidr,
            service_cidr: k.service_cidr,
            cluster_domain: k.cluster_domain.clone(),
            listen,
            apiserver_port: APISERVER_PORT,
            proxy_mode: ProxyMode::Iptables,
            startup: k.startup,
            pod_security: k.pod_security,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            upstream_dns: true,
            paths,
        }
    }

    /// The `kubernetes` Service's ClusterIP: the first address of the service range.
    pub fn service_ip(&self) -> Result<IpAddr, K8sError> {
        nth_address(&self.service_cidr, 1)
    }

    /// The cluster DNS Service's ClusterIP: the tenth address of the service range.
    pub fn dns_ip(&self) -> Result<IpAddr, K8sError> {
        nth_address(&self.service_cidr, 10)
    }

    /// The address the apiserver advertises (the `kubernetes` Service's endpoint): the
    /// node's first non-loopback IP of the service range's family; the local address
    /// otherwise (host mode).
    pub fn advertise_address(&self) -> IpAddr {
        let v4 = matches!(self.service_cidr.addr(), IpAddr::V4(_));
        self.node_ips
            .iter()
            .find(|ip| !ip.is_loopback() && ip.is_ipv4() == v4)
            .copied()
            .unwrap_or_else(|| self.local_apiserver_host())
    }

    /// The address local clients use to reach the apiserver.
    pub fn local_apiserver_host(&self) -> IpAddr {
        if self.listen.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.listen
        }
    }

    /// `https://<local apiserver host>:<port>` (the server in the node's kubeconfigs).
    pub fn server_url(&self) -> String {
        match self.local_apiserver_host() {
            IpAddr::V4(a) => format!("https://{a}:{}", self.apiserver_port),
            IpAddr::V6(a) => format!("https://[{a}]:{}", self.apiserver_port),
        }
    }

    /// The service-account token issuer.
    pub fn service_account_issuer(&self) -> String {
        format!("https://kubernetes.default.svc.{}", self.cluster_domain)
    }

    /// The PKI parameters matching these cluster parameters, at time `now`.
    pub fn pki_params(&self, now: i64) -> Result<crate::pki::PkiParams, K8sError> {
        Ok(crate::pki::PkiParams {
            hostname: self.hostname.to_string(),
            node_ips: self.node_ips.clone(),
            service_ip: self.service_ip()?,
            cluster_domain: self.cluster_domain.to_string(),
            server: self.server_url(),
            now,
        })
    }
}

/// The `n`-th address of `cidr`'s network (address bits outside the prefix are ignored).
pub fn nth_address(cidr: &Cidr, n: u128) -> Result<IpAddr, K8sError> {
    let (bits, base): (u32, u128) = match cidr.addr() {
        IpAddr::V4(a) => (32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (128, u128::from(a)),
    };
    let host_bits = bits - u32::from(cidr.prefix());
    let too_small = || K8sError::RangeTooSmall {
        cidr: cidr.to_string(),
        n,
    };
    // The last address is the broadcast address in IPv4; keep clear of it in both families.
    let size = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    if n == 0 || n >= size.saturating_sub(1) {
        return Err(too_small());
    }
    let mask = if host_bits >= 128 {
        0
    } else {
        !((1u128 << host_bits) - 1)
    };
    let addr = (base & mask) + n;
    Ok(match cidr.addr() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(
            u32::try_from(addr).map_err(|_| too_small())?,
        )),
        IpAddr::V6(_) => IpAddr::V6(addr.into()),
    })
}

/// Node `node1` at 192.168.10.5 with the default cluster parameters, listening on `listen`
/// (unit tests of the k8s modules).
#[cfg(test)]
pub(crate) fn test_params(listen: &str) -> ClusterParams {
    ClusterParams::new(
        &Kubernetes::default(),
        "node1".parse().unwrap_or_else(|e| panic!("{e}")),
        vec!["192.168.10.5".parse().unwrap_or_else(|e| panic!("{e}"))],
        listen.parse().unwrap_or_else(|e| panic!("{e}")),
        Paths::node(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn dns_and_service_ips() {
        let k = Kubernetes::default();
        let p = ClusterParams::new(
            &k,
            "node1".parse().unwrap(),
            vec![],
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            Paths::node(),
        );
        assert_eq!(p.service_ip().unwrap().to_string(), "10.96.0.1");
        assert_eq!(p.dns_ip().unwrap().to_string(), "10.96.0.10");
        // Host bits in the configured address are masked off.
        assert_eq!(
            nth_address(&cidr("172.20.5.77/16"), 10)
                .unwrap()
                .to_string(),
            "172.20.0.10"
        );
        assert_eq!(
            nth_address(&cidr("192.168.7.0/28"), 10)
                .unwrap()
                .to_string(),
            "192.168.7.10"
        );
        // A /29 has 8 addresses: no tenth.
        assert!(nth_address(&cidr("192.168.7.0/29"), 10).is_err());
        assert!(nth_address(&cidr("10.0.0.0/32"), 1).is_err());
        assert_eq!(
            nth_address(&cidr("fd00:10:96::/112"), 10)
                .unwrap()
                .to_string(),
            "fd00:10:96::a"
        );
        assert_eq!(
            p.service_account_issuer(),
            "https://kubernetes.default.svc.cluster.local"
        );
        assert_eq!(p.server_url(), "https://127.0.0.1:6443");
    }
}
