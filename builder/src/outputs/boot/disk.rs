//! The GPT disk (design.md §3): BIOS boot (GRUB core), ESP (GRUB for UEFI, the menu,
//! kernel + initramfs per slot), kiln-root-a (the squashfs), kiln-root-b (empty, same
//! size). Partition 5 (`kiln-data`) is left for firstboot. raw is written sparse;
//! qcow2 is converted from the same bytes.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::esp::{self, FatFile};
use super::gpt::{self, Gpt, Partition, SECTOR};
use super::grub::{self, MenuEntry, Platform};
use super::{
    fat_serial_string, io_err, persist, temp_dir_near, temp_sibling, BootError, BootIdentity,
    Result, Uuid,
};
use crate::process::{self, Tool, ToolVersion};

pub const MIB: u64 = 1024 * 1024;
pub const DEFAULT_DISK_SIZE: u64 = 8 * 1024 * MIB;
pub const DEFAULT_ESP_SIZE: u64 = 256 * MIB;
pub const BIOS_BOOT_SIZE: u64 = MIB;
/// Smallest root slot by default; slot b must hold a future, larger root.
pub const MIN_ROOT_SLOT: u64 = 1024 * MIB;

pub const LABEL_BIOS: &str = "BIOS";
pub const LABEL_ESP: &str = "ESP";
pub const LABEL_ROOT_A: &str = "kiln-root-a";
pub const LABEL_ROOT_B: &str = "kiln-root-b";

pub struct DiskSpec<'a> {
    pub identity: &'a BootIdentity,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub root_squashfs: &'a Path,
    /// Virtual disk size (default [`DEFAULT_DISK_SIZE`]).
    pub disk_size: u64,
    pub esp_size: u64,
    /// Size of each root slot; `None`: max(1 GiB, twice the squashfs), MiB-aligned.
    pub root_slot_size: Option<u64>,
    pub epoch: u64,
}

