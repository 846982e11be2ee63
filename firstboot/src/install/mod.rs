//! Installer mode of stage 1 (`kiln.install=<selector>` on the kernel command line): writes
//! the install payload (the image up to the end of `kiln-root-a`, see [`payload`]) to the
//! chosen disk and reboots into it. `kiln-data` is left for the installed system's first
//! boot to create.
//!
//! Order: check the payload's structure; find the disk (or list every disk and why it was
//! ruled out, and wait); the safety rule (no filesystem or kiln-data without
//! `kiln.install.wipe=true`); the payload's sha256 against `kiln.install.sha256` (nothing is
//! written before it matches); the partition table rehearsed on a temporary file of the
//! disk's size (backup GPT moved to the real end, both checked); the write (partitions
//! first, partition tables last); read back and hash; on failure the original first and last
//! MiB (where the partition tables live) are put back.

pub mod disks;
pub mod efi;
pub mod payload;
pub mod select;

use std::fs::{File, OpenOptions};
use std::io::Cursor;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::cmdline::Cmdline;
use crate::gpt::{self, Gpt};
use crate::stage1::{wait_for, Layout, Stage1Error};
use crate::sys::Sys;
use payload::{Extent, Payload};
use select::{human_size, Disk, Selector};

mod io;
mod plan;
mod rehearse;
mod report;

use io::*;
pub use plan::*;
pub use rehearse::*;
pub use report::*;

/// Where the payload is inside the initramfs (the second initrd's cpio puts it there).
pub const PAYLOAD_PATH: &str = "kiln/install.img";
/// The region at the start of the disk that holds the MBR and primary GPT (the image's
/// first partition starts here).
pub const HEAD: u64 = 1 << 20;
/// The region at the end of the disk that holds the backup GPT.
pub const TAIL: u64 = 1 << 20;
/// How long to wait for a matching disk to appear.
pub const DISK_WAIT_MS: u64 = 15_000;
/// I/O chunk.
const CHUNK: usize = 1 << 20;
/// Progress lines at most this often.
const PROGRESS_EVERY_MS: u64 = 5_000;

fn fail(step: &'static str, detail: impl std::fmt::Display) -> Stage1Error {
    Stage1Error {
        step,
        detail: detail.to_string(),
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub selector: Selector,
    /// `kiln.install.wipe=true`: overwrite disks holding filesystems or kiln-data.
    pub wipe: bool,
    /// `kiln.install.sha256=`: the payload file's sha256, lowercase hex.
    pub sha256: String,
    /// The payload file.
    pub payload: PathBuf,
}

impl Options {
    /// `None` without `kiln.install`; an error for a bad selector or a missing sha256.
    pub fn from_cmdline(c: &Cmdline, l: &Layout) -> Result<Option<Options>, Stage1Error> {
        let Some(sel) = c.get("kiln.install") else {
            return Ok(None);
        };
        let selector = select::parse(sel).map_err(|e| fail("reading kiln.install", e))?;
        let wipe = matches!(c.get("kiln.install.wipe"), Some("true" | "1" | "yes"));
        let sha = c.get("kiln.install.sha256").unwrap_or_default();
        let sha = sha
            .strip_prefix("sha256:")
            .unwrap_or(sha)
            .to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(
                "reading kiln.install.sha256",
                format!(
                    "{sha:?} is not a sha256 (64 hex digits); the installer needs the payload's"
                ),
            ));
        }
        Ok(Some(Options {
            selector,
            wipe,
            sha256: sha,
            payload: l.inside(PAYLOAD_PATH),
        }))
    }
}

/// What the payload's GPT says about the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image's disk size (its backup GPT's LBA + 1, in bytes): the smallest target.
    pub disk_size: u64,
    /// Partition names, in table order.
    pub partitions: Vec<String>,
    /// The ESP, for a UEFI boot entry.
    pub esp: Option<efi::Esp>,
}

