//! Where stage 1 works: the paths relative to its root (`/` on a machine, a temp dir in
//! tests), and where the root file system comes from.

use super::*;

/// The paths stage 1 works on, all under one root.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `/` in the initramfs.
    pub root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }
    pub(super) fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub fn proc(&self) -> PathBuf {
        self.p("proc")
    }
    pub fn sys(&self) -> PathBuf {
        self.p("sys")
    }
    pub fn dev(&self) -> PathBuf {
        self.p("dev")
    }
    pub fn run(&self) -> PathBuf {
        self.p("run")
    }
    pub fn sysroot(&self) -> PathBuf {
        self.p("sysroot")
    }
    pub fn cmdline(&self) -> PathBuf {
        self.p("proc/cmdline")
    }
    pub fn class_block(&self) -> PathBuf {
        self.p("sys/class/block")
    }
    pub fn modules_load(&self) -> PathBuf {
        self.p("etc/kiln/modules.load")
    }
    pub fn embedded_squashfs(&self) -> PathBuf {
        self.p("root.squashfs")
    }
    pub fn media(&self) -> PathBuf {
        self.p("run/kiln/media")
    }
    pub fn stage1_json(&self) -> PathBuf {
        self.p("run/kiln/stage1.json")
    }
    /// A path inside the initramfs given as absolute (e.g. a line of modules.load).
    pub fn inside(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }
}

/// Where the root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// GPT partition `kiln-root-<slot>`.
    Slot(String),
    /// `/kiln/root.squashfs` on the ISO labelled `KILN`.
    Iso,
    /// `/root.squashfs` inside the initramfs.
    Embedded,
}

impl RootSource {
    /// From `kiln.root=iso|embedded` or `kiln.slot=a|b` (default slot a).
    pub fn from_cmdline(c: &Cmdline) -> Result<Self, Stage1Error> {
        match c.get("kiln.root") {
            Some("iso") => return Ok(RootSource::Iso),
            Some("embedded") => return Ok(RootSource::Embedded),
            Some("disk") | None => {}
            Some(other) => {
                return Err(fail(
                    "reading kiln.root",
                    format!("unknown value {other:?} (iso, embedded)"),
                ))
            }
        }
        match c.get("kiln.slot").unwrap_or("a") {
            s @ ("a" | "b") => Ok(RootSource::Slot(s.to_string())),
            other => Err(fail(
                "reading kiln.slot",
                format!("unknown slot {other:?} (a, b)"),
            )),
        }
    }
}
