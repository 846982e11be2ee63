//! The minimal image on every boot path under QEMU (TCG): qcow2 with SeaBIOS and with
//! OVMF, the ISO as a CD with both, and PXE through QEMU's iPXE and user-mode TFTP.
//! Each must run firstboot's stage 1 and reach systemd. Plus the outputs checked by
//! external tools, and every output rebuilt byte-identical.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln_tests::boot::tool;
use kiln_tests::images::minimal;
use kiln_tests::qemu::{assert_cmdline, Firmware, UserNet, Vm, VmSpec};
use kiln_tests::{snapshot, text};

const BOOT: Duration = Duration::from_secs(480);

fn reaches_systemd(name: &str, spec: &VmSpec, cmdline_arg: &str) {
    let mut vm = Vm::start(spec).expect("qemu starts");
    eprintln!("{name}");
    let stage1 = vm.expect("kiln: stage 1 done", BOOT);
    let systemd = vm.expect("Reached target", BOOT);
    let serial = vm.serial();
    let cmdline = vm.line("Command line:").unwrap_or_default();
    assert_cmdline(name, &cmdline, &[cmdline_arg]);
    assert!(
        !serial.contains("kiln: stage 1 failed"),
        "{name}: {}",
        vm.tail(60)
    );
    eprintln!(
        "{name}: stage 1 done at {:.1} s, systemd target at {:.1} s",
        stage1.as_secs_f64(),
        systemd.as_secs_f64()
    );
}

#[test]
fn qcow2_with_seabios() {
    let b = minimal();
    let spec = VmSpec::new(Firmware::Bios).disk(&b.qcow2(), "qcow2", true);
    reaches_systemd("qcow2+SeaBIOS", &spec, "kiln.slot=a");
}

#[test]
fn qcow2_with_ovmf() {
    let b = minimal();
    let spec = VmSpec::new(Firmware::Uefi).disk(&b.qcow2(), "qcow2", true);
    reaches_systemd("qcow2+OVMF", &spec, "kiln.slot=a");
}

#[test]
fn iso_with_seabios() {
    let b = minimal();
    let spec = VmSpec::new(Firmware::Bios).cdrom(&b.iso());
    reaches_systemd("ISO+SeaBIOS", &spec, "kiln.root=iso");
}

#[test]
fn iso_with_ovmf() {
    let b = minimal();
    let spec = VmSpec::new(Firmware::Uefi).cdrom(&b.iso());
    reaches_systemd("ISO+OVMF", &spec, "kiln.root=iso");
}

#[test]
fn pxe_through_ipxe_and_tftp() {
    let b = minimal();
    let mut spec = VmSpec::new(Firmware::Bios).arg("-boot").arg("n");
    spec.memory_mib = 2048;
    spec.net = Some(UserNet {
        restrict: true,
        tftp: Some((b.pxe(), "boot.ipxe".into())),
        ..UserNet::default()
    });
    reaches_systemd("PXE", &spec, "kiln.root=embedded");
}

