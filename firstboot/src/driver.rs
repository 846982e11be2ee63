//! The one node driver. Node mode (the agent on the machine, [`crate::node`]) and host mode
//! (`firstboot host`, the control plane under a directory for tests, [`crate::host`]) run
//! this same loop: the PKI, the configuration files, the supervisor, and beside it a thread
//! that applies the addons once the apiserver is ready and makes the slow cluster checks.
//! A [`Profile`] says what differs (components, paths, which checks); [`Hooks`] say where
//! progress goes (console, status file, systemd; or JSON lines and `status.json`).
//!
//! The Kubernetes side ([`crate::k8s`]) is pure: it computes components and files from
//! [`ClusterParams`]; the IO is here.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::k8s::files::{self, GeneratedFile};
use crate::k8s::{addons, components, ClusterParams, K8sError};
use crate::pki::{Pki, Secrets};
use crate::supervisor::{HttpProbe, Managed, Supervisor, TlsProbe};

/// Where the addon list is written (in the profile's config directory).
pub const ADDONS_FILE: &str = "addons.json";

/// What a run of the driver supervises and checks.
pub struct Profile<'a> {
    pub params: ClusterParams,
    pub components: Vec<Managed>,
    /// Every generated configuration file, the addon list included.
    pub files: Vec<GeneratedFile>,
    /// Operator-supplied cluster CAs (node mode; host mode generates its own).
    pub secrets: Option<&'a Secrets>,
    /// The node checks besides the addons: baked images imported, node Ready, CoreDNS ready.
    pub node_checks: bool,
    /// Each component's output to the journal under its own name (node mode).
    pub journal: bool,
    /// Take over the components an earlier run left running (node mode: firstboot
    /// restarted by systemd after a crash or a watchdog kill). Only with `journal`: a
    /// component whose output came through the earlier run's pipes would die writing to it.
    pub adopt: bool,
    /// How long the components get to stop before SIGKILL.
    pub shutdown_grace: Duration,
}

impl<'a> Profile<'a> {
    /// The control plane alone: etcd, kube-apiserver, controller-manager, scheduler.
    pub fn control_plane(params: ClusterParams) -> Result<Profile<'a>, K8sError> {
        let mut files = files::control_plane_files(&params);
        files.push(addon_list(&params)?);
        Ok(Profile {
            components: components::control_plane(&params)?,
            files,
            params,
            secrets: None,
            node_checks: false,
            journal: false,
            adopt: false,
            shutdown_grace: Duration::from_secs(60),
        })
    }

    /// The whole single node: the control plane, containerd, kubelet and kube-proxy.
    pub fn node(params: ClusterParams, secrets: Option<&'a Secrets>) -> Result<Self, K8sError> {
        let mut files = files::control_plane_files(&params);
        files.extend(files::node_files(&params)?);
        files.push(addon_list(&params)?);
        Ok(Profile {
            components: components::all(&params)?,
            files,
            params,
            secrets,
            node_checks: true,
            journal: true,
            adopt: true,
            shutdown_grace: Duration::from_secs(30),
        })
    }

    /// The component names, in the profile's order.
    pub fn names(&self) -> Vec<String> {
        self.components
            .iter()
            .map(|m| m.spec.name.clone())
            .collect()
    }
}

fn addon_list(p: &ClusterParams) -> Result<GeneratedFile, K8sError> {
    Ok(GeneratedFile {
        path: p.paths.config_file(ADDONS_FILE),
        contents: addons::list_json(p)?,
        mode: 0o644,
    })
}

/// What happened, in the order it happened; each is reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The PKI and the configuration files are written.
    Configured {
        pki_written: usize,
    },
    /// Components left running by an earlier run, now supervised by this one: name, pid.
    Adopted(Vec<(String, i32)>),
    ComponentReady(String),
    /// Every component is ready (for the first time).
    AllReady,
    AddonsApplied,
    /// The baked images are in containerd: how long it took, each `ctr` run of the try that
    /// succeeded.
    ImagesImported {
        detail: String,
    },
    NodeReady,
    CorednsReady,
    /// Asked to stop: the components are being stopped.
    Stopping,
    Stopped {
        clean: bool,
    },
}

