//! Node mode of the agent: once stage 2 has named the machine and brought up the network,
//! the whole single-node cluster runs under the supervisor: etcd → kube-apiserver →
//! controller-manager and scheduler → containerd → kubelet → kube-proxy, then the addons
//! once through the API. Progress goes to the console (`kiln: <component> ready`, `kiln:
//! node <name> Ready`), the journal and /run/kiln/status.json; READY=1 is sent when the node
//! is Ready, and the watchdog is pinged only while the supervision loop runs.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::{Hostname, MachineConfig};
use crate::k8s::{self, addons, components, files, ClusterParams, Paths};
use crate::notify::Notifier;
use crate::pki::Pki;
use crate::status::{Now, Status};
use crate::supervisor::shell::Supervisor;
use crate::timeline::{Mark, Span, Timeline};

/// Status phases of node mode, besides `<component>-ready`.
pub const ADDONS_APPLIED: &str = "addons-applied";
pub const IMAGES_IMPORTED: &str = "images-imported";
pub const NODE_READY: &str = "node-ready";
pub const COREDNS_READY: &str = "coredns-ready";

/// When a component was first spawned and first ready, on the supervisor's clock (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirstStart {
    pub spawned: Option<u64>,
    pub ready: Option<u64>,
}

/// firstboot's own wait at the readiness gates: for each component, the time from its last
/// dependency becoming ready (or `origin_ms`, when the supervisor started, for one without
/// dependencies) to its spawn, summed. Components not spawned yet count nothing.
pub fn gate_delay_ms(
    deps: &[(String, Vec<String>)],
    first: &BTreeMap<String, FirstStart>,
    origin_ms: u64,
) -> u64 {
    deps.iter()
        .filter_map(|(name, on)| {
            let spawned = first.get(name)?.spawned?;
            let mut open = origin_ms;
            for d in on {
                open = open.max(first.get(d)?.ready?);
            }
            Some(spawned.saturating_sub(open))
        })
        .sum()
}

/// The console line with firstboot's own share of boot to node Ready: its setup (modules,
/// sysctls, PKI, configuration files) and its gate delays, next to the time since the
/// kernel started.
pub fn share_line(setup_ms: u64, gates_ms: u64, ready_ms: u64) -> String {
    let pct = if ready_ms == 0 {
        0.0
    } else {
        (setup_ms + gates_ms) as f64 * 100.0 / ready_ms as f64
    };
    format!(
        "kiln: firstboot share setup-ms={setup_ms} gates-ms={gates_ms} ready-ms={ready_ms} \
         share-pct={pct:.2}"
    )
}

/// Whether `kubectl`'s "<Ready status> <lastHeartbeatTime>" says Ready with a heartbeat at
/// or after `since` (unix seconds; a few seconds of slack for clock granularity).
pub fn ready_since(reply: &str, since: u64) -> bool {
    let mut it = reply.split_whitespace();
    it.next() == Some("True")
        && it
            .next()
            .and_then(crate::utc::parse)
            .is_some_and(|t| t + 5 >= since)
}

/// The timeline so far: the status phases and each component's first start and readiness,
/// in ms since the kernel started (the supervisor's clock is CLOCK_MONOTONIC, like the
/// status phases').
pub fn timeline(
    st: &Status,
    deps: &[(String, Vec<String>)],
    first: &BTreeMap<String, FirstStart>,
) -> Timeline {
    Timeline {
        phases: st
            .phases
            .iter()
            .map(|p| Mark {
                name: p.name.clone(),
                at_ms: p.monotonic_ms,
            })
            .collect(),
        components: deps
            .iter()
            .filter_map(|(name, _)| {
                let f = first.get(name)?;
                Some(Span {
                    name: name.clone(),
                    start_ms: f.spawned?,
                    ready_ms: f.ready,
                })
            })
            .collect(),
    }
}

/// Where a node without upstream DNS gets its (empty) resolv.conf for pods.
const AIRGAP_RESOLV: &str = "/run/kiln/resolv.conf";

