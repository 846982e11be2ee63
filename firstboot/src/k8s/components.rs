//! The supervised components, kubeadm style, and what each one waits for: etcd →
//! kube-apiserver → kube-controller-manager, kube-scheduler and kube-proxy; beside them
//! containerd → kubelet (the kubelet registers the node by itself once the API answers). With
//! `startup = "serial"` the node's three wait for the control plane instead, one after
//! another. Every flag here was checked against the binary's own `--help` (see
//! tests/host_mode.rs).

use std::net::IpAddr;
use std::path::Path;

use super::files::{
    ADMISSION_CONFIG, AUDIT_POLICY, AUTHENTICATION_CONFIG, CONTAINERD_CONFIG, KUBELET_CONFIG,
    KUBE_PROXY_CONFIG, SCHEDULER_CONFIG, TLS_CIPHER_SUITES, TLS_MIN_VERSION,
};
use super::{
    ClusterParams, K8sError, CONTAINERD_METRICS_PORT, CONTROLLER_MANAGER_PORT, ETCD_CLIENT_PORT,
    ETCD_METRICS_PORT, ETCD_PEER_PORT, KUBELET_HEALTHZ_PORT, KUBE_PROXY_HEALTHZ_PORT,
    SCHEDULER_PORT,
};
use crate::config::Startup;
use crate::supervisor::machine::{ComponentSpec, Millis, ProbeSpec};
use crate::supervisor::{CommandSpec, HttpProbe, Managed, TlsProbe};

pub const ETCD: &str = "etcd";
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";
pub const CONTAINERD: &str = "containerd";
pub const KUBELET: &str = "kubelet";
pub const KUBE_PROXY: &str = "kube-proxy";

