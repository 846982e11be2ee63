//! Stage 2 skeleton: gather the machine config, merge, persist it, set the hostname, and
//! write /run/kiln/status.json.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cmdline::Cmdline;
use crate::config::{Hostname, MachineConfig};
use crate::sources::{self, Layer, Problem};
use crate::stage1::Timings;
use crate::sys::{MountFlags, Sys};
use crate::{hostname, probe};

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
}

/// What `firstboot status` shows, stored at /run/kiln/status.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub hostname: String,
    pub sources: Vec<String>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    pub stage1: Option<Timings>,
}

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
    let meta = std::fs::read_to_string(mnt.join("meta-data")).ok();
    let user = std::fs::read_to_string(mnt.join("user-data")).ok();
    if let Err(e) = sys.umount(&mnt) {
        log::warn!("unmounting {}: {e}", mnt.display());
    }
    sources::nocloud_layer(meta.as_deref(), user.as_deref())
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

/// Runs the stage-2 skeleton. Problems are reported through `say`, never fatal.
pub fn run(sys: &dyn Sys, p: &AgentPaths, say: &dyn Fn(&str)) -> anyhow::Result<Status> {
    use anyhow::Context as _;
    let layers = gather(sys, p);
    let merged = sources::merge(&layers, last_good(&p.last_good()).as_ref());
    for pr in &merged.problems {
        say(&format!("kiln: config: invalid value from {pr}"));
    }
    for n in &merged.notes {
        say(&format!("kiln: config: {n}"));
    }
    let lg = p.last_good();
    if let Some(dir) = lg.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string(&merged.config).context("serializing the effective config")?;
    std::fs::write(&lg, text).with_context(|| format!("writing {}", lg.display()))?;

    let fallback: Hostname = FALLBACK_HOSTNAME.parse().context("fallback hostname")?;
    let host = merged.config.hostname_or(&fallback).clone();
    if let Err(e) = hostname::apply(sys, &p.etc(), &host) {
        say(&format!("kiln: hostname: {e}"));
    }
    let used = if merged.sources.is_empty() {
        vec!["none".to_string()]
    } else {
        merged.sources.clone()
    };
    say(&format!(
        "kiln: hostname {} (sources: {})",
        host,
        used.join(", ")
    ));

    let status = Status {
        hostname: host.to_string(),
        sources: merged.sources,
        problems: merged.problems.iter().map(Problem::to_string).collect(),
        notes: merged.notes,
        stage1: std::fs::read_to_string(p.stage1_json())
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok()),
    };
    let sj = p.status_json();
    if let Some(dir) = sj.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&sj, serde_json::to_string_pretty(&status)?)
        .with_context(|| format!("writing {}", sj.display()))?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSys};
    use std::cell::RefCell;

    #[test]
    fn agent_merges_sources_sets_hostname_and_writes_status() {
        let t = tempfile::tempdir().unwrap();
        let p = AgentPaths::new(t.path());
        std::fs::create_dir_all(p.cmdline().parent().unwrap()).unwrap();
        std::fs::write(p.cmdline(), "quiet kiln.hostname=Bad_Name").unwrap();
        std::fs::create_dir_all(p.default_config().parent().unwrap()).unwrap();
        std::fs::write(p.default_config(), "hostname = \"baked\"").unwrap();
        let fw = p.fw_cfg().join("by_name/opt/kiln/config");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("raw"), "hostname = \"from-fw\"").unwrap();
        std::fs::create_dir_all(p.etc()).unwrap();
        std::fs::create_dir_all(p.stage1_json().parent().unwrap()).unwrap();
        std::fs::write(
            p.stage1_json(),
            serde_json::to_string(&Timings {
                start: 5,
                ..Timings::default()
            })
            .unwrap(),
        )
        .unwrap();

        let sys = RecordingSys::new();
        let said = RefCell::new(Vec::<String>::new());
        let st = run(&sys, &p, &|s| said.borrow_mut().push(s.to_string())).unwrap();
        assert_eq!(st.hostname, "from-fw");
        assert_eq!(st.sources, vec!["default", "fw_cfg"]);
        assert_eq!(st.problems.len(), 1);
        assert!(
            st.problems[0].starts_with("cmdline: hostname: "),
            "{:?}",
            st.problems
        );
        assert_eq!(st.stage1.as_ref().map(|s| s.start), Some(5));
        assert!(said
            .borrow()
            .contains(&"kiln: hostname from-fw (sources: default, fw_cfg)".to_string()));
        assert_eq!(sys.calls(), vec![Call::Sethostname("from-fw".into())]);
        let back: Status =
            serde_json::from_str(&std::fs::read_to_string(p.status_json()).unwrap()).unwrap();
        assert_eq!(back, st);
        // The effective config is persisted as last good.
        let lg =
            MachineConfig::from_toml(&std::fs::read_to_string(p.last_good()).unwrap()).unwrap();
        assert_eq!(lg.hostname.unwrap().as_str(), "from-fw");
    }
}
