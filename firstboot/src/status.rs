//! `/run/kiln/status.json`: phases with timestamps (stage 1's merged in), config sources,
//! problems, addresses; rendered as a table by `firstboot status`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::pki::CertInfo;
use crate::stage1::Timings;

/// Phase names, in boot order.
pub const STAGE1_START: &str = "stage1-start";
pub const ROOT_MOUNTED: &str = "root-mounted";
pub const SWITCH_ROOT: &str = "switch-root";
pub const STAGE2_START: &str = "stage2-start";
pub const CONFIG_LOADED: &str = "config-loaded";
pub const HOSTNAME_SET: &str = "hostname-set";
pub const NETWORK_UP: &str = "network-up";

/// One phase reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Phase {
    pub name: String,
    /// CLOCK_MONOTONIC milliseconds (time since boot).
    pub monotonic_ms: u64,
    /// Wall clock, Unix milliseconds (for stage 1 phases: derived from the monotonic time).
    pub unix_ms: u64,
}

/// What `firstboot status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct Status {
    pub hostname: String,
    /// Config sources that contributed, in precedence order.
    pub sources: Vec<String>,
    /// Config problems and failed steps.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
    /// Routable addresses, `ifname addr/len`.
    pub addresses: Vec<String>,
    /// Whether this boot ran the first-boot-only steps.
    pub first_boot: bool,
    pub phases: Vec<Phase>,
    /// Stage 1's record, as written to /run/kiln/stage1.json.
    pub stage1: Option<Timings>,
    /// The agent's peak resident set (VmHWM, KiB) when it printed its summary.
    pub rss_hwm_kib: Option<u64>,
    /// Node mode: each supervised component (state, restarts, last probe).
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub components: serde_json::Value,
    /// The certificates under the PKI directory, added by `firstboot status` when it reads
    /// them (not written by the agent).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertInfo>,
    /// Why the certificates could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificates_error: Option<String>,
}

/// A clock reading: monotonic and wall milliseconds taken together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub monotonic_ms: u64,
    pub unix_ms: u64,
}

impl Now {
    /// The wall time of an earlier monotonic reading.
    fn wall_of(&self, monotonic_ms: u64) -> u64 {
        self.unix_ms
            .saturating_sub(self.monotonic_ms.saturating_sub(monotonic_ms))
    }
}

