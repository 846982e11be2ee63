//! GRUB images and configuration, built with `grub-mkimage` from Debian's
//! grub-pc-bin and grub-efi-amd64-bin. All modules are built into the images and an
//! early config finds the boot file system, so nothing else of GRUB is installed.
//! BIOS disk boot follows grub-bios-setup: boot.img in the MBR pointing at core.img,
//! whose first sector's block list points at the rest of it.

use std::path::{Path, PathBuf};

use super::{io_err, Result, CONSOLE_ARGS};
use crate::process::{self, Tool, ToolVersion};

/// Where Debian installs GRUB's platform directories.
pub const GRUB_LIB: &str = "/usr/lib/grub";

/// Modules common to every image: find the boot file system, read the menu, boot Linux,
/// talk on the serial console.
const COMMON: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "iso9660",
    "search",
    "search_fs_uuid",
    "search_label",
    "configfile",
    "normal",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "sleep",
    "halt",
    "reboot",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// i386-pc core.img for a BIOS boot partition (starts with diskboot.img).
    BiosDisk,
    /// i386-pc El Torito image (starts with cdboot.img).
    BiosCdrom,
    /// x86_64-efi `BOOTX64.EFI`.
    Efi,
}

impl Platform {
    fn format(self) -> &'static str {
        match self {
            Platform::BiosDisk => "i386-pc",
            Platform::BiosCdrom => "i386-pc-eltorito",
            Platform::Efi => "x86_64-efi",
        }
    }
    fn dir(self) -> &'static str {
        match self {
            Platform::BiosDisk | Platform::BiosCdrom => "i386-pc",
            Platform::Efi => "x86_64-efi",
        }
    }
}

pub fn version() -> Result<ToolVersion> {
    Ok(process::version("grub-mkimage", &["--version"])?)
}

/// Builds a GRUB image whose embedded `early_cfg` runs first; `prefix` is where GRUB
/// would look for modules (unused: all are built in).
pub fn mkimage(
    platform: Platform,
    early_cfg: &str,
    prefix: &str,
    work: &Path,
    epoch: u64,
) -> Result<Vec<u8>> {
    let cfg = work.join(format!("early-{}.cfg", platform.format()));
    std::fs::write(&cfg, early_cfg).map_err(io_err("writing", &cfg))?;
    let out = work.join(format!("grub-{}.img", platform.format()));
    let mut mods: Vec<&str> = COMMON.to_vec();
    match platform {
        Platform::BiosDisk | Platform::BiosCdrom => mods.push("biosdisk"),
        Platform::Efi => mods.extend(["efi_gop", "efi_uga"]),
    }
    Tool::new("grub-mkimage")
        .reproducible(epoch)
        .arg("-O")
        .arg(platform.format())
        .arg("-d")
        .arg(PathBuf::from(GRUB_LIB).join(platform.dir()))
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&cfg)
        .arg("-o")
        .arg(&out)
        .args(&mods)
        .run()?;
    std::fs::read(&out).map_err(io_err("reading", &out))
}

/// The early config: find the file system holding the menu, then read it.
pub fn early_config(search: &str, cfg_path: &str) -> String {
    format!(
        "{search}\nset prefix=($root){}\nconfigfile ($root){cfg_path}\n",
        cfg_path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    )
}

/// One boot menu entry.
pub struct MenuEntry {
    pub id: String,
    pub title: String,
    pub kernel: String,
    pub initrd: String,
    /// Arguments after the console ones.
    pub args: String,
}

/// The menu: serial + screen, first entry default, `timeout` seconds to choose another.
/// Locked: `superusers` names a user no password is set for, so nobody can edit an entry's
/// kernel command line (`init=/bin/sh` would be a root shell) or reach GRUB's command line;
/// every entry is `--unrestricted`, so choosing one needs no password.
pub fn menu(entries: &[MenuEntry], timeout: u32) -> String {
    let mut s = format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set superusers=\"kiln\"\n\
         set default=0\n\
         set timeout={timeout}\n",
    );
    for e in entries {
        s.push_str(&format!(
            "menuentry '{}' --id {} --unrestricted {{\n  linux {} {CONSOLE_ARGS} {}\n  initrd {}\n}}\n",
            e.title, e.id, e.kernel, e.args, e.initrd
        ));
    }
    s
}

/// boot.img from GRUB, its drive-check jump replaced by NOPs (hard disk) and its
/// kernel-sector field pointing at `core_lba`. Returns the 440 bytes of MBR code.
pub fn mbr_boot_code(core_lba: u64) -> Result<Vec<u8>> {
    let path = PathBuf::from(GRUB_LIB).join("i386-pc/boot.img");
    let mut b = std::fs::read(&path).map_err(io_err("reading", &path))?;
    if b.len() != 512 {
        return Err(super::BootError::BadPath {
            path: path.display().to_string(),
            reason: "boot.img is not 512 bytes",
        });
    }
    // GRUB_BOOT_MACHINE_KERNEL_SECTOR = 0x5c, _BOOT_DRIVE = 0x64, _DRIVE_CHECK = 0x66.
    b[0x5c..0x64].copy_from_slice(&core_lba.to_le_bytes());
    b[0x64] = 0xff;
    b[0x66] = 0x90;
    b[0x67] = 0x90;
    b.truncate(440);
    Ok(b)
}

/// Points diskboot.img's block list (the last 12 bytes of core.img's first sector)
/// at the remaining sectors of core.img, stored contiguously from `core_lba + 1`.
pub fn patch_core_blocklist(core: &mut [u8], core_lba: u64) {
    let sectors = core.len().div_ceil(512) as u16;
    let bl = 512 - 12;
    core[bl..bl + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[bl + 8..bl + 10].copy_from_slice(&(sectors - 1).to_le_bytes());
    // GRUB_BOOT_I386_PC_KERNEL_SEG (0x800) + one sector (0x20).
    core[bl + 10..bl + 12].copy_from_slice(&0x820u16.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn menu_always_carries_the_consoles() {
        let m = menu(
            &[MenuEntry {
                id: "slot-a".into(),
                title: "a".into(),
                kernel: "/kiln/a/vmlinuz".into(),
                initrd: "/kiln/a/initramfs".into(),
                args: "kiln.slot=a".into(),
            }],
            1,
        );
        assert!(m.contains("linux /kiln/a/vmlinuz console=tty0 console=ttyS0,115200 kiln.slot=a\n"));
        // Locked: a superuser nobody can log in as; the entry boots without one.
        assert!(m.contains("set superusers=\"kiln\"\n"), "{m}");
        assert!(!m.contains("password"), "{m}");
        assert!(
            m.contains("menuentry 'a' --id slot-a --unrestricted {"),
            "{m}"
        );
    }

    #[test]
    fn blocklist_covers_the_rest_of_core() {
        let mut core = vec![0u8; 512 * 10 + 7];
        patch_core_blocklist(&mut core, 2048);
        assert_eq!(
            u64::from_le_bytes(core[500..508].try_into().expect("8")),
            2049
        );
        assert_eq!(u16::from_le_bytes([core[508], core[509]]), 10);
    }
}
