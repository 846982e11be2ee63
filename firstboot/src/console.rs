//! Console output for stage 1 and the agent: /dev/console and /dev/kmsg, best effort.

use std::io::Write;
use std::path::PathBuf;

/// Writes lines to the console device and the kernel log.
#[derive(Debug, Clone)]
pub struct Console {
    console: PathBuf,
    kmsg: Option<PathBuf>,
}

impl Console {
    /// Console at `<dev>/console`, kernel log at `<dev>/kmsg` if `kmsg`.
    pub fn new(dev: impl Into<PathBuf>, kmsg: bool) -> Self {
        let dev = dev.into();
        Console {
            console: dev.join("console"),
            kmsg: kmsg.then(|| dev.join("kmsg")),
        }
    }

    /// Prints one line; failures to write are ignored (there is nowhere else to say so).
    pub fn say(&self, line: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&self.console) {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        } else {
            eprintln!("{line}");
        }
        if let Some(k) = &self.kmsg {
            if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(k) {
                let _ = f.write_all(format!("<6>{line}\n").as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_to_both() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("console"), "").unwrap();
        std::fs::write(t.path().join("kmsg"), "").unwrap();
        super::Console::new(t.path(), true).say("kiln: stage 1 x");
        assert_eq!(
            std::fs::read_to_string(t.path().join("console")).unwrap(),
            "kiln: stage 1 x\n"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("kmsg")).unwrap(),
            "<6>kiln: stage 1 x\n"
        );
    }
}
