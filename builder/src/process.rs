//! Running host tools: go, mksquashfs, grub-mkimage, xorriso, mtools, qemu-img, QEMU, cargo.
//! The one place the builder spawns processes. Every error carries the command line (shell
//! quoted, so it can be pasted) and the tail of what the tool printed.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

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

/// Lines of output kept in an error, unless [`Tool::tail_lines`] says otherwise.
const TAIL_LINES: usize = 15;

/// A command being built (stdin from /dev/null unless set), with its printable command line.
pub struct Tool {
    cmd: Command,
    cmdline: String,
    tail_lines: usize,
}

impl Tool {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null());
        Tool {
            cmd,
            cmdline: shell_quote(&program.to_string_lossy()),
            tail_lines: TAIL_LINES,
        }
    }

    /// The fixed environment of reproducible outputs: `LC_ALL=C`, `TZ=UTC` and
    /// `SOURCE_DATE_EPOCH`.
    pub fn reproducible(&mut self, epoch: u64) -> &mut Self {
        self.cmd
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("SOURCE_DATE_EPOCH", epoch.to_string());
        self
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        let a = a.as_ref();
        self.cmdline.push(' ');
        self.cmdline.push_str(&shell_quote(&a.to_string_lossy()));
        self.cmd.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        for a in args {
            self.arg(a);
        }
        self
    }

    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(k, v);
        self
    }

    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    pub fn env_remove(&mut self, k: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env_remove(k);
        self
    }

    /// Starts from an empty environment (what [`Tool::env`] adds after this is kept).
    pub fn env_clear(&mut self) -> &mut Self {
        self.cmd.env_clear();
        self
    }

    pub fn current_dir(&mut self, dir: &Path) -> &mut Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn stdin(&mut self, s: Stdio) -> &mut Self {
        self.cmd.stdin(s);
        self
    }

    pub fn stdout(&mut self, s: Stdio) -> &mut Self {
        self.cmd.stdout(s);
        self
    }

    pub fn stderr(&mut self, s: Stdio) -> &mut Self {
        self.cmd.stderr(s);
        self
    }

    /// How many lines of output a failure quotes.
    pub fn tail_lines(&mut self, n: usize) -> &mut Self {
        self.tail_lines = n;
        self
    }

    /// The command line, shell quoted.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    fn spawn_error(&self, source: std::io::Error) -> CommandError {
        CommandError::Spawn {
            cmdline: self.cmdline.clone(),
            source,
        }
    }

    /// The error for a run that ended with `status`, quoting the last lines of `stderr`
    /// (or of `stdout` when stderr is empty): for callers that read the output themselves.
    pub fn failed(&self, status: ExitStatus, stderr: &[u8], stdout: &[u8]) -> CommandError {
        CommandError::Failed {
            cmdline: self.cmdline.clone(),
            status: status.to_string(),
            stderr_tail: tail(stderr, stdout, self.tail_lines),
        }
    }

    /// Runs to completion; returns stdout. A non-zero exit is an error naming the
    /// command and quoting the last lines of its stderr.
    pub fn run(&mut self) -> Result<Vec<u8>, CommandError> {
        let out = self.output()?;
        if !out.status.success() {
            return Err(self.failed(out.status, &out.stderr, &out.stdout));
        }
        Ok(out.stdout)
    }

    /// [`Tool::run`], its stdout as text.
    pub fn run_text(&mut self) -> Result<String, CommandError> {
        self.run()
            .map(|out| String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs to completion with stdout and stderr captured, whatever the exit status.
    pub fn output(&mut self) -> Result<Output, CommandError> {
        log::debug!("running {}", self.cmdline);
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| self.spawn_error(e))
    }

    /// Runs to completion with the stdio as set (inherited by default); a non-zero exit is
    /// an error naming the command.
    pub fn status(&mut self) -> Result<(), CommandError> {
        log::debug!("running {}", self.cmdline);
        let status = self.cmd.status().map_err(|e| self.spawn_error(e))?;
        if !status.success() {
            return Err(self.failed(status, b"", b""));
        }
        Ok(())
    }

    /// Starts the command with the stdio as set; the caller waits for it.
    pub fn spawn(&mut self) -> Result<Child, CommandError> {
        log::debug!("starting {}", self.cmdline);
        self.cmd.spawn().map_err(|e| self.spawn_error(e))
    }
}

/// The last `n` non-empty lines of `stderr`, or of `stdout` when stderr has none.
pub fn tail(stderr: &[u8], stdout: &[u8], n: usize) -> String {
    let text = if stderr.iter().all(u8::is_ascii_whitespace) {
        String::from_utf8_lossy(stdout)
    } else {
        String::from_utf8_lossy(stderr)
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
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
/// non-empty line of its output (stdout, then stderr), whatever its exit status.
pub fn version(program: &str, args: &[&str]) -> Result<ToolVersion, CommandError> {
    let out = Tool::new(program).env("LC_ALL", "C").args(args).output()?;
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
        let err = Tool::new("sh")
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
        let out = Tool::new("sh")
            .reproducible(1234)
            .args(["-c", "echo $SOURCE_DATE_EPOCH $TZ"])
            .run()
            .expect("runs");
        assert_eq!(String::from_utf8_lossy(&out).trim(), "1234 UTC");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Tool::new("kiln-no-such-tool").run().expect_err("missing");
        assert!(matches!(err, CommandError::Spawn { .. }));
    }

    #[test]
    fn arguments_are_quoted_in_the_command_line() {
        let mut t = Tool::new("printf");
        t.args(["%s|", "two words", "it's"]);
        assert_eq!(t.cmdline(), r"printf '%s|' 'two words' 'it'\''s'");
        assert_eq!(t.run_text().expect("runs"), "two words|it's|");
    }

    #[test]
    fn a_failed_status_names_the_command() {
        let err = Tool::new("false").status().expect_err("exit 1");
        assert!(err.to_string().starts_with("`false` failed"), "{err}");
    }
}