impl ImageInfo {
    /// Reads the GPT in the payload's first [`HEAD`] bytes.
    pub fn from_head(head: &[u8]) -> Result<ImageInfo, String> {
        let g = Gpt::read(&mut Cursor::new(head), 512).map_err(|e| e.to_string())?;
        let used: Vec<&gpt::Entry> = g
            .entries
            .iter()
            .filter(|e| e.type_guid != [0; 16])
            .collect();
        if let Some(e) = used.iter().find(|e| e.first_lba * 512 < HEAD) {
            return Err(format!(
                "partition {:?} starts inside the first MiB",
                e.name
            ));
        }
        Ok(ImageInfo {
            disk_size: (g.alternate_lba() + 1) * 512,
            partitions: used.iter().map(|e| e.name.clone()).collect(),
            esp: efi::Esp::from_gpt(&g),
        })
    }
}

/// The files [`install_to`] works on.
#[derive(Debug, Clone, Copy)]
pub struct Paths<'a> {
    /// The disk (or, in tests, an image file of the disk's size).
    pub node: &'a Path,
    /// A directory for the rehearsal file.
    pub tmp: &'a Path,
    /// /proc/sys/vm/drop_caches, written before reading back.
    pub drop_caches: Option<&'a Path>,
    /// Where the report is published at each phase (/run/kiln/install.json).
    pub status: Option<&'a Path>,
}

/// Everything after the disk is chosen: sha256, rehearsal, write, read-back.
pub fn install_to(
    sys: &dyn Sys,
    paths: Paths<'_>,
    disk: &Disk,
    payload: &mut Payload,
    opts: &Options,
    say: &dyn Fn(&str),
) -> Result<Report, Stage1Error> {
    let mut report = Report {
        disk: disk.path(),
        disk_size: disk.size,
        payload_bytes: payload.file_size,
        ..Report::default()
    };
    match install_steps(sys, paths, disk, payload, opts, say, &mut report) {
        Ok(()) => {
            report.state = "done";
            publish(paths.status, &report);
            Ok(report)
        }
        Err(e) => Err(failed(paths.status, &mut report, e)),
    }
}