/// Whether the image carries the node's binaries (minimal images do not).
pub fn available(bin: &Path) -> bool {
    ["etcd", "kube-apiserver", "kubelet", "containerd", "kubectl"]
        .iter()
        .all(|b| bin.join(b).is_file())
}

/// The IPs of `ifname addr/len` strings, in order.
pub fn node_ips(addresses: &[String]) -> Vec<IpAddr> {
    addresses
        .iter()
        .filter_map(|a| a.split_whitespace().nth(1))
        .filter_map(|a| a.split('/').next())
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// Whether a resolv.conf names at least one nameserver.
pub fn has_nameserver(resolv_conf: &str) -> bool {
    resolv_conf
        .lines()
        .any(|l| l.split_whitespace().next() == Some("nameserver"))
}

/// What the agent hands to node mode.
pub struct NodeEnv<'a> {
    pub say: &'a dyn Fn(&str),
    pub notify: &'a Notifier,
    pub status_path: PathBuf,
    pub now: &'a dyn Fn() -> Now,
}

/// Results of the slow cluster checks (kubectl runs), made off the supervision loop.
#[derive(Debug, Default, Clone)]
struct Checks {
    addons_applied: bool,
    images_imported: bool,
    node_ready: bool,
    coredns_ready: bool,
}

/// The node's cluster parameters from the effective machine config and stage 2's status.
pub fn params(cfg: &MachineConfig, st: &Status) -> anyhow::Result<ClusterParams> {
    let hostname: Hostname = st
        .hostname
        .parse()
        .with_context(|| format!("hostname {:?}", st.hostname))?;
    let ips = node_ips(&st.addresses);
    let mut p = ClusterParams::new(
        &cfg.kubernetes,
        hostname,
        ips,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Paths::node(),
    );
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !has_nameserver(&resolv) {
        let path = PathBuf::from(AIRGAP_RESOLV);
        crate::atomic::Replace::runtime(0o644)
            .write(&path, b"# no upstream DNS: air-gapped node\n")
            .with_context(|| format!("writing {}", path.display()))?;
        p.resolv_conf = path;
        p.upstream_dns = false;
    }
    Ok(p)
}

fn load_modules_and_sysctls(say: &dyn Fn(&str)) {
    for m in files::MODULES {
        match Command::new("modprobe").arg(m).status() {
            Ok(s) if s.success() => {}
            Ok(s) => say(&format!("kiln: problem: modprobe {m}: {s}")),
            Err(e) => say(&format!("kiln: problem: modprobe {m}: {e}")),
        }
    }
    for (key, value) in files::SYSCTLS {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        if let Err(e) = std::fs::write(&path, value) {
            say(&format!("kiln: problem: sysctl {key}={value}: {e}"));
        }
    }
}

