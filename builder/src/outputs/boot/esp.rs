//! FAT images (the disk's ESP, the ISO's EFI image) with `mkfs.fat --invariant` and a
//! serial derived from the image identity, filled with mtools (no mounting: this
//! machine's kernel has no vfat). File times are the epoch.

use std::collections::BTreeSet;
use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{io_err, Result};
use crate::process::{self, Tool, ToolVersion};

/// One file to put on the FAT: `dest` like `EFI/BOOT/BOOTX64.EFI`.
pub struct FatFile {
    pub dest: String,
    pub source: PathBuf,
}

pub fn versions() -> Result<Vec<ToolVersion>> {
    Ok(vec![
        process::version("mkfs.fat", &["--help"])?,
        process::version("mcopy", &["--version"])?,
    ])
}

/// Bytes of file data plus a margin for FAT metadata; callers size the image from it.
pub fn needed_size(files: &[FatFile]) -> Result<u64> {
    let mut total = 0;
    for f in files {
        total += fs::metadata(&f.source)
            .map_err(io_err("reading", &f.source))?
            .len()
            .div_ceil(4096)
            * 4096;
    }
    Ok(total + total / 16 + 2 * 1024 * 1024)
}

/// Creates a FAT image of `size` bytes at `out` holding `files`.
pub fn write(
    files: &[FatFile],
    size: u64,
    serial: u32,
    label: &str,
    epoch: u64,
    work: &Path,
    out: &Path,
) -> Result<()> {
    let kib = size / 1024;
    let mut mkfs = Tool::new("mkfs.fat");
    mkfs.reproducible(epoch)
        .arg("--invariant")
        .arg("-i")
        .arg(format!("{serial:08X}"))
        .arg("-n")
        .arg(label);
    if size >= 64 * 1024 * 1024 {
        mkfs.args(["-F", "32"]);
    }
    mkfs.arg("-C").arg(out).arg(kib.to_string()).run()?;

    // Stage each file with the epoch as its mtime, which `mcopy -m` keeps.
    let stage = work.join("fat-stage");
    fs::create_dir_all(&stage).map_err(io_err("creating", &stage))?;
    let t = UNIX_EPOCH + Duration::from_secs(epoch);
    let mut dirs = BTreeSet::new();
    for f in files {
        let parts: Vec<&str> = f.dest.split('/').collect();
        for i in 1..parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
    }
    let mtools = |prog: &str| {
        let mut t = Tool::new(prog);
        t.reproducible(epoch)
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("MTOOLSRC", "/dev/null")
            .arg("-i")
            .arg(out);
        t
    };
    for d in &dirs {
        mtools("mmd").arg(format!("::/{d}")).run()?;
    }
    for (i, f) in files.iter().enumerate() {
        let staged = stage.join(format!("{i}"));
        fs::copy(&f.source, &staged).map_err(io_err("copying", &f.source))?;
        File::options()
            .write(true)
            .open(&staged)
            .and_then(|h| h.set_times(FileTimes::new().set_modified(t).set_accessed(t)))
            .map_err(io_err("setting times of", &staged))?;
        mtools("mcopy")
            .args(["-m", "-o"])
            .arg(&staged)
            .arg(format!("::/{}", f.dest))
            .run()?;
    }
    Ok(())
}