/// Restart policy shared by every component: the first restart after 0.5 s, doubling up to
/// 30 s, reset after a minute of readiness.
fn spec(name: &str, deps: &[&str], probe: Option<ProbeSpec>, grace: Millis) -> ComponentSpec {
    ComponentSpec {
        name: name.to_string(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        probe,
        grace,
        backoff_base: 500,
        backoff_max: 30_000,
        stable_after: 60_000,
    }
}

/// How long a component may take to become ready before failed probes stop it: a cold start
/// under software emulation takes minutes; a crash is seen at once (the process exits).
const STARTUP_TIMEOUT: Millis = 300_000;
/// One probe's timeout: a hung (e.g. SIGSTOPped) server accepts the connection and never
/// answers, so hang detection takes about `failure_threshold` times this.
const PROBE_TIMEOUT: Millis = 5_000;

/// Probe timing: after the first good probe, `failure_threshold` consecutive failures stop
/// the component.
fn probe(initial_delay: Millis, period: Millis, failure_threshold: u32) -> ProbeSpec {
    ProbeSpec {
        initial_delay,
        period,
        timeout: PROBE_TIMEOUT,
        failure_threshold,
        startup_timeout: STARTUP_TIMEOUT,
    }
}

fn flag(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn url(scheme: &str, ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{scheme}://{a}:{port}"),
        IpAddr::V6(a) => format!("{scheme}://[{a}]:{port}"),
    }
}

fn http_probe(
    component: &str,
    url: &str,
    tls: Option<TlsProbe>,
) -> Result<Option<HttpProbe>, K8sError> {
    HttpProbe::from_url(url, tls)
        .map(Some)
        .map_err(|source| K8sError::Probe {
            component: component.to_string(),
            source,
        })
}

fn command(p: &ClusterParams, binary: &str, args: Vec<String>) -> CommandSpec {
    CommandSpec {
        program: path(&p.paths.binary(binary)),
        args,
        env: vec![],
        boot_nice: 0,
    }
}

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// etcd arguments: mTLS for clients and peers, health and metrics on 127.0.0.1:2381.
pub fn etcd_args(p: &ClusterParams) -> Vec<String> {
    let pki = |rel: &str| path(&p.paths.pki_file(rel));
    let client = url("https", LOOPBACK, ETCD_CLIENT_PORT);
    let mut listen_client = vec![client.clone()];
    if !p.listen.is_loopback() && !p.listen.is_unspecified() {
        listen_client.push(url("https", p.listen, ETCD_CLIENT_PORT));
    }
    // A single member: peers on loopback, so a changed node address never changes the
    // member's identity.
    let peer = url("https", LOOPBACK, ETCD_PEER_PORT);
    vec![
        flag("name", &p.hostname),
        flag("data-dir", path(&p.paths.etcd_data())),
        flag("listen-client-urls", listen_client.join(",")),
        flag("advertise-client-urls", &client),
        flag("listen-peer-urls", &peer),
        flag("initial-advertise-peer-urls", &peer),
        flag("initial-cluster", format!("{}={peer}", p.hostname)),
        flag("initial-cluster-state", "new"),
        flag(
            "listen-metrics-urls",
            url("http", LOOPBACK, ETCD_METRICS_PORT),
        ),
        flag("cert-file", pki("etcd/server.crt")),
        flag("key-file", pki("etcd/server.key")),
        flag("trusted-ca-file", pki("etcd/ca.crt")),
        flag("client-cert-auth", true),
        flag("peer-cert-file", pki("etcd/peer.crt")),
        flag("peer-key-file", pki("etcd/peer.key")),
        flag("peer-trusted-ca-file", pki("etcd/ca.crt")),
        flag("peer-client-cert-auth", true),
        flag("snapshot-count", 10_000),
        flag("feature-gates", "InitialCorruptCheck=true"),
        flag("watch-progress-notify-interval", "5s"),
    ]
}

/// kube-apiserver arguments.
pub fn apiserver_args(p: &ClusterParams) -> Result<Vec<String>, K8sError> {
    let pki = |rel: &str| path(&p.paths.pki_file(rel));
    let _ = p.service_ip()?; // the range must hold the kubernetes Service
    Ok(vec![
        flag("advertise-address", p.advertise_address()),
        flag("bind-address", p.listen),
        flag("secure-port", p.apiserver_port),
        flag("allow-privileged", true),
        flag("authorization-mode", "Node,RBAC"),
        flag("enable-admission-plugins", "NodeRestriction"),
        flag(
            "authentication-config",
            path(&p.paths.config_file(AUTHENTICATION_CONFIG)),
        ),
        flag("client-ca-file", pki("ca.crt")),
        flag("tls-cert-file", pki("apiserver.crt")),
        flag("tls-private-key-file", pki("apiserver.key")),
        flag("etcd-servers", url("https", LOOPBACK, ETCD_CLIENT_PORT)),
        flag("etcd-cafile", pki("etcd/ca.crt")),
        flag("etcd-certfile", pki("apiserver-etcd-client.crt")),
        flag("etcd-keyfile", pki("apiserver-etcd-client.key")),
        flag(
            "kubelet-client-certificate",
            pki("apiserver-kubelet-client.crt"),
        ),
        flag("kubelet-client-key", pki("apiserver-kubelet-client.key")),
        flag("kubelet-certificate-authority", pki("ca.crt")),
        flag(
            "kubelet-preferred-address-types",
            "InternalIP,ExternalIP,Hostname",
        ),
        flag("proxy-client-cert-file", pki("front-proxy-client.crt")),
        flag("proxy-client-key-file", pki("front-proxy-client.key")),
        flag("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        flag("requestheader-allowed-names", "front-proxy-client"),
        flag("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        flag("requestheader-group-headers", "X-Remote-Group"),
        flag("requestheader-username-headers", "X-Remote-User"),
        flag("service-account-issuer", p.service_account_issuer()),
        flag("service-account-key-file", pki("sa.pub")),
        flag("service-account-signing-key-file", pki("sa.key")),
        flag("service-cluster-ip-range", p.service_cidr),
        flag("encryption-provider-config", pki("encryption-config.json")),
        // Service account tokens live a day at most: admission-injected ones are not
        // stretched to a year (clients re-read the projected token as the kubelet renews it).
        flag("service-account-max-token-expiration", "24h"),
        flag("service-account-extend-token-expiration", false),
        flag(
            "admission-control-config-file",
            path(&p.paths.config_file(ADMISSION_CONFIG)),
        ),
        flag(
            "audit-policy-file",
            path(&p.paths.config_file(AUDIT_POLICY)),
        ),
        flag("audit-log-path", path(&p.paths.audit_log())),
        flag("audit-log-maxage", 7),
        flag("audit-log-maxbackup", 3),
        flag("audit-log-maxsize", 100),
        flag("profiling", false),
        flag("tls-min-version", TLS_MIN_VERSION),
        flag("tls-cipher-suites", TLS_CIPHER_SUITES.join(",")),
    ])
}

/// kube-controller-manager arguments.
pub fn controller_manager_args(p: &ClusterParams) -> Vec<String> {
    let pki = |rel: &str| path(&p.paths.pki_file(rel));
    let kubeconfig = pki("controller-manager.conf");
    vec![
        flag("kubeconfig", &kubeconfig),
        flag("authentication-kubeconfig", &kubeconfig),
        flag("authorization-kubeconfig", &kubeconfig),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", CONTROLLER_MANAGER_PORT),
        flag("tls-cert-file", pki("controller-manager-server.crt")),
        flag("tls-private-key-file", pki("controller-manager-server.key")),
        flag("client-ca-file", pki("ca.crt")),
        flag("requestheader-client-ca-file", pki("front-proxy-ca.crt")),
        flag("root-ca-file", pki("ca.crt")),
        flag("service-account-private-key-file", pki("sa.key")),
        flag("cluster-signing-cert-file", pki("ca.crt")),
        flag("cluster-signing-key-file", pki("ca.key")),
        // Every controller with the controller manager's own credentials (bound to
        // cluster-admin: see `pki::rbac_bindings_json`).
        flag("use-service-account-credentials", false),
        flag("allocate-node-cidrs", true),
        flag("cluster-cidr", p.pod_cidr),
        flag("service-cluster-ip-range", p.service_cidr),
        flag("cluster-name", "kubernetes"),
        // One controller manager per cluster: with leader election a restarted one (after
        // a kill -9) would wait up to the 15 s lease for its dead predecessor, and a healthy
        // one renews the lease in etcd every 2 s. The supervisor never runs two.
        flag("leader-elect", false),
        flag("controllers", "*,bootstrapsigner,tokencleaner"),
        flag("profiling", false),
        flag("tls-min-version", TLS_MIN_VERSION),
        flag("tls-cipher-suites", TLS_CIPHER_SUITES.join(",")),
    ]
}

/// kube-scheduler arguments (the rest is in its KubeSchedulerConfiguration).
pub fn scheduler_args(p: &ClusterParams) -> Vec<String> {
    let kubeconfig = path(&p.paths.pki_file("scheduler.conf"));
    vec![
        flag("config", path(&p.paths.config_file(SCHEDULER_CONFIG))),
        flag("authentication-kubeconfig", &kubeconfig),
        flag("authorization-kubeconfig", &kubeconfig),
        flag("bind-address", "127.0.0.1"),
        flag("secure-port", SCHEDULER_PORT),
        flag(
            "tls-cert-file",
            path(&p.paths.pki_file("scheduler-server.crt")),
        ),
        flag(
            "tls-private-key-file",
            path(&p.paths.pki_file("scheduler-server.key")),
        ),
        flag("tls-min-version", TLS_MIN_VERSION),
        flag("tls-cipher-suites", TLS_CIPHER_SUITES.join(",")),
    ]
}

/// The controller manager's and the scheduler's probe: their serving certificates are the
/// cluster CA's (`pki`).
fn cluster_ca_probe(p: &ClusterParams) -> TlsProbe {
    TlsProbe {
        ca: p.paths.pki_file("ca.crt"),
        client: None,
    }
}

/// The apiserver counts as ready when its /readyz passes and then an RBAC-authorized request
/// succeeds: right after a restart /readyz can pass while the authorizer still refuses (403),
/// and the controller manager, the scheduler and the admin would meet that; and an
/// authorized request can succeed while /readyz still waits for the bootstrap roles. The
/// second GET reads, as the controller manager (its client certificate), the one ConfigMap
/// the bootstrap RoleBinding system::extension-apiserver-authentication-reader lets it read,
/// which the controller manager and the scheduler read first thing themselves.
pub const APISERVER_USABLE_PATH: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";

/// etcd, kube-apiserver, kube-controller-manager and kube-scheduler, gated in that order.
pub fn control_plane(p: &ClusterParams) -> Result<Vec<Managed>, K8sError> {
    let pki = |rel: &str| p.paths.pki_file(rel);
    let etcd = Managed {
        spec: spec(ETCD, &[], Some(probe(500, 1_000, 10)), 10_000),
        command: command(p, "etcd", etcd_args(p)),
        probe: http_probe(
            ETCD,
            &format!("{}/readyz", url("http", LOOPBACK, ETCD_METRICS_PORT)),
            None,
        )?,
    };
    let apiserver = Managed {
        // An etcd outage of about 8 s is tolerated; a hang is detected by its first probe
        // timeout (the process using no CPU meanwhile), a slow death in 4 failed probes.
        spec: spec(APISERVER, &[ETCD], Some(probe(2_000, 2_000, 4)), 5_000),
        command: command(p, "kube-apiserver", apiserver_args(p)?),
        probe: http_probe(
            APISERVER,
            &format!(
                "{}/readyz",
                url("https", p.local_apiserver_host(), p.apiserver_port)
            ),
            Some(TlsProbe {
                ca: pki("ca.crt"),
                client: Some((pki("controller-manager.crt"), pki("controller-manager.key"))),
            }),
        )?
        .map(|probe| probe.then(APISERVER_USABLE_PATH)),
    };
    let controller_manager = Managed {
        spec: spec(
            CONTROLLER_MANAGER,
            &[APISERVER],
            Some(probe(1_000, 2_000, 10)),
            5_000,
        ),
        command: command(p, "kube-controller-manager", controller_manager_args(p)),
        probe: http_probe(
            CONTROLLER_MANAGER,
            &format!(
                "{}/healthz",
                url("https", LOOPBACK, CONTROLLER_MANAGER_PORT)
            ),
            Some(cluster_ca_probe(p)),
        )?,
    };
    let scheduler = Managed {
        spec: spec(
            SCHEDULER,
            &[APISERVER],
            Some(probe(1_000, 2_000, 10)),
            5_000,
        ),
        command: command(p, "kube-scheduler", scheduler_args(p)),
        probe: http_probe(
            SCHEDULER,
            &format!("{}/healthz", url("https", LOOPBACK, SCHEDULER_PORT)),
            Some(cluster_ca_probe(p)),
        )?,
    };
    Ok(vec![etcd, apiserver, controller_manager, scheduler])
}

/// The nice value of containerd and the kubelet (and the baked images' import) while they
/// start beside the control plane: on a machine of few cores the apiserver's start is the
/// boot's critical path, and they take only the CPU it leaves; nice 0 once it is ready.
pub const BOOT_NICE: i32 = 19;

/// How the node's components start.
struct NodeStart {
    containerd_deps: &'static [&'static str],
    proxy_deps: &'static [&'static str],
    nice: i32,
}

/// In parallel, containerd needs nothing from the control plane, and kube-proxy needs the
/// API (it reads its Node, waiting up to 30 s for the kubelet to register it), not the
/// kubelet. In serial, the single chain, with nothing left to yield to.
fn node_start(startup: Startup) -> NodeStart {
    match startup {
        Startup::Parallel => NodeStart {
            containerd_deps: &[],
            proxy_deps: &[APISERVER],
            nice: BOOT_NICE,
        },
        Startup::Serial => NodeStart {
            containerd_deps: &[CONTROLLER_MANAGER, SCHEDULER],
            proxy_deps: &[KUBELET],
            nice: 0,
        },
    }
}

/// containerd, kubelet and kube-proxy (in the VM only).
pub fn node(p: &ClusterParams) -> Result<Vec<Managed>, K8sError> {
    let start = node_start(p.startup);
    let path_env = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        p.paths.bin.display()
    );
    let containerd = Managed {
        // Its only HTTP endpoint is its metrics (served once its plugins are loaded): a hung
        // containerd answers no probe there; the kubelet waits for its socket itself.
        spec: spec(
            CONTAINERD,
            start.containerd_deps,
            Some(probe(500, 2_000, 10)),
            10_000,
        ),
        command: CommandSpec {
            env: vec![("PATH".into(), path_env.clone())],
            boot_nice: start.nice,
            ..command(
                p,
                "containerd",
                vec![flag(
                    "config",
                    path(&p.paths.config_file(CONTAINERD_CONFIG)),
                )],
            )
        },
        probe: http_probe(
            CONTAINERD,
            &format!(
                "{}/v1/metrics",
                url("http", LOOPBACK, CONTAINERD_METRICS_PORT)
            ),
            None,
        )?,
    };
    let mut kubelet_args = vec![
        flag("config", path(&p.paths.config_file(KUBELET_CONFIG))),
        flag("kubeconfig", path(&p.paths.pki_file("kubelet.conf"))),
        flag("hostname-override", &p.hostname),
        flag("root-dir", path(&p.paths.kubelet_data())),
    ];
    if let Some(ip) = p.node_ips.first() {
        kubelet_args.push(flag("node-ip", ip));
    }
    let kubelet = Managed {
        spec: spec(
            KUBELET,
            &[CONTAINERD],
            Some(probe(2_000, 2_000, 15)),
            10_000,
        ),
        command: CommandSpec {
            env: vec![("PATH".into(), path_env.clone())],
            boot_nice: start.nice,
            ..command(p, "kubelet", kubelet_args)
        },
        probe: http_probe(
            KUBELET,
            &format!("{}/healthz", url("http", LOOPBACK, KUBELET_HEALTHZ_PORT)),
            None,
        )?,
    };
    let kube_proxy = Managed {
        spec: spec(
            KUBE_PROXY,
            start.proxy_deps,
            Some(probe(2_000, 2_000, 10)),
            5_000,
        ),
        command: CommandSpec {
            env: vec![("PATH".into(), path_env)],
            ..command(
                p,
                "kube-proxy",
                vec![flag(
                    "config",
                    path(&p.paths.config_file(KUBE_PROXY_CONFIG)),
                )],
            )
        },
        probe: http_probe(
            KUBE_PROXY,
            &format!("{}/healthz", url("http", LOOPBACK, KUBE_PROXY_HEALTHZ_PORT)),
            None,
        )?,
    };
    Ok(vec![containerd, kubelet, kube_proxy])
}

