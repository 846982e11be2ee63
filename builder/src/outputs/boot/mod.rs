//! Boot outputs: root squashfs, initramfs, GPT disk (raw and qcow2), hybrid ISO and
//! PXE bundle. Every identifier in them (disk and partition GUIDs, FAT serials) is
//! derived from the image identity, never random; host tools run with
//! `SOURCE_DATE_EPOCH` and their versions are returned for the manifest.

pub mod cpio;
pub mod depmod;
pub mod disk;
pub mod esp;
pub mod gpt;
pub mod grub;
pub mod initramfs;
pub mod install;
pub mod iso;
pub mod modules;
pub mod pxe;
pub mod squashfs;

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

pub use crate::process::ToolVersion;

/// Arguments every kernel command line carries (serial and VGA console).
pub const CONSOLE_ARGS: &str = "console=tty0 console=ttyS0,115200";

/// ISO 9660 volume label firstboot looks for (`kiln.root=iso`).
pub const ISO_LABEL: &str = "KILN";

/// Where the root squashfs sits on the ISO (and, for PXE, inside the initramfs).
pub const ISO_ROOT_PATH: &str = "kiln/root.squashfs";
pub const EMBEDDED_ROOT_PATH: &str = "root.squashfs";

/// The name and version of the image being built: the seed of every GUID and serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootIdentity {
    pub name: String,
    pub version: String,
    /// Extra kernel arguments from the definition, appended to every boot entry
    /// (after the console and `kiln.*` arguments). Not part of any derived GUID.
    pub extra_args: String,
}

pub use uuid::Uuid;

impl BootIdentity {
    pub fn new(name: &str, version: &str) -> Self {
        BootIdentity {
            name: name.to_string(),
            version: version.to_string(),
            extra_args: String::new(),
        }
    }

    /// The same identity with extra kernel arguments for every boot entry.
    pub fn with_args(mut self, args: &str) -> Self {
        self.extra_args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        self
    }

    /// `base` followed by the extra arguments, if any.
    pub fn args(&self, base: &str) -> String {
        if self.extra_args.is_empty() {
            base.to_string()
        } else {
            format!("{base} {}", self.extra_args)
        }
    }

    fn hash(&self, role: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in ["kiln-boot-identity", &self.name, &self.version, role] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// A v4-shaped UUID from sha256(name, version, role), as systemd-repart `--seed`.
    pub fn uuid(&self, role: &str) -> Uuid {
        let h = self.hash(role);
        let mut b = [0u8; 16];
        b.copy_from_slice(&h[..16]);
        uuid::Builder::from_random_bytes(b).into_uuid()
    }

    /// A FAT volume serial (shown by Linux and GRUB as `XXXX-XXXX`).
    pub fn fat_serial(&self, role: &str) -> u32 {
        let h = self.hash(role);
        u32::from_be_bytes([h[0], h[1], h[2], h[3]])
    }
}

/// Formats a FAT serial the way GRUB's `search --fs-uuid` and blkid print it.
pub fn fat_serial_string(serial: u32) -> String {
    format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff)
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Command(#[from] crate::process::CommandError),
    #[error("kernel {kver}: {what} not found in the tree (is the kernel package in the image?)")]
    MissingKernel { kver: String, what: String },
    #[error("kernel {kver}: module {name:?} is neither in lib/modules nor built in")]
    UnknownModule { kver: String, name: String },
    #[error("kernel module {path}: {reason}")]
    BadModule { path: String, reason: String },
    #[error("{what} needs {needed} bytes but the disk is {size} bytes; raise the disk size")]
    DoesNotFit {
        what: String,
        needed: u64,
        size: u64,
    },
    #[error("{what} ({size} bytes) does not fit its {limit}-byte slot")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("tree path {path} cannot be written: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("reading {path} from the tree: {source}")]
    TreeRead {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = BootError> = std::result::Result<T, E>;

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BootError {
    let path = path.to_path_buf();
    move |source| BootError::Io {
        action,
        path,
        source,
    }
}

/// A temporary sibling of `out` (same file system, so the final rename is atomic):
/// nothing is left at `out` or next to it if the build fails.
pub(crate) fn temp_sibling(out: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(out);
    tempfile::Builder::new()
        .prefix(".kiln-tmp-")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))
}

pub(crate) fn temp_dir_near(out: &Path) -> Result<tempfile::TempDir> {
    let dir = parent_dir(out);
    tempfile::Builder::new()
        .prefix(".kiln-tmp-")
        .tempdir_in(dir)
        .map_err(io_err("creating a temporary directory in", dir))
}

pub(crate) fn parent_dir(out: &Path) -> &Path {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Moves a finished temporary file to `out` with mode 0644.
pub(crate) fn persist(tmp: tempfile::NamedTempFile, out: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("setting permissions of", tmp.path()))?;
    tmp.persist(out).map_err(|e| BootError::Io {
        action: "moving into place",
        path: out.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_v4_shaped_and_role_specific() {
        let id = BootIdentity::new("minimal", "1.0");
        let a = id.uuid("disk");
        assert_eq!(a, BootIdentity::new("minimal", "1.0").uuid("disk"));
        assert_ne!(a, id.uuid("esp"));
        assert_ne!(a, BootIdentity::new("minimal", "1.1").uuid("disk"));
        // Length-prefixed: ("ab","c") and ("a","bc") differ.
        assert_ne!(
            BootIdentity::new("ab", "c").uuid("r"),
            BootIdentity::new("a", "bc").uuid("r")
        );
        let s = a.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_eq!(Uuid::parse_str(&s).ok(), Some(a));
    }

    #[test]
    fn gpt_byte_order_swaps_first_three_fields() {
        let esp = Uuid::parse_str("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").expect("uuid");
        assert_eq!(
            hex::encode(esp.to_bytes_le()),
            "28732ac11ff8d211ba4b00a0c93ec93b"
        );
        assert_eq!(fat_serial_string(0x1234abcd), "1234-ABCD");
    }
}