/// When a component was first spawned and first ready, on the supervisor's clock (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirstStart {
    pub spawned: Option<u64>,
    pub ready: Option<u64>,
}

/// The run so far, as the hooks see it.
pub struct Run<'s> {
    pub sup: &'s Supervisor,
    /// Each component's first spawn and readiness (the supervisor keeps only the latest).
    pub first: &'s BTreeMap<String, FirstStart>,
    /// Each component with the components it waits for.
    pub deps: &'s [(String, Vec<String>)],
    pub params: &'s ClusterParams,
}

/// Where a mode sends the driver's progress.
pub trait Hooks {
    fn event(&mut self, event: &Event, run: &Run);
    /// Called after every supervisor step (status files, watchdog pings).
    fn tick(&mut self, run: &Run);
}

/// Creates the state directories the components expect, with their modes enforced.
pub fn prepare_dirs(p: &ClusterParams) -> Result<(), K8sError> {
    for (dir, mode) in files::state_dirs(p) {
        let mkdir = |source| K8sError::Mkdir {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&dir)
            .map_err(mkdir)?;
        // An existing directory keeps its mode with DirBuilder: enforce it.
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).map_err(mkdir)?;
    }
    Ok(())
}

/// Writes `files` atomically; returns the paths whose contents changed (so the caller can
/// restart the components that read them).
pub fn write_files(files: &[GeneratedFile]) -> Result<Vec<PathBuf>, K8sError> {
    let mut changed = Vec::new();
    for f in files {
        if fs::read(&f.path).ok().as_deref() == Some(f.contents.as_bytes()) {
            continue;
        }
        crate::pki::write_atomic(&f.path, f.contents.as_bytes(), f.mode).map_err(|source| {
            K8sError::Write {
                path: f.path.clone(),
                source,
            }
        })?;
        changed.push(f.path.clone());
    }
    Ok(changed)
}