fn kubectl(p: &ClusterParams, kubeconfig: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(p.paths.binary("kubectl"))
        .arg("--kubeconfig")
        .arg(p.paths.pki_file(kubeconfig))
        .arg("--request-timeout=10s")
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs the slow checks every few seconds until `stop`: addons applied once the apiserver
/// is ready, baked images imported once containerd runs, node Ready, CoreDNS ready.
fn checker(
    p: ClusterParams,
    addons_path: PathBuf,
    apiserver_ready: Arc<AtomicBool>,
    containerd_ready: Arc<AtomicBool>,
    checks: Arc<Mutex<Checks>>,
    stop: Arc<AtomicBool>,
) {
    let mut c = Checks::default();
    // A node object left from before a reboot still says Ready until its lease runs out:
    // only a heartbeat from this boot's kubelet counts.
    let started_unix = crate::status::unix_ms() / 1000;
    // Importing the baked images takes minutes on an emulated node: its own thread, so
    // the checks below (node Ready) do not wait for it.
    let imported = Arc::new(AtomicBool::new(false));
    {
        let (p, imported, stop) = (p.clone(), Arc::clone(&imported), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if containerd_ready.load(Ordering::SeqCst) && import_images(&p) {
                    imported.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_secs(3));
            }
        });
    }
    while !stop.load(Ordering::SeqCst) {
        if apiserver_ready.load(Ordering::SeqCst) {
            if !c.addons_applied {
                match k8s::host::apply_with_kubectl(
                    &p.paths.binary("kubectl"),
                    &p.paths.pki_file("super-admin.conf"),
                    &addons_path,
                ) {
                    Ok(()) => c.addons_applied = true,
                    Err(e) => log::warn!("applying addons: {e:#}"),
                }
            }
            // The node's own reads use its local break-glass credentials: the admin
            // kubeconfig's RBAC binding is one of the addons, and node Ready must not wait
            // for them.
            let ready = kubectl(
                &p,
                "super-admin.conf",
                &[
                    "get",
                    "node",
                    p.hostname.as_str(),
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} \
                     {.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}",
                ],
            );
            c.node_ready = ready
                .as_deref()
                .is_some_and(|r| ready_since(r, started_unix));
            let dns = kubectl(
                &p,
                "super-admin.conf",
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "deployment",
                    "coredns",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ],
            );
            c.coredns_ready = dns
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > 0);
        }
        c.images_imported = imported.load(Ordering::SeqCst);
        if let Ok(mut shared) = checks.lock() {
            *shared = c.clone();
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Imports the images baked into /usr/lib/kiln/images into containerd and pins them; true
/// when done (containerd may still be coming up: then it is tried again).
fn import_images(p: &ClusterParams) -> bool {
    let ctr = crate::images::Ctr::new(p.paths.binary("ctr")).at(p.paths.containerd_socket());
    match crate::images::import_all(
        Path::new(crate::images::IMAGES_DIR),
        &ctr,
        &crate::images::HostRun,
    ) {
        Ok(r) => {
            log::info!("images: imported {:?}, pinned {:?}", r.imported, r.pinned);
            true
        }
        Err(e) => {
            log::warn!("importing the baked images: {e}");
            false
        }
    }
}

/// How long the components get to stop when systemd stops the agent (shutdown, reboot).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the node until SIGTERM or SIGINT, then stops every component: SIGTERM, then
/// SIGKILL after its grace.
pub fn run(st: &mut Status, cfg: &MachineConfig, env: &NodeEnv) -> anyhow::Result<()> {
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&stopping);
        if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
            log::warn!("installing the SIGTERM handler: {e}");
        }
    }
    let say = env.say;
    let entered = (env.now)();
    let save = |st: &Status| {
        if let Err(e) = st.write(&env.status_path) {
            log::warn!("writing {}: {e}", env.status_path.display());
        }
    };
    let p = params(cfg, st)?;
    load_modules_and_sysctls(say);
    let now_s = i64::try_from((env.now)().unix_ms / 1000).unwrap_or(0);
    let report = Pki::ensure(&p.paths.pki, &p.pki_params(now_s)?, cfg.secrets.as_ref())
        .with_context(|| format!("creating the PKI under {}", p.paths.pki.display()))?;
    say(&format!(
        "kiln: pki ready ({} new files) in {}",
        report.written.len(),
        p.paths.pki.display()
    ));
    files::prepare_dirs(&p)?;
    let mut generated = files::control_plane_files(&p);
    generated.extend(files::node_files(&p)?);
    let addons_path = p.paths.config_file("addons.json");
    generated.push(files::GeneratedFile {
        path: addons_path.clone(),
        contents: addons::list_json(&p)?,
        mode: 0o644,
    });
    files::write_files(&generated)?;
    let configured = (env.now)();
    st.phase("configured", configured);
    save(st);
    let setup_ms = configured.monotonic_ms.saturating_sub(entered.monotonic_ms);

    let mut sup = Supervisor::new(components::all(&p)?).context("setting up the supervisor")?;
    // Each component's output under its own name in the journal (`journalctl -t etcd`).
    sup.journal = true;
    let names: Vec<String> = sup
        .status()
        .iter()
        .map(|c| c.component.name.clone())
        .collect();
    let apiserver_ready = Arc::new(AtomicBool::new(false));
    let containerd_ready = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(Mutex::new(Checks::default()));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (p, a, c, ch, s) = (
            p.clone(),
            Arc::clone(&apiserver_ready),
            Arc::clone(&containerd_ready),
            Arc::clone(&checks),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || checker(p, addons_path, a, c, ch, s));
    }

    let deps: Vec<(String, Vec<String>)> = sup
        .state()
        .components
        .iter()
        .map(|c| (c.spec.name.clone(), c.spec.depends_on.clone()))
        .collect();
    let mut first: BTreeMap<String, FirstStart> = BTreeMap::new();
    let mut seen_ready: Vec<String> = Vec::new();
    let mut told = Checks::default();
    let mut sent_ready = false;
    let mut next_status = Instant::now();
    let watchdog = crate::notify::watchdog_interval_from_env();
    let mut next_ping = Instant::now();
    while !stopping.load(Ordering::SeqCst) {
        sup.step().context("supervising the node")?;
        for c in &sup.state().components {
            // The machine keeps the latest start and readiness; the first ones are kept here.
            let f = first.entry(c.spec.name.clone()).or_default();
            f.spawned = f.spawned.or(c.started_at);
            f.ready = f.ready.or(c.ready_at);
        }
        for name in &names {
            let ready = sup.state().get(name).is_some_and(|c| c.ready());
            if ready && !seen_ready.contains(name) {
                seen_ready.push(name.clone());
                st.phase(&format!("{name}-ready"), (env.now)());
                say(&format!("kiln: {name} ready"));
                save(st);
            }
            match name.as_str() {
                components::APISERVER => apiserver_ready.store(ready, Ordering::SeqCst),
                components::CONTAINERD => containerd_ready.store(ready, Ordering::SeqCst),
                _ => {}
            }
        }
        let c = checks.lock().map(|c| c.clone()).unwrap_or_default();
        let mut newly = |flag: bool, was: &mut bool, phase: &str, line: String| {
            if flag && !*was {
                *was = true;
                st.phase(phase, (env.now)());
                say(&line);
            }
        };
        newly(
            c.addons_applied,
            &mut told.addons_applied,
            ADDONS_APPLIED,
            "kiln: addons applied".into(),
        );
        newly(
            c.images_imported,
            &mut told.images_imported,
            IMAGES_IMPORTED,
            "kiln: images imported".into(),
        );
        newly(
            c.node_ready,
            &mut told.node_ready,
            NODE_READY,
            format!("kiln: node {} Ready", p.hostname),
        );
        newly(
            c.coredns_ready,
            &mut told.coredns_ready,
            COREDNS_READY,
            "kiln: coredns ready".into(),
        );
        if told.node_ready && !sent_ready {
            sent_ready = true;
            let line = share_line(
                setup_ms,
                gate_delay_ms(&deps, &first, configured.monotonic_ms),
                (env.now)().monotonic_ms,
            );
            say(&line);
            st.notes.push(line);
            say(&timeline(st, &deps, &first).line());
            if let Err(e) = env.notify.ready(&format!("node {} Ready", p.hostname)) {
                log::warn!("sd_notify READY=1: {e}");
            }
        }
        if Instant::now() >= next_status {
            st.components = serde_json::to_value(sup.status()).unwrap_or_default();
            save(st);
            next_status = Instant::now() + Duration::from_secs(2);
        }
        if let Some(every) = watchdog {
            if Instant::now() >= next_ping && sup.loop_healthy(every) {
                if let Err(e) = env.notify.watchdog() {
                    log::warn!("sd_notify WATCHDOG=1: {e}");
                }
                next_ping = Instant::now() + every;
            }
        }
        std::thread::sleep(sup.tick);
    }
    say("kiln: stopping the node");
    let _ = env.notify.send("STOPPING=1");
    stop.store(true, Ordering::SeqCst);
    let clean = sup.shutdown(SHUTDOWN_GRACE)?;
    say(&format!("kiln: node stopped (clean: {clean})"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ips_come_from_the_status_addresses() {
        let a = vec![
            "eth0 10.0.2.15/24".to_string(),
            "eth0 fec0::5054:ff:fe12:3456/64".to_string(),
            "garbage".to_string(),
        ];
        assert_eq!(
            node_ips(&a),
            vec![
                "10.0.2.15".parse::<IpAddr>().unwrap(),
                "fec0::5054:ff:fe12:3456".parse::<IpAddr>().unwrap()
            ]
        );
    }

    #[test]
    fn gate_delays_count_from_the_last_dependency_ready_to_the_spawn() {
        let deps = vec![
            ("etcd".to_string(), vec![]),
            ("api".to_string(), vec!["etcd".to_string()]),
            (
                "cm".to_string(),
                vec!["api".to_string(), "etcd".to_string()],
            ),
            ("later".to_string(), vec!["cm".to_string()]),
        ];
        let at = |spawned, ready| FirstStart { spawned, ready };
        // On the boot clock: the supervisor starts at 20 s.
        let first: BTreeMap<String, FirstStart> = [
            ("etcd".to_string(), at(Some(20_040), Some(23_000))),
            ("api".to_string(), at(Some(23_100), Some(60_000))),
            ("cm".to_string(), at(Some(60_250), None)),
        ]
        .into_iter()
        .collect();
        // etcd 40 after the start, api 100 after etcd's ready, cm 250 after api's (the
        // later of its two gates); "later" is not spawned and adds nothing.
        assert_eq!(gate_delay_ms(&deps, &first, 20_000), 40 + 100 + 250);
        assert_eq!(gate_delay_ms(&deps, &BTreeMap::new(), 20_000), 0);
    }

    #[test]
    fn the_timeline_has_the_phases_and_the_spawned_components() {
        let mut st = Status::default();
        st.phase(
            "configured",
            Now {
                monotonic_ms: 30_000,
                unix_ms: 0,
            },
        );
        let deps = vec![
            ("etcd".to_string(), vec![]),
            ("api".to_string(), vec!["etcd".to_string()]),
            ("never".to_string(), vec!["api".to_string()]),
        ];
        let first: BTreeMap<String, FirstStart> = [
            (
                "etcd".to_string(),
                FirstStart {
                    spawned: Some(31_010),
                    ready: Some(33_000),
                },
            ),
            (
                "api".to_string(),
                FirstStart {
                    spawned: Some(33_100),
                    ready: None,
                },
            ),
        ]
        .into_iter()
        .collect();
        let t = timeline(&st, &deps, &first);
        assert_eq!(
            t.phases,
            vec![Mark {
                name: "configured".into(),
                at_ms: 30_000
            }]
        );
        assert_eq!(
            t.components,
            vec![
                Span {
                    name: "etcd".into(),
                    start_ms: 31_010,
                    ready_ms: Some(33_000)
                },
                Span {
                    name: "api".into(),
                    start_ms: 33_100,
                    ready_ms: None
                },
            ]
        );
    }

    #[test]
    fn the_share_line_carries_its_parts_and_percentage() {
        assert_eq!(
            share_line(1500, 500, 200_000),
            "kiln: firstboot share setup-ms=1500 gates-ms=500 ready-ms=200000 share-pct=1.00"
        );
        assert!(share_line(1, 1, 0).ends_with("share-pct=0.00"));
    }

    #[test]
    fn only_a_heartbeat_from_this_boot_counts_as_ready() {
        let since = crate::utc::parse("2026-11-27T16:30:00Z").unwrap();
        assert!(ready_since("True 2026-11-27T16:31:10Z", since));
        assert!(!ready_since("True 2026-11-27T16:20:00Z", since));
        assert!(!ready_since("False 2026-11-27T16:31:10Z", since));
        assert!(!ready_since("True", since));
    }

    #[test]
    fn nameserver_lines_are_recognised() {
        assert!(has_nameserver("# x\nsearch example\nnameserver 10.0.2.3\n"));
        assert!(!has_nameserver("# nameserver 1.2.3.4\nsearch x\n"));
        assert!(!has_nameserver(""));
    }
}
