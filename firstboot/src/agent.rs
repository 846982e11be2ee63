//! Stage 2 (`firstboot agent`, firstboot.service): gather the machine config, merge and
//! persist it, set the hostname, write the networkd files and wait for an address, then
//! report (console summary, journal, /run/kiln/status.json) and tell systemd it is ready.

use std::path::{Path, PathBuf};

use crate::cmdline::Cmdline;
use crate::config::{Hostname, MachineConfig};
use crate::markers::Markers;
use crate::notify::Notifier;
use crate::sources::{self, Layer, Problem};
use crate::status::{self, Now, Status};
use crate::sys::{MountFlags, Sys};
use crate::{hostname, network, probe};

/// Hostname used when no source gives one.
pub const FALLBACK_HOSTNAME: &str = "kiln";

/// Every path the agent reads or writes, under one root (`/` on a machine).
#[derive(Debug, Clone)]
pub struct AgentPaths {
    pub root: PathBuf,
}

impl AgentPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        AgentPaths { root: root.into() }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub fn cmdline(&self) -> PathBuf {
        self.p("proc/cmdline")
    }
    pub fn fw_cfg(&self) -> PathBuf {
        self.p("sys/firmware/qemu_fw_cfg")
    }
    pub fn class_block(&self) -> PathBuf {
        self.p("sys/class/block")
    }
    pub fn dev(&self) -> PathBuf {
        self.p("dev")
    }
    pub fn default_config(&self) -> PathBuf {
        self.p(crate::config::DEFAULT_CONFIG_PATH.trim_start_matches('/'))
    }
    pub fn last_good(&self) -> PathBuf {
        self.p(crate::config::LAST_GOOD_PATH.trim_start_matches('/'))
    }
    pub fn etc(&self) -> PathBuf {
        self.p("etc")
    }
    pub fn cidata_mount(&self) -> PathBuf {
        self.p("run/kiln/cidata")
    }
    pub fn stage1_json(&self) -> PathBuf {
        self.p("run/kiln/stage1.json")
    }
    pub fn status_json(&self) -> PathBuf {
        self.p("run/kiln/status.json")
    }
    pub fn network_dir(&self) -> PathBuf {
        self.p(network::NETWORK_DIR.trim_start_matches('/'))
    }
    pub fn proc_self_status(&self) -> PathBuf {
        self.p("proc/self/status")
    }
    pub fn markers(&self) -> PathBuf {
        self.p(crate::markers::MARKERS_DIR.trim_start_matches('/'))
    }
}

/// The marker of a completed first boot (every stage-2 phase reached once).
pub const FIRST_BOOT: &str = "first-boot";
/// How long to wait for a routable address.
pub const NETWORK_TIMEOUT_MS: u64 = 60_000;

/// Reads the files of the NoCloud volume (label `cidata`/`CIDATA`), if there is one.
fn read_nocloud(sys: &dyn Sys, p: &AgentPaths) -> Option<Layer> {
    let (node, fstype) = probe::block_devices(&p.class_block())
        .into_iter()
        .find_map(|d| {
            let node = p.dev().join(&d.devname);
            probe::nocloud_fstype(&node).map(|fs| (node, fs))
        })?;
    let mnt = p.cidata_mount();
    let failed = |what: String| Layer {
        source: sources::NOCLOUD.into(),
        content: Err(what),
        notes: vec![],
    };
    if let Err(e) = std::fs::create_dir_all(&mnt) {
        return Some(failed(format!("creating {}: {e}", mnt.display())));
    }
    let src = node.to_string_lossy();
    if let Err(e) = sys.mount(&src, &mnt, fstype, MountFlags::RDONLY, "") {
        return Some(failed(format!(
            "mounting {} ({fstype}): {e}",
            node.display()
        )));
    }
    let meta = sources::read_capped(&mnt.join("meta-data")).transpose();
    let user = sources::read_capped(&mnt.join("user-data")).transpose();
    if let Err(e) = sys.umount(&mnt) {
        log::warn!("unmounting {}: {e}", mnt.display());
    }
    match (meta, user) {
        (Ok(meta), Ok(user)) => sources::nocloud_layer(meta.as_deref(), user.as_deref()),
        (Err(why), _) | (_, Err(why)) => Some(failed(why)),
    }
}