/// Runs the profile until `stop` is set, then stops every component: SIGTERM, then SIGKILL
/// after the profile's grace. Returns whether every component stopped within it. A
/// supervisor failure stops the components too, then is returned.
pub fn run(profile: Profile, hooks: &mut dyn Hooks, stop: &AtomicBool) -> anyhow::Result<bool> {
    let p = profile.params;
    let now_s = i64::try_from(crate::status::unix_ms() / 1000).unwrap_or(0);
    let report = Pki::ensure(&p.paths.pki, &p.pki_params(now_s)?, profile.secrets)
        .with_context(|| format!("creating the PKI under {}", p.paths.pki.display()))?;
    prepare_dirs(&p)?;
    write_files(&profile.files)?;
    let mut sup = Supervisor::new(profile.components).context("setting up the supervisor")?;
    sup.journal = profile.journal;
    let adopted = if profile.adopt && profile.journal {
        sup.adopt_running()
    } else {
        Vec::new()
    };
    let deps: Vec<(String, Vec<String>)> = sup
        .state()
        .components
        .iter()
        .map(|c| (c.spec.name.clone(), c.spec.depends_on.clone()))
        .collect();
    let mut first: BTreeMap<String, FirstStart> = BTreeMap::new();
    macro_rules! run_view {
        () => {
            Run {
                sup: &sup,
                first: &first,
                deps: &deps,
                params: &p,
            }
        };
    }
    hooks.event(
        &Event::Configured {
            pki_written: report.written.len(),
        },
        &run_view!(),
    );
    if !adopted.is_empty() {
        hooks.event(&Event::Adopted(adopted), &run_view!());
    }

    let flags = Flags::default();
    let checks_done = Arc::new(AtomicBool::new(false));
    {
        let (p, flags, done) = (p.clone(), flags.clone(), Arc::clone(&checks_done));
        let node_checks = profile.node_checks;
        std::thread::spawn(move || checker(&p, node_checks, &flags, &done));
    }

    let mut seen_ready = std::collections::BTreeSet::new();
    // Which of the checks' events were reported: addons, images, node Ready, CoreDNS.
    let mut told = [false; 4];
    let mut all_ready = false;
    let mut boot_priority_ended = false;
    let mut failed: Option<anyhow::Error> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = sup.step() {
            failed = Some(e.into());
            break;
        }
        let mut events = Vec::new();
        for c in &sup.state().components {
            let f = first.entry(c.spec.name.clone()).or_default();
            f.spawned = f.spawned.or(c.started_at);
            f.ready = f.ready.or(c.ready_at);
            if c.ready() && seen_ready.insert(c.spec.name.clone()) {
                events.push(Event::ComponentReady(c.spec.name.clone()));
            }
            match c.spec.name.as_str() {
                components::APISERVER => flags.apiserver.store(c.ready(), Ordering::SeqCst),
                components::CONTAINERD => flags.containerd.store(c.ready(), Ordering::SeqCst),
                components::KUBELET => {
                    let ago_ms = c.started_at.map(|t| sup.now().saturating_sub(t));
                    let unix_s = ago_ms
                        .map(|ago| crate::status::unix_ms().saturating_sub(ago) / 1000)
                        .unwrap_or(0);
                    flags.kubelet_started.store(unix_s, Ordering::SeqCst);
                }
                _ => {}
            }
        }
        if !boot_priority_ended && flags.apiserver.load(Ordering::SeqCst) {
            boot_priority_ended = true;
            sup.end_boot_priority();
        }
        if !all_ready && sup.state().all_ready() {
            all_ready = true;
            events.push(Event::AllReady);
        }
        let now = flags.checks.lock().map(|c| c.clone()).unwrap_or_default();
        let checks = [
            (now.addons_applied, Event::AddonsApplied),
            (
                now.images_imported.is_some(),
                Event::ImagesImported {
                    detail: now.images_imported.clone().unwrap_or_default(),
                },
            ),
            (now.node_ready, Event::NodeReady),
            (now.coredns_ready, Event::CorednsReady),
        ];
        for ((is, event), was) in checks.into_iter().zip(told.iter_mut()) {
            if is && !*was {
                *was = true;
                events.push(event);
            }
        }
        for e in &events {
            hooks.event(e, &run_view!());
        }
        hooks.tick(&run_view!());
        std::thread::sleep(sup.tick);
    }
    checks_done.store(true, Ordering::SeqCst);
    hooks.event(&Event::Stopping, &run_view!());
    let clean = sup.shutdown(profile.shutdown_grace)?;
    hooks.event(&Event::Stopped { clean }, &run_view!());
    match failed {
        Some(e) => Err(e.context("supervising the components")),
        None => Ok(clean),
    }
}

/// Results of the slow cluster checks (kubectl runs), made off the supervision loop.
#[derive(Debug, Default, Clone)]
struct Checks {
    addons_applied: bool,
    /// Set once imported: how it went.
    images_imported: Option<String>,
    node_ready: bool,
    coredns_ready: bool,
}

/// What the supervision loop and the checker share.
#[derive(Clone, Default)]
struct Flags {
    apiserver: Arc<AtomicBool>,
    containerd: Arc<AtomicBool>,
    /// When the kubelet's current process started (unix seconds; 0: not yet). A node's
    /// Ready counts only with a heartbeat from it: the Node object left from before a
    /// reboot says Ready until its lease runs out. (Not this firstboot's own start: a
    /// restarted firstboot adopts a kubelet that may send no new heartbeat for minutes.)
    kubelet_started: Arc<AtomicU64>,
    checks: Arc<Mutex<Checks>>,
}

