//! Host mode (`firstboot host --root DIR --bin DIR`): the control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler) on 127.0.0.1 under `DIR`, no
//! kubelet, for integration tests outside a VM.
//!
//! Layout under `DIR`: `pki/` (the whole PKI, admin kubeconfig `pki/admin.conf`), `config/`,
//! `data/`, `logs/<component>.log` (each component's stdout and stderr), and `status.json`
//! ([`HostStatus`], rewritten every half second). Runs until `stop` is set (SIGINT/SIGTERM in
//! the binary), then stops every component. Once the apiserver is ready the addons are
//! applied with `kubectl` from the bin directory (the admin kubeconfig needs their RBAC).
//! It runs the node driver ([`crate::driver`]) that node mode runs, with the control-plane
//! profile: the code under test here is the code on the machine.
//!
//! The apiserver advertises 127.0.0.1 here, which the Endpoints validation rejects: its log
//! shows "unable to sync kubernetes service" every 10 s. Harmless without in-cluster clients.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::Kubernetes;
use crate::driver::{self, Event, Hooks, Profile, Run};
use crate::k8s::{ClusterParams, Paths};
use crate::supervisor::{ComponentSpec, SupervisedStatus};

/// The node name used in host mode.
pub const HOST_NAME: &str = "kiln-host";

/// `firstboot host` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    pub root: PathBuf,
    pub bin: PathBuf,
    /// JSON lines on stdout instead of text.
    pub json: bool,
    pub apiserver_port: u16,
}

/// What `DIR/status.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Every component is ready.
    pub ready: bool,
    /// Time from start to the first moment every component was ready.
    pub ready_after_ms: Option<u64>,
    /// The addon objects were applied (needs `kubectl` in the bin directory).
    pub addons_applied: bool,
    /// The supervisor's clock (CLOCK_MONOTONIC ms) when this was written: the components'
    /// `*_at_ms` times are on it.
    #[serde(default)]
    pub monotonic_ms: u64,
    pub components: Vec<SupervisedStatus>,
    /// Each component's probe timing, grace period and backoff (what bounds its recovery).
    #[serde(default)]
    pub specs: Vec<ComponentSpec>,
    /// The supervisor's loop period: probe results, exits and deadlines are acted on at the
    /// next step.
    #[serde(default)]
    pub tick_ms: u64,
}

/// The cluster parameters of host mode under `opts.root`.
pub fn params(opts: &HostOptions) -> Result<ClusterParams, crate::config::ConfigError> {
    let mut p = ClusterParams::new(
        &Kubernetes::default(),
        // A constant, valid name: the host's own may not be.
        HOST_NAME.parse()?,
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Paths::under(&opts.root, &opts.bin),
    );
    p.apiserver_port = opts.apiserver_port;
    Ok(p)
}

/// Routes each component's output (log target = component name) to `logs/<name>.log`;
/// everything else to stderr.
struct FileLogger {
    dir: PathBuf,
    names: Vec<String>,
    files: Mutex<BTreeMap<String, File>>,
}

impl log::Log for FileLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let target = r.target();
        if self.names.iter().any(|n| n == target) {
            let Ok(mut files) = self.files.lock() else {
                return;
            };
            if !files.contains_key(target) {
                let path = self.dir.join(format!("{target}.log"));
                match OpenOptions::new().create(true).append(true).open(&path) {
                    Ok(f) => {
                        files.insert(target.to_string(), f);
                    }
                    Err(e) => {
                        eprintln!("firstboot: opening {}: {e}", path.display());
                        return;
                    }
                }
            }
            if let Some(f) = files.get_mut(target) {
                let _ = writeln!(f, "{}", r.args());
            }
        } else {
            eprintln!("firstboot: {target}: {}", r.args());
        }
    }
    fn flush(&self) {}
}

fn emit(out: &mut dyn Write, json: bool, event: serde_json::Value, text: String) {
    let line = if json { event.to_string() } else { text };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Host mode's progress: JSON lines (or text) on `out` and `DIR/status.json`.
struct HostHooks<'o> {
    out: &'o mut dyn Write,
    json: bool,
    start: Instant,
    status_path: PathBuf,
    ready_after_ms: Option<u64>,
    addons_applied: bool,
    next_status: Instant,
}