/// All layers, lowest precedence first.
pub fn gather(sys: &dyn Sys, p: &AgentPaths) -> Vec<Layer> {
    let mut layers = Vec::new();
    if let Ok(text) = std::fs::read_to_string(p.default_config()) {
        layers.push(Layer::from_toml(sources::DEFAULT, &text));
    }
    layers.extend(sources::fw_cfg_layer(&p.fw_cfg()));
    layers.extend(read_nocloud(sys, p));
    if let Ok(c) = Cmdline::read(&p.cmdline()) {
        layers.extend(sources::cmdline_layer(&c));
    }
    layers
}

fn last_good(path: &Path) -> Option<MachineConfig> {
    MachineConfig::from_toml(&std::fs::read_to_string(path).ok()?).ok()
}

/// What the agent needs from its surroundings besides [`Sys`].
pub struct Env<'a> {
    /// Prints a line on the console (and logs it).
    pub say: &'a dyn Fn(&str),
    /// systemd notifications.
    pub notify: &'a Notifier,
    /// The routable addresses now (`ifname addr/len`).
    pub addresses: &'a dyn Fn() -> Vec<String>,
    /// Asks networkd to re-read its files; false if it is not running.
    pub reload_network: &'a dyn Fn() -> bool,
    /// How long to wait for an address.
    pub network_timeout_ms: u64,
}

/// A clock reading from `sys` (monotonic) and the wall clock.
pub fn now(sys: &dyn Sys) -> Now {
    Now {
        monotonic_ms: sys.monotonic_ms(),
        unix_ms: status::unix_ms(),
    }
}

