//! `kiln inspect`: what is inside a built output. Partitions and slots of a disk
//! image, the kernel command lines of its boot menu, a summary of the root file
//! system, El Torito entries of an ISO, and the manifest written next to it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::process::Tool;

const SECTOR: u64 = 512;

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Partition {
    pub number: u32,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub bytes: u64,
    pub type_guid: String,
    pub guid: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RootSummary {
    /// `unsquashfs -s` lines of interest.
    pub superblock: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub file: PathBuf,
    pub format: String,
    pub bytes: u64,
    pub partitions: Vec<Partition>,
    /// Root slots and whether each holds a file system.
    pub slots: Vec<(String, bool)>,
    /// `linux` lines of the boot menu: kernel and command line per entry.
    pub kernel_cmdlines: Vec<String>,
    pub root: Option<RootSummary>,
    pub el_torito: Vec<String>,
    pub manifest: Option<serde_json::Value>,
}

/// Mixed-endian GPT GUID bytes as the usual text form.
fn guid_text(g: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes_le(*g).to_string()
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    Ok(Tool::new(program).args(args).run_text()?)
}

/// The raw bytes `[offset, offset+len)` of a disk image (qcow2 through qemu-img).
fn read_range(file: &Path, format: &str, offset: u64, len: u64, tmp: &Path) -> Result<Vec<u8>> {
    if format == "raw" {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(file)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; len as usize];
        f.read_exact(&mut buf)?;
        return Ok(buf);
    }
    // qemu-img dd cannot skip into a qcow2 here; a raw view with an offset can.
    let start = offset / SECTOR * SECTOR;
    let size = (offset + len - start).div_ceil(SECTOR) * SECTOR;
    let out = tmp.join("range.raw");
    let _ = std::fs::remove_file(&out);
    let opts = format!(
        "driver=raw,offset={start},size={size},file.driver={format},file.file.driver=file,file.file.filename={}",
        file.display()
    );
    run(
        "qemu-img",
        &[
            "convert",
            "--image-opts",
            &opts,
            "-O",
            "raw",
            &out.to_string_lossy(),
        ],
    )?;
    let bytes = std::fs::read(&out)?;
    let from = (offset - start) as usize;
    Ok(bytes
        .get(from..from + len as usize)
        .unwrap_or_default()
        .to_vec())
}

fn menu_lines(cfg: &str) -> Vec<String> {
    cfg.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("linux "))
        .map(|l| l.trim_start_matches("linux ").to_string())
        .collect()
}

