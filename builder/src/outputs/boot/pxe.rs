//! PXE bundle: a directory with `vmlinuz`, `initramfs` (built with the root squashfs
//! embedded at `/root.squashfs`, see [`embedded_root`]) and an iPXE script `boot.ipxe`
//! whose kernel command line carries `kiln.root=embedded`.

use std::fs;
use std::path::{Path, PathBuf};

use super::{io_err, parent_dir, BootError, Result, CONSOLE_ARGS, EMBEDDED_ROOT_PATH};
use crate::tree::TreePath;

/// The `embedded` argument of [`super::initramfs::Spec`] for a PXE initramfs.
pub fn embedded_root(root_squashfs: &Path) -> Vec<(TreePath, PathBuf)> {
    vec![(
        TreePath::from_archive(EMBEDDED_ROOT_PATH).unwrap_or_else(|_| TreePath::root()),
        root_squashfs.to_path_buf(),
    )]
}

pub fn boot_script(id: &super::BootIdentity) -> String {
    format!(
        "#!ipxe\n\
         kernel vmlinuz initrd=initramfs {CONSOLE_ARGS} {}\n\
         initrd initramfs\n\
         boot\n",
        id.args("kiln.root=embedded")
    )
}

/// The installer's files in the bundle (see [`super::install`]).
pub struct Installer<'a> {
    /// The small initramfs (no embedded root).
    pub initramfs: &'a Path,
    /// The payload cpio.
    pub payload_cpio: &'a Path,
    /// `boot-install.ipxe`.
    pub script: String,
}

/// Writes the bundle into the directory `out` (created; must not exist or be empty).
pub fn write(
    id: &super::BootIdentity,
    kernel: &Path,
    initramfs: &Path,
    installer: Option<&Installer<'_>>,
    out: &Path,
) -> Result<()> {
    if !kernel.is_file() {
        return Err(BootError::MissingKernel {
            kver: "(any)".into(),
            what: format!("kernel image {}", kernel.display()),
        });
    }
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-tmp-")
        .tempdir_in(parent_dir(out))
        .map_err(io_err("creating a temporary directory in", parent_dir(out)))?;
    let d = tmp.path();
    for (src, name) in [(kernel, "vmlinuz"), (initramfs, "initramfs")] {
        fs::copy(src, d.join(name)).map_err(io_err("copying", src))?;
    }
    let script = d.join("boot.ipxe");
    fs::write(&script, boot_script(id)).map_err(io_err("writing", &script))?;
    let mut names = vec!["vmlinuz", "initramfs", "boot.ipxe"];
    if let Some(i) = installer {
        use super::install::{INSTALLER_INITRAMFS, PAYLOAD_CPIO, SCRIPT};
        for (src, name) in [
            (i.initramfs, INSTALLER_INITRAMFS),
            (i.payload_cpio, PAYLOAD_CPIO),
        ] {
            fs::copy(src, d.join(name)).map_err(io_err("copying", src))?;
        }
        let p = d.join(SCRIPT);
        fs::write(&p, &i.script).map_err(io_err("writing", &p))?;
        names.extend([INSTALLER_INITRAMFS, PAYLOAD_CPIO, SCRIPT]);
    }
    use std::os::unix::fs::PermissionsExt;
    for name in names {
        let p = d.join(name);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
            .map_err(io_err("setting permissions of", &p))?;
    }
    fs::set_permissions(d, fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting permissions of", d))?;
    if out.is_dir() {
        fs::remove_dir(out).map_err(io_err("replacing (must be empty)", out))?;
    }
    let kept = tmp.keep();
    fs::rename(&kept, out).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        io_err("moving into place", out)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::super::{disk::esp_menu, iso::iso_menu, BootIdentity};
    use super::boot_script;

    #[test]
    fn definition_args_reach_every_boot_entry() {
        let plain = BootIdentity::new("n", "1");
        assert!(boot_script(&plain).contains("console=ttyS0,115200 kiln.root=embedded\n"));
        let id = BootIdentity::new("n", "1").with_args("  quiet   kiln.hostname=a ");
        assert_eq!(
            id.uuid("disk"),
            plain.uuid("disk"),
            "args do not change GUIDs"
        );
        assert!(boot_script(&id).contains("kiln.root=embedded quiet kiln.hostname=a\n"));
        assert!(esp_menu(&id).contains("kiln.slot=a quiet kiln.hostname=a"));
        assert!(esp_menu(&id).contains("kiln.slot=b quiet kiln.hostname=a"));
        assert!(iso_menu(&id, None).contains("kiln.root=iso quiet kiln.hostname=a"));
        assert!(!iso_menu(&id, None).contains("kiln.install"));
        // A live-only ISO and the disk boot at once; the install entry gets time to be picked.
        assert!(iso_menu(&id, None).contains("set timeout=1\n"));
        assert!(esp_menu(&id).contains("set timeout=1\n"));
        let with = iso_menu(&id, Some(("auto", "ab12")));
        assert!(with.contains("set timeout=5\n"), "{with}");
        assert!(
            with.contains("initrd /kiln/initramfs /kiln/install.cpio\n"),
            "{with}"
        );
        assert!(
            with.contains("kiln.install=auto kiln.install.sha256=ab12 quiet kiln.hostname=a"),
            "{with}"
        );
        assert!(
            with.find("kiln.root=iso") < with.find("kiln.install="),
            "live stays first"
        );
    }
}