/// Wall clock now, Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Status {
    /// A status for stage 2, starting with stage 1's phases.
    pub fn new(stage1: Option<Timings>, now: Now) -> Status {
        let mut s = Status::default();
        if let Some(t) = &stage1 {
            for (name, at) in [
                (STAGE1_START, t.start),
                (ROOT_MOUNTED, t.root_mounted),
                (SWITCH_ROOT, t.switch_root),
            ] {
                s.phases.push(Phase {
                    name: name.into(),
                    monotonic_ms: at,
                    unix_ms: now.wall_of(at),
                });
            }
        }
        s.stage1 = stage1;
        s
    }

    /// Records `name` as reached at `now` (again: the new time replaces the old).
    pub fn phase(&mut self, name: &str, now: Now) {
        self.phases.retain(|p| p.name != name);
        self.phases.push(Phase {
            name: name.into(),
            monotonic_ms: now.monotonic_ms,
            unix_ms: now.unix_ms,
        });
    }

    /// Writes the JSON to `path` atomically (a runtime file: under /run).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        crate::atomic::Replace::runtime(0o644).write(path, (json + "\n").as_bytes())
    }

    /// Fills `certificates` from the PKI directory `dir`, or `certificates_error` with why
    /// they could not be read.
    pub fn read_certificates(&mut self, dir: &Path) {
        match crate::pki::Pki::certs(dir) {
            Ok(certs) => {
                self.certificates = certs;
                self.certificates_error = None;
            }
            Err(e) => {
                self.certificates = Vec::new();
                self.certificates_error = Some(format!("{e:#}"));
            }
        }
    }

    /// The boot summary: one line, then one per problem.
    pub fn summary(&self) -> Vec<String> {
        let or_none = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut out = vec![format!(
            "kiln: hostname {}, addresses {}, sources {}, {} problem{}",
            self.hostname,
            or_none(&self.addresses),
            or_none(&self.sources),
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )];
        out.extend(self.problems.iter().map(|p| format!("kiln: problem: {p}")));
        out
    }

    /// Milliseconds from phase `from` to phase `to`, if both were reached in that order.
    pub fn between(&self, from: &str, to: &str) -> Option<u64> {
        let at = |n: &str| {
            self.phases
                .iter()
                .find(|p| p.name == n)
                .map(|p| p.monotonic_ms)
        };
        at(to)?.checked_sub(at(from)?)
    }

    /// The timings line on the console, for hosts that have no shell on the machine:
    /// `kiln: timings stage1-ms=N stage2-to-hostname-ms=N stage2-to-network-ms=N
    /// boot-to-hostname-ms=N stage1-rss-hwm-kib=N rss-hwm-kib=N`, `-` for a figure not
    /// known. `boot-to-hostname-ms` is the monotonic clock (since the kernel started) at
    /// hostname-set.
    pub fn timings_line(&self) -> String {
        let f = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        format!(
            "kiln: timings stage1-ms={} stage2-to-hostname-ms={} stage2-to-network-ms={} boot-to-hostname-ms={} stage1-rss-hwm-kib={} rss-hwm-kib={}",
            f(self.between(STAGE1_START, SWITCH_ROOT)),
            f(self.between(STAGE2_START, HOSTNAME_SET)),
            f(self.between(STAGE2_START, NETWORK_UP)),
            f(self.phases.iter().find(|p| p.name == HOSTNAME_SET).map(|p| p.monotonic_ms)),
            f(self.stage1.as_ref().and_then(|t| t.rss_hwm_kib)),
            f(self.rss_hwm_kib),
        )
    }

    /// The table `firstboot status` prints.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(s, "{:<14}{}", "hostname", self.hostname);
        let _ = writeln!(s, "{:<14}{}", "addresses", list(&self.addresses));
        let _ = writeln!(s, "{:<14}{}", "sources", list(&self.sources));
        let _ = writeln!(
            s,
            "{:<14}{}",
            "first boot",
            if self.first_boot { "yes" } else { "no" }
        );
        if let Some(t) = &self.stage1 {
            let _ = writeln!(s, "{:<14}{}, /var {}", "root", t.root, t.var);
        }
        let _ = writeln!(s, "{:<14}{}", "problems", self.problems.len());
        for p in &self.problems {
            let _ = writeln!(s, "  {p}");
        }
        let _ = writeln!(s, "\n{:<16}{:>12}  WALL CLOCK (UTC)", "PHASE", "SINCE BOOT");
        for p in &self.phases {
            let _ = writeln!(
                s,
                "{:<16}{:>9} ms  {}",
                p.name,
                p.monotonic_ms,
                crate::utc::millis(p.unix_ms)
            );
        }
        if let Some(rows) = self.components.as_array() {
            let _ = writeln!(
                s,
                "\n{:<25}{:<10}{:>8}{:>10}  {:<12}LAST FAILURE",
                "COMPONENT", "STATE", "PID", "RESTARTS", "LAST PROBE"
            );
            for c in rows {
                let text = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("-");
                let num = |k: &str| {
                    c.get(k)
                        .and_then(serde_json::Value::as_i64)
                        .map_or_else(|| "-".to_string(), |v| v.to_string())
                };
                let probe = match c.get("last_probe_ok").and_then(serde_json::Value::as_bool) {
                    Some(true) => "ok",
                    Some(false) => "failed",
                    None => "-",
                };
                let _ = writeln!(
                    s,
                    "{:<25}{:<10}{:>8}{:>10}  {:<12}{}",
                    text("name"),
                    text("state"),
                    num("pid"),
                    num("restarts"),
                    probe,
                    text("last_failure")
                );
                if probe == "failed" {
                    if let Some(e) = c.get("last_probe_error").and_then(|v| v.as_str()) {
                        let _ = writeln!(s, "  probe: {e}");
                    }
                }
            }
        }
        if !self.certificates.is_empty() || self.certificates_error.is_some() {
            let _ = writeln!(
                s,
                "\n{:<36}{:<40}NOT AFTER (UTC)",
                "CERTIFICATE", "SUBJECT CN"
            );
            let mut certs: Vec<&CertInfo> = self.certificates.iter().collect();
            // The first to expire first.
            certs.sort_by(|a, b| (a.not_after, &a.file).cmp(&(b.not_after, &b.file)));
            for c in certs {
                let when = u64::try_from(c.not_after).map_or_else(
                    |_| c.not_after_rfc3339.clone(),
                    |t| crate::utc::millis(t * 1000),
                );
                let _ = writeln!(s, "{:<36}{:<40}{}", c.file, c.subject_cn, when);
            }
            if let Some(e) = &self.certificates_error {
                let _ = writeln!(s, "  (reading certificates: {e})");
            }
        }
        s
    }
}

