//! The project's own programs that go into every image (firstboot), built from this
//! workspace as static binaries: glibc with `+crt-static`, an explicit target so build
//! scripts stay dynamic, and source paths remapped so the bytes do not depend on
//! where the checkout lives.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target triple static binaries are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum SelfBuildError {
    #[error("KILN_FIRSTBOOT={0} does not exist")]
    Missing(PathBuf),
    #[error("running cargo to build firstboot: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("building firstboot failed (cargo exited with {status}); stderr tail:\n{tail}")]
    Failed { status: String, tail: String },
    #[error("no Cargo workspace at {0}: set KILN_FIRSTBOOT to a static firstboot binary")]
    NoWorkspace(PathBuf),
}

/// The workspace kiln was built from.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The firstboot binary for the image: `$KILN_FIRSTBOOT` when set, else built (or
/// reused, cargo decides) from the workspace.
pub fn firstboot() -> Result<PathBuf, SelfBuildError> {
    if let Some(p) = std::env::var_os("KILN_FIRSTBOOT") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SelfBuildError::Missing(p))
        };
    }
    let ws = workspace();
    if !ws.join("Cargo.toml").is_file() {
        return Err(SelfBuildError::NoWorkspace(ws));
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let flags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/kiln --remap-path-prefix={home}=/cargo",
        ws.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    log::info!("building firstboot (static, {TARGET})");
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "firstboot",
            "--bin",
            "firstboot",
            "--target",
            TARGET,
        ])
        .current_dir(&ws)
        .env("RUSTFLAGS", flags)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .map_err(SelfBuildError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        return Err(SelfBuildError::Failed {
            status: out.status.to_string(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    Ok(target_dir.join(TARGET).join("release").join("firstboot"))
}
