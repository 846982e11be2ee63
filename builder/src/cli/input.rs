//! What a command line names, checked before any work starts, and how a failure leaves the
//! process: its one-line message and its exit code.
//!
//! A path argument that does not exist, is a directory where a file is wanted, or holds the
//! wrong kind of data is a usage error ([`Usage`], exit code 2, as clap's own), reported as
//! one line that names the path and what was expected. Everything else a command fails on
//! exits with 1, except `kiln lock --check` finding a lock out of date ([`LockDrift`], 3).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

/// The exit codes of `kiln` (listed in `kiln --help` and the README).
pub mod exit {
    /// The command failed: a build, lock, fetch, boot or check did not succeed.
    pub const FAILED: u8 = 1;
    /// The command line is wrong: an unknown option, a bad value, a missing file, a
    /// directory where a file is wanted, a file of the wrong kind.
    pub const USAGE: u8 = 2;
    /// `kiln lock --check`: the lock does not match its definition.
    pub const LOCK_DRIFT: u8 = 3;
}

/// A usage error: the command line names something that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// `kiln lock --check` found the lock out of date (the differences were printed before).
#[derive(Debug, thiserror::Error)]
#[error("{lock} does not match {definition}; run `kiln lock {definition}`")]
pub struct LockDrift {
    pub lock: String,
    pub definition: String,
}

/// The exit code for an error that ended a command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Usage>().is_some() {
        exit::USAGE
    } else if e.downcast_ref::<LockDrift>().is_some() {
        exit::LOCK_DRIFT
    } else {
        exit::FAILED
    }
}

/// The error and its causes as one line, each cause once: a cause whose text an outer
/// message already carries (`reading x: No such file` over `No such file`) is left out.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        let _ = write!(line, "{text}");
    }
    line
}

/// The kinds of file a command line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image definition (TOML).
    Definition,
    /// A secrets file from `kiln secrets gen` (TOML).
    Secrets,
    /// A machine config (TOML).
    MachineConfig,
    /// A built .raw, .qcow2 or .iso.
    Output,
    /// What `kiln run` boots: a built .raw, .qcow2 or .iso, or a PXE bundle directory.
    Image,
    /// An admin kubeconfig (JSON).
    Kubeconfig,
    /// The state directory of a `kiln run`.
    StateDir,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Definition => "an image definition (a TOML file)",
            Kind::Secrets => "a secrets file from `kiln secrets gen` (a TOML file)",
            Kind::MachineConfig => "a machine config (a TOML file)",
            Kind::Output => "a built .raw, .qcow2 or .iso",
            Kind::Image => "a built .raw, .qcow2 or .iso, or a PXE bundle directory",
            Kind::Kubeconfig => "an admin kubeconfig",
            Kind::StateDir => "the state directory of `kiln run`",
        }
    }

    fn is_text(self) -> bool {
        matches!(
            self,
            Kind::Definition | Kind::Secrets | Kind::MachineConfig | Kind::Kubeconfig
        )
    }
}

/// How many bytes of a text file are looked at to tell text from binary data.
const SNIFF: usize = 8192;

/// Checks that `path` exists and is the kind of file `kind` names: a usage error naming
/// the path and what was wanted otherwise.
pub fn check(path: &Path, kind: Kind) -> Result<(), Usage> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Usage(format!(
                "{shown}: no such file; wanted {}",
                kind.noun()
            )))
        }
        Err(e) => return Err(Usage(format!("{shown}: {e}"))),
    };
    if kind == Kind::StateDir {
        if meta.is_dir() {
            return Ok(());
        }
        return Err(Usage(format!(
            "{shown}: not a directory; wanted {}",
            kind.noun()
        )));
    }
    if meta.is_dir() {
        if kind == Kind::Image {
            return pxe_bundle(path);
        }
        return Err(Usage(format!(
            "{shown}: a directory; wanted {}",
            kind.noun()
        )));
    }
    let head = read_head(path, SNIFF.max(0x8006)).map_err(|e| Usage(format!("{shown}: {e}")))?;
    if kind.is_text() {
        let sniff = &head[..head.len().min(SNIFF)];
        if !is_text(sniff) {
            return Err(Usage(format!(
                "{shown}: binary data; wanted {}",
                kind.noun()
            )));
        }
        return Ok(());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let format = match ext {
        "qcow2" => "qcow2",
        "raw" => "raw",
        "img" if kind == Kind::Image => "raw",
        "iso" => "iso",
        _ => {
            return Err(Usage(format!(
                "{shown}: wanted {} (told by the file name's extension)",
                kind.noun()
            )))
        }
    };
    if !has_magic(format, &head) {
        return Err(Usage(format!(
            "{shown}: not a {format} image ({})",
            match format {
                "qcow2" => "no qcow2 header",
                "raw" => "no GPT at its second sector",
                _ => "no ISO 9660 volume descriptor",
            }
        )));
    }
    Ok(())
}