/// The phases of [`install_to`], filling in `report` and publishing it as they go.
fn install_steps(
    sys: &dyn Sys,
    paths: Paths<'_>,
    disk: &Disk,
    payload: &mut Payload,
    opts: &Options,
    say: &dyn Fn(&str),
    report: &mut Report,
) -> Result<(), Stage1Error> {
    let (node, tmp, drop_caches) = (paths.node, paths.tmp, paths.drop_caches);
    report.state = "checking-payload";
    publish(paths.status, report);
    let t0 = sys.monotonic_ms();
    let mut pr = Progress::new(sys, say, "checked payload", payload.file_size);
    let sha = payload
        .sha256(&mut |n| pr.update(n))
        .map_err(|e| fail("checking the payload", e))?;
    if sha != opts.sha256 {
        return Err(fail(
            "checking the payload",
            format!(
                "its sha256 is {sha} but kiln.install.sha256 is {}: refused, nothing written",
                opts.sha256
            ),
        ));
    }
    report.payload_sha256 = sha;
    say(&format!(
        "kiln: install: payload sha256 matches ({} bytes)",
        payload.file_size
    ));
    let head = payload
        .read_range(0, HEAD as usize)
        .map_err(|e| fail("reading the payload's partition table", e))?;
    let r =
        rehearse(&head, disk.size, tmp).map_err(|e| fail("rehearsing the partition table", e))?;
    say(&format!(
        "kiln: install: partition table rehearsed on a temporary {} file: primary and backup GPT valid{}",
        human_size(disk.size),
        if r.moved { ", backup GPT moved to the end of the disk" } else { "" }
    ));
    report.backup_gpt_moved = r.moved;
    let offsets: Vec<u64> = (0..payload.extents.len())
        .map(|i| payload.data_offset(i))
        .collect();
    let regions = plan(
        payload.logical_len,
        &payload.extents,
        &offsets,
        r.head,
        r.tail_offset,
        r.tail,
        &r.zeros,
    )
    .map_err(|e| fail("planning the write", e))?;
    let total: u64 = regions.iter().map(|r| r.len).sum();
    report.bytes_written = total;
    report
        .phases
        .push(("payload".into(), sys.monotonic_ms() - t0));

    // The original partition tables, put back if anything below fails.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .map_err(|e| fail("opening the disk", format!("{}: {e}", node.display())))?;
    let mut orig_head = vec![0u8; HEAD as usize];
    let mut orig_tail = vec![0u8; TAIL.min(disk.size) as usize];
    let tail_at = disk.size - orig_tail.len() as u64;
    f.read_exact_at(&mut orig_head, 0)
        .and_then(|_| f.read_exact_at(&mut orig_tail, tail_at))
        .map_err(|e| fail("saving the disk's partition tables", e))?;
    let restore = |why: String| -> Stage1Error {
        let ok = f
            .write_all_at(&orig_tail, tail_at)
            .and_then(|_| f.write_all_at(&orig_head, 0))
            .and_then(|_| f.sync_all());
        let what = match ok {
            Ok(()) => "the original partition tables were restored",
            Err(_) => "restoring the original partition tables failed too",
        };
        fail("installing", format!("{why}; {what}"))
    };

    say(&format!(
        "kiln: install: writing {} to {}",
        human_size(total),
        disk.path()
    ));
    report.state = "writing";
    publish(paths.status, report);
    let t1 = sys.monotonic_ms();
    let mut pr = Progress::new(sys, say, "wrote", total);
    let written = write_regions(&f, &regions, payload, &mut pr).map_err(restore)?;
    f.sync_all()
        .map_err(|e| restore(format!("flushing the disk: {e}")))?;
    report
        .phases
        .push(("write".into(), pr.finish().max(sys.monotonic_ms() - t1)));

    // Read back from the disk, not the page cache.
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    if let Some(p) = drop_caches {
        if let Ok(dc) = OpenOptions::new().write(true).open(p) {
            let _ = dc.write_all_at(b"1\n", 0);
        }
    }
    let rd = File::open(node).map_err(|e| restore(format!("reopening the disk: {e}")))?;
    report.state = "verifying";
    publish(paths.status, report);
    let t2 = sys.monotonic_ms();
    let mut pr = Progress::new(sys, say, "verified", total);
    let read_back = read_regions(&rd, &regions, &mut pr).map_err(restore)?;
    pr.finish();
    report
        .phases
        .push(("verify".into(), sys.monotonic_ms() - t2));
    if read_back != written {
        return Err(restore(format!(
            "read-back sha256 {read_back} differs from the written {written}"
        )));
    }
    say(&format!(
        "kiln: install: verified: read-back sha256 {read_back} matches what was written, zero ranges read back as zeros"
    ));
    Ok(())
}

/// The installer: finds the disk, checks, writes, verifies. The caller reboots.
pub fn run(
    sys: &dyn Sys,
    l: &Layout,
    opts: &Options,
    say: &dyn Fn(&str),
) -> Result<Report, Stage1Error> {
    let tmp = l.run().join("kiln");
    std::fs::create_dir_all(&tmp)
        .map_err(|e| fail("creating a directory", format!("{}: {e}", tmp.display())))?;
    let status = tmp.join("install.json");
    let mut early = Report {
        state: "choosing-disk",
        ..Report::default()
    };
    publish(Some(&status), &early);
    let (mut p, image, disk) =
        choose_disk(sys, l, opts, say).map_err(|e| failed(Some(&status), &mut early, e))?;
    say(&format!("kiln: install: target {}", disk.describe()));
    let drop_caches = l.proc().join("sys/vm/drop_caches");
    let node = l.dev().join(&disk.name);
    let paths = Paths {
        node: &node,
        tmp: &tmp,
        drop_caches: Some(&drop_caches),
        status: Some(&status),
    };
    let report = install_to(sys, paths, &disk, &mut p, opts, say)?;
    if l.sys().join("firmware/efi").is_dir() {
        match uefi_entry(sys, l, &image, &disk.name) {
            Ok(line) => say(&format!("kiln: install: {line}")),
            // The removable-media path still boots the disk; say why there is no entry.
            Err(e) => say(&format!("kiln: install: no UEFI boot entry: {e}")),
        }
    }
    let ms = |name: &str| {
        report
            .phases
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    };
    say(&format!(
        "kiln: install: done: {} written to {} in {:.1} s, verified in {:.1} s",
        human_size(report.bytes_written),
        report.disk,
        ms("write") as f64 / 1000.0,
        ms("verify") as f64 / 1000.0
    ));
    Ok(report)
}

