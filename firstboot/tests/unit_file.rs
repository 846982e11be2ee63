//! The shipped firstboot.service, checked by systemd's own parser.

use std::process::Command;

const UNIT: &str = include_str!("../units/firstboot.service");

#[test]
fn unit_declares_the_contract() {
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/firstboot agent",
        "Restart=always",
        "WatchdogSec=10",
        "KillMode=process",
        "WantedBy=multi-user.target",
    ] {
        assert!(UNIT.lines().any(|l| l == line), "missing {line}");
    }
    // READY=1 waits for an address: ordering before networkd would deadlock the boot.
    assert!(!UNIT
        .lines()
        .any(|l| l.starts_with("Before=") && l.contains("systemd-networkd.service")));
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: no systemd-analyze");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // The binary is not installed here: point ExecStart at one that exists.
    let unit = UNIT.replace("/usr/bin/firstboot agent", "/bin/true agent");
    let path = t.path().join("firstboot.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("firstboot.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}
