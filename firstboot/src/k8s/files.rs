//! Component configuration files: kube-scheduler, the apiserver's AuthenticationConfiguration,
//! kubelet, kube-proxy, containerd, CNI; plus the kernel modules and sysctls the node needs.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{
    ClusterParams, K8sError, CONTAINERD_METRICS_PORT, KUBELET_HEALTHZ_PORT,
    KUBE_PROXY_HEALTHZ_PORT, PAUSE_IMAGE,
};

pub const SCHEDULER_CONFIG: &str = "kube-scheduler.json";
pub const AUTHENTICATION_CONFIG: &str = "authentication-config.json";
pub const ADMISSION_CONFIG: &str = "admission-config.json";
pub const AUDIT_POLICY: &str = "audit-policy.json";
pub const KUBELET_CONFIG: &str = "kubelet-config.json";
pub const KUBE_PROXY_CONFIG: &str = "kube-proxy-config.json";
pub const CONTAINERD_CONFIG: &str = "containerd.toml";
/// CNI network (in [`super::Paths::cni_conf`]); the first file in order is the one used.
pub const CNI_CONFLIST: &str = "10-kiln-bridge.conflist";
pub const CNI_LOOPBACK: &str = "99-loopback.conf";

/// Kernel modules for containers and bridged pod traffic.
pub const MODULES: &[&str] = &["overlay", "br_netfilter"];

/// Sysctls (name, value); the bridge ones need `br_netfilter` loaded first. The kernel and
/// vm ones are the values the kubelet's `protectKernelDefaults` requires (it refuses to
/// start on any other): an oops panics and a panic reboots after 10 s.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.keys.root_maxbytes", "25000000"),
];

/// The oldest TLS version every serving component accepts.
pub const TLS_MIN_VERSION: &str = "VersionTLS12";
/// TLS 1.2 cipher suites the components offer (TLS 1.3's are fixed): forward secret AEAD
/// only, for both ECDSA and RSA keys.
pub const TLS_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
}

fn file(path: PathBuf, v: &serde_json::Value) -> GeneratedFile {
    GeneratedFile {
        path,
        contents: format!("{v:#}\n"),
        mode: 0o644,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// KubeSchedulerConfiguration: its kubeconfig and leader election.
pub fn scheduler_config(p: &ClusterParams) -> serde_json::Value {
    json!({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": s(&p.paths.pki_file("scheduler.conf"))},
        // One scheduler, as for the controller manager (see its `--leader-elect`).
        "leaderElection": {"leaderElect": false},
        "enableProfiling": false,
        "enableContentionProfiling": false,
    })
}

/// The apiserver's AdmissionConfiguration: Pod Security admission enforcing the machine
/// config's level in every namespace but kube-system, warning about and auditing what
/// `restricted` would refuse.
pub fn admission_config(p: &ClusterParams) -> serde_json::Value {
    json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AdmissionConfiguration",
        "plugins": [{
            "name": "PodSecurity",
            "configuration": {
                "apiVersion": "pod-security.admission.config.k8s.io/v1",
                "kind": "PodSecurityConfiguration",
                "defaults": {
                    "enforce": p.pod_security.as_str(),
                    "enforce-version": "latest",
                    "audit": "restricted",
                    "audit-version": "latest",
                    "warn": "restricted",
                    "warn-version": "latest",
                },
                "exemptions": {
                    "usernames": [],
                    "runtimeClasses": [],
                    "namespaces": ["kube-system"],
                },
            },
        }],
    })
}

/// The audit policy: who did what to which object (`Metadata`: never a request or response
/// body, so no Secret's value reaches the log), for every request but the components' own
/// reads, health checks, lease renewals and events, which would drown it.
pub fn audit_policy() -> serde_json::Value {
    json!({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {
                "level": "None",
                "users": [
                    "system:kube-controller-manager",
                    "system:kube-scheduler",
                    "system:kube-proxy",
                    "system:apiserver",
                ],
                "verbs": ["get", "list", "watch"],
            },
            {"level": "None", "userGroups": ["system:nodes"], "verbs": ["get", "list", "watch"]},
            // firstboot's own watch on the node and CoreDNS, every few seconds (its
            // identity is the PKI's super-admin; its writes are still logged).
            {
                "level": "None",
                "users": ["kiln-super-admin"],
                "verbs": ["get"],
                "resources": [
                    {"group": "", "resources": ["nodes"]},
                    {"group": "apps", "resources": ["deployments"]},
                ],
            },
            {
                "level": "None",
                "nonResourceURLs": ["/healthz*", "/livez*", "/readyz*", "/version", "/metrics"],
            },
            {
                "level": "None",
                "resources": [
                    {"group": "coordination.k8s.io", "resources": ["leases"]},
                    {"group": "", "resources": ["events"]},
                    {"group": "events.k8s.io", "resources": ["events"]},
                ],
            },
            {"level": "Metadata"},
        ],
    })
}