pub fn inspect(file: &Path) -> Result<Report> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    let tmp = tempfile::tempdir()?;
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let manifest = file
        .parent()
        .map(|d| d.join("manifest.json"))
        .filter(|m| m.is_file())
        .and_then(|m| std::fs::read(m).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut report = Report {
        file: file.to_path_buf(),
        format: ext.to_string(),
        bytes: meta.len(),
        partitions: Vec::new(),
        slots: Vec::new(),
        kernel_cmdlines: Vec::new(),
        root: None,
        el_torito: Vec::new(),
        manifest,
    };
    match ext {
        "raw" | "qcow2" => {
            let head = read_range(file, ext, 0, 34 * SECTOR, tmp.path())?;
            let gpt = firstboot::gpt::Gpt::read(&mut Cursor::new(&head), SECTOR)
                .with_context(|| format!("{}: reading the GPT", file.display()))?;
            for (i, e) in gpt.entries.iter().enumerate() {
                if e.type_guid == [0; 16] {
                    continue;
                }
                report.partitions.push(Partition {
                    number: i as u32 + 1,
                    name: e.name.clone(),
                    first_lba: e.first_lba,
                    last_lba: e.last_lba,
                    bytes: (e.last_lba + 1 - e.first_lba) * SECTOR,
                    type_guid: guid_text(&e.type_guid),
                    guid: guid_text(&e.part_guid),
                });
            }
            for p in &report.partitions {
                if let Some(slot) = p.name.strip_prefix("kiln-root-") {
                    let magic = read_range(file, ext, p.first_lba * SECTOR, 4, tmp.path())?;
                    report.slots.push((slot.to_string(), magic == b"hsqs"));
                }
            }
            if let Some(esp) = report.partitions.iter().find(|p| p.name == "ESP") {
                let img = tmp.path().join("esp.img");
                std::fs::write(
                    &img,
                    read_range(file, ext, esp.first_lba * SECTOR, esp.bytes, tmp.path())?,
                )?;
                let cfg = run("mtype", &["-i", &img.to_string_lossy(), "::/grub/grub.cfg"])?;
                report.kernel_cmdlines = menu_lines(&cfg);
            }
            if ext == "raw" {
                if let Some(a) = report.partitions.iter().find(|p| p.name == "kiln-root-a") {
                    let s = run(
                        "unsquashfs",
                        &[
                            "-s",
                            "-o",
                            &(a.first_lba * SECTOR).to_string(),
                            &file.to_string_lossy(),
                        ],
                    )?;
                    report.root = Some(RootSummary {
                        superblock: s
                            .lines()
                            .filter(|l| {
                                l.starts_with("Filesystem size")
                                    || l.starts_with("Compression")
                                    || l.starts_with("Number of inodes")
                                    || l.starts_with("Creation or last append time")
                            })
                            .map(String::from)
                            .collect(),
                    });
                }
            }
        }
        "iso" => {
            let f = file.to_string_lossy();
            let r = run("xorriso", &["-indev", &f, "-report_el_torito", "plain"])?;
            report.el_torito = r
                .lines()
                .filter(|l| l.starts_with("El Torito"))
                .map(String::from)
                .collect();
            let cfg = tmp.path().join("grub.cfg");
            run(
                "xorriso",
                &[
                    "-osirrox",
                    "on",
                    "-indev",
                    &f,
                    "-extract",
                    "/boot/grub/grub.cfg",
                    &cfg.to_string_lossy(),
                ],
            )?;
            report.kernel_cmdlines = menu_lines(&std::fs::read_to_string(&cfg)?);
        }
        other => bail!(
            "{}: cannot inspect a .{other} file (raw, qcow2 or iso)",
            file.display()
        ),
    }
    Ok(report)
}

/// The human form of a report.
pub fn print(r: &Report) {
    println!("{} ({}, {} bytes)", r.file.display(), r.format, r.bytes);
    if !r.partitions.is_empty() {
        println!("partitions:");
        for p in &r.partitions {
            println!(
                "  {:>2} {:<12} {:>10} MiB  lba {:>9}-{:<9} {}",
                p.number,
                p.name,
                p.bytes >> 20,
                p.first_lba,
                p.last_lba,
                p.guid
            );
        }
    }
    for (slot, full) in &r.slots {
        println!(
            "slot {slot}: {}",
            if *full { "squashfs root" } else { "empty" }
        );
    }
    for l in &r.el_torito {
        println!("{l}");
    }
    for c in &r.kernel_cmdlines {
        println!("boot: {c}");
    }
    if let Some(root) = &r.root {
        println!("root:");
        for l in &root.superblock {
            println!("  {l}");
        }
    }
    if let Some(m) = &r.manifest {
        println!(
            "manifest: {} {} ({} inputs, lock {})",
            m["image"].as_str().unwrap_or_default(),
            m["version"].as_str().unwrap_or_default(),
            m["inputs"].as_array().map_or(0, Vec::len),
            m["lock"].as_str().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_print_mixed_endian() {
        let g = [
            0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
            0x7d, 0xe4,
        ];
        assert_eq!(guid_text(&g), "0fc63daf-8483-4772-8e79-3d69d8477de4");
    }

    #[test]
    fn menu_lines_are_the_linux_commands() {
        let cfg =
            "menuentry 'a' {\n  linux /kiln/a/vmlinuz console=ttyS0 kiln.slot=a\n  initrd x\n}\n";
        assert_eq!(
            menu_lines(cfg),
            ["/kiln/a/vmlinuz console=ttyS0 kiln.slot=a"]
        );
    }
}
