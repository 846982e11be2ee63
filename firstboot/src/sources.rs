//! Machine config sources and their precedence merge.
//!
//! Later wins: baked default < QEMU fw_cfg `opt/kiln/config` < NoCloud `cidata` <
//! kernel command line (`kiln.config=<base64 TOML>`, then `kiln.hostname=`). Each source is
//! validated key by key: an invalid key is reported with the source and the key and
//! dropped, and that key then takes the last good value (persisted on /var) or whatever the
//! lower sources and the defaults say. [`merge`] is pure; the readers below do the I/O.

use std::path::Path;

use base64::Engine as _;
use serde::Serialize;

use crate::cmdline::Cmdline;
use crate::config::MachineConfig;

/// Source names, as reported.
pub const DEFAULT: &str = "default";
pub const FW_CFG: &str = "fw_cfg";
pub const NOCLOUD: &str = "nocloud";
pub const CMDLINE: &str = "cmdline";
pub const LAST_GOOD: &str = "last-good";

/// One source's contribution before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Source name (`default`, `fw_cfg`, `nocloud`, `cmdline`).
    pub source: String,
    /// The parsed document, or why it did not parse.
    pub content: Result<toml::Table, String>,
    /// Notes that are not errors (e.g. ignored cloud-config keys).
    pub notes: Vec<String>,
}

impl Layer {
    /// A layer from TOML text.
    pub fn from_toml(source: &str, text: &str) -> Layer {
        Layer {
            source: source.to_string(),
            content: text
                .parse::<toml::Table>()
                .map_err(|e| e.message().to_string()),
            notes: Vec::new(),
        }
    }
    /// A layer from an already-built table.
    pub fn from_table(source: &str, table: toml::Table) -> Layer {
        Layer {
            source: source.to_string(),
            content: Ok(table),
            notes: Vec::new(),
        }
    }
}

/// An invalid value: which source, which key (dotted; empty for the whole source), why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub source: String,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.key, self.message)
        }
    }
}

/// The merge result.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The effective config.
    pub config: MachineConfig,
    /// The sources that contributed at least one valid key, in precedence order.
    pub sources: Vec<String>,
    /// Every invalid value found.
    pub problems: Vec<Problem>,
    /// Notes from the sources.
    pub notes: Vec<String>,
}

fn wrap(path: &[String], value: toml::Value) -> toml::Table {
    let mut v = value;
    for k in path.iter().rev() {
        let mut t = toml::Table::new();
        t.insert(k.clone(), v);
        v = toml::Value::Table(t);
    }
    match v {
        toml::Value::Table(t) => t,
        _ => toml::Table::new(),
    }
}

fn validate(doc: toml::Table) -> Result<(), String> {
    MachineConfig::deserialize(toml::Value::Table(doc))
        .map_err(|e| e.message().to_string())?
        .check()
        .map_err(|e| e.to_string())
}

/// Sections that are valid only whole: a bad one is dropped whole, never leaf by leaf.
const WHOLE: &[&str] = &["secrets"];

fn whole(path: &[String]) -> bool {
    matches!(path, [top] if WHOLE.contains(&top.as_str()))
}

use serde::Deserialize as _;

/// Keeps the valid part of `table` (at `path`), reporting each invalid leaf.
fn prune(
    path: &mut Vec<String>,
    table: &toml::Table,
    source: &str,
    problems: &mut Vec<Problem>,
) -> toml::Table {
    let mut good = toml::Table::new();
    for (k, v) in table {
        path.push(k.clone());
        match validate(wrap(path, v.clone())) {
            Ok(()) => {
                good.insert(k.clone(), v.clone());
            }
            Err(msg) => match v {
                // Free-form maps (interfaces) and sections: descend to find the bad leaf.
                toml::Value::Table(sub) if !sub.is_empty() && !whole(path) => {
                    let kept = prune(path, sub, source, problems);
                    if !kept.is_empty() {
                        good.insert(k.clone(), toml::Value::Table(kept));
                    }
                }
                _ => problems.push(Problem {
                    source: source.to_string(),
                    key: path.join("."),
                    message: msg,
                }),
            },
        }
        path.pop();
    }
    good
}