/// Reads stage 1's record, if it is there and parses.
pub fn read_stage1(path: &Path) -> Option<Timings> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage1_phases_are_merged_with_derived_wall_times() {
        let t = Timings {
            start: 1_000,
            root_mounted: 2_500,
            switch_root: 3_000,
            root: "slot-a".into(),
            ..Timings::default()
        };
        let now = Now {
            monotonic_ms: 10_000,
            unix_ms: 1_700_000_010_000,
        };
        let mut s = Status::new(Some(t), now);
        s.phase(STAGE2_START, now);
        s.phase(
            CONFIG_LOADED,
            Now {
                monotonic_ms: 10_200,
                unix_ms: 1_700_000_010_200,
            },
        );
        let names: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                STAGE1_START,
                ROOT_MOUNTED,
                SWITCH_ROOT,
                STAGE2_START,
                CONFIG_LOADED
            ]
        );
        assert_eq!(s.phases[0].unix_ms, 1_700_000_001_000);
        assert_eq!(s.phases[2].unix_ms, 1_700_000_003_000);
        // A phase reached again (agent restarted) keeps only the latest time.
        s.phase(
            STAGE2_START,
            Now {
                monotonic_ms: 20_000,
                unix_ms: 1,
            },
        );
        assert_eq!(
            s.phases.iter().filter(|p| p.name == STAGE2_START).count(),
            1
        );
        assert_eq!(s.phases.last().unwrap().monotonic_ms, 20_000);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/kiln/status.json");
        s.write(&path).unwrap();
        let back: Status = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, s);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["status.json"], "a temp file was left");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["phases"][0]["monotonic-ms"], 1000);
        assert_eq!(v["stage1"]["root"], "slot-a");
    }

    #[test]
    fn summary_and_table() {
        let mut s = Status::new(
            None,
            Now {
                monotonic_ms: 0,
                unix_ms: 0,
            },
        );
        s.hostname = "node1".into();
        s.addresses = vec!["eth0 10.0.2.15/24".into()];
        s.sources = vec!["default".into(), "nocloud".into()];
        s.problems = vec!["fw_cfg: hostname: bad".into()];
        s.phase(
            NETWORK_UP,
            Now {
                monotonic_ms: 4321,
                unix_ms: 1_700_000_000_123,
            },
        );
        assert_eq!(
            s.summary(),
            [
                "kiln: hostname node1, addresses eth0 10.0.2.15/24, sources default, nocloud, 1 problem",
                "kiln: problem: fw_cfg: hostname: bad"
            ]
        );
        let table = s.table();
        assert!(table.contains("hostname      node1\n"), "{table}");
        assert!(
            table.contains("network-up           4321 ms  2023-11-14T22:13:20.123Z"),
            "{table}"
        );
    }

    fn at(monotonic_ms: u64) -> Now {
        Now {
            monotonic_ms,
            unix_ms: 1_700_000_000_000 + monotonic_ms,
        }
    }

    #[test]
    fn timings_line_from_phases_and_peaks() {
        let t = Timings {
            start: 1_200,
            root_mounted: 1_900,
            switch_root: 2_450,
            rss_hwm_kib: Some(2_112),
            ..Timings::default()
        };
        let mut s = Status::new(Some(t), at(9_000));
        s.phase(STAGE2_START, at(9_000));
        s.phase(CONFIG_LOADED, at(9_040));
        s.phase(HOSTNAME_SET, at(9_047));
        s.phase(NETWORK_UP, at(12_500));
        s.rss_hwm_kib = Some(3_968);
        assert_eq!(s.between(STAGE1_START, SWITCH_ROOT), Some(1_250));
        assert_eq!(
            s.timings_line(),
            "kiln: timings stage1-ms=1250 stage2-to-hostname-ms=47 stage2-to-network-ms=3500 boot-to-hostname-ms=9047 stage1-rss-hwm-kib=2112 rss-hwm-kib=3968"
        );
        // No network, no stage 1 record, no peak: the figures not known are `-`.
        let mut s = Status::new(None, at(500));
        s.phase(STAGE2_START, at(500));
        s.phase(HOSTNAME_SET, at(530));
        assert_eq!(s.between(STAGE2_START, NETWORK_UP), None);
        assert_eq!(
            s.timings_line(),
            "kiln: timings stage1-ms=- stage2-to-hostname-ms=30 stage2-to-network-ms=- boot-to-hostname-ms=530 stage1-rss-hwm-kib=- rss-hwm-kib=-"
        );
        // A phase recorded before the one it is measured from (agent restarted) is no figure.
        s.phase(STAGE2_START, at(800));
        assert_eq!(s.between(STAGE2_START, HOSTNAME_SET), None);
    }

    fn cert(file: &str, cn: &str, not_after: i64) -> CertInfo {
        CertInfo {
            file: file.into(),
            subject: format!("CN={cn}"),
            subject_cn: cn.into(),
            issuer: "CN=kiln-ca".into(),
            not_after,
            not_after_rfc3339: String::new(),
        }
    }

    #[test]
    fn table_shows_components_and_certificates_by_expiry() {
        let mut s = Status::new(None, at(0));
        s.components = serde_json::json!([
            {"name": "etcd", "state": "running", "ready": true, "restarts": 0, "pid": 4242,
             "last_probe_ok": true, "last_exit": null, "last_probe_error": null},
            {"name": "kube-scheduler", "state": "backoff", "ready": false, "restarts": 7,
             "pid": null, "last_probe_ok": false, "last_exit": 1,
             "last_probe_error": "connecting to https://127.0.0.1:10259/readyz",
             "last_failure": "exited with status 1"},
        ]);
        s.certificates = vec![
            cert("etcd/server.crt", "kiln-host", 1_821_536_000),
            cert("ca.crt", "kubernetes", 2_105_360_000),
            cert("apiserver.crt", "kube-apiserver", 1_821_536_000),
        ];
        let table = s.table();
        let lines: Vec<&str> = table.lines().collect();
        let row = |needle: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no row {needle}:\n{table}"))
        };
        let words = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(
            words(row("etcd ")),
            ["etcd", "running", "4242", "0", "ok", "-"]
        );
        let k = row("kube-scheduler");
        assert_eq!(
            words(k),
            [
                "kube-scheduler",
                "backoff",
                "-",
                "7",
                "failed",
                "exited",
                "with",
                "status",
                "1"
            ]
        );
        assert_eq!(
            lines[k + 1],
            "  probe: connecting to https://127.0.0.1:10259/readyz"
        );
        assert!(row("COMPONENT") < row("etcd "));
        // Soonest expiry first, ties by file; the date is the notAfter (date(1) checks
        // rfc3339 above).
        let (a, e, c) = (row("apiserver.crt"), row("etcd/server.crt"), row("ca.crt"));
        assert!(row("CERTIFICATE") < a && a < e && e < c, "{table}");
        assert_eq!(
            words(e),
            [
                "etcd/server.crt",
                "kiln-host",
                &crate::utc::millis(1_821_536_000_000)
            ]
        );
        assert_eq!(
            words(c),
            [
                "ca.crt",
                "kubernetes",
                &crate::utc::millis(2_105_360_000_000)
            ]
        );
        // No components, no certificates: no such sections.
        let plain = Status::new(None, at(0)).table();
        assert!(
            !plain.contains("COMPONENT") && !plain.contains("CERTIFICATE"),
            "{plain}"
        );
        // --json carries the certificates next to the existing fields.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["certificates"][1]["subject_cn"], "kubernetes");
        assert_eq!(v["components"][0]["name"], "etcd");
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
    }

    #[test]
    fn certificates_of_a_generated_pki_with_openssl_as_oracle() {
        let dir = tempfile::tempdir().unwrap();
        let params = crate::pki::PkiParams {
            hostname: "node-1".into(),
            node_ips: vec!["10.0.2.15".parse().unwrap()],
            service_ip: "10.96.0.1".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            server: "https://127.0.0.1:6443".into(),
            now: 1_790_000_000,
        };
        crate::pki::Pki::ensure(dir.path(), &params, None).unwrap();
        let certs = crate::pki::Pki::certs(dir.path()).unwrap();
        assert!(certs.len() > 10, "{certs:?}");
        for c in &certs {
            let out = std::process::Command::new("openssl")
                .args([
                    "x509", "-noout", "-subject", "-enddate", "-dateopt", "iso_8601",
                ])
                .args(["-nameopt", "multiline", "-in"])
                .arg(dir.path().join(&c.file))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let cn = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("commonName"))
                .map(|v| v.trim().trim_start_matches('=').trim())
                .unwrap_or_default();
            assert_eq!(c.subject_cn, cn, "{}: {text}", c.file);
            // notAfter=2027-09-21 13:46:40Z
            let end = text
                .lines()
                .find_map(|l| l.strip_prefix("notAfter="))
                .unwrap()
                .trim()
                .replace(' ', "T");
            let mut s = Status::new(None, at(0));
            s.certificates = vec![c.clone()];
            let table = s.table();
            let shown = table
                .lines()
                .find(|l| l.starts_with(&c.file))
                .unwrap()
                .split_whitespace()
                .last()
                .unwrap()
                .to_string();
            assert_eq!(shown.replace(".000Z", "Z"), end, "{}", c.file);
        }
        // No PKI directory (a machine without Kubernetes): no certificates, no error.
        assert!(crate::pki::Pki::certs(&dir.path().join("none"))
            .unwrap()
            .is_empty());
    }
}