/// The apiserver's AuthenticationConfiguration: anonymous requests only on the health paths.
pub fn authentication_config() -> serde_json::Value {
    json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthenticationConfiguration",
        "anonymous": {
            "enabled": true,
            "conditions": [{"path": "/livez"}, {"path": "/readyz"}, {"path": "/healthz"}],
        },
    })
}

/// KubeletConfiguration: systemd cgroups, webhook authn/authz, no anonymous access, cluster
/// DNS, serving certificate from the PKI (no rotation), swap tolerated but unused by pods.
/// A refusal is cached for 1 s, not the default 30 s: an apiserver restarting answers the
/// kubelet's access reviews before its authorizer has loaded the policy, and 30 s of cached
/// refusals would be 30 s of `kubectl exec` and `logs` refused after it is back.
pub fn kubelet_config(p: &ClusterParams) -> Result<serde_json::Value, K8sError> {
    let pki = |rel: &str| s(&p.paths.pki_file(rel));
    Ok(json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
        "containerRuntimeEndpoint": format!("unix://{}", s(&p.paths.containerd_socket())),
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true, "cacheTTL": "2m0s"},
            "x509": {"clientCAFile": pki("ca.crt")},
        },
        "authorization": {
            "mode": "Webhook",
            "webhook": {"cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "1s"},
        },
        "clusterDNS": [p.dns_ip()?.to_string()],
        "clusterDomain": p.cluster_domain.as_str(),
        "resolvConf": s(&p.resolv_conf),
        "tlsCertFile": pki("kubelet.crt"),
        "tlsPrivateKeyFile": pki("kubelet.key"),
        "tlsMinVersion": TLS_MIN_VERSION,
        "tlsCipherSuites": TLS_CIPHER_SUITES,
        // The sysctls it checks are set by firstboot first (`SYSCTLS`).
        "protectKernelDefaults": true,
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "failSwapOn": false,
        "memorySwap": {"swapBehavior": "NoSwap"},
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "readOnlyPort": 0,
        // /var/log through the API (`nodes/NAME/proxy/logs/`, authorized by the API server):
        // the node's status file as a file, the components' journal as a query
        // (`?query=firstboot`: they log into firstboot.service's journal). `kiln status`,
        // `kiln health` and `kiln logs` read them; nothing else listens.
        "enableSystemLogHandler": true,
        "enableSystemLogQuery": true,
        "featureGates": {"NodeLogQuery": true},
    }))
}

/// KubeProxyConfiguration.
pub fn kube_proxy_config(p: &ClusterParams) -> serde_json::Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": s(&p.paths.pki_file("kube-proxy.conf"))},
        "mode": p.proxy_mode.as_str(),
        "clusterCIDR": p.pod_cidr.to_string(),
        "hostnameOverride": p.hostname.as_str(),
        "healthzBindAddress": format!("127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}"),
        "metricsBindAddress": "127.0.0.1:10249",
    })
}

/// containerd's config.toml (version 3, containerd 2.x): CRI with the pinned sandbox image,
/// runc with systemd cgroups, CNI directories.
pub fn containerd_config(p: &ClusterParams) -> Result<String, K8sError> {
    let cri_images = json!({
        "snapshotter": "overlayfs",
        "pinned_images": {"sandbox": PAUSE_IMAGE},
    });
    let cri_runtime = json!({
        "containerd": {
            "default_runtime_name": "runc",
            "runtimes": {"runc": {
                "runtime_type": "io.containerd.runc.v2",
                "options": {
                    "SystemdCgroup": true,
                    "BinaryName": s(&p.paths.binary("runc")),
                },
            }},
        },
        "cni": {
            "bin_dirs": [s(&p.paths.cni_bin)],
            "conf_dir": s(&p.paths.cni_conf),
        },
    });
    let v = json!({
        "version": 3,
        "root": s(&p.paths.containerd_root()),
        "state": s(&p.paths.containerd_state()),
        "grpc": {"address": s(&p.paths.containerd_socket())},
        "metrics": {"address": format!("127.0.0.1:{CONTAINERD_METRICS_PORT}")},
        "plugins": {
            "io.containerd.cri.v1.images": cri_images,
            "io.containerd.cri.v1.runtime": cri_runtime,
        },
    });
    toml::to_string(&v).map_err(|e| K8sError::Serialize {
        what: CONTAINERD_CONFIG.into(),
        reason: e.to_string(),
    })
}

