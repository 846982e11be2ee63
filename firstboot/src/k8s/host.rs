//! Host mode (`firstboot host --root DIR --bin DIR`): the control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler) on 127.0.0.1 under `DIR`, no
//! kubelet, for integration tests outside a VM.
//!
//! Layout under `DIR`: `pki/` (the whole PKI, admin kubeconfig `pki/admin.conf`), `config/`,
//! `data/`, `logs/<component>.log` (each component's stdout and stderr), and `status.json`
//! ([`HostStatus`], rewritten every half second). Runs until `stop` is set (SIGINT/SIGTERM in
//! the binary), then stops every component. Once the control plane is ready the addons are
//! applied with `kubectl` from the bin directory (the admin kubeconfig needs their RBAC).
//!
//! The apiserver advertises 127.0.0.1 here, which the Endpoints validation rejects: its log
//! shows "unable to sync kubernetes service" every 10 s. Harmless without in-cluster clients.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::{addons, components, files, ClusterParams, Paths};
use crate::config::Kubernetes;
use crate::pki::Pki;
use crate::supervisor::{ComponentSpec, SupervisedStatus, Supervisor};

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

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Applies `manifest` with `kubectl apply --server-side` as the super-admin.
pub fn apply_with_kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    manifest: &Path,
) -> anyhow::Result<()> {
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=kiln",
            // The manifests are ours (checked against the real apiserver in the host-mode
            // test); client-side validation would first download the OpenAPI document,
            // which takes over 30 s on an emulated node and fails the apply.
            "--validate=false",
            "-f",
        ])
        .arg(manifest)
        .output()
        .with_context(|| format!("running {}", kubectl.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "kubectl apply -f {} failed ({}): {}",
            manifest.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn emit(out: &mut dyn Write, json: bool, event: serde_json::Value, text: String) {
    let line = if json { event.to_string() } else { text };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs host mode until `stop` is set. Installs the process-wide logger.
pub fn run(opts: &HostOptions, stop: &AtomicBool, out: &mut dyn Write) -> anyhow::Result<()> {
    let start = Instant::now();
    let p = params(opts)?;
    let logs = opts.root.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let report = Pki::ensure(&p.paths.pki, &p.pki_params(now_unix())?, None)
        .with_context(|| format!("creating the PKI under {}", p.paths.pki.display()))?;
    log::debug!("pki: wrote {} files", report.written.len());
    files::prepare_dirs(&p)?;
    files::write_files(&files::control_plane_files(&p))?;
    let addons_path = p.paths.config_file("addons.json");
    files::write_files(&[files::GeneratedFile {
        path: addons_path.clone(),
        contents: addons::list_json(&p)?,
        mode: 0o644,
    }])?;

    let managed = components::control_plane(&p)?;
    let logger = FileLogger {
        dir: logs,
        names: managed.iter().map(|m| m.spec.name.clone()).collect(),
        files: Mutex::new(BTreeMap::new()),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let mut sup = Supervisor::new(managed).context("setting up the supervisor")?;

    let kubectl = p.paths.binary("kubectl");
    let super_admin = p.paths.pki_file("super-admin.conf");
    let status_path = opts.root.join("status.json");
    let mut ready_after_ms: Option<u64> = None;
    let mut addons_applied = false;
    let mut next_apply = Instant::now();
    let mut next_status = Instant::now();
    let write_status = |sup: &Supervisor, ready_after_ms, addons_applied| {
        let st = HostStatus {
            ready: sup.state().all_ready(),
            ready_after_ms,
            addons_applied,
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
        if let Err(e) = crate::atomic::Replace::runtime(0o644).write(&status_path, text.as_bytes())
        {
            log::warn!("writing {}: {e}", status_path.display());
        }
    };

    let mut failed: Option<anyhow::Error> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = sup.step() {
            failed = Some(e.into());
            break;
        }
        let ready = sup.state().all_ready();
        if ready && ready_after_ms.is_none() {
            let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            ready_after_ms = Some(ms);
            emit(
                out,
                opts.json,
                serde_json::json!({"event": "ready", "elapsed_ms": ms, "server": p.server_url()}),
                format!(
                    "kiln: control plane ready in {ms} ms at {} (admin kubeconfig {})",
                    p.server_url(),
                    p.paths.pki_file("admin.conf").display()
                ),
            );
        }
        if ready && !addons_applied && Instant::now() >= next_apply {
            if kubectl.is_file() {
                match apply_with_kubectl(&kubectl, &super_admin, &addons_path) {
                    Ok(()) => {
                        addons_applied = true;
                        emit(
                            out,
                            opts.json,
                            serde_json::json!({"event": "addons-applied"}),
                            "kiln: addons applied".to_string(),
                        );
                    }
                    Err(e) => {
                        log::warn!("applying addons: {e:#}");
                        next_apply = Instant::now() + Duration::from_secs(3);
                    }
                }
            } else {
                log::warn!(
                    "no {} : addons (admin RBAC binding, CoreDNS) not applied",
                    kubectl.display()
                );
                next_apply = Instant::now() + Duration::from_secs(3600);
            }
        }
        if Instant::now() >= next_status {
            write_status(&sup, ready_after_ms, addons_applied);
            next_status = Instant::now() + Duration::from_millis(500);
        }
        std::thread::sleep(sup.tick);
    }

    emit(
        out,
        opts.json,
        serde_json::json!({"event": "stopping"}),
        "kiln: stopping the control plane".to_string(),
    );
    let clean = sup.shutdown(Duration::from_secs(60))?;
    write_status(&sup, ready_after_ms, addons_applied);
    emit(
        out,
        opts.json,
        serde_json::json!({"event": "stopped", "clean": clean}),
        format!("kiln: stopped (clean: {clean})"),
    );
    if let Some(e) = failed {
        return Err(e.context("supervising the control plane"));
    }
    if !clean {
        anyhow::bail!("some components did not stop within 60 s");
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
        for m in components::control_plane(&p).unwrap() {
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
