//! Logging for the agent: the journal (identifier `firstboot`) when running under systemd,
//! stderr otherwise. No timestamps of our own.

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "firstboot: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

static STDERR: Stderr = Stderr;

/// Installs the logger once. Returns whether it is the journal.
pub fn init() -> bool {
    log::set_max_level(LevelFilter::Info);
    let journal = std::env::var_os("JOURNAL_STREAM").is_some()
        || std::path::Path::new("/run/systemd/journal/socket").exists();
    if journal {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if j.with_syslog_identifier("firstboot".to_string())
                .install()
                .is_ok()
            {
                return true;
            }
        }
    }
    let _ = log::set_logger(&STDERR);
    false
}

/// journald's stream socket: what systemd itself connects a service's stdout to.
const JOURNAL_STDOUT: &str = "/run/systemd/journal/stdout";

/// The header of a journald stream: identifier, unit (none), priority (info), no level
/// prefixes, and no forwarding to syslog, kmsg or the console.
pub fn journal_stream_header(identifier: &str) -> String {
    format!("{identifier}\n\n6\n0\n0\n0\n0\n")
}

/// A journald stream whose lines are logged with `identifier` as SYSLOG_IDENTIFIER, as a
/// pair of handles for a child's stdout and stderr. None when journald does not answer.
pub fn journal_stream(identifier: &str) -> Option<(std::process::Stdio, std::process::Stdio)> {
    use std::io::Write as _;
    let mut s = std::os::unix::net::UnixStream::connect(JOURNAL_STDOUT).ok()?;
    s.shutdown(std::net::Shutdown::Read).ok()?;
    s.write_all(journal_stream_header(identifier).as_bytes())
        .ok()?;
    let err = s.try_clone().ok()?;
    Some((
        std::os::fd::OwnedFd::from(s).into(),
        std::os::fd::OwnedFd::from(err).into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_header_names_the_identifier_and_has_seven_lines() {
        let h = journal_stream_header("kube-apiserver");
        let lines: Vec<&str> = h.split_terminator('\n').collect();
        assert_eq!(lines, ["kube-apiserver", "", "6", "0", "0", "0", "0"]);
    }
}