/// The whole node: [`control_plane`] then [`node`].
pub fn all(p: &ClusterParams) -> Result<Vec<Managed>, K8sError> {
    let mut v = control_plane(p)?;
    v.extend(node(p)?);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::machine::{next, Action, Event, State};
    use std::collections::BTreeMap;

    fn params() -> ClusterParams {
        crate::k8s::test_params("192.168.10.5")
    }

    fn has(args: &[String], want: &str) -> bool {
        args.iter().any(|a| a == want)
    }

    #[test]
    fn apiserver_listening_everywhere_advertises_the_node_ip() {
        let mut p = params();
        p.listen = "0.0.0.0".parse().unwrap();
        p.node_ips = vec!["fec0::1".parse().unwrap(), "10.0.2.15".parse().unwrap()];
        let a = apiserver_args(&p).unwrap();
        assert!(has(&a, "--advertise-address=10.0.2.15"), "{a:?}");
        assert!(has(&a, "--bind-address=0.0.0.0"), "{a:?}");
        p.node_ips.clear();
        let a = apiserver_args(&p).unwrap();
        assert!(has(&a, "--advertise-address=127.0.0.1"), "{a:?}");
    }

    #[test]
    fn apiserver_flags_cover_the_issue() {
        let a = apiserver_args(&params()).unwrap();
        for want in [
            "--service-cluster-ip-range=10.96.0.0/12",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--encryption-provider-config=/var/lib/kiln/pki/encryption-config.json",
            "--authentication-config=/var/lib/kiln/k8s/authentication-config.json",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--etcd-servers=https://127.0.0.1:2379",
            "--bind-address=192.168.10.5",
            "--advertise-address=192.168.10.5",
            "--profiling=false",
            "--tls-min-version=VersionTLS12",
            "--admission-control-config-file=/var/lib/kiln/k8s/admission-config.json",
            "--audit-policy-file=/var/lib/kiln/k8s/audit-policy.json",
            "--audit-log-path=/var/log/kubernetes/audit.log",
            "--service-account-max-token-expiration=24h",
            "--service-account-extend-token-expiration=false",
        ] {
            assert!(has(&a, want), "missing {want} in {a:?}");
        }
        // The same TLS floor on the controller manager and the scheduler.
        let p = params();
        for args in [controller_manager_args(&p), scheduler_args(&p)] {
            assert!(has(&args, "--tls-min-version=VersionTLS12"), "{args:?}");
            assert!(
                args.iter()
                    .any(|f| f.starts_with("--tls-cipher-suites=TLS_ECDHE_")),
                "{args:?}"
            );
        }
        assert!(has(&controller_manager_args(&p), "--profiling=false"));
        // Anonymous access is configured in the AuthenticationConfiguration; the apiserver
        // refuses both at once.
        assert!(!a.iter().any(|f| f.starts_with("--anonymous-auth")));
        let mut names: Vec<&str> = a.iter().map(|f| f.split('=').next().unwrap()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a flag is repeated");
    }

    #[test]
    fn controller_manager_and_etcd_flags() {
        let p = params();
        let c = controller_manager_args(&p);
        for want in [
            "--allocate-node-cidrs=true",
            "--cluster-cidr=10.244.0.0/16",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--use-service-account-credentials=false",
            "--cluster-signing-cert-file=/var/lib/kiln/pki/ca.crt",
            "--cluster-signing-key-file=/var/lib/kiln/pki/ca.key",
            "--root-ca-file=/var/lib/kiln/pki/ca.crt",
            "--service-account-private-key-file=/var/lib/kiln/pki/sa.key",
            "--bind-address=127.0.0.1",
        ] {
            assert!(has(&c, want), "missing {want}");
        }
        let e = etcd_args(&p);
        for want in [
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--listen-client-urls=https://127.0.0.1:2379,https://192.168.10.5:2379",
            "--initial-cluster=node1=https://127.0.0.1:2380",
        ] {
            assert!(has(&e, want), "missing {want}");
        }
        // No plain-HTTP client or peer listener.
        for f in &e {
            if f.starts_with("--listen-client") || f.starts_with("--listen-peer") {
                assert!(!f.contains("http://"), "{f}");
            }
        }
    }

    #[test]
    fn components_are_listed_in_the_issue_order() {
        let p = params();
        let all = all(&p).unwrap();
        let names: Vec<&str> = all.iter().map(|m| m.spec.name.as_str()).collect();
        assert_eq!(
            names,
            [
                ETCD,
                APISERVER,
                CONTROLLER_MANAGER,
                SCHEDULER,
                CONTAINERD,
                KUBELET,
                KUBE_PROXY
            ]
        );
        let deps = |n: &str| {
            all.iter()
                .find(|m| m.spec.name == n)
                .unwrap()
                .spec
                .depends_on
                .clone()
        };
        assert!(deps(ETCD).is_empty());
        assert_eq!(deps(APISERVER), [ETCD]);
        assert_eq!(deps(CONTROLLER_MANAGER), [APISERVER]);
        assert_eq!(deps(SCHEDULER), [APISERVER]);
        assert!(deps(CONTAINERD).is_empty());
        assert_eq!(deps(KUBELET), [CONTAINERD]);
        assert_eq!(deps(KUBE_PROXY), [APISERVER]);
        // The machine accepts the set (no cycles, probes consistent).
        State::new(all.iter().map(|m| m.spec.clone()).collect()).unwrap();
        for m in &all {
            assert_eq!(m.spec.probe.is_some(), m.probe.is_some(), "{}", m.spec.name);
        }
        let api = all.iter().find(|m| m.spec.name == APISERVER).unwrap();
        let probe = api.probe.as_ref().unwrap();
        assert_eq!(
            (probe.host.as_str(), probe.port, probe.path.as_str()),
            ("192.168.10.5", 6443, "/readyz")
        );
        assert_eq!(probe.then_paths, [APISERVER_USABLE_PATH]);
        let client = probe.tls.as_ref().unwrap().client.as_ref().unwrap();
        assert!(client.0.ends_with("controller-manager.crt"), "{client:?}");
        let etcd = all[0].probe.as_ref().unwrap();
        assert_eq!((etcd.port, etcd.tls.is_none()), (2381, true));
    }

    /// The pure machine over the node's real components: probes answer as `up` says, a
    /// component in `crashing` exits right after each spawn, a signalled one exits at once.
    struct Sim {
        s: State,
        t: Millis,
        spawns: BTreeMap<String, Vec<Millis>>,
        signalled: Vec<String>,
    }

    impl Sim {
        fn new(startup: Startup) -> Sim {
            let mut p = params();
            p.startup = startup;
            let specs = all(&p).unwrap().into_iter().map(|m| m.spec).collect();
            Sim {
                s: State::new(specs).unwrap(),
                t: 0,
                spawns: BTreeMap::new(),
                signalled: Vec::new(),
            }
        }

        fn handle(&mut self, first: Event, up: &dyn Fn(&str, Millis) -> bool, crashing: &[&str]) {
            let mut queue = std::collections::VecDeque::from([first]);
            while let Some(e) = queue.pop_front() {
                for a in next(&mut self.s, e, self.t) {
                    match a {
                        Action::Spawn { name } => {
                            if crashing.contains(&name.as_str()) {
                                queue.push_back(Event::Exited {
                                    name: name.clone(),
                                    status: Some(1),
                                });
                            }
                            self.spawns.entry(name).or_default().push(self.t);
                        }
                        Action::Probe { name, id, .. } => queue.push_back(Event::ProbeResult {
                            ok: up(&name, self.t),
                            name,
                            id,
                        }),
                        Action::Signal { name, .. } => {
                            self.signalled.push(name.clone());
                            queue.push_back(Event::Exited { name, status: None });
                        }
                        _ => {}
                    }
                }
            }
        }

        fn run_until(
            &mut self,
            until: Millis,
            up: &dyn Fn(&str, Millis) -> bool,
            crashing: &[&str],
        ) {
            while self.t < until {
                self.handle(Event::Tick, up, crashing);
                self.t += 50;
            }
        }

        fn first_spawn(&self, name: &str) -> Option<Millis> {
            self.spawns.get(name).and_then(|v| v.first().copied())
        }

        fn ready_at(&self, name: &str) -> Millis {
            self.s.get(name).and_then(|c| c.ready_at).unwrap()
        }
    }

    /// Every component answers at once, but the apiserver only after 30 s (a cold start
    /// under emulation).
    fn slow_apiserver(name: &str, t: Millis) -> bool {
        name != APISERVER || t >= 30_000
    }

    #[test]
    fn the_node_starts_beside_the_control_plane() {
        let mut sim = Sim::new(Startup::Parallel);
        sim.run_until(60_000, &slow_apiserver, &[]);
        assert!(sim.s.all_ready());
        // containerd with etcd, the kubelet as soon as containerd is ready: both long
        // before the apiserver is.
        assert_eq!(sim.first_spawn(CONTAINERD), Some(0));
        assert_eq!(sim.first_spawn(ETCD), Some(0));
        let api_ready = sim.ready_at(APISERVER);
        assert!(api_ready >= 30_000);
        assert!(sim.ready_at(KUBELET) < api_ready, "{:?}", sim.spawns);
        // What needs the API waits for it, kube-proxy included, and no longer.
        for n in [CONTROLLER_MANAGER, SCHEDULER, KUBE_PROXY] {
            assert_eq!(sim.first_spawn(n), Some(api_ready), "{n}");
        }
        assert!(sim.signalled.is_empty(), "{:?}", sim.signalled);
    }

    #[test]
    fn serial_startup_keeps_the_single_chain() {
        let mut sim = Sim::new(Startup::Serial);
        sim.run_until(90_000, &slow_apiserver, &[]);
        assert!(sim.s.all_ready());
        let cp_ready = sim
            .ready_at(CONTROLLER_MANAGER)
            .max(sim.ready_at(SCHEDULER));
        assert_eq!(sim.first_spawn(CONTAINERD), Some(cp_ready));
        assert_eq!(sim.first_spawn(KUBELET), Some(sim.ready_at(CONTAINERD)));
        assert_eq!(sim.first_spawn(KUBE_PROXY), Some(sim.ready_at(KUBELET)));
        assert!(sim.first_spawn(CONTAINERD) > Some(sim.ready_at(APISERVER)));
    }

    #[test]
    fn a_restart_reaches_only_what_depends_on_it() {
        let mut sim = Sim::new(Startup::Parallel);
        let up = |_: &str, _: Millis| true;
        sim.run_until(20_000, &up, &[]);
        assert!(sim.s.all_ready());
        // etcd crashes: only etcd comes back (the apiserver reconnects by itself).
        sim.handle(
            Event::Exited {
                name: ETCD.into(),
                status: Some(137),
            },
            &up,
            &[],
        );
        sim.run_until(30_000, &up, &[]);
        assert!(sim.s.all_ready());
        assert_eq!(sim.spawns[ETCD].len(), 2);
        assert!(sim.spawns.iter().all(|(n, v)| n == ETCD || v.len() == 1));
        // etcd's identity changes (new certificates): it and everything that talks to it
        // through the apiserver restart; containerd and the kubelet do not.
        sim.handle(Event::IdentityChanged { name: ETCD.into() }, &up, &[]);
        sim.run_until(45_000, &up, &[]);
        assert!(sim.s.all_ready());
        let mut restarted = sim.signalled.clone();
        restarted.sort();
        assert_eq!(
            restarted,
            [ETCD, APISERVER, CONTROLLER_MANAGER, KUBE_PROXY, SCHEDULER]
        );
        assert_eq!(sim.spawns[CONTAINERD].len(), 1);
        assert_eq!(sim.spawns[KUBELET].len(), 1);
    }

    #[test]
    fn a_crash_looping_dependency_holds_back_only_its_dependents() {
        let mut sim = Sim::new(Startup::Parallel);
        sim.run_until(60_000, &|_, _| true, &[CONTAINERD]);
        assert!(sim.spawns[CONTAINERD].len() >= 4, "{:?}", sim.spawns);
        assert_eq!(sim.first_spawn(KUBELET), None);
        for n in [ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER, KUBE_PROXY] {
            assert!(sim.s.get(n).is_some_and(|c| c.ready()), "{n}");
            assert_eq!(sim.spawns[n].len(), 1, "{n}");
        }
        // And the other way round: a crash-looping etcd holds back the control plane and
        // kube-proxy, while the kubelet runs.
        let mut sim = Sim::new(Startup::Parallel);
        sim.run_until(60_000, &|_, _| true, &[ETCD]);
        assert!(sim.s.get(KUBELET).is_some_and(|c| c.ready()));
        for n in [APISERVER, CONTROLLER_MANAGER, SCHEDULER, KUBE_PROXY] {
            assert_eq!(sim.first_spawn(n), None, "{n}");
        }
    }
}