/// Runs stage 2 up to READY=1. Problems are reported (console, journal, status), never
/// fatal; only failing to write the status or the last good config is an error.
pub fn run(sys: &dyn Sys, p: &AgentPaths, env: &Env) -> anyhow::Result<Status> {
    use anyhow::Context as _;
    let say = env.say;
    let save = |st: &Status| {
        let path = p.status_json();
        st.write(&path)
            .with_context(|| format!("writing {}", path.display()))
    };
    let notify = |msg: &str| {
        if let Err(e) = env.notify.status(msg) {
            log::warn!("sd_notify: {e}");
        }
    };
    let markers = Markers::new(p.markers());
    let mut st = Status::new(status::read_stage1(&p.stage1_json()), now(sys));
    st.phase(status::STAGE2_START, now(sys));
    st.first_boot = !markers.is_done(FIRST_BOOT);
    save(&st)?;

    notify("loading machine config");
    let layers = gather(sys, p);
    let merged = sources::merge(&layers, last_good(&p.last_good()).as_ref());
    for pr in &merged.problems {
        log::warn!("config: invalid value from {pr}");
    }
    for n in &merged.notes {
        log::info!("config: {n}");
    }
    let lg = p.last_good();
    let text = toml::to_string(&merged.config).context("serializing the effective config")?;
    // The effective config may carry cluster CA keys: owner-only.
    crate::atomic::Replace::durable(0o600)
        .write(&lg, text.as_bytes())
        .with_context(|| format!("writing {}", lg.display()))?;
    st.sources = merged.sources.clone();
    st.problems = merged.problems.iter().map(Problem::to_string).collect();
    st.notes = merged.notes.clone();
    st.phase(status::CONFIG_LOADED, now(sys));
    save(&st)?;

    let fallback: Hostname = FALLBACK_HOSTNAME.parse().context("fallback hostname")?;
    let host = merged.config.hostname_or(&fallback).clone();
    st.hostname = host.to_string();
    match hostname::apply(sys, &p.etc(), &host) {
        Ok(()) => st.phase(status::HOSTNAME_SET, now(sys)),
        Err(e) => st.problems.push(format!("hostname: {e}")),
    }
    save(&st)?;

    notify("waiting for the network");
    let files = network::networkd_files(&merged.config.network);
    match network::write_files(&p.network_dir(), &files) {
        Ok(true) => {
            let reloaded = (env.reload_network)();
            log::info!(
                "network: wrote {} networkd file(s){}",
                files.len(),
                if reloaded { ", networkd reloaded" } else { "" }
            );
        }
        Ok(false) => {}
        Err(e) => st.problems.push(format!("network: {e}")),
    }
    let start = sys.monotonic_ms();
    let mut reloaded_again = false;
    let addrs = crate::stage1::wait_for(sys, env.network_timeout_ms, || {
        let _ = env.notify.watchdog();
        let a = (env.addresses)();
        // networkd may have started while the files were being written: ask once more.
        if a.is_empty() && !reloaded_again && sys.monotonic_ms() - start >= 10_000 {
            reloaded_again = true;
            (env.reload_network)();
        }
        (!a.is_empty()).then_some(a)
    });
    match addrs {
        Some(a) => {
            st.addresses = a;
            st.phase(status::NETWORK_UP, now(sys));
        }
        None => st.problems.push(format!(
            "network: no routable address after {} s",
            env.network_timeout_ms / 1000
        )),
    }

    let reached = |n: &str| st.phases.iter().any(|ph| ph.name == n);
    if st.first_boot && reached(status::HOSTNAME_SET) && reached(status::NETWORK_UP) {
        if let Err(e) = markers.mark_done(FIRST_BOOT, &format!("{}", status::unix_ms())) {
            st.problems.push(e.to_string());
        }
    }
    st.rss_hwm_kib = crate::memory::read_vm_hwm_kib(&p.proc_self_status());
    save(&st)?;
    for line in st.summary() {
        say(&line);
    }
    say(&st.timings_line());
    let id = std::fs::read_to_string(p.etc().join("machine-id")).unwrap_or_default();
    let id = id.trim();
    say(&format!(
        "kiln: machine-id {}, first boot {}",
        if id.is_empty() { "unknown" } else { id },
        if st.first_boot { "yes" } else { "no" }
    ));
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage1::Timings;
    use crate::sys::{Call, RecordingSys};
    use std::cell::{Cell, RefCell};
    use std::os::unix::net::UnixDatagram;

    fn machine(t: &Path) -> AgentPaths {
        let p = AgentPaths::new(t);
        std::fs::create_dir_all(p.cmdline().parent().unwrap()).unwrap();
        std::fs::write(p.cmdline(), "quiet kiln.hostname=Bad_Name").unwrap();
        std::fs::create_dir_all(p.default_config().parent().unwrap()).unwrap();
        std::fs::write(
            p.default_config(),
            "hostname = \"baked\"\n[network.interfaces.eth0]\nmtu = 1400",
        )
        .unwrap();
        let fw = p.fw_cfg().join("by_name/opt/kiln/config");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("raw"), "hostname = \"from-fw\"").unwrap();
        std::fs::create_dir_all(p.etc()).unwrap();
        std::fs::write(
            p.etc().join("machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        std::fs::create_dir_all(p.stage1_json().parent().unwrap()).unwrap();
        std::fs::write(
            p.stage1_json(),
            serde_json::to_string(&Timings {
                start: 5,
                switch_root: 905,
                rss_hwm_kib: Some(1_800),
                ..Timings::default()
            })
            .unwrap(),
        )
        .unwrap();
        p
    }

    #[test]
    fn agent_merges_sources_sets_hostname_writes_network_and_status() {
        let t = tempfile::tempdir().unwrap();
        let p = machine(t.path());
        let sock_path = t.path().join("notify");
        let server = UnixDatagram::bind(&sock_path).unwrap();
        server.set_nonblocking(true).unwrap();
        let notifier = Notifier::new(Some(sock_path.to_str().unwrap())).unwrap();
        let sys = RecordingSys::new();
        let said = RefCell::new(Vec::<String>::new());
        let polls = Cell::new(0);
        let reloads = Cell::new(0);
        // The address appears on the third poll.
        let addresses = || {
            polls.set(polls.get() + 1);
            if polls.get() >= 3 {
                vec!["eth0 10.0.2.15/24".to_string()]
            } else {
                vec![]
            }
        };
        let reload = || {
            reloads.set(reloads.get() + 1);
            false
        };
        let env = Env {
            say: &|s: &str| said.borrow_mut().push(s.to_string()),
            notify: &notifier,
            addresses: &addresses,
            reload_network: &reload,
            network_timeout_ms: NETWORK_TIMEOUT_MS,
        };
        std::fs::create_dir_all(p.proc_self_status().parent().unwrap()).unwrap();
        std::fs::write(
            p.proc_self_status(),
            "VmPeak:\t 9000 kB\nVmHWM:\t 4100 kB\n",
        )
        .unwrap();
        let st = run(&sys, &p, &env).unwrap();
        assert_eq!(st.hostname, "from-fw");
        assert_eq!(st.rss_hwm_kib, Some(4_100));
        assert_eq!(st.sources, vec!["default", "fw_cfg"]);
        assert_eq!(st.problems.len(), 1);
        assert!(
            st.problems[0].starts_with("cmdline: hostname: "),
            "{:?}",
            st.problems
        );
        assert_eq!(st.addresses, ["eth0 10.0.2.15/24"]);
        assert!(st.first_boot);
        let names: Vec<&str> = st.phases.iter().map(|ph| ph.name.as_str()).collect();
        assert_eq!(
            names,
            [
                status::STAGE1_START,
                status::ROOT_MOUNTED,
                status::SWITCH_ROOT,
                status::STAGE2_START,
                status::CONFIG_LOADED,
                status::HOSTNAME_SET,
                status::NETWORK_UP
            ]
        );
        // Two 100 ms sleeps before the address showed up.
        let up = st.phases.last().unwrap().monotonic_ms;
        let cfg = st.phases[4].monotonic_ms;
        assert_eq!(up - cfg, 200);
        assert_eq!(
            said.borrow().as_slice(),
            [
                "kiln: hostname from-fw, addresses eth0 10.0.2.15/24, sources default, fw_cfg, 1 problem",
                &format!("kiln: problem: {}", st.problems[0]),
                &format!(
                    "kiln: timings stage1-ms=900 stage2-to-hostname-ms={} stage2-to-network-ms={} boot-to-hostname-ms={} stage1-rss-hwm-kib=1800 rss-hwm-kib=4100",
                    st.phases[5].monotonic_ms - st.phases[3].monotonic_ms,
                    up - st.phases[3].monotonic_ms,
                    st.phases[5].monotonic_ms,
                ),
                "kiln: machine-id 0123456789abcdef0123456789abcdef, first boot yes"
            ]
        );
        assert_eq!(sys.calls(), vec![Call::Sethostname("from-fw".into())]);
        let back: Status =
            serde_json::from_str(&std::fs::read_to_string(p.status_json()).unwrap()).unwrap();
        assert_eq!(back, st);
        // The effective config is persisted as last good, with no temp file left.
        let lg =
            MachineConfig::from_toml(&std::fs::read_to_string(p.last_good()).unwrap()).unwrap();
        assert_eq!(lg.hostname.unwrap().as_str(), "from-fw");
        assert!(!p.last_good().with_extension("tmp").exists());
        // networkd files, and a reload because they were new.
        let eth0 = std::fs::read_to_string(p.network_dir().join("10-kiln-eth0.network")).unwrap();
        assert!(eth0.contains("MTUBytes=1400"), "{eth0}");
        assert!(p.network_dir().join("60-kiln-ether-dhcp.network").exists());
        assert_eq!(reloads.get(), 1);
        // Datagrams: status, status, then a watchdog ping per poll.
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [
                "STATUS=loading machine config",
                "STATUS=waiting for the network",
                "WATCHDOG=1",
                "WATCHDOG=1",
                "WATCHDOG=1"
            ]
        );
        // First boot completed: marked, and the next run is not a first boot and rewrites
        // no network file (so no reload).
        assert!(Markers::new(p.markers()).is_done(FIRST_BOOT));
        let st2 = run(&sys, &p, &env).unwrap();
        assert!(!st2.first_boot);
        assert_eq!(reloads.get(), 1);
        assert_eq!(
            said.borrow().last().map(String::as_str),
            Some("kiln: machine-id 0123456789abcdef0123456789abcdef, first boot no")
        );
    }

    #[test]
    fn no_address_is_a_problem_and_the_first_boot_is_not_marked() {
        let t = tempfile::tempdir().unwrap();
        let p = machine(t.path());
        let notifier = Notifier::new(None).unwrap();
        let sys = RecordingSys::new();
        let reloads = Cell::new(0);
        let reload = || {
            reloads.set(reloads.get() + 1);
            true
        };
        let env = Env {
            say: &|_: &str| {},
            notify: &notifier,
            addresses: &Vec::new,
            reload_network: &reload,
            network_timeout_ms: 15_000,
        };
        let st = run(&sys, &p, &env).unwrap();
        assert!(st.addresses.is_empty());
        assert_eq!(
            st.problems.last().map(String::as_str),
            Some("network: no routable address after 15 s")
        );
        assert!(!st.phases.iter().any(|ph| ph.name == status::NETWORK_UP));
        // Reloaded after writing, and once more after 10 s without an address.
        assert_eq!(reloads.get(), 2);
        // A power cut here (or any unfinished first boot) makes the next boot a first boot.
        assert!(!Markers::new(p.markers()).is_done(FIRST_BOOT));
        assert!(run(&sys, &p, &env).unwrap().first_boot);
    }
}