/// Opens the payload and picks the disk it goes to, listing every disk and why it was
/// or was not chosen; refuses a disk that holds data unless wiping was asked for.
fn choose_disk(
    sys: &dyn Sys,
    l: &Layout,
    opts: &Options,
    say: &dyn Fn(&str),
) -> Result<(Payload, ImageInfo, Disk), Stage1Error> {
    let mut p = Payload::open(&opts.payload).map_err(|e| {
        fail(
            "opening the install payload",
            format!("{}: {e}", opts.payload.display()),
        )
    })?;
    let head = p
        .read_range(0, HEAD as usize)
        .map_err(|e| fail("reading the payload's partition table", e))?;
    let image = ImageInfo::from_head(&head).map_err(|e| fail("reading the payload's GPT", e))?;
    say(&format!(
        "kiln: install: payload {} ({} bytes, {} extents, image {} with {})",
        opts.payload.display(),
        p.file_size,
        p.extents.len(),
        human_size(image.disk_size),
        image.partitions.join(", ")
    ));
    let sys_block = l.sys().join("block");
    let found = wait_for(sys, DISK_WAIT_MS, || {
        let disks = disks::scan(&sys_block, &l.dev());
        select::choose(&opts.selector, &disks, image.disk_size)
            .is_some()
            .then_some(disks)
    });
    let disks = found.unwrap_or_else(|| disks::scan(&sys_block, &l.dev()));
    for line in select::report(&opts.selector, &disks, image.disk_size) {
        say(&format!("kiln: install: {line}"));
    }
    let Some(disk) = select::choose(&opts.selector, &disks, image.disk_size) else {
        return Err(fail(
            "choosing the install disk",
            format!(
                "no disk matches kiln.install={}; nothing written (the list above says why each disk was ruled out)",
                opts.selector
            ),
        ));
    };
    select::safety(disk, opts.wipe).map_err(|e| fail("checking the install disk", e))?;
    Ok((p, image, disk.clone()))
}

