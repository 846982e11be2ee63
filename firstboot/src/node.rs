//! Node mode of the agent: once stage 2 has named the machine and brought up the network,
//! the whole single-node cluster runs under the supervisor, each component started once
//! what it needs is ready (etcd → kube-apiserver → controller-manager, scheduler and
//! kube-proxy; beside them containerd → kubelet; see [`crate::k8s::components`]), then the
//! addons once through the API. Progress goes to the console (`kiln: <component> ready`, `kiln:
//! node <name> Ready`), the journal and /run/kiln/status.json; READY=1 is sent when the node
//! is Ready, and the watchdog is pinged only while the supervision loop runs. The loop is
//! the node driver's ([`crate::driver`], node profile), the one host mode runs too; this
//! module is node mode's parameters and where its progress goes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::config::{Hostname, MachineConfig};
pub use crate::driver::FirstStart;
use crate::driver::{self, Event, Hooks, Profile, Run};
use crate::k8s::{files, ClusterParams, Paths};
use crate::notify::Notifier;
use crate::status::{Now, Status};
use crate::timeline::{Mark, Span, Timeline};

/// Status phases of node mode, besides `<component>-ready`.
pub const ADDONS_APPLIED: &str = "addons-applied";
pub const IMAGES_IMPORTED: &str = "images-imported";
pub const NODE_READY: &str = "node-ready";
pub const COREDNS_READY: &str = "coredns-ready";

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

/// The console line with the CPU time so far of the machine, each running component and
/// firstboot ([`crate::cpu`]).
fn cpu_line(at: &str, run: &Run) -> String {
    let running: Vec<(String, i32)> = run
        .sup
        .status()
        .into_iter()
        .filter_map(|c| Some((c.component.name, c.pid?)))
        .collect();
    crate::cpu::CpuUse::read(&running).line(at, rustix::param::clock_ticks_per_second())
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
    /// Where the status is also written, with the certificates' expiry, for the operator
    /// on the host (`kiln status`, `kiln health`): under /var/log, which the kubelet serves
    /// to clients the API server authorizes for `nodes/log` (so nothing new listens).
    pub host_status_path: Option<PathBuf>,
    pub now: &'a dyn Fn() -> Now,
}

/// The status file the operator reads through the kubelet's log endpoint
/// (`/api/v1/nodes/NAME/proxy/logs/kiln/status.json`).
pub const HOST_STATUS: &str = "/var/log/kiln/status.json";

/// How often the certificates in the host's status file are read again.
const CERTS_EVERY: Duration = Duration::from_secs(600);

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

/// Node mode's progress: status phases and /run/kiln/status.json, console lines, systemd's
/// READY=1 and watchdog.
struct NodeHooks<'a, 'e> {
    st: &'a mut Status,
    env: &'e NodeEnv<'e>,
    entered: Now,
    /// When the PKI and files were written, on the boot clock (ms).
    configured_ms: u64,
    next_status: Instant,
    watchdog: Option<Duration>,
    next_ping: Instant,
    /// The certificates for the host's status file, and when they were read.
    certs: Option<(Instant, Vec<crate::pki::CertInfo>, Option<String>)>,
}

impl NodeHooks<'_, '_> {
    fn save(&mut self) {
        if let Err(e) = self.st.write(&self.env.status_path) {
            log::warn!("writing {}: {e}", self.env.status_path.display());
        }
        let Some(path) = &self.env.host_status_path else {
            return;
        };
        if self
            .certs
            .as_ref()
            .is_none_or(|c| c.0.elapsed() >= CERTS_EVERY)
        {
            let mut read = Status::default();
            read.read_certificates(Path::new(crate::pki::DEFAULT_DIR));
            self.certs = Some((Instant::now(), read.certificates, read.certificates_error));
        }
        let mut host = self.st.clone();
        if let Some((_, certs, error)) = &self.certs {
            host.certificates = certs.clone();
            host.certificates_error = error.clone();
        }
        if let Err(e) = host.write(path) {
            log::warn!("writing {}: {e}", path.display());
        }
    }

