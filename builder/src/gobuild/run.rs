//! Running the host Go toolchain in Kiln's environment ([`GoEnv`]), through
//! [`crate::process::Tool`].

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{GoEnv, GoError, GoInput};
use crate::process::{CommandError, Tool};

const TAIL_LINES: usize = 30;

pub struct GoCommand {
    tool: Tool,
}

pub struct Captured {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

pub enum BuildFailure {
    Go(GoError),
    Failed(String),
}

/// The last lines of a command's stderr, as a failed [`GoCommand::output`] quotes them.
pub fn tail(stderr: &str) -> String {
    crate::process::tail(stderr.as_bytes(), b"", TAIL_LINES)
}

impl From<CommandError> for GoError {
    fn from(e: CommandError) -> GoError {
        match e {
            CommandError::Spawn { cmdline, source } => GoError::Spawn {
                command: cmdline,
                source,
            },
            CommandError::Failed {
                cmdline,
                status,
                stderr_tail,
            } => GoError::Command {
                command: cmdline,
                status,
                stderr: stderr_tail,
            },
        }
    }
}

impl GoCommand {
    /// `go` in Kiln's environment for `input` ([`GoEnv::tool`]; `pinned`: go.sum holds
    /// every module hash already), run in `dir`.
    pub fn new(env: &GoEnv, pinned: bool, input: &GoInput, dir: Option<&Path>) -> Self {
        // An input that names its Go release runs that toolchain's own `go` (fetched into the
        // module cache); `GOTOOLCHAIN=local` keeps it from switching again.
        let program = input.go.as_ref().map(|v| env.toolchain_go(v.as_str()));
        let mut tool = env.tool(program.as_deref(), pinned);
        if let Some(d) = dir {
            tool.current_dir(d);
        }
        tool.env("CGO_ENABLED", if input.cgo { "1" } else { "0" })
            .env("GONOSUMDB", input.no_sumdb.join(","))
            .envs(&input.env)
            .tail_lines(TAIL_LINES);
        GoCommand { tool }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.tool.arg(a);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.tool.args(args);
        self
    }

    /// Runs to completion, returns stdout and stderr whatever the exit status.
    pub fn output_allow_fail(&mut self, log: &mut Vec<String>) -> Result<Captured, GoError> {
        log.push(self.tool.cmdline().to_string());
        let out = self.tool.output()?;
        Ok(Captured {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        })
    }

    /// Runs to completion, returns stdout; a failure carries the tail of stderr.
    pub fn output(&mut self, log: &mut Vec<String>) -> Result<String, GoError> {
        log.push(self.tool.cmdline().to_string());
        Ok(self.tool.run_text()?)
    }

    /// Runs `go build`, streaming stderr; with `progress`, shows the package being
    /// compiled (from `-v`) and the elapsed time on a spinner.
    pub fn build(
        &mut self,
        log: &mut Vec<String>,
        progress: Option<&str>,
    ) -> Result<(), BuildFailure> {
        log.push(self.tool.cmdline().to_string());
        let mut child = self
            .tool
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BuildFailure::Go(e.into()))?;
        let bar = progress.map(|label| {
            let bar = indicatif::ProgressBar::new_spinner();
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} go build {prefix} [{elapsed_precise}] {pos} packages: {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let started = Instant::now();
        let mut kept: VecDeque<String> = VecDeque::new();
        if let Some(stderr) = child.stderr.take() {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let is_package = !line.contains(' ') && !line.contains(':') && !line.is_empty();
                if let (Some(bar), true) = (&bar, is_package) {
                    bar.inc(1);
                    bar.set_message(line);
                    continue;
                }
                kept.push_back(line);
                if kept.len() > TAIL_LINES {
                    kept.pop_front();
                }
            }
        }
        let status = child.wait().map_err(|source| {
            BuildFailure::Go(GoError::Spawn {
                command: self.tool.cmdline().to_string(),
                source,
            })
        })?;
        if let Some(bar) = bar {
            bar.finish_with_message(format!("done in {:.0?}", started.elapsed()));
        }
        if !status.success() {
            let text: Vec<String> = kept.into_iter().collect();
            return Err(BuildFailure::Failed(format!(
                "{status}\n{}",
                text.join("\n")
            )));
        }
        Ok(())
    }
}

/// The C compiler's identification, for the cache key of cgo builds.
pub fn cc_version(env: &GoEnv, input: &GoInput, log: &mut Vec<String>) -> Result<String, GoError> {
    let cc = GoCommand::new(env, true, input, None)
        .args(["env", "CC"])
        .output(log)?;
    let cc = cc.trim();
    let cc = cc.split_whitespace().next().unwrap_or("gcc").to_string();
    let out = Tool::new(&cc).arg("--version").output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}
