//! Network: systemd-networkd files generated from `[network]`, and waiting for an address.
//!
//! Every ethernet link gets DHCP by default; an `[network.interfaces.<name|MAC>]` entry gets
//! its own file (`10-kiln-*`), matched first: networkd uses the first file in lexical order
//! that matches. The default (`60-kiln-*`) stays below 70, ahead of the distribution's `80-*`.
//! The files go to /run/systemd/network, so each boot (and each config change) replaces them.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::config::{Interface, Network, Selector};

/// Where the generated files go.
pub const NETWORK_DIR: &str = "/run/systemd/network";
/// Every generated file name starts with this (after the ordering number).
const MARK: &str = "-kiln-";

/// Errors from writing the networkd files.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("removing stale {path}: {source}")]
    Remove {
        path: String,
        source: std::io::Error,
    },
}

fn file_key(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn is_default_route(r: &crate::config::Route) -> bool {
    r.to.prefix() == 0
}

fn interface_file(key: &str, i: &Interface) -> String {
    let mut s = String::from("[Match]\n");
    match Selector::of(key) {
        Selector::Mac(mac) => {
            // Bridges and VLANs can share the MAC of their port: match the device only.
            let _ = writeln!(s, "MACAddress={mac}\nKind=!*");
        }
        Selector::Name(name) => {
            let _ = writeln!(s, "Name={name}");
        }
    }
    if let Some(mtu) = i.mtu {
        let _ = writeln!(s, "\n[Link]\nMTUBytes={}", u32::from(mtu));
    }
    let dhcp = i.dhcp.unwrap_or(i.addresses.is_empty());
    let _ = writeln!(s, "\n[Network]\nDHCP={}", if dhcp { "yes" } else { "no" });
    for a in &i.addresses {
        let _ = writeln!(s, "Address={a}");
    }
    for r in i.routes.iter().filter(|r| is_default_route(r)) {
        let _ = writeln!(s, "Gateway={}", r.via);
    }
    for d in &i.dns {
        let _ = writeln!(s, "DNS={d}");
    }
    for r in i.routes.iter().filter(|r| !is_default_route(r)) {
        let _ = writeln!(s, "\n[Route]\nDestination={}\nGateway={}", r.to, r.via);
    }
    s
}

/// The networkd files for `net`: (file name, contents), sorted by name.
pub fn networkd_files(net: &Network) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = net
        .interfaces
        .iter()
        .map(|(k, i)| {
            (
                format!("10{MARK}{}.network", file_key(k)),
                interface_file(k, i),
            )
        })
        .collect();
    // Physical ethernet only: `Kind=!*` leaves out veth, bridges, VLANs and tunnels
    // (Kubernetes creates many veths; they must not run DHCP).
    out.push((
        format!("60{MARK}ether-dhcp.network"),
        "[Match]\nType=ether\nKind=!*\n\n[Network]\nDHCP=yes\n".to_string(),
    ));
    out.sort();
    out
}

/// Replaces the generated files in `dir` with `files` (each written to a temp name and
/// renamed). Returns whether anything changed.
pub fn write_files(dir: &Path, files: &[(String, String)]) -> Result<bool, NetworkError> {
    let werr = |p: &Path| {
        let path = p.display().to_string();
        move |source| NetworkError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let mut changed = false;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(MARK) && !files.iter().any(|(n, _)| *n == name) {
                std::fs::remove_file(e.path()).map_err(|source| NetworkError::Remove {
                    path: e.path().display().to_string(),
                    source,
                })?;
                changed = true;
            }
        }
    }
    for (name, text) in files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == *text) {
            continue;
        }
        crate::atomic::Replace::runtime(0o644)
            .write(&path, text.as_bytes())
            .map_err(werr(&path))?;
        changed = true;
    }
    Ok(changed)
}

/// One link of `ip -j addr show`.
#[derive(Debug, Clone, Deserialize)]
pub struct IpLink {
    pub ifname: String,
    #[serde(default)]
    pub operstate: String,
    #[serde(default)]
    pub addr_info: Vec<IpAddrInfo>,
}

/// One address of a link in `ip -j addr show`.
#[derive(Debug, Clone, Deserialize)]
pub struct IpAddrInfo {
    pub family: String,
    pub local: String,
    pub prefixlen: u8,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub tentative: bool,
}

/// Parses `ip -j addr show` output.
pub fn parse_ip_addr(json: &str) -> Result<Vec<IpLink>, serde_json::Error> {
    serde_json::from_str(json)
}