/// Deep merge: tables merge key by key, anything else is replaced.
fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => overlay(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn lookup<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Merges `layers` (lowest precedence first). Invalid keys fall back to `last_good`; a
/// layer that cannot be read or parsed as a whole stands for what it said last time, so
/// the whole `last_good` is laid in its place (the layers above it still win), and a broken
/// source never erases the values it gave before.
pub fn merge(layers: &[Layer], last_good: Option<&MachineConfig>) -> Merged {
    let mut merged = toml::Table::new();
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let lg_table = last_good.and_then(|lg| match toml::Value::try_from(lg) {
        Ok(toml::Value::Table(t)) => Some(t),
        _ => None,
    });
    for layer in layers {
        notes.extend(layer.notes.iter().map(|n| format!("{}: {n}", layer.source)));
        let table = match &layer.content {
            Ok(t) => t,
            Err(msg) => {
                problems.push(Problem {
                    source: layer.source.clone(),
                    key: String::new(),
                    message: msg.clone(),
                });
                if let Some(lg) = &lg_table {
                    overlay(&mut merged, lg.clone());
                    if !sources.iter().any(|s| s == LAST_GOOD) {
                        sources.push(LAST_GOOD.to_string());
                    }
                }
                continue;
            }
        };
        // Cluster keys only from the operator's channels: the kernel command line is
        // readable by every container (/proc/cmdline), and a baked default would put them in
        // every copy of the image.
        let mut table = table.clone();
        if (layer.source == CMDLINE || layer.source == DEFAULT) && table.remove("secrets").is_some()
        {
            problems.push(Problem {
                source: layer.source.clone(),
                key: "secrets".into(),
                message: "cluster keys are taken only from fw_cfg or NoCloud (`kiln \
                          secrets`), never from the kernel command line or the image"
                    .into(),
            });
        }
        let good = prune(&mut Vec::new(), &table, &layer.source, &mut problems);
        if !good.is_empty() {
            sources.push(layer.source.clone());
        }
        overlay(&mut merged, good);
    }
    if let Some(lg) = &lg_table {
        let mut used = false;
        for p in problems.iter().filter(|p| !p.key.is_empty()) {
            if let Some(v) = lookup(lg, &p.key) {
                let path: Vec<String> = p.key.split('.').map(str::to_string).collect();
                overlay(&mut merged, wrap(&path, v.clone()));
                used = true;
            }
        }
        if used && !sources.iter().any(|s| s == LAST_GOOD) {
            sources.push(LAST_GOOD.to_string());
        }
    }
    let config = match MachineConfig::deserialize(toml::Value::Table(merged)) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem {
                source: "merge".into(),
                key: String::new(),
                message: e.message().to_string(),
            });
            last_good.cloned().unwrap_or_default()
        }
    };
    Merged {
        config,
        sources,
        problems,
        notes,
    }
}

/// The cmdline layer: `kiln.config=<base64 TOML>` overlaid with `kiln.hostname=`.
pub fn cmdline_layer(c: &Cmdline) -> Option<Layer> {
    let cfg = c.get("kiln.config");
    let host = c.get("kiln.hostname");
    if cfg.is_none() && host.is_none() {
        return None;
    }
    let mut layer = match cfg {
        Some(b64) => match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
            Ok(bytes) => Layer::from_toml(CMDLINE, &String::from_utf8_lossy(&bytes)),
            Err(e) => Layer {
                source: CMDLINE.into(),
                content: Err(format!("kiln.config is not base64: {e}")),
                notes: vec![],
            },
        },
        None => Layer::from_table(CMDLINE, toml::Table::new()),
    };
    if let Some(h) = host {
        match &mut layer.content {
            Ok(t) => {
                t.insert("hostname".into(), toml::Value::String(h.to_string()));
            }
            Err(_) => {
                // Keep the hostname even when kiln.config is broken: report both.
                return Some(layer);
            }
        }
    }
    Some(layer)
}

/// The most a configuration source file may hold (fw_cfg blob, NoCloud meta-data or
/// user-data): a machine config is a few KiB; anything near this is not one.
pub const MAX_SOURCE_BYTES: u64 = 1 << 20;

