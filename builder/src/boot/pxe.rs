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

pub fn boot_script() -> String {
    format!(
        "#!ipxe\n\
         kernel vmlinuz initrd=initramfs {CONSOLE_ARGS} kiln.root=embedded\n\
         initrd initramfs\n\
         boot\n"
    )
}

/// Writes the bundle into the directory `out` (created; must not exist or be empty).
pub fn write(kernel: &Path, initramfs: &Path, out: &Path) -> Result<()> {
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
    fs::write(&script, boot_script()).map_err(io_err("writing", &script))?;
    use std::os::unix::fs::PermissionsExt;
    for name in ["vmlinuz", "initramfs", "boot.ipxe"] {
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
