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