/// A source file's text, read no further than [`MAX_SOURCE_BYTES`]: None when there is no
/// such file (or it cannot be read), an error naming the file when it is larger.
pub fn read_capped(path: &Path) -> Option<Result<String, String>> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    if let Err(e) = f.take(MAX_SOURCE_BYTES + 1).read_to_end(&mut bytes) {
        return Some(Err(format!("reading {}: {e}", path.display())));
    }
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Some(Err(format!(
            "{} is larger than {} KiB; not read",
            path.display(),
            MAX_SOURCE_BYTES / 1024
        )));
    }
    Some(Ok(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The fw_cfg layer from `<fw_cfg>/by_name/opt/kiln/config/raw`.
pub fn fw_cfg_layer(fw_cfg_root: &Path) -> Option<Layer> {
    let raw = fw_cfg_root.join("by_name/opt/kiln/config/raw");
    Some(match read_capped(&raw)? {
        Ok(text) => Layer::from_toml(FW_CFG, &text),
        Err(why) => Layer {
            source: FW_CFG.into(),
            content: Err(why),
            notes: vec![],
        },
    })
}

fn yaml_scalar(v: &str) -> String {
    let v = v.trim();
    let v = v.split(" #").next().unwrap_or(v).trim();
    v.trim_matches(|c| c == '"' || c == '\'').to_string()
}

/// The NoCloud layer from the files of a `cidata` volume. meta-data `local-hostname`,
/// then user-data: Kiln TOML after a `#kiln-config` line, or `#cloud-config` whose
/// `hostname`/`fqdn` are honoured and every other top-level key reported as ignored.
pub fn nocloud_layer(meta_data: Option<&str>, user_data: Option<&str>) -> Option<Layer> {
    if meta_data.is_none() && user_data.is_none() {
        return None;
    }
    let mut table = toml::Table::new();
    let mut notes = Vec::new();
    for line in meta_data.unwrap_or("").lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "local-hostname" => {
                    table.insert("hostname".into(), toml::Value::String(yaml_scalar(v)));
                }
                "instance-id" => notes.push(format!("instance-id {}", yaml_scalar(v))),
                _ => {}
            }
        }
    }
    let Some(ud) = user_data else {
        return Some(Layer {
            source: NOCLOUD.into(),
            content: Ok(table),
            notes,
        });
    };
    let first = ud.lines().next().unwrap_or("").trim();
    if first == "#kiln-config" {
        let body: String = ud.lines().skip(1).collect::<Vec<_>>().join("\n");
        let mut layer = Layer::from_toml(NOCLOUD, &body);
        if let Ok(t) = &mut layer.content {
            let mut base = table;
            overlay(&mut base, std::mem::take(t));
            *t = base;
        }
        layer.notes = notes;
        return Some(layer);
    }
    if first.starts_with("#cloud-config") {
        let (mut hostname, mut fqdn) = (None, None);
        for line in ud.lines().skip(1) {
            if line.starts_with([' ', '\t', '-', '#']) || line.trim().is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            match k.trim() {
                "hostname" => hostname = Some(yaml_scalar(v)),
                "fqdn" => fqdn = Some(yaml_scalar(v)),
                other => notes.push(format!("cloud-config key {other:?} ignored")),
            }
        }
        if let Some(h) = fqdn.or(hostname) {
            table.insert("hostname".into(), toml::Value::String(h));
        }
    } else if !first.is_empty() {
        notes.push("user-data is neither #kiln-config nor #cloud-config; ignored".into());
    }
    Some(Layer {
        source: NOCLOUD.into(),
        content: Ok(table),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn later_sources_win_key_by_key() {
        let layers = vec![
            Layer::from_toml(
                DEFAULT,
                "hostname = \"kiln\"\n[kubernetes]\ncluster-domain = \"corp.local\"",
            ),
            Layer::from_toml(FW_CFG, "[kubernetes]\npod-cidr = \"10.42.0.0/16\""),
            nocloud_layer(Some("instance-id: i-1\nlocal-hostname: from-meta\n"), None).unwrap(),
            cmdline_layer(&Cmdline::parse("kiln.hostname=from-cmdline")).unwrap(),
        ];
        let m = merge(&layers, None);
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(m.config.hostname.unwrap().as_str(), "from-cmdline");
        assert_eq!(m.config.kubernetes.pod_cidr.to_string(), "10.42.0.0/16");
        assert_eq!(m.config.kubernetes.cluster_domain.as_str(), "corp.local");
        assert_eq!(m.config.kubernetes.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(m.sources, vec![DEFAULT, FW_CFG, NOCLOUD, CMDLINE]);
        assert!(m.notes.iter().any(|n| n.contains("i-1")));
    }

    #[test]
    fn invalid_keys_are_reported_and_fall_back() {
        let layers = vec![
            Layer::from_toml(DEFAULT, "hostname = \"kiln\""),
            Layer::from_toml(FW_CFG, "hostname = \"bad_name\"\n[kubernetes]\nservice-cidr = \"10.96.0.0/99\"\npod-cidr = \"10.1.0.0/16\"\nbogus = 1"),
            Layer::from_toml(NOCLOUD, "this is = not toml ["),
        ];
        let m = merge(&layers, None);
        let keys: Vec<(&str, &str)> = m
            .problems
            .iter()
            .map(|p| (p.source.as_str(), p.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (FW_CFG, "hostname"),
                (FW_CFG, "kubernetes.bogus"),
                (FW_CFG, "kubernetes.service-cidr"),
                (NOCLOUD, ""),
            ]
        );
        assert!(
            m.problems[0].message.contains("bad_name"),
            "{}",
            m.problems[0]
        );
        // Bad values fall back to the lower layer / default; good sibling keys survive.
        assert_eq!(m.config.hostname.unwrap().as_str(), "kiln");
        assert_eq!(m.config.kubernetes.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(m.config.kubernetes.pod_cidr.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn last_good_wins_over_defaults_for_invalid_keys() {
        let last = MachineConfig::from_toml(
            "hostname = \"remembered\"\n[network.interfaces.eth0]\nmtu = 9000",
        )
        .unwrap();
        let layers = vec![
            Layer::from_toml(DEFAULT, "hostname = \"kiln\""),
            Layer::from_toml(
                CMDLINE,
                "hostname = \"-nope\"\n[network.interfaces.eth0]\nmtu = 5\ndhcp = true",
            ),
        ];
        let m = merge(&layers, Some(&last));
        assert_eq!(m.config.hostname.as_ref().unwrap().as_str(), "remembered");
        let eth0 = &m.config.network.interfaces["eth0"];
        assert_eq!(eth0.mtu.map(u32::from), Some(9000));
        assert_eq!(eth0.dhcp, Some(true));
        assert_eq!(
            m.problems
                .iter()
                .map(|p| p.key.as_str())
                .collect::<Vec<_>>(),
            ["hostname", "network.interfaces.eth0.mtu"]
        );
        assert_eq!(m.sources.last().map(String::as_str), Some(LAST_GOOD));
    }

    #[test]
    fn cmdline_config_is_base64_toml_and_hostname_overrides_it() {
        let c = Cmdline::parse(&format!(
            "kiln.config={} kiln.hostname=final",
            b64("hostname = \"inner\"\n[kubernetes]\npod-cidr = \"10.9.0.0/16\"")
        ));
        let m = merge(&[cmdline_layer(&c).unwrap()], None);
        assert_eq!(m.config.hostname.unwrap().as_str(), "final");
        assert_eq!(m.config.kubernetes.pod_cidr.to_string(), "10.9.0.0/16");
        let bad = cmdline_layer(&Cmdline::parse("kiln.config=!!!")).unwrap();
        let m = merge(&[bad], None);
        assert_eq!(m.problems.len(), 1);
        assert!(m.problems[0].message.contains("base64"));
        assert!(cmdline_layer(&Cmdline::parse("quiet")).is_none());
    }

    #[test]
    fn nocloud_cloud_config_and_kiln_config() {
        let l = nocloud_layer(
            Some("local-hostname: meta\n"),
            Some("#cloud-config\nhostname: web\nfqdn: web.example.com\npackages:\n  - vim\nusers: []\n"),
        )
        .unwrap();
        let m = merge(&[l], None);
        assert_eq!(m.config.hostname.unwrap().as_str(), "web.example.com");
        assert_eq!(m.notes.len(), 2);
        assert!(m.notes[0].contains("\"packages\" ignored"));
        let l = nocloud_layer(
            Some("local-hostname: meta\n"),
            Some("#cloud-config\nhostname: 'web'\n"),
        )
        .unwrap();
        assert_eq!(merge(&[l], None).config.hostname.unwrap().as_str(), "web");
        let l = nocloud_layer(
            Some("local-hostname: meta"),
            Some("#kiln-config\n[kubernetes]\ncluster-domain = \"k.test\"\n"),
        )
        .unwrap();
        let m = merge(&[l], None);
        assert_eq!(m.config.hostname.unwrap().as_str(), "meta");
        assert_eq!(m.config.kubernetes.cluster_domain.as_str(), "k.test");
        assert!(nocloud_layer(None, None).is_none());
    }

    #[test]
    fn fw_cfg_reads_the_sysfs_raw_file() {
        let t = tempfile::tempdir().unwrap();
        assert!(fw_cfg_layer(t.path()).is_none());
        let d = t.path().join("by_name/opt/kiln/config");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("raw"), "hostname = \"fw\"").unwrap();
        let m = merge(&[fw_cfg_layer(t.path()).unwrap()], None);
        assert_eq!(m.config.hostname.unwrap().as_str(), "fw");
    }

    #[test]
    fn secrets_only_from_the_operators_channels_and_only_whole_and_matching() {
        let secrets = crate::pki::Secrets::generate(1_700_000_000).unwrap();
        let section = format!("\n{}", secrets.to_toml().unwrap()).replace("\n[", "\n[secrets.");
        // From the kernel command line or the image: refused, named.
        for source in [CMDLINE, DEFAULT] {
            let m = merge(&[Layer::from_toml(source, &section)], None);
            assert_eq!(m.config.secrets, None, "{source}");
            assert!(
                m.problems
                    .iter()
                    .any(|p| p.key == "secrets" && p.message.contains("never from the kernel")),
                "{source}: {:?}",
                m.problems
            );
        }
        // From fw_cfg: taken.
        let m = merge(&[Layer::from_toml(FW_CFG, &section)], None);
        assert_eq!(m.config.secrets.as_ref(), Some(&secrets));
        // A CA key swapped for another: one problem for the section, nothing of it kept,
        // and the last good secrets stand.
        let other = crate::pki::Secrets::generate(1_700_000_000).unwrap();
        let mut mixed = secrets.clone();
        mixed.ca.key = other.ca.key;
        let bad = format!("\n{}", mixed.to_toml().unwrap()).replace("\n[", "\n[secrets.");
        let m = merge(&[Layer::from_toml(FW_CFG, &bad)], None);
        assert_eq!(m.config.secrets, None);
        let keys: Vec<&str> = m.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["secrets"], "{:?}", m.problems);
        let good = MachineConfig {
            secrets: Some(secrets.clone()),
            ..MachineConfig::default()
        };
        let m = merge(&[Layer::from_toml(FW_CFG, &bad)], Some(&good));
        assert_eq!(m.config.secrets.as_ref(), Some(&secrets));
    }

    #[test]
    fn an_oversized_source_is_not_read_and_the_last_good_config_stands() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("by_name/opt/kiln/config");
        std::fs::create_dir_all(&d).unwrap();
        // Valid TOML that would set the hostname, padded past the cap with a comment.
        let mut text = "hostname = \"huge\"\n#".to_string();
        text.push_str(&"x".repeat(MAX_SOURCE_BYTES as usize));
        std::fs::write(d.join("raw"), &text).unwrap();
        let layer = fw_cfg_layer(t.path()).unwrap();
        let why = layer.content.as_ref().unwrap_err();
        assert!(why.contains("larger than 1024 KiB"), "{why}");
        let good = MachineConfig::from_toml("hostname = \"good\"").unwrap();
        let m = merge(std::slice::from_ref(&layer), Some(&good));
        assert_eq!(m.config.hostname.unwrap().as_str(), "good");
        assert!(!m.problems.is_empty());
        assert!(m.sources.iter().any(|s| s == LAST_GOOD), "{:?}", m.sources);
        // A source above the broken one still wins over what the last good config said.
        let above = Layer::from_toml(CMDLINE, "hostname = \"above\"");
        let m = merge(&[layer, above], Some(&good));
        assert_eq!(m.config.hostname.unwrap().as_str(), "above");
        // Exactly at the cap still reads.
        std::fs::write(d.join("raw"), &text[..MAX_SOURCE_BYTES as usize]).unwrap();
        assert!(fw_cfg_layer(t.path()).unwrap().content.is_ok());
    }
}