impl HostHooks<'_> {
    fn write_status(&self, run: &Run) {
        let sup = run.sup;
        let st = HostStatus {
            ready: sup.state().all_ready(),
            ready_after_ms: self.ready_after_ms,
            addons_applied: self.addons_applied,
            monotonic_ms: sup.now(),
            components: sup.status(),
            specs: sup
                .state()
                .components
                .iter()
                .map(|c| c.spec.clone())
                .collect(),
            tick_ms: u64::try_from(sup.tick.as_millis()).unwrap_or(u64::MAX),
        };
        let text = serde_json::to_string_pretty(&st).unwrap_or_default();
        if let Err(e) =
            crate::atomic::Replace::runtime(0o644).write(&self.status_path, text.as_bytes())
        {
            log::warn!("writing {}: {e}", self.status_path.display());
        }
    }

    fn addons_line(&mut self) {
        emit(
            self.out,
            self.json,
            serde_json::json!({"event": "addons-applied"}),
            "kiln: addons applied".to_string(),
        );
    }
}

impl Hooks for HostHooks<'_> {
    fn event(&mut self, event: &Event, run: &Run) {
        let p = run.params;
        match event {
            Event::Configured { pki_written } => log::debug!("pki: wrote {pki_written} files"),
            Event::AllReady => {
                let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.ready_after_ms = Some(ms);
                emit(
                    self.out,
                    self.json,
                    serde_json::json!({"event": "ready", "elapsed_ms": ms, "server": p.server_url()}),
                    format!(
                        "kiln: control plane ready in {ms} ms at {} (admin kubeconfig {})",
                        p.server_url(),
                        p.paths.pki_file("admin.conf").display()
                    ),
                );
                // The addons may have gone in as soon as the apiserver was ready: told after.
                if self.addons_applied {
                    self.addons_line();
                }
            }
            Event::AddonsApplied => {
                self.addons_applied = true;
                if self.ready_after_ms.is_some() {
                    self.addons_line();
                }
            }
            Event::Stopping => emit(
                self.out,
                self.json,
                serde_json::json!({"event": "stopping"}),
                "kiln: stopping the control plane".to_string(),
            ),
            Event::Stopped { clean } => {
                self.write_status(run);
                emit(
                    self.out,
                    self.json,
                    serde_json::json!({"event": "stopped", "clean": clean}),
                    format!("kiln: stopped (clean: {clean})"),
                );
            }
            _ => {}
        }
    }

    fn tick(&mut self, run: &Run) {
        if Instant::now() >= self.next_status {
            self.write_status(run);
            self.next_status = Instant::now() + Duration::from_millis(500);
        }
    }
}

/// Runs host mode until `stop` is set. Installs the process-wide logger.
pub fn run(opts: &HostOptions, stop: &AtomicBool, out: &mut dyn Write) -> anyhow::Result<()> {
    let start = Instant::now();
    let profile = Profile::control_plane(params(opts)?)?;
    let logs = opts.root.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let logger = FileLogger {
        dir: logs,
        names: profile.names(),
        files: Mutex::new(BTreeMap::new()),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let mut hooks = HostHooks {
        out,
        json: opts.json,
        start,
        status_path: opts.root.join("status.json"),
        ready_after_ms: None,
        addons_applied: false,
        next_status: Instant::now(),
    };
    let grace = profile.shutdown_grace;
    let clean = driver::run(profile, &mut hooks, stop)?;
    if !clean {
        anyhow::bail!("some components did not stop within {} s", grace.as_secs());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_params_put_everything_under_the_root() {
        let opts = HostOptions {
            root: "/tmp/kiln-host".into(),
            bin: "/opt/k8s/bin".into(),
            json: true,
            apiserver_port: 16443,
        };
        let p = params(&opts).unwrap();
        assert_eq!(p.server_url(), "https://127.0.0.1:16443");
        for m in crate::k8s::components::control_plane(&p).unwrap() {
            assert!(m.command.program.starts_with("/opt/k8s/bin/"));
            for a in &m.command.args {
                if let Some((_, v)) = a.split_once('=') {
                    if v.starts_with('/') {
                        assert!(v.starts_with("/tmp/kiln-host/"), "{a}");
                    }
                }
            }
        }
    }
}
