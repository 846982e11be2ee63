//! The project's own programs that go into images (firstboot, kiln-pause), built from this
//! workspace as static binaries: glibc with `+crt-static`, an explicit target so build
//! scripts stay dynamic, and source paths remapped so the bytes do not depend on
//! where the checkout lives.

use std::path::{Path, PathBuf};

use crate::process::Tool;

/// The target triple static binaries are built for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, thiserror::Error)]
pub enum SelfBuildError {
    #[error("{var}={path} does not exist")]
    Missing { var: String, path: PathBuf },
    #[error("running cargo to build {bin}")]
    Spawn {
        bin: String,
        #[source]
        source: crate::process::CommandError,
    },
    #[error("building {bin} failed (cargo exited with {status}); stderr tail:\n{tail}")]
    Failed {
        bin: String,
        status: String,
        tail: String,
    },
    #[error("no Cargo workspace at {path}: set {var} to a static binary")]
    NoWorkspace { path: PathBuf, var: String },
    #[error("Kiln has no program named {0:?}")]
    Unknown(String),
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
    binary("firstboot", "firstboot", "KILN_FIRSTBOOT")
}

/// The sandbox image's program (`self:kiln-pause`): `$KILN_PAUSE` when set, else built.
pub fn kiln_pause() -> Result<PathBuf, SelfBuildError> {
    binary("firstboot", "kiln-pause", "KILN_PAUSE")
}

/// One of Kiln's own programs by name (`self:<name>` in a container image).
pub fn by_name(name: &str) -> Result<PathBuf, SelfBuildError> {
    match name {
        "kiln-pause" => kiln_pause(),
        "firstboot" => firstboot(),
        other => Err(SelfBuildError::Unknown(other.to_string())),
    }
}

/// A bin target `bin` of workspace package `package`, built static: the file named by
/// the environment variable `env` when set, else built (or reused, cargo decides).
pub fn binary(package: &str, bin: &str, env: &str) -> Result<PathBuf, SelfBuildError> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SelfBuildError::Missing {
                var: env.to_string(),
                path: p,
            })
        };
    }
    let ws = workspace();
    if !ws.join("Cargo.toml").is_file() {
        return Err(SelfBuildError::NoWorkspace {
            path: ws,
            var: env.to_string(),
        });
    }
    let home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let flags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/kiln --remap-path-prefix={home}=/cargo",
        ws.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    log::info!("building {bin} (static, {TARGET})");
    let mut cmd = Tool::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "-p",
        package,
        "--bin",
        bin,
        "--target",
        TARGET,
    ])
    .current_dir(&ws)
    .env("RUSTFLAGS", flags)
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env("SOURCE_DATE_EPOCH", "0");
    let out = cmd.output().map_err(|source| SelfBuildError::Spawn {
        bin: bin.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(SelfBuildError::Failed {
            bin: bin.to_string(),
            status: out.status.to_string(),
            tail: crate::process::tail(&out.stderr, &out.stdout, 20),
        });
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    Ok(target_dir.join(TARGET).join("release").join(bin))
}
