//! Hybrid ISO: El Torito BIOS (GRUB eltorito image) and UEFI (a FAT EFI image, also
//! appended as a GPT partition), with GRUB's hybrid MBR so `dd` to a USB stick boots.
//! Layout: `/kiln/vmlinuz`, `/kiln/initramfs`, `/kiln/root.squashfs`, volume label
//! `KILN`; the kernel command line carries `kiln.root=iso` (firstboot keeps /var on
//! tmpfs unless a `kiln-data` disk exists).

use std::fs;
use std::path::{Path, PathBuf};

use super::esp::{self, FatFile};
use super::grub::{self, MenuEntry, Platform};
use super::{
    io_err, persist, temp_dir_near, temp_sibling, BootError, BootIdentity, Result, ISO_LABEL,
    ISO_ROOT_PATH,
};
use crate::process::{self, Tool, ToolVersion};

pub struct IsoSpec<'a> {
    pub identity: &'a BootIdentity,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub root_squashfs: &'a Path,
    pub epoch: u64,
    /// The installer's payload, for the "Install to disk" entry.
    pub install: Option<IsoInstall<'a>>,
}

/// What the "Install to disk" entry needs (see [`super::install`]).
#[derive(Debug, Clone, Copy)]
pub struct IsoInstall<'a> {
    /// The payload cpio, stored as `/kiln/install.cpio`.
    pub payload_cpio: &'a Path,
    /// The payload's sha256 (hex).
    pub sha256: &'a str,
    /// `kiln.install=` (e.g. `auto`).
    pub selector: &'a str,
}

/// Where the payload cpio sits on the ISO.
pub const ISO_INSTALL_PATH: &str = "kiln/install.cpio";

/// The ISO's GRUB menu: the live system (default), and "Install to disk" when the ISO
/// carries the payload (`install`: selector and sha256): the payload as a second initrd.
pub fn iso_menu(id: &BootIdentity, install: Option<(&str, &str)>) -> String {
    let mut entries = vec![MenuEntry {
        id: "live".into(),
        title: format!("{} {} (live)", id.name, id.version),
        kernel: "/kiln/vmlinuz".into(),
        initrd: "/kiln/initramfs".into(),
        args: id.args("kiln.root=iso"),
    }];
    if let Some((selector, sha)) = install {
        entries.push(MenuEntry {
            id: "install".into(),
            title: format!("Install {} {} to disk", id.name, id.version),
            kernel: "/kiln/vmlinuz".into(),
            initrd: format!("/kiln/initramfs /{ISO_INSTALL_PATH}"),
            args: id.args(&format!(
                "kiln.install={selector} kiln.install.sha256={sha}"
            )),
        });
    }
    // With an install entry, long enough for a person at the console to pick it.
    let timeout = if install.is_some() {
        ISO_INSTALL_MENU_SECONDS
    } else {
        1
    };
    grub::menu(&entries, timeout)
}

/// How long the ISO's menu waits when it offers "Install to disk".
pub const ISO_INSTALL_MENU_SECONDS: u32 = 5;

pub fn write(spec: &IsoSpec<'_>, out: &Path) -> Result<Vec<ToolVersion>> {
    for (p, what) in [
        (spec.kernel, "kernel"),
        (spec.initramfs, "initramfs"),
        (spec.root_squashfs, "root squashfs"),
    ] {
        if !p.is_file() {
            return Err(if what == "kernel" {
                BootError::MissingKernel {
                    kver: "(any)".into(),
                    what: format!("kernel image {}", p.display()),
                }
            } else {
                io_err("reading", p)(std::io::Error::from(std::io::ErrorKind::NotFound))
            });
        }
    }
    let id = spec.identity;
    let work = temp_dir_near(out)?;
    let w = work.path();
    let early = grub::early_config(
        &format!("search --no-floppy --label --set=root {ISO_LABEL}"),
        "/boot/grub/grub.cfg",
    );
    let bios = grub::mkimage(Platform::BiosCdrom, &early, "/boot/grub", w, spec.epoch)?;
    let bios_path = w.join("bios.img");
    fs::write(&bios_path, bios).map_err(io_err("writing", &bios_path))?;
    let efi = grub::mkimage(Platform::Efi, &early, "/boot/grub", w, spec.epoch)?;
    let efi_bin = w.join("BOOTX64.EFI");
    fs::write(&efi_bin, &efi).map_err(io_err("writing", &efi_bin))?;
    let files = [FatFile {
        dest: "EFI/BOOT/BOOTX64.EFI".into(),
        source: efi_bin,
    }];
    let efi_img = w.join("efi.img");
    let fat_size = esp::needed_size(&files)?.div_ceil(1024 * 1024) * 1024 * 1024;
    esp::write(
        &files,
        fat_size,
        id.fat_serial("iso-efi"),
        "KILN-EFI",
        spec.epoch,
        w,
        &efi_img,
    )?;
    let cfg = w.join("grub.cfg");
    fs::write(
        &cfg,
        iso_menu(id, spec.install.map(|i| (i.selector, i.sha256))),
    )
    .map_err(io_err("writing", &cfg))?;

    let graft =
        |iso: &str, src: &Path| -> PathBuf { PathBuf::from(format!("{iso}={}", src.display())) };
    let mbr = PathBuf::from(grub::GRUB_LIB).join("i386-pc/boot_hybrid.img");
    let tmp = temp_sibling(out)?;
    let disk_guid = id.uuid("iso-gpt").to_string();
    Tool::new("xorriso")
        .reproducible(spec.epoch)
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(tmp.path())
        .args(["-V", ISO_LABEL, "-iso-level", "3", "-r", "-graft-points"])
        .args(["--gpt_disk_guid", &disk_guid])
        .arg("--set_all_file_dates")
        .arg(format!("={}", spec.epoch))
        .args(["-b", "boot/grub/bios.img", "-no-emul-boot"])
        .args([
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "--grub2-boot-info",
        ])
        .arg("--grub2-mbr")
        .arg(&mbr)
        .args(["-append_partition", "2", "0xef"])
        .arg(&efi_img)
        .args(["-appended_part_as_gpt", "-eltorito-alt-boot"])
        .args([
            "-e",
            "--interval:appended_partition_2:all::",
            "-no-emul-boot",
        ])
        .arg(graft("boot/grub/bios.img", &bios_path))
        .arg(graft("boot/grub/grub.cfg", &cfg))
        .arg(graft("kiln/vmlinuz", spec.kernel))
        .arg(graft("kiln/initramfs", spec.initramfs))
        .arg(graft(ISO_ROOT_PATH, spec.root_squashfs))
        .args(
            spec.install
                .map(|i| graft(ISO_INSTALL_PATH, i.payload_cpio)),
        )
        .run()?;
    persist(tmp, out)?;
    let mut tools = vec![
        process::version("xorriso", &["-version"])?,
        grub::version()?,
    ];
    tools.extend(esp::versions()?);
    Ok(tools)
}