/// The node's own reads of the API, in process: GETs as the super-admin (its local
/// break-glass credentials: the admin kubeconfig's RBAC binding is one of the addons, and
/// node Ready must not wait for them). A kubectl run costs seconds of CPU on an emulated
/// node, and the checks ask every second; a GET costs milliseconds.
struct Api(HttpProbe);

impl Api {
    fn new(p: &ClusterParams) -> Result<Api, crate::supervisor::probe::ProbeError> {
        let pki = |rel: &str| p.paths.pki_file(rel);
        let tls = TlsProbe {
            ca: pki("ca.crt"),
            client: Some((pki("super-admin.crt"), pki("super-admin.key"))),
        };
        HttpProbe::from_url(&format!("{}/", p.server_url()), Some(tls)).map(Api)
    }

    /// Server-side applies `object` (a kind [`addons::apply_path`] knows) as field manager
    /// `kiln`, forcing conflicts: the addons are Kiln's, and a boot puts them back.
    fn apply(&self, object: &serde_json::Value) -> Result<(), String> {
        let path = format!(
            "{}?fieldManager=kiln&force=true",
            addons::apply_path(object)?
        );
        let body = object.to_string();
        match self.0.send(
            "PATCH",
            &path,
            Some(("application/apply-patch+yaml", body.as_bytes())),
            Duration::from_secs(10),
            1 << 20,
        ) {
            Ok((200 | 201, _)) => Ok(()),
            Ok((status, body)) => Err(format!(
                "PATCH {path}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
            Err(e) => Err(format!("PATCH {path}: {e}")),
        }
    }

    /// The object at `path`, when the API answers 200 with JSON.
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        match self.0.fetch(path, Duration::from_secs(10), 4 << 20) {
            Ok((200, body)) => serde_json::from_slice(&body).ok(),
            Ok((status, _)) => {
                log::debug!("GET {path}: {status}");
                None
            }
            Err(e) => {
                log::debug!("GET {path}: {e}");
                None
            }
        }
    }
}

/// Whether a Node object says Ready with a heartbeat at or after `since` (unix seconds; a
/// few seconds of slack for clock granularity).
pub fn ready_since(node: &serde_json::Value, since: u64) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .is_some_and(|c| {
            c["status"] == "True"
                && c["lastHeartbeatTime"]
                    .as_str()
                    .and_then(crate::utc::parse)
                    .is_some_and(|t| t + 5 >= since)
        })
}

/// Sets the calling thread's nice value (Linux keeps it per thread; the processes the
/// thread spawns inherit it).
fn thread_nice(nice: i32) {
    if let Err(e) = rustix::process::setpriority_process(None, nice) {
        log::warn!("setting this thread's nice value to {nice}: {e}");
    }
}

