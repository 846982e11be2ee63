//! A file-based Go module proxy (`GOPROXY=file://…`, put in place of the toolchain's proxy
//! with `kiln --mirror`) holding tiny command modules the tests write: Go builds with no
//! network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::text;

/// A stored (uncompressed) zip archive of `files`, as the module proxy protocol serves.
pub fn zip(files: &[(String, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let crc = crc32fast::hash(data);
        let offset = out.len() as u32;
        let size = data.len() as u32;
        let head = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // stored
            h.extend(0u16.to_le_bytes()); // time
            h.extend(0x21u16.to_le_bytes()); // date: 1980-01-01
            h.extend(crc.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend(size.to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0u8; 6]); // comment, disk, internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(head(0x0403_4b50, false));
        out.extend(*data);
        central.extend(head(0x0201_4b50, true));
    }
    let dir_offset = out.len() as u32;
    let n = files.len() as u16;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// Writes `module@version` (a go.mod and `main.go`) into the file proxy at `proxy`; `origin`
/// is the commit its `.info` reports (none: Version and Time only, as the proxy gives for
/// some tags). Versions already there stay listed.
pub fn write_module(
    proxy: &Path,
    module: &str,
    version: &str,
    origin: Option<&str>,
    main_go: &str,
) {
    let v = proxy.join(module).join("@v");
    std::fs::create_dir_all(&v).unwrap();
    let go_mod = format!("module {module}\n\ngo 1.21\n");
    let mut info = serde_json::json!({ "Version": version, "Time": "2026-01-01T00:00:00Z" });
    if let Some(hash) = origin {
        info["Origin"] = serde_json::json!({
            "VCS": "git",
            "URL": format!("https://{module}"),
            "Ref": format!("refs/tags/{version}"),
            "Hash": hash,
        });
    }
    let list = std::fs::read_to_string(v.join("list")).unwrap_or_default();
    if !list.lines().any(|l| l == version) {
        std::fs::write(v.join("list"), format!("{list}{version}\n")).unwrap();
    }
    std::fs::write(v.join(format!("{version}.info")), info.to_string()).unwrap();
    std::fs::write(v.join(format!("{version}.mod")), &go_mod).unwrap();
    let prefix = format!("{module}@{version}");
    let archive = zip(&[
        (format!("{prefix}/go.mod"), go_mod.as_bytes()),
        (format!("{prefix}/main.go"), main_go.as_bytes()),
    ]);
    std::fs::write(v.join(format!("{version}.zip")), archive).unwrap();
}

/// The first URL of the toolchain's own GOPROXY list (its go.env), the one `--mirror`
/// rewrites.
pub fn toolchain_proxy() -> String {
    let mut go = std::process::Command::new("go");
    go.env_clear().env("GOENV", "off").args(["env", "GOPROXY"]);
    if let Some(path) = std::env::var_os("PATH") {
        go.env("PATH", path);
    }
    let o = go.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let list = String::from_utf8(o.stdout).unwrap();
    let first = list.trim().split([',', '|']).next().unwrap().to_string();
    assert!(first.contains("://"), "no proxy URL in {list:?}");
    first
}
