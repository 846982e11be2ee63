//! The installer's part of the PXE bundle: the install payload (the raw disk from LBA 0 to
//! the end of `kiln-root-a`, sparse, see `firstboot::install::payload`) wrapped in an
//! uncompressed cpio as `kiln/install.img`, which the boot loader passes as a second
//! initrd; the small installer initramfs; and `boot-install.ipxe`, whose command line
//! carries `kiln.install=<selector>` and the payload's sha256.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::cpio::{Node, Writer};
use super::{io_err, persist, temp_sibling, BootIdentity, Result, CONSOLE_ARGS};

/// File names in the PXE bundle.
pub const PAYLOAD_CPIO: &str = "install.cpio";
pub const INSTALLER_INITRAMFS: &str = "installer.initramfs";
pub const SCRIPT: &str = "boot-install.ipxe";

/// What [`write_payload_cpio`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadReport {
    /// sha256 (hex) of the payload file (`kiln/install.img`), for `kiln.install.sha256`.
    pub sha256: String,
    /// The payload file's size.
    pub size: u64,
    /// Bytes of the disk it describes (LBA 0 to the end of kiln-root-a).
    pub image_bytes: u64,
    /// Stored extents.
    pub extents: usize,
}

/// Writes the payload of the first `end` bytes of the raw disk `raw` to `work/install.img`
/// and the cpio holding it to `out`.
pub fn write_payload_cpio(
    raw: &Path,
    end: u64,
    epoch: u64,
    work: &Path,
    out: &Path,
) -> Result<PayloadReport> {
    let img = work.join("install.img");
    let mut src = File::open(raw).map_err(io_err("opening", raw))?;
    let mut w = BufWriter::new(File::create(&img).map_err(io_err("creating", &img))?);
    let extents = firstboot::install::payload::write(&mut src, end, &mut w)
        .map_err(io_err("writing the install payload from", raw))?;
    w.flush().map_err(io_err("writing", &img))?;
    drop(w);
    let mut h = Sha256::new();
    let mut f = File::open(&img).map_err(io_err("opening", &img))?;
    let size = std::io::copy(&mut f, &mut h).map_err(io_err("hashing", &img))?;
    let sha256 = hex::encode(h.finalize());

    let tmp = temp_sibling(out)?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io_err("opening", tmp.path()))?;
    let mut cw = Writer::new(BufWriter::new(file), epoch);
    let (dir, _) = firstboot::install::PAYLOAD_PATH
        .split_once('/')
        .unwrap_or(("kiln", ""));
    cw.add(Node::Dir {
        name: dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
    })
    .map_err(io_err("writing", out))?;
    cw.add(Node::File {
        name: firstboot::install::PAYLOAD_PATH,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size,
        data: Box::new(File::open(&img).map_err(io_err("opening", &img))?),
    })
    .map_err(io_err("writing", out))?;
    cw.finish()
        .and_then(|mut w| w.flush())
        .map_err(io_err("writing", out))?;
    persist(tmp, out)?;
    Ok(PayloadReport {
        sha256,
        size,
        image_bytes: end,
        extents: extents.len(),
    })
}

/// The installer's iPXE script: kernel, the installer initramfs and the payload cpio as a
/// second initrd, all relative to the script's own URL (TFTP or HTTP).
pub fn boot_script(id: &BootIdentity, sha256: &str, selector: &str) -> String {
    format!(
        "#!ipxe\n\
         kernel vmlinuz initrd={INSTALLER_INITRAMFS} initrd={PAYLOAD_CPIO} {CONSOLE_ARGS} {}\n\
         initrd {INSTALLER_INITRAMFS}\n\
         initrd {PAYLOAD_CPIO}\n\
         boot\n",
        id.args(&format!(
            "kiln.install={selector} kiln.install.sha256={sha256}"
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_cpio_unpacks_with_cpio_and_reads_back_with_firstboot() {
        let t = tempfile::tempdir().expect("tmp");
        let raw = t.path().join("disk.raw");
        let mut img = vec![0u8; 3 << 20];
        img[100] = 1;
        img[(2 << 20) + 5] = 9;
        std::fs::write(&raw, &img).expect("write");
        let out = t.path().join("install.cpio");
        let r = write_payload_cpio(&raw, 3 << 20, 1_700_000_000, t.path(), &out).expect("cpio");
        assert_eq!(r.extents, 2);
        assert_eq!(r.image_bytes, 3 << 20);
        // cpio (the real tool) unpacks it; sha256sum agrees with the reported digest.
        let x = t.path().join("x");
        std::fs::create_dir(&x).expect("mkdir");
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cpio -id --quiet < {} && sha256sum kiln/install.img",
                out.display()
            ))
            .current_dir(&x)
            .output()
            .expect("cpio runs");
        assert!(st.status.success(), "{st:?}");
        assert!(String::from_utf8_lossy(&st.stdout).starts_with(&r.sha256));
        let mut p = firstboot::install::payload::Payload::open(&x.join("kiln/install.img"))
            .expect("payload");
        assert_eq!(p.file_size, r.size);
        assert_eq!(p.read_range(0, img.len()).expect("read"), img);
        let id = BootIdentity::new("n", "1").with_args("quiet");
        let s = boot_script(&id, &r.sha256, "size>=20G");
        assert!(s.contains(&format!(
            "kiln.install=size>=20G kiln.install.sha256={} quiet\n",
            r.sha256
        )));
        assert!(s.contains("initrd install.cpio\n"));
    }
}