/// Mounts efivarfs and adds the installed disk's boot entry (see [`efi`]).
fn uefi_entry(sys: &dyn Sys, l: &Layout, image: &ImageInfo, disk: &str) -> Result<String, String> {
    let esp = image.esp.as_ref().ok_or("the image has no ESP partition")?;
    let dir = l.sys().join("firmware/efi/efivars");
    match sys.mount(
        "efivarfs",
        &dir,
        "efivarfs",
        crate::sys::MountFlags::NOSUID
            | crate::sys::MountFlags::NODEV
            | crate::sys::MountFlags::NOEXEC,
        "",
    ) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(16) => {} // EBUSY: already mounted
        Err(e) => return Err(format!("mounting efivarfs on {}: {e}", dir.display())),
    }
    let option = efi::load_option(&format!("Kiln ({disk})"), esp, efi::LOADER);
    let e = efi::add_entry(&dir, &option)?;
    let order: Vec<String> = e.order.iter().map(|n| format!("{n:04X}")).collect();
    Ok(format!(
        "UEFI boot entry Boot{:04X} \"Kiln ({disk})\" ({}), BootNext={:04X}, BootOrder={}",
        e.number,
        if e.reused { "already there" } else { "added" },
        e.number,
        order.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RecordingSys;
    use std::process::Command;

    #[test]
    fn plan_clips_the_head_and_writes_tables_last() {
        let ext = [
            Extent {
                offset: 0,
                len: 4096,
            },
            Extent {
                offset: HEAD - 4096,
                len: 8192,
            },
            Extent {
                offset: 3 * HEAD,
                len: 100,
            },
        ];
        let offs = [40, 4136, 12328];
        let p = plan(
            4 * HEAD,
            &ext,
            &offs,
            vec![7; HEAD as usize],
            9 * HEAD,
            vec![8; 10],
            &[
                (5 * HEAD, HEAD),
                (HEAD, HEAD),     // inside the image's span: dropped
                (9 * HEAD, HEAD), // overlaps the tail: dropped
            ],
        )
        .unwrap();
        let brief: Vec<(u64, u64, &str)> = p
            .iter()
            .map(|r| {
                let s = match r.source {
                    Source::Payload(o) if o == 4136 + 4096 => "payload 2",
                    Source::Payload(12328) => "payload 3",
                    Source::Payload(_) => "payload ?",
                    Source::Bytes(ref b) if b[0] == 7 => "head",
                    Source::Bytes(_) => "tail",
                    Source::Zero => "zero",
                };
                (r.offset, r.len, s)
            })
            .collect();
        assert_eq!(
            brief,
            vec![
                (HEAD, 4096, "payload 2"),
                (HEAD + 4096, 2 * HEAD - 4096, "zero"),
                (3 * HEAD, 100, "payload 3"),
                (3 * HEAD + 100, HEAD - 100, "zero"),
                (5 * HEAD, HEAD, "zero"),
                (9 * HEAD, 10, "tail"),
                (0, HEAD, "head"),
            ]
        );
        // The image must end before the tail.
        assert!(plan(4 * HEAD, &ext, &offs, vec![0; 16], 2 * HEAD, vec![], &[]).is_err());
        assert!(plan(
            4 * HEAD,
            &ext[..2],
            &offs,
            vec![0; 16],
            3 * HEAD,
            vec![],
            &[]
        )
        .is_err());
    }

    fn options(sha: &str, payload: &Path) -> Options {
        Options {
            selector: Selector::Auto,
            wipe: false,
            sha256: sha.to_string(),
            payload: payload.to_path_buf(),
        }
    }

    #[test]
    fn cmdline_options() {
        let l = Layout::new("/x");
        let o = |s: &str| Options::from_cmdline(&Cmdline::parse(s), &l);
        assert_eq!(o("kiln.slot=a").unwrap(), None);
        let sha = "AB".repeat(32);
        let got = o(&format!(
            "kiln.install=auto kiln.install.sha256=sha256:{sha}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(got.sha256, "ab".repeat(32));
        assert!(!got.wipe);
        assert_eq!(got.payload, Path::new("/x/kiln/install.img"));
        let got = o(&format!(
            "kiln.install=/dev/vdb kiln.install.wipe=true kiln.install.sha256={sha}"
        ))
        .unwrap()
        .unwrap();
        assert!(got.wipe);
        assert_eq!(got.selector, Selector::Path("/dev/vdb".into()));
        assert!(o("kiln.install=auto").is_err(), "sha256 is required");
        assert!(o(&format!(
            "kiln.install=colour=red kiln.install.sha256={sha}"
        ))
        .is_err());
    }

    /// A 40 MiB GPT image made by sfdisk (BIOS, ESP, root a, root b) with data in the ESP
    /// and root a; returns (image, payload path, payload sha256, end of root a).
    fn image_and_payload(dir: &Path) -> Option<(Vec<u8>, PathBuf, String, u64)> {
        if Command::new("sfdisk").arg("--version").output().is_err() {
            return None;
        }
        let img = dir.join("image.raw");
        crate::gpt::tests::make_image(&img, 40);
        let mut bytes = std::fs::read(&img).unwrap();
        for (i, b) in bytes[HEAD as usize + 512..18 << 20].iter_mut().enumerate() {
            if (i / 70_000) % 3 != 0 {
                *b = (i % 251) as u8 | 1;
            }
        }
        std::fs::write(&img, &bytes).unwrap();
        let end = 18u64 << 20; // 1 MiB gap + BIOS (1) + ESP (8) + root a (8)
        let g = Gpt::read(&mut File::open(&img).unwrap(), 512).unwrap();
        let (_, a) = g.find("kiln-root-a").unwrap();
        assert_eq!((a.last_lba + 1) * 512, end);
        let p = dir.join("install.img");
        let mut out = File::create(&p).unwrap();
        payload::write(&mut File::open(&img).unwrap(), end, &mut out).unwrap();
        let sha = Payload::open(&p).unwrap().sha256(&mut |_| {}).unwrap();
        Some((bytes, p, sha, end))
    }

    fn target(dir: &Path, mib: u64, fill: u8) -> (PathBuf, Disk) {
        let node = dir.join("disk");
        std::fs::write(&node, vec![fill; (mib << 20) as usize]).unwrap();
        let disk = Disk {
            name: "vdz".into(),
            size: mib << 20,
            sector: 512,
            ..Disk::default()
        };
        (node, disk)
    }

    /// [`install_to`] onto the image file `node` (no page cache to drop), publishing its
    /// report to `tmp`/install.json.
    fn install_file(
        node: &Path,
        tmp: &Path,
        disk: &Disk,
        pl: &mut Payload,
        opts: &Options,
        say: &dyn Fn(&str),
    ) -> Result<Report, Stage1Error> {
        let status = tmp.join("install.json");
        let paths = Paths {
            node,
            tmp,
            drop_caches: None,
            status: Some(&status),
        };
        install_to(&RecordingSys::new(), paths, disk, pl, opts, say)
    }

    #[test]
    fn installs_onto_a_larger_disk_and_sfdisk_agrees() {
        let t = tempfile::tempdir().unwrap();
        let Some((image, p, sha, end)) = image_and_payload(t.path()) else {
            return;
        };
        let (node, disk) = target(t.path(), 64, 0xAA);
        let mut pl = Payload::open(&p).unwrap();
        let said = std::cell::RefCell::new(Vec::<String>::new());
        let say = |s: &str| said.borrow_mut().push(s.to_string());
        let r = install_file(&node, t.path(), &disk, &mut pl, &options(&sha, &p), &say).unwrap();
        assert!(r.backup_gpt_moved);
        assert_eq!(r.phases.len(), 3);
        let got = std::fs::read(&node).unwrap();
        // Partitions byte for byte; the GPT differs only where the disk size is recorded.
        assert!(
            got[HEAD as usize..end as usize] == image[HEAD as usize..end as usize],
            "partitions differ from the image"
        );
        // root b and the future kiln-data start cleared, the rest of the old bytes kept.
        assert!(got[18 << 20..19 << 20].iter().all(|&b| b == 0));
        assert!(got[26 << 20..27 << 20].iter().all(|&b| b == 0));
        assert!(got[50 << 20..51 << 20].iter().all(|&b| b == 0xAA));
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(&node)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let j = crate::gpt::tests::sfdisk_json(&node);
        assert_eq!(
            crate::gpt::tests::sfdisk_names(&node),
            ["BIOS", "ESP", "kiln-root-a", "kiln-root-b"]
        );
        assert_eq!(j["partitiontable"]["lastlba"], (64 << 20) / 512 - 34);
        let said = said.borrow();
        assert!(
            said.iter().any(|s| s.contains("backup GPT moved")),
            "{said:#?}"
        );
        assert!(said.iter().any(|s| s.starts_with("kiln: install: wrote ")));
        assert!(said
            .iter()
            .any(|s| s.starts_with("kiln: install: verified: read-back sha256")));
        // First boot then finds room for kiln-data.
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&node)
            .unwrap();
        assert!(matches!(
            gpt::ensure_data_partition(&mut f, 512).unwrap(),
            gpt::DataPartition::Created(5)
        ));
    }

    #[test]
    fn wrong_sha_or_too_small_a_disk_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let Some((_, p, sha, _)) = image_and_payload(t.path()) else {
            return;
        };
        let (node, disk) = target(t.path(), 48, 0x55);
        let before = std::fs::read(&node).unwrap();
        let mut pl = Payload::open(&p).unwrap();
        let wrong = format!("{}0", &sha[..63]);
        let wrong = if wrong == sha { "f".repeat(64) } else { wrong };
        let e = install_file(
            &node,
            t.path(),
            &disk,
            &mut pl,
            &options(&wrong, &p),
            &|_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("refused, nothing written"), "{e}");
        assert_eq!(std::fs::read(&node).unwrap(), before);
        // The image needs 40 MiB; the rehearsal catches a 30 MiB disk.
        let (node, disk) = target(t.path(), 30, 0x55);
        let before = std::fs::read(&node).unwrap();
        let e =
            install_file(&node, t.path(), &disk, &mut pl, &options(&sha, &p), &|_| {}).unwrap_err();
        assert_eq!(e.step, "rehearsing the partition table", "{e}");
        assert_eq!(std::fs::read(&node).unwrap(), before);
        assert!(!t.path().join("install-rehearsal.img").exists());
        // The payload's own GPT gives the image size.
        let head = pl.read_range(0, HEAD as usize).unwrap();
        let info = ImageInfo::from_head(&head).unwrap();
        assert_eq!(info.disk_size, 40 << 20);
        assert_eq!(
            info.partitions,
            ["BIOS", "ESP", "kiln-root-a", "kiln-root-b"]
        );
    }

    /// Two failures after the disk was opened for writing: the payload's medium fails in
    /// the middle of the write (its file is cut short as the write begins), and a byte on
    /// the disk changes between the write and the read-back (after the new partition
    /// tables are on the disk). Both times the disk's own tables, primary and backup, come
    /// back and sfdisk reads the old partitions.
    #[test]
    fn a_failed_write_restores_the_original_partition_tables() {
        let t = tempfile::tempdir().unwrap();
        let Some((_, p, sha, _)) = image_and_payload(t.path()) else {
            return;
        };
        let full = std::fs::read(&p).unwrap();
        for case in ["payload cut short", "read-back differs"] {
            std::fs::write(&p, &full).unwrap();
            let (node, disk) = target(t.path(), 64, 0x33);
            let mut child = Command::new("sfdisk")
                .arg("--quiet")
                .arg(&node)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(
                &mut child.stdin.take().unwrap(),
                b"label: gpt\nsize=20MiB, name=old-data\nname=old-logs\n",
            )
            .unwrap();
            assert!(child.wait().unwrap().success());
            let before = std::fs::read(&node).unwrap();
            let tail = before.len() - TAIL as usize;
            let mut pl = Payload::open(&p).unwrap();
            let said = std::cell::RefCell::new(Vec::<String>::new());
            let say = |s: &str| {
                if case == "payload cut short" && s.starts_with("kiln: install: writing ") {
                    let f = OpenOptions::new().write(true).open(&p).unwrap();
                    f.set_len(full.len() as u64 / 2).unwrap();
                }
                if case == "read-back differs"
                    && s.starts_with("kiln: install: wrote ")
                    && s.contains("(100%)")
                {
                    // The new tables are on the disk by now.
                    let st = std::fs::read_to_string(t.path().join("install.json")).unwrap();
                    assert!(st.contains("\"state\": \"writing\""), "{st}");
                    let d = std::fs::read(&node).unwrap();
                    assert_ne!(d[512..1024], before[512..1024], "{case}: new GPT written");
                    let f = OpenOptions::new().write(true).open(&node).unwrap();
                    f.write_all_at(&[!d[10 << 20]], 10 << 20).unwrap();
                }
                said.borrow_mut().push(s.to_string());
            };
            let mut opts = options(&sha, &p);
            opts.wipe = true;
            let e = install_file(&node, t.path(), &disk, &mut pl, &opts, &say).unwrap_err();
            assert!(
                e.to_string()
                    .contains("the original partition tables were restored"),
                "{case}: {e}"
            );
            if case == "read-back differs" {
                assert!(e.to_string().contains("read-back sha256"), "{e}");
            }
            let st = std::fs::read_to_string(t.path().join("install.json")).unwrap();
            assert!(
                st.contains("\"state\": \"failed\"")
                    && st.contains("the original partition tables were restored"),
                "{case}: {st}"
            );
            let after = std::fs::read(&node).unwrap();
            assert!(
                after[..HEAD as usize] == before[..HEAD as usize],
                "{case}: primary GPT"
            );
            assert!(after[tail..] == before[tail..], "{case}: backup GPT");
            assert!(after != before, "{case}: the write had begun");
            assert_eq!(
                crate::gpt::tests::sfdisk_names(&node),
                ["old-data", "old-logs"],
                "{case}"
            );
        }
    }

    /// `run` end to end on a fake /sys/block and a disk image file as /dev/vda.
    #[test]
    fn run_lists_disks_refuses_or_installs() {
        let t = tempfile::tempdir().unwrap();
        let Some((_, p, sha, _)) = image_and_payload(t.path()) else {
            return;
        };
        let l = Layout::new(t.path().join("root"));
        std::fs::create_dir_all(l.inside("kiln")).unwrap();
        std::fs::copy(&p, l.inside(PAYLOAD_PATH)).unwrap();
        let blk = l.sys().join("block/vda");
        std::fs::create_dir_all(&blk).unwrap();
        std::fs::write(blk.join("size"), format!("{}\n", (48u64 << 20) / 512)).unwrap();
        std::fs::write(blk.join("serial"), "S-1\n").unwrap();
        std::fs::create_dir_all(l.dev()).unwrap();
        std::fs::write(l.dev().join("vda"), vec![0u8; 48 << 20]).unwrap();
        let go = |cmdline: &str| {
            let said = std::cell::RefCell::new(Vec::<String>::new());
            let opts = Options::from_cmdline(&Cmdline::parse(cmdline), &l)
                .unwrap()
                .unwrap();
            let r = run(&RecordingSys::new(), &l, &opts, &|s| {
                said.borrow_mut().push(s.to_string())
            });
            (r, said.into_inner())
        };
        let (r, said) = go(&format!(
            "kiln.install=serial=NOPE kiln.install.sha256={sha}"
        ));
        assert_eq!(r.unwrap_err().step, "choosing the install disk");
        assert!(
            said.iter().any(|s| s.ends_with(
                "/dev/vda 48.0 MiB model - serial \"S-1\" partition table none: ruled out: serial \"S-1\" is not \"NOPE\""
            )),
            "{said:#?}"
        );
        // Whole-disk ext4: chosen by auto, refused without wipe.
        let mut sb = vec![0u8; 4096];
        sb[0x438..0x43A].copy_from_slice(&[0x53, 0xEF]);
        std::fs::File::options()
            .write(true)
            .open(l.dev().join("vda"))
            .unwrap()
            .write_all_at(&sb, 0)
            .unwrap();
        let (r, _) = go(&format!("kiln.install=auto kiln.install.sha256={sha}"));
        assert!(r.unwrap_err().detail.contains("holds ext4 (whole disk)"));
        // The status file says so too, for whoever watches /run/kiln.
        let status = || -> serde_json::Value {
            let text = std::fs::read_to_string(l.run().join("kiln/install.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        };
        let st = status();
        assert_eq!(st["state"], "failed", "{st}");
        assert!(
            st["error"]
                .as_str()
                .unwrap()
                .starts_with("checking the install disk: ")
                && st["error"].as_str().unwrap().contains("holds ext4"),
            "{st}"
        );
        // With wipe: installed, the report in /run/kiln/install.json.
        let (r, said) = go(&format!(
            "kiln.install=/dev/vda kiln.install.wipe=true kiln.install.sha256={sha}"
        ));
        let r = r.unwrap();
        assert_eq!(r.disk, "/dev/vda");
        assert!(
            said.last().unwrap().starts_with("kiln: install: done: "),
            "{said:#?}"
        );
        let st = status();
        assert_eq!(st["state"], "done", "{st}");
        assert!(st.get("error").is_none(), "{st}");
        assert_eq!(st["payload-sha256"], sha.as_str(), "{st}");
        let phases: Vec<&str> = st["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_str().unwrap())
            .collect();
        assert_eq!(phases, ["payload", "write", "verify"], "{st}");
        let mut f = File::open(l.dev().join("vda")).unwrap();
        gpt::check_backup(&mut f, 512).unwrap();
    }
}