/// A PXE bundle directory: `vmlinuz`, `initramfs` and `boot.ipxe`.
fn pxe_bundle(dir: &Path) -> Result<(), Usage> {
    let missing: Vec<&str> = ["vmlinuz", "initramfs", "boot.ipxe"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Usage(format!(
        "{}: a directory but not a PXE bundle (no {})",
        dir.display(),
        missing.join(", no ")
    )))
}

fn read_head(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    std::fs::File::open(path)?
        .take(len as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// UTF-8 with no NUL byte; a character cut at the end of the sample counts as text.
fn is_text(bytes: &[u8]) -> bool {
    if bytes.contains(&0) {
        return false;
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Whether `head` (the file's first bytes) starts as an image of `format` does.
fn has_magic(format: &str, head: &[u8]) -> bool {
    match format {
        "qcow2" => head.starts_with(b"QFI\xfb"),
        "raw" => head.get(512..520) == Some(b"EFI PART".as_slice()),
        _ => head.get(0x8001..0x8006) == Some(b"CD001".as_slice()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let inner = anyhow::Error::new(io);
        let text = inner.to_string();
        let e = inner.context(format!("reading x.toml: {text}"));
        assert_eq!(error_line(&e), format!("reading x.toml: {text}"));
        let e = anyhow::anyhow!("disk full").context("writing out/x.qcow2");
        assert_eq!(error_line(&e), "writing out/x.qcow2: disk full");
    }

    #[test]
    fn usage_and_drift_have_their_own_codes() {
        let u = anyhow::Error::new(Usage("x".into())).context("while building");
        assert_eq!(exit_code(&u), exit::USAGE);
        let d = anyhow::Error::new(LockDrift {
            lock: "a.lock".into(),
            definition: "a.toml".into(),
        });
        assert_eq!(exit_code(&d), exit::LOCK_DRIFT);
        assert_eq!(exit_code(&anyhow::anyhow!("failed")), exit::FAILED);
    }

    #[test]
    fn text_is_told_from_binary_data() {
        assert!(is_text(b"name = \"x\"\n"));
        assert!(is_text("é".as_bytes()));
        assert!(is_text(&"é".as_bytes()[..1]), "a cut character at the end");
        assert!(!is_text(b"a\0b"));
        assert!(!is_text(&[0xff, b'a']));
    }

    #[test]
    fn each_wrong_path_is_one_line_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let msg = |r: Result<(), Usage>| r.expect_err("refused").0;

        let m = msg(check(&p("nope.toml"), Kind::Definition));
        assert!(m.contains("nope.toml: no such file"), "{m}");
        let m = msg(check(dir.path(), Kind::Definition));
        assert!(m.contains("a directory; wanted an image definition"), "{m}");
        std::fs::write(p("bin.toml"), b"\x7fELF\0\0").expect("write");
        let m = msg(check(&p("bin.toml"), Kind::Secrets));
        assert!(
            m.contains("bin.toml: binary data; wanted a secrets file"),
            "{m}"
        );
        std::fs::write(p("d.toml"), b"name = \"x\"\n").expect("write");
        assert!(check(&p("d.toml"), Kind::Definition).is_ok());

        let m = msg(check(&p("d.toml"), Kind::Output));
        assert!(m.contains("told by the file name's extension"), "{m}");
        std::fs::write(p("x.qcow2"), b"not really").expect("write");
        let m = msg(check(&p("x.qcow2"), Kind::Output));
        assert!(m.contains("not a qcow2 image"), "{m}");
        std::fs::write(p("y.qcow2"), b"QFI\xfb\0\0\0\x03").expect("write");
        assert!(check(&p("y.qcow2"), Kind::Output).is_ok());
        let mut raw = vec![0u8; 1024];
        raw[512..520].copy_from_slice(b"EFI PART");
        std::fs::write(p("z.raw"), &raw).expect("write");
        assert!(check(&p("z.raw"), Kind::Output).is_ok());
        std::fs::write(p("z.iso"), &raw).expect("write");
        assert!(msg(check(&p("z.iso"), Kind::Output)).contains("no ISO 9660"));

        let m = msg(check(dir.path(), Kind::Image));
        assert!(
            m.contains("not a PXE bundle (no vmlinuz, no initramfs"),
            "{m}"
        );
        for f in ["vmlinuz", "initramfs", "boot.ipxe"] {
            std::fs::write(p(f), b"x").expect("write");
        }
        assert!(check(dir.path(), Kind::Image).is_ok());

        assert!(check(dir.path(), Kind::StateDir).is_ok());
        let m = msg(check(&p("d.toml"), Kind::StateDir));
        assert!(
            m.contains("d.toml: not a directory; wanted the state"),
            "{m}"
        );
    }
}