impl<'a> DiskSpec<'a> {
    pub fn new(
        identity: &'a BootIdentity,
        kernel: &'a Path,
        initramfs: &'a Path,
        root_squashfs: &'a Path,
        epoch: u64,
    ) -> Self {
        DiskSpec {
            identity,
            kernel,
            initramfs,
            root_squashfs,
            disk_size: DEFAULT_DISK_SIZE,
            esp_size: DEFAULT_ESP_SIZE,
            root_slot_size: None,
            epoch,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DiskReport {
    pub tools: Vec<ToolVersion>,
    pub partitions: Vec<Partition>,
    pub disk_guid: Uuid,
    pub esp_serial: u32,
}

fn size_of(p: &Path, what: &str) -> Result<u64> {
    match fs::metadata(p) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && what == "kernel" => {
            Err(BootError::MissingKernel {
                kver: String::from("(any)"),
                what: format!("kernel image {}", p.display()),
            })
        }
        Err(e) => Err(io_err("reading", p)(e)),
    }
}

/// Plans the partitions; fails before anything is written when the payload does not fit.
pub fn layout(spec: &DiskSpec<'_>, squashfs_size: u64) -> Result<Gpt> {
    let align = |n: u64| n.div_ceil(MIB) * MIB;
    let slot = match spec.root_slot_size {
        Some(s) => {
            let s = align(s);
            if squashfs_size > s {
                return Err(BootError::TooLarge {
                    what: format!("root squashfs {}", spec.root_squashfs.display()),
                    size: squashfs_size,
                    limit: s,
                });
            }
            s
        }
        None => align(MIN_ROOT_SLOT.max(2 * squashfs_size)),
    };
    let esp = align(spec.esp_size);
    // 1 MiB for the GPT and alignment in front, 1 MiB for the backup GPT at the end.
    let needed = MIB + BIOS_BOOT_SIZE + esp + 2 * slot + MIB;
    if needed > spec.disk_size || !spec.disk_size.is_multiple_of(SECTOR) {
        return Err(BootError::DoesNotFit {
            what: format!(
                "BIOS boot (1 MiB) + ESP ({} MiB) + two root slots ({} MiB each)",
                esp / MIB,
                slot / MIB
            ),
            needed,
            size: spec.disk_size,
        });
    }
    let id = spec.identity;
    let part = |label: &str, ty: &str, start: u64, size: u64| -> Result<Partition> {
        Ok(Partition {
            label: label.to_string(),
            type_guid: Uuid::parse_str(ty).map_err(|_| BootError::BadPath {
                path: ty.to_string(),
                reason: "bad type GUID constant",
            })?,
            guid: id.uuid(&format!("partition:{label}")),
            first_lba: start / SECTOR,
            last_lba: (start + size) / SECTOR - 1,
            attributes: 0,
        })
    };
    let mut at = MIB;
    let mut parts = Vec::new();
    for (label, ty, size) in [
        (LABEL_BIOS, gpt::TYPE_BIOS_BOOT, BIOS_BOOT_SIZE),
        (LABEL_ESP, gpt::TYPE_ESP, esp),
        (LABEL_ROOT_A, gpt::TYPE_ROOT_X86_64, slot),
        (LABEL_ROOT_B, gpt::TYPE_ROOT_X86_64, slot),
    ] {
        parts.push(part(label, ty, at, size)?);
        at += size;
    }
    Ok(Gpt {
        disk_guid: id.uuid("disk"),
        disk_size: spec.disk_size,
        partitions: parts,
    })
}

/// The GRUB menu on the ESP: slot a (default) and slot b.
pub fn esp_menu(id: &BootIdentity) -> String {
    let entry = |slot: &str| MenuEntry {
        id: format!("slot-{slot}"),
        title: format!("{} {} (slot {slot})", id.name, id.version),
        kernel: format!("/kiln/{slot}/vmlinuz"),
        initrd: format!("/kiln/{slot}/initramfs"),
        args: id.args(&format!("kiln.slot={slot}")),
    };
    // Slot B is chosen by the boot counter, not by hand: a short menu.
    grub::menu(&[entry("a"), entry("b")], 1)
}

/// Writes the raw disk image at `out` (sparse).
pub fn write_raw(spec: &DiskSpec<'_>, out: &Path) -> Result<DiskReport> {
    size_of(spec.kernel, "kernel")?;
    size_of(spec.initramfs, "initramfs")?;
    let sq_size = size_of(spec.root_squashfs, "root squashfs")?;
    let gpt = layout(spec, sq_size)?;
    let id = spec.identity;
    let work = temp_dir_near(out)?;
    let w = work.path();

    // GRUB: BIOS core in partition 1, EFI binary on the ESP; both find the ESP by its
    // (derived) FAT serial and read the same menu.
    let serial = id.fat_serial("esp");
    let early = grub::early_config(
        &format!(
            "search --no-floppy --fs-uuid --set=root {}",
            fat_serial_string(serial)
        ),
        "/grub/grub.cfg",
    );
    let bios = &gpt.partitions[0];
    let mut core = grub::mkimage(Platform::BiosDisk, &early, "/grub", w, spec.epoch)?;
    let core_room = (bios.last_lba - bios.first_lba + 1) * SECTOR;
    if core.len() as u64 > core_room {
        return Err(BootError::TooLarge {
            what: "GRUB core.img".into(),
            size: core.len() as u64,
            limit: core_room,
        });
    }
    grub::patch_core_blocklist(&mut core, bios.first_lba);
    let mbr_code = grub::mbr_boot_code(bios.first_lba)?;
    let efi = grub::mkimage(Platform::Efi, &early, "/grub", w, spec.epoch)?;
    let efi_path = w.join("BOOTX64.EFI");
    fs::write(&efi_path, &efi).map_err(io_err("writing", &efi_path))?;
    let cfg_path = w.join("grub.cfg");
    fs::write(&cfg_path, esp_menu(id)).map_err(io_err("writing", &cfg_path))?;

    let mut files = vec![
        FatFile {
            dest: "EFI/BOOT/BOOTX64.EFI".into(),
            source: efi_path,
        },
        FatFile {
            dest: "grub/grub.cfg".into(),
            source: cfg_path,
        },
    ];
    for slot in ["a", "b"] {
        files.push(FatFile {
            dest: format!("kiln/{slot}/vmlinuz"),
            source: spec.kernel.to_path_buf(),
        });
        files.push(FatFile {
            dest: format!("kiln/{slot}/initramfs"),
            source: spec.initramfs.to_path_buf(),
        });
    }
    let esp_part = &gpt.partitions[1];
    let esp_size = (esp_part.last_lba - esp_part.first_lba + 1) * SECTOR;
    let needed = esp::needed_size(&files)?;
    if needed > esp_size {
        return Err(BootError::TooLarge {
            what: "ESP contents (GRUB, menu, kernel and initramfs for two slots)".into(),
            size: needed,
            limit: esp_size,
        });
    }
    let esp_img = w.join("esp.img");
    esp::write(&files, esp_size, serial, "ESP", spec.epoch, w, &esp_img)?;

    let tmp = temp_sibling(out)?;
    let mut f = tmp
        .as_file()
        .try_clone()
        .map_err(io_err("opening", tmp.path()))?;
    f.set_len(spec.disk_size)
        .map_err(io_err("sizing", tmp.path()))?;
    gpt.write(&mut f, Some(&mbr_code))
        .map_err(io_err("writing GPT to", tmp.path()))?;
    write_at(&mut f, bios.first_lba * SECTOR, &mut &core[..], tmp.path())?;
    let mut esp_f = File::open(&esp_img).map_err(io_err("opening", &esp_img))?;
    write_at(&mut f, esp_part.first_lba * SECTOR, &mut esp_f, tmp.path())?;
    let mut sq = File::open(spec.root_squashfs).map_err(io_err("opening", spec.root_squashfs))?;
    write_at(
        &mut f,
        gpt.partitions[2].first_lba * SECTOR,
        &mut sq,
        tmp.path(),
    )?;
    f.sync_all().map_err(io_err("syncing", tmp.path()))?;
    drop(f);
    persist(tmp, out)?;

    let mut tools = vec![grub::version()?];
    tools.extend(esp::versions()?);
    Ok(DiskReport {
        tools,
        partitions: gpt.partitions.clone(),
        disk_guid: gpt.disk_guid,
        esp_serial: serial,
    })
}

/// Copies `src` to `offset`, seeking over all-zero blocks so the output stays sparse.
fn write_at(f: &mut File, offset: u64, src: &mut dyn Read, path: &Path) -> Result<()> {
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; BLOCK];
    let mut pos = offset;
    loop {
        let mut n = 0;
        while n < BLOCK {
            match src.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading into", path)(e)),
            }
        }
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|b| *b != 0) {
            f.seek(SeekFrom::Start(pos))
                .and_then(|_| f.write_all(&buf[..n]))
                .map_err(io_err("writing", path))?;
        }
        pos += n as u64;
        if n < BLOCK {
            return Ok(());
        }
    }
}

/// Converts a raw image to qcow2 with `qemu-img convert` (in-order writes, no
/// compression: identical input gives identical output).
pub fn to_qcow2(raw: &Path, out: &Path, epoch: u64) -> Result<ToolVersion> {
    let version = process::version("qemu-img", &["--version"])?;
    let tmp = temp_sibling(out)?;
    Tool::new("qemu-img")
        .reproducible(epoch)
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(tmp.path())
        .run()?;
    persist(tmp, out)?;
    Ok(version)
}
