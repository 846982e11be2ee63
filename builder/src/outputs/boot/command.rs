//! Runs host tools (mksquashfs, grub-mkimage, xorriso, qemu-img, mtools). The one
//! place that spawns processes: errors carry the command line and the tail of stderr.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// A host tool and the version string it reported, recorded in manifest.json.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ToolVersion {
    pub tool: String,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("running `{cmdline}`: {source}")]
    Spawn {
        cmdline: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmdline}` failed ({status}): {stderr_tail}")]
    Failed {
        cmdline: String,
        status: String,
        stderr_tail: String,
    },
}

/// Lines of stderr kept in an error.
const TAIL_LINES: usize = 15;

/// A command with a fixed environment: `LC_ALL=C`, `TZ=UTC`, `SOURCE_DATE_EPOCH`.
pub struct Tool {
    cmd: Command,
    cmdline: String,
}

impl Tool {
    pub fn new(program: &str, epoch: u64) -> Self {
        let mut cmd = Command::new(program);
        cmd.env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .stdin(Stdio::null());
        Tool {
            cmd,
            cmdline: program.to_string(),
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        let a = a.as_ref();
        self.cmdline.push(' ');
        self.cmdline.push_str(&shell_quote(&a.to_string_lossy()));
        self.cmd.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs to completion; returns stdout. A non-zero exit is an error naming the
    /// command and quoting the last lines of its stderr.
    pub fn run(mut self) -> Result<Vec<u8>, CommandError> {
        log::debug!("running {}", self.cmdline);
        let out = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| CommandError::Spawn {
                cmdline: self.cmdline.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(CommandError::Failed {
                cmdline: self.cmdline,
                status: out.status.to_string(),
                stderr_tail: tail(&out.stderr, &out.stdout),
            });
        }
        Ok(out.stdout)
    }
}

fn tail(stderr: &[u8], stdout: &[u8]) -> String {
    let text = if stderr.iter().all(u8::is_ascii_whitespace) {
        String::from_utf8_lossy(stdout)
    } else {
        String::from_utf8_lossy(stderr)
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n")
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Asks a tool for its version (`args`, e.g. `-version`) and keeps the first
/// non-empty line of its output.
pub fn version(program: &str, args: &[&str]) -> Result<ToolVersion, CommandError> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("LC_ALL", "C").stdin(Stdio::null());
    let cmdline = format!("{program} {}", args.join(" "));
    let out = cmd.output().map_err(|source| CommandError::Spawn {
        cmdline: cmdline.clone(),
        source,
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string();
    Ok(ToolVersion {
        tool: program.to_string(),
        version: line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr_tail() {
        let err = Tool::new("sh", 0)
            .args(["-c", "echo first >&2; echo 'the reason' >&2; exit 3"])
            .run()
            .expect_err("exit 3");
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("the reason"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn environment_is_pinned() {
        let out = Tool::new("sh", 1234)
            .args(["-c", "echo $SOURCE_DATE_EPOCH $TZ"])
            .run()
            .expect("runs");
        assert_eq!(String::from_utf8_lossy(&out).trim(), "1234 UTC");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Tool::new("kiln-no-such-tool", 0)
            .run()
            .expect_err("missing");
        assert!(matches!(err, CommandError::Spawn { .. }));
    }
}