/// Runs the slow checks until `done`, each on its own thread so that none waits for
/// another: the addons applied once the apiserver is ready; with `node_checks` also the
/// baked images imported once containerd runs (at [`components::BOOT_NICE`] until the
/// apiserver is ready), and every few seconds node Ready and CoreDNS ready.
fn checker(p: &ClusterParams, node_checks: bool, flags: &Flags, done: &Arc<AtomicBool>) {
    let mut c = Checks::default();
    let api = match Api::new(p) {
        Ok(api) => Some(Arc::new(api)),
        Err(e) => {
            log::warn!("no API client for the node checks: {e}");
            None
        }
    };
    let applied = Arc::new(AtomicBool::new(false));
    let bound = Arc::new(AtomicBool::new(false));
    {
        let (p, done) = (p.clone(), Arc::clone(done));
        let (applied, bound) = (Arc::clone(&applied), Arc::clone(&bound));
        let apiserver = Arc::clone(&flags.apiserver);
        let api = api.clone();
        std::thread::spawn(move || {
            apply_addons(&p, api.as_deref(), &apiserver, &bound, &applied, &done)
        });
    }
    // Importing the baked images takes tens of seconds on an emulated node.
    let imported: Arc<Mutex<Option<String>>> = Arc::default();
    if node_checks {
        let (p, imported, done) = (p.clone(), Arc::clone(&imported), Arc::clone(done));
        let (containerd, apiserver) = (Arc::clone(&flags.containerd), Arc::clone(&flags.apiserver));
        std::thread::spawn(move || {
            let mut nice = components::BOOT_NICE;
            thread_nice(nice);
            let (mut tries, mut first) = (0, None);
            while !done.load(Ordering::SeqCst) {
                if nice != 0 && apiserver.load(Ordering::SeqCst) {
                    nice = 0;
                    thread_nice(nice);
                }
                if containerd.load(Ordering::SeqCst) {
                    tries += 1;
                    let first = *first.get_or_insert_with(std::time::Instant::now);
                    if let Some(steps) = import_images(&p) {
                        let detail = format!(
                            "in {:.1} s, {tries} tries; the last: {steps}",
                            first.elapsed().as_secs_f64()
                        );
                        if let Ok(mut i) = imported.lock() {
                            *i = Some(detail);
                        }
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        });
    }
    while !done.load(Ordering::SeqCst) {
        // Node Ready is told once the admin can use it: after the RBAC bindings.
        let usable = flags.apiserver.load(Ordering::SeqCst) && bound.load(Ordering::SeqCst);
        if let (true, true, Some(api)) = (node_checks, usable, &api) {
            let node = api.get(&format!("/api/v1/nodes/{}", p.hostname));
            let kubelet_started = flags.kubelet_started.load(Ordering::SeqCst);
            c.node_ready =
                kubelet_started > 0 && node.is_some_and(|n| ready_since(&n, kubelet_started));
            if c.node_ready {
                let dns = api.get("/apis/apps/v1/namespaces/kube-system/deployments/coredns");
                c.coredns_ready =
                    dns.is_some_and(|d| d["status"]["readyReplicas"].as_u64().unwrap_or(0) > 0);
            }
        }
        c.addons_applied = applied.load(Ordering::SeqCst);
        c.images_imported = imported.lock().ok().and_then(|i| i.clone());
        if let Ok(mut shared) = flags.checks.lock() {
            *shared = c.clone();
        }
        // Naps of half a second, so the first round follows the apiserver's readiness
        // closely; otherwise a round every second.
        let api_before = flags.apiserver.load(Ordering::SeqCst);
        for _ in 0..2 {
            if done.load(Ordering::SeqCst)
                || (!api_before && flags.apiserver.load(Ordering::SeqCst))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Once the apiserver is ready: the RBAC bindings (the admin's, the apiserver's towards the
/// kubelets) applied in process, which takes milliseconds, so the admin can use the node as
/// soon as it is told Ready (`bound`); then the whole addon list with kubectl, which takes
/// seconds of CPU (`applied`). Each is tried again until it succeeds.
fn apply_addons(
    p: &ClusterParams,
    api: Option<&Api>,
    apiserver: &AtomicBool,
    bound: &AtomicBool,
    applied: &AtomicBool,
    done: &AtomicBool,
) {
    let Some(api) = api else {
        log::warn!("no API client: the addons (CoreDNS) not applied");
        return;
    };
    // The RBAC bindings come first in the list: node Ready is told once they are applied.
    let objects = match addons::all(p) {
        Ok(objects) => objects,
        Err(e) => {
            log::warn!("the addons: {e}");
            return;
        }
    };
    let bindings = crate::pki::rbac_bindings_json()["items"]
        .as_array()
        .map_or(0, Vec::len);
    let mut next = 0;
    while !done.load(Ordering::SeqCst) && next < objects.len() {
        if !apiserver.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        match api.apply(&objects[next]) {
            Ok(()) => {
                next += 1;
                if next >= bindings {
                    bound.store(true, Ordering::SeqCst);
                }
            }
            Err(e) => {
                log::warn!("applying addons: {e}");
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
    if next == objects.len() {
        applied.store(true, Ordering::SeqCst);
    }
}

/// Imports the images baked into /usr/lib/kiln/images into containerd and pins them; when
/// done, each `ctr` run and its time (containerd may still be coming up: then None, and it
/// is tried again).
fn import_images(p: &ClusterParams) -> Option<String> {
    let ctr = crate::images::Ctr::new(p.paths.binary("ctr")).at(p.paths.containerd_socket());
    match crate::images::import_all(
        Path::new(crate::images::IMAGES_DIR),
        &ctr,
        &crate::images::HostRun,
        &[crate::k8s::PAUSE_IMAGE],
    ) {
        Ok(r) => {
            log::info!("images: imported {:?}, pinned {:?}", r.imported, r.pinned);
            Some(r.steps_line())
        }
        Err(e) => {
            log::warn!("importing the baked images: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(root: &Path) -> ClusterParams {
        crate::host::params(&crate::host::HostOptions {
            root: root.to_path_buf(),
            bin: "/opt/k8s/bin".into(),
            json: false,
            apiserver_port: 16443,
        })
        .unwrap()
    }

    #[test]
    fn write_files_reports_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = GeneratedFile {
            path: dir.path().join("a/b.json"),
            contents: "{}\n".into(),
            mode: 0o600,
        };
        assert_eq!(
            write_files(std::slice::from_ref(&f)).unwrap(),
            vec![f.path.clone()]
        );
        assert!(write_files(std::slice::from_ref(&f)).unwrap().is_empty());
        let mode = fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn state_dirs_get_their_modes_even_when_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let p = params(dir.path());
        fs::create_dir_all(p.paths.etcd_data()).unwrap();
        fs::set_permissions(p.paths.etcd_data(), fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dirs(&p).unwrap();
        for (d, mode) in files::state_dirs(&p) {
            let got = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "{}", d.display());
        }
    }

    #[test]
    fn the_profiles_differ_in_components_files_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Profile::control_plane(params(dir.path())).unwrap();
        let node = Profile::node(params(dir.path()), None).unwrap();
        assert_eq!(
            cp.names(),
            [
                components::ETCD,
                components::APISERVER,
                components::CONTROLLER_MANAGER,
                components::SCHEDULER
            ]
        );
        assert!(node.names().len() > cp.names().len());
        assert!(cp.names().iter().all(|n| node.names().contains(n)));
        for prof in [&cp, &node] {
            assert!(prof
                .files
                .iter()
                .any(|f| f.path == prof.params.paths.config_file(ADDONS_FILE)));
        }
        assert!(node.files.len() > cp.files.len());
        assert!(!cp.node_checks && node.node_checks);
        // One layout for both: only the profile's components and files differ.
        assert_eq!(cp.params.paths, node.params.paths);
    }

    #[test]
    fn only_a_heartbeat_from_this_boot_counts_as_ready() {
        let since = crate::utc::parse("2026-11-27T16:30:00Z").unwrap();
        let node = |status: &str, beat: &str| {
            serde_json::json!({"status": {"conditions": [
                {"type": "MemoryPressure", "status": "False",
                 "lastHeartbeatTime": "2026-11-27T16:31:10Z"},
                {"type": "Ready", "status": status, "lastHeartbeatTime": beat},
            ]}})
        };
        assert!(ready_since(&node("True", "2026-11-27T16:31:10Z"), since));
        assert!(!ready_since(&node("True", "2026-11-27T16:20:00Z"), since));
        assert!(!ready_since(&node("False", "2026-11-27T16:31:10Z"), since));
        assert!(!ready_since(&node("True", "not a time"), since));
        assert!(!ready_since(&serde_json::json!({"status": {}}), since));
    }
}