/// The CNI bridge network on the pod CIDR (host-local IPAM) with port mapping.
pub fn cni_conflist(p: &ClusterParams) -> serde_json::Value {
    let default_route = if p.pod_cidr.addr().is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    json!({
        "cniVersion": "1.0.0",
        "name": "kiln",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": p.pod_cidr.to_string()}]],
                    "routes": [{"dst": default_route}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// The loopback network (containerd also brings `lo` up itself with the loopback plugin).
pub fn cni_loopback() -> serde_json::Value {
    json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"})
}

/// `/etc/modules-load.d/kiln-k8s.conf` text.
pub fn modules_load_conf() -> String {
    MODULES.iter().map(|m| format!("{m}\n")).collect()
}

/// `/etc/sysctl.d/90-kiln-k8s.conf` text.
pub fn sysctl_conf() -> String {
    SYSCTLS
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect()
}

/// Files the control plane reads (host mode writes only these).
pub fn control_plane_files(p: &ClusterParams) -> Vec<GeneratedFile> {
    vec![
        file(p.paths.config_file(SCHEDULER_CONFIG), &scheduler_config(p)),
        file(
            p.paths.config_file(AUTHENTICATION_CONFIG),
            &authentication_config(),
        ),
        file(p.paths.config_file(ADMISSION_CONFIG), &admission_config(p)),
        file(p.paths.config_file(AUDIT_POLICY), &audit_policy()),
    ]
}

/// Files the node components read: kubelet, kube-proxy, containerd, CNI.
pub fn node_files(p: &ClusterParams) -> Result<Vec<GeneratedFile>, K8sError> {
    Ok(vec![
        GeneratedFile {
            // It names the kubelet's key and its clients' CA: for root only.
            mode: 0o600,
            ..file(p.paths.config_file(KUBELET_CONFIG), &kubelet_config(p)?)
        },
        file(
            p.paths.config_file(KUBE_PROXY_CONFIG),
            &kube_proxy_config(p),
        ),
        GeneratedFile {
            path: p.paths.config_file(CONTAINERD_CONFIG),
            contents: containerd_config(p)?,
            mode: 0o644,
        },
        file(p.paths.cni_conf.join(CNI_CONFLIST), &cni_conflist(p)),
        file(p.paths.cni_conf.join(CNI_LOOPBACK), &cni_loopback()),
    ])
}

/// The state directories the components expect, with their modes (etcd's 0700).
pub fn state_dirs(p: &ClusterParams) -> Vec<(PathBuf, u32)> {
    vec![
        (p.paths.etcd_data(), 0o700),
        (p.paths.config.clone(), 0o755),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{ClusterParams, ProxyMode};

    fn params() -> ClusterParams {
        crate::k8s::test_params("0.0.0.0")
    }

    /// Re-parses generated text (what a component would read) and returns it.
    fn reparse(f: &GeneratedFile) -> serde_json::Value {
        serde_json::from_str(&f.contents).unwrap()
    }

    #[test]
    fn kubelet_config_has_the_required_settings() {
        let p = params();
        let files = node_files(&p).unwrap();
        let k = reparse(
            files
                .iter()
                .find(|f| f.path.ends_with(KUBELET_CONFIG))
                .unwrap(),
        );
        assert_eq!(k["kind"], "KubeletConfiguration");
        assert_eq!(k["cgroupDriver"], "systemd");
        assert_eq!(k["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(k["authentication"]["webhook"]["enabled"], true);
        assert_eq!(k["authorization"]["mode"], "Webhook");
        assert_eq!(k["clusterDNS"], json!(["10.96.0.10"]));
        assert_eq!(k["clusterDomain"], "cluster.local");
        assert_eq!(k["failSwapOn"], false);
        assert_eq!(k["memorySwap"]["swapBehavior"], "NoSwap");
        assert_eq!(k["enableSystemLogQuery"], true);
        assert_eq!(k["featureGates"]["NodeLogQuery"], true);
        assert_eq!(k["rotateCertificates"], false);
        assert!(k.get("staticPodPath").is_none());
        assert_eq!(k["tlsCertFile"], "/var/lib/kiln/pki/kubelet.crt");
        assert_eq!(
            k["containerRuntimeEndpoint"],
            "unix:///run/containerd/containerd.sock"
        );
    }

    #[test]
    fn kube_proxy_and_cni() {
        let mut p = params();
        p.proxy_mode = ProxyMode::Nftables;
        let files = node_files(&p).unwrap();
        let find = |name: &str| reparse(files.iter().find(|f| f.path.ends_with(name)).unwrap());
        let kp = find(KUBE_PROXY_CONFIG);
        assert_eq!(kp["mode"], "nftables");
        assert_eq!(kp["clusterCIDR"], "10.244.0.0/16");
        let cni = find(CNI_CONFLIST);
        let types: Vec<&str> = cni["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(cni["plugins"][0]["ipam"]["type"], "host-local");
        assert_eq!(
            cni["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.0.0/16"
        );
        assert_eq!(find(CNI_LOOPBACK)["type"], "loopback");
        assert!(files
            .iter()
            .all(|f| f.path.starts_with("/var/lib/kiln/k8s") || f.path.starts_with("/etc/cni")));
    }

    #[test]
    fn containerd_config_is_version_3_with_systemd_cgroups() {
        let text = containerd_config(&params()).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["version"].as_integer(), Some(3));
        let plugins = &v["plugins"];
        assert_eq!(
            plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("registry.k8s.io/pause:3.10.1")
        );
        // Metrics on loopback only: the supervisor's liveness probe.
        assert_eq!(v["metrics"]["address"].as_str(), Some("127.0.0.1:1338"));
        let runc = &plugins["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
        let cni = &plugins["io.containerd.cri.v1.runtime"]["cni"];
        assert_eq!(cni["conf_dir"].as_str(), Some("/etc/cni/net.d"));
        assert_eq!(
            cni["bin_dirs"].as_array().unwrap()[0].as_str(),
            Some("/opt/cni/bin")
        );
        // The plugin id is one quoted key, not nested tables.
        assert!(text.contains("\"io.containerd.cri.v1.images\""), "{text}");
    }

    #[test]
    fn control_plane_files_parse() {
        let p = params();
        let files = control_plane_files(&p);
        let sched = reparse(&files[0]);
        assert_eq!(sched["kind"], "KubeSchedulerConfiguration");
        assert_eq!(
            sched["clientConnection"]["kubeconfig"],
            "/var/lib/kiln/pki/scheduler.conf"
        );
        let auth = reparse(&files[1]);
        let paths: Vec<&str> = auth["anonymous"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/livez", "/readyz", "/healthz"]);
        assert_eq!(auth["anonymous"]["enabled"], true);
        assert_eq!(sched["enableProfiling"], false);
    }

    #[test]
    fn pod_security_enforces_the_configured_level_outside_kube_system() {
        let mut p = params();
        let find = |p: &ClusterParams, name: &str| {
            reparse(
                control_plane_files(p)
                    .iter()
                    .find(|f| f.path.ends_with(name))
                    .unwrap(),
            )
        };
        let a = find(&p, ADMISSION_CONFIG);
        assert_eq!(a["kind"], "AdmissionConfiguration");
        let ps = &a["plugins"][0];
        assert_eq!(ps["name"], "PodSecurity");
        let c = &ps["configuration"];
        assert_eq!(c["defaults"]["enforce"], "baseline");
        assert_eq!(c["defaults"]["warn"], "restricted");
        assert_eq!(c["exemptions"]["namespaces"], json!(["kube-system"]));
        p.pod_security = crate::config::PodSecurity::Restricted;
        let a = find(&p, ADMISSION_CONFIG);
        assert_eq!(
            a["plugins"][0]["configuration"]["defaults"]["enforce"],
            "restricted"
        );
        // The audit policy never logs bodies and ends in a catch-all.
        let audit = find(&p, AUDIT_POLICY);
        let rules = audit["rules"].as_array().unwrap();
        assert_eq!(rules.last().unwrap(), &json!({"level": "Metadata"}));
        assert!(rules
            .iter()
            .all(|r| r["level"] == "None" || r["level"] == "Metadata"));
    }

    #[test]
    fn kubelet_is_hardened_and_its_config_private() {
        let files = node_files(&params()).unwrap();
        let f = files
            .iter()
            .find(|f| f.path.ends_with(KUBELET_CONFIG))
            .unwrap();
        assert_eq!(f.mode, 0o600);
        let k = reparse(f);
        assert_eq!(k["protectKernelDefaults"], true);
        assert_eq!(k["tlsMinVersion"], "VersionTLS12");
        assert_eq!(k["tlsCipherSuites"].as_array().unwrap().len(), 6);
        // Every sysctl protectKernelDefaults checks is set, to the value it wants.
        let conf = sysctl_conf();
        for want in [
            "vm.overcommit_memory = 1",
            "vm.panic_on_oom = 0",
            "kernel.panic = 10",
            "kernel.panic_on_oops = 1",
            "kernel.keys.root_maxkeys = 1000000",
            "kernel.keys.root_maxbytes = 25000000",
        ] {
            assert!(conf.lines().any(|l| l == want), "{want} in {conf}");
        }
    }

    #[test]
    fn modules_and_sysctls() {
        assert!(modules_load_conf().lines().any(|l| l == "br_netfilter"));
        assert!(modules_load_conf().lines().any(|l| l == "overlay"));
        assert!(sysctl_conf()
            .lines()
            .any(|l| l == "net.ipv4.ip_forward = 1"));
    }
}