#[test]
fn outputs_pass_external_oracles() {
    let b = minimal();
    let raw = b.raw();
    let raw = raw.to_str().expect("utf8");
    let table: serde_json::Value =
        serde_json::from_str(&tool("sfdisk", &["--json", raw])).expect("sfdisk json");
    let parts = table["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions");
    let names: Vec<&str> = parts.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        ["BIOS", "ESP", "kiln-root-a", "kiln-root-b"],
        "{table}"
    );
    assert_eq!(table["partitiontable"]["label"], "gpt");
    let qcow2 = b.qcow2();
    let qcow2 = qcow2.to_str().expect("utf8");
    tool("qemu-img", &["check", qcow2]);
    let cmp = tool(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", raw, qcow2],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let iso = b.iso();
    let report = tool(
        "xorriso",
        &[
            "-indev",
            iso.to_str().expect("utf8"),
            "-report_el_torito",
            "plain",
        ],
    );
    assert!(
        report.contains("BIOS") && report.contains("UEFI"),
        "{report}"
    );
    // The root squashfs on the ISO: owners and modes as in the image.
    let tmp = tempfile::tempdir().expect("tmp");
    let sq = tmp.path().join("root.squashfs");
    let o = Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&iso)
        .args(["-extract", "/kiln/root.squashfs"])
        .arg(&sq)
        .output()
        .expect("xorriso");
    assert!(o.status.success(), "{}", text(&o));
    let listing = tool("unsquashfs", &["-lln", sq.to_str().expect("utf8")]);
    let line = |suffix: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(suffix))
            .unwrap_or_else(|| panic!("{suffix} not in the squashfs"))
            .to_string()
    };
    assert!(line("/usr/bin/firstboot").starts_with("-rwxr-xr-x 0/0"));
    assert!(
        line("/etc/shadow").starts_with("-rw-r----- 0/42"),
        "{}",
        line("/etc/shadow")
    );
    assert!(line("/usr/bin/passwd").starts_with("-rwsr-xr-x 0/0"));
    assert!(line("squashfs-root/bin -> usr/bin").starts_with("lrwxrwxrwx"));
}

#[test]
fn every_output_rebuilds_byte_identical() {
    let a = minimal();
    let tmp = tempfile::tempdir().expect("tmp");
    let b = tmp.path().join("second/build");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && exec {} build images/minimal.toml --out {}",
            kiln_tests::kiln_bin().display(),
            b.display()
        ))
        .current_dir(kiln_tests::workspace_root())
        .output()
        .expect("second build");
    assert!(o.status.success(), "{}", text(&o));
    let (sa, sb) = (snapshot(&a.dir), snapshot(&b));
    let names: Vec<&String> = sa.keys().collect();
    for want in [
        "minimal.qcow2",
        "minimal.raw",
        "minimal.iso",
        "minimal-pxe/initramfs",
        "SHA256SUMS",
        "sbom.spdx.json",
    ] {
        assert!(sa.contains_key(want), "{want} missing: {names:?}");
    }
    let differing: Vec<&String> = sa.keys().filter(|k| sa.get(*k) != sb.get(*k)).collect();
    if !differing.is_empty() && Path::new("/usr/bin/diffoscope").exists() {
        for d in &differing {
            let _ = Command::new("diffoscope")
                .arg(a.dir.join(d))
                .arg(b.join(d))
                .status();
        }
    }
    assert!(differing.is_empty(), "outputs differ: {differing:?}");
}

#[test]
fn inspect_reports_partitions_slots_and_boot_entries() {
    let b = minimal();
    for file in [b.raw(), b.qcow2()] {
        let o = kiln_tests::kiln(&["inspect", "--json", file.to_str().expect("utf8")], &[]);
        assert!(o.status.success(), "{}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let names: Vec<&str> = r["partitions"]
            .as_array()
            .expect("parts")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["BIOS", "ESP", "kiln-root-a", "kiln-root-b"]);
        assert_eq!(
            r["slots"],
            serde_json::json!([["a", true], ["b", false]]),
            "{file:?}"
        );
        let cmdlines: Vec<&str> = r["kernel-cmdlines"]
            .as_array()
            .expect("cmdlines")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert!(
            cmdlines
                .iter()
                .any(|c| c.contains("console=ttyS0,115200") && c.contains("kiln.slot=a")),
            "{cmdlines:?}"
        );
        assert!(
            cmdlines.iter().any(|c| c.contains("kiln.slot=b")),
            "{cmdlines:?}"
        );
        assert_eq!(r["manifest"]["image"], "minimal");
    }
    let o = kiln_tests::kiln(&["inspect", b.raw().to_str().expect("utf8")], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Compression zstd") && out.contains("slot a: squashfs root"),
        "{out}"
    );
    let o = kiln_tests::kiln(&["inspect", b.iso().to_str().expect("utf8"), "--json"], &[]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        r["kernel-cmdlines"][0]
            .as_str()
            .unwrap_or_default()
            .contains("kiln.root=iso"),
        "{r}"
    );
}