    fn phase(&mut self, name: &str, line: &str) {
        self.st.phase(name, (self.env.now)());
        (self.env.say)(line);
    }
}

impl Hooks for NodeHooks<'_, '_> {
    fn event(&mut self, event: &Event, run: &Run) {
        let say = self.env.say;
        let p = run.params;
        match event {
            Event::Configured { pki_written } => {
                say(&format!(
                    "kiln: pki ready ({pki_written} new files) in {}",
                    p.paths.pki.display()
                ));
                let configured = (self.env.now)();
                self.configured_ms = configured.monotonic_ms;
                self.st.phase("configured", configured);
                self.save();
            }
            Event::Adopted(running) => {
                let list: Vec<String> = running
                    .iter()
                    .map(|(name, pid)| format!("{name} (pid {pid})"))
                    .collect();
                say(&format!(
                    "kiln: adopted {} running components: {}",
                    list.len(),
                    list.join(", ")
                ));
            }
            Event::ComponentReady(name) => {
                self.phase(&format!("{name}-ready"), &format!("kiln: {name} ready"));
                self.save();
            }
            Event::AddonsApplied => self.phase(ADDONS_APPLIED, "kiln: addons applied"),
            Event::ImagesImported { detail } => {
                self.phase(IMAGES_IMPORTED, &format!("kiln: images imported {detail}"))
            }
            Event::CorednsReady => {
                self.phase(COREDNS_READY, "kiln: coredns ready");
                // Again, with what came after node Ready: the controllers, kube-proxy,
                // the images, CoreDNS (`kiln run` draws the last timeline it sees).
                say(&timeline(self.st, run.deps, run.first).line());
                say(&cpu_line(COREDNS_READY, run));
            }
            Event::NodeReady => {
                self.phase(NODE_READY, &format!("kiln: node {} Ready", p.hostname));
                let setup_ms = self.configured_ms.saturating_sub(self.entered.monotonic_ms);
                let line = share_line(
                    setup_ms,
                    gate_delay_ms(run.deps, run.first, self.configured_ms),
                    (self.env.now)().monotonic_ms,
                );
                say(&line);
                self.st.notes.push(line);
                say(&timeline(self.st, run.deps, run.first).line());
                say(&cpu_line(NODE_READY, run));
                if let Err(e) = self.env.notify.ready(&format!("node {} Ready", p.hostname)) {
                    log::warn!("sd_notify READY=1: {e}");
                }
            }
            Event::Stopping => {
                say("kiln: stopping the node");
                let _ = self.env.notify.send("STOPPING=1");
            }
            Event::Stopped { clean } => say(&format!("kiln: node stopped (clean: {clean})")),
            Event::AllReady => {}
        }
    }

    fn tick(&mut self, run: &Run) {
        if Instant::now() >= self.next_status {
            self.st.components = serde_json::to_value(run.sup.status()).unwrap_or_default();
            self.save();
            self.next_status = Instant::now() + Duration::from_secs(2);
        }
        if let Some(every) = self.watchdog {
            if Instant::now() >= self.next_ping && run.sup.loop_healthy(every) {
                if let Err(e) = self.env.notify.watchdog() {
                    log::warn!("sd_notify WATCHDOG=1: {e}");
                }
                self.next_ping = Instant::now() + every;
            }
        }
    }
}

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
    let entered = (env.now)();
    let p = params(cfg, st)?;
    load_modules_and_sysctls(env.say);
    let profile = Profile::node(p, cfg.secrets.as_ref())?;
    let mut hooks = NodeHooks {
        st,
        env,
        entered,
        configured_ms: entered.monotonic_ms,
        next_status: Instant::now(),
        watchdog: crate::notify::watchdog_interval_from_env(),
        next_ping: Instant::now(),
        certs: None,
    };
    driver::run(profile, &mut hooks, &stopping).context("running the node")?;
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
    fn nameserver_lines_are_recognised() {
        assert!(has_nameserver("# x\nsearch example\nnameserver 10.0.2.3\n"));
        assert!(!has_nameserver("# nameserver 1.2.3.4\nsearch x\n"));
        assert!(!has_nameserver(""));
    }
}