/// The routable addresses (global scope, not tentative, not on `lo`), as `ifname addr/len`.
pub fn routable_addresses(links: &[IpLink]) -> Vec<String> {
    links
        .iter()
        .filter(|l| l.ifname != "lo")
        .flat_map(|l| {
            l.addr_info
                .iter()
                .filter(|a| a.scope == "global" && !a.tentative)
                .map(move |a| format!("{} {}/{}", l.ifname, a.local, a.prefixlen))
        })
        .collect()
}

/// Runs `ip -j addr show` and gives the routable addresses (empty when `ip` fails).
pub fn current_addresses() -> Vec<String> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-j", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    parse_ip_addr(&String::from_utf8_lossy(&out.stdout))
        .map(|l| routable_addresses(&l))
        .unwrap_or_default()
}

/// Asks a running networkd to re-read its files. Best effort: before networkd starts this
/// fails, and networkd reads the files when it starts.
pub fn reload_networkd() -> bool {
    std::process::Command::new("networkctl")
        .arg("reload")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MachineConfig;

    fn net(toml: &str) -> Network {
        MachineConfig::from_toml(toml).unwrap().network
    }

    #[test]
    fn default_is_dhcp_on_every_physical_ethernet_link() {
        let files = networkd_files(&Network::default());
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "60-kiln-ether-dhcp.network");
        assert_eq!(
            files[0].1,
            "[Match]\nType=ether\nKind=!*\n\n[Network]\nDHCP=yes\n"
        );
    }

    #[test]
    fn static_interface_by_name_and_dhcp_by_mac() {
        let files = networkd_files(&net(r#"
[network.interfaces.eth1]
addresses = ["192.168.1.10/24", "fd00::10/64"]
routes = [{ to = "0.0.0.0/0", via = "192.168.1.1" }, { to = "10.8.0.0/16", via = "192.168.1.254" }]
dns = ["192.168.1.1", "fd00::53"]
mtu = 9000
[network.interfaces."52:54:00:AB:cd:ef"]
mtu = 1400
"#));
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "10-kiln-52-54-00-AB-cd-ef.network",
                "10-kiln-eth1.network",
                "60-kiln-ether-dhcp.network"
            ]
        );
        assert_eq!(
            files[0].1,
            "[Match]\nMACAddress=52:54:00:ab:cd:ef\nKind=!*\n\n[Link]\nMTUBytes=1400\n\n[Network]\nDHCP=yes\n"
        );
        assert_eq!(
            files[1].1,
            "[Match]\nName=eth1\n\n[Link]\nMTUBytes=9000\n\n[Network]\nDHCP=no\n\
             Address=192.168.1.10/24\nAddress=fd00::10/64\nGateway=192.168.1.1\n\
             DNS=192.168.1.1\nDNS=fd00::53\n\n[Route]\nDestination=10.8.0.0/16\n\
             Gateway=192.168.1.254\n"
        );
        // Explicit dhcp = true with static addresses keeps DHCP on.
        let f = networkd_files(&net(
            "[network.interfaces.eth0]\ndhcp = true\naddresses = [\"10.0.0.2/8\"]",
        ));
        assert!(
            f[0].1.contains("DHCP=yes\nAddress=10.0.0.2/8\n"),
            "{}",
            f[0].1
        );
    }

    #[test]
    fn write_replaces_only_our_files_and_reports_changes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("50-admin.network"), "x").unwrap();
        std::fs::write(t.path().join("10-kiln-old.network"), "x").unwrap();
        let files = networkd_files(&Network::default());
        assert!(write_files(t.path(), &files).unwrap());
        let mut names: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["50-admin.network", "60-kiln-ether-dhcp.network"]);
        assert!(!write_files(t.path(), &files).unwrap());
    }

    #[test]
    fn parses_real_ip_json() {
        let fixture = include_str!("../tests/fixtures/ip-j-addr-show.json");
        let links = parse_ip_addr(fixture).unwrap();
        assert!(links.iter().any(|l| l.ifname == "lo"));
        let addrs = routable_addresses(&links);
        assert!(addrs.iter().all(|a| !a.starts_with("lo ")));
        // Live: this machine's own `ip`, cross-checked with /proc/net/if_inet6 for IPv6.
        let out = std::process::Command::new("ip")
            .args(["-j", "addr", "show"])
            .output()
            .unwrap();
        let live = parse_ip_addr(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let lo = live.iter().find(|l| l.ifname == "lo").unwrap();
        assert!(lo.addr_info.iter().any(|a| a.local == "127.0.0.1"));
        let proc6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        let global6 = proc6
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 6 && f[3] == "00" && f[5] != "lo"
            })
            .count();
        let ours6 = routable_addresses(&live)
            .iter()
            .filter(|a| a.contains(':'))
            .count();
        assert!(ours6 <= global6, "{ours6} > {global6}");
    }
}
