//! Bootable outputs of `kiln build`: the root squashfs, the initramfs, and from them
//! the raw/qcow2 disk, the hybrid ISO and the PXE bundle. Written into the staging
//! directory; intermediate files go to a work directory that is removed afterwards.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::definition::{Definition, OutputFormat};
use crate::outputs::boot::{
    disk, initramfs, install, iso, modules, pxe, squashfs, BootIdentity, ToolVersion,
};
use crate::tree::{Kind, Tree, TreePath};

/// The kernel the image boots: `boot/vmlinuz-<kver>` in the tree (exactly one).
pub fn kernel_of(tree: &Tree) -> Result<(String, TreePath)> {
    let boot = TreePath::from_definition("/boot")?;
    let kernels: Vec<(String, TreePath)> = tree
        .children(&boot)
        .filter(|(_, e)| matches!(e.kind, Kind::File(_)))
        .filter_map(|(p, _)| {
            p.file_name()
                .strip_prefix("vmlinuz-")
                .map(|k| (k.to_string(), p.clone()))
        })
        .collect();
    match kernels.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("the image has no kernel (/boot/vmlinuz-*): add the kernel package (e.g. linux-image-amd64) to [debian] packages"),
        many => bail!(
            "the image has {} kernels ({}); keep exactly one",
            many.len(),
            many.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn copy_out(tree: &Tree, path: &TreePath, to: &Path) -> Result<()> {
    let Some(Kind::File(c)) = tree.get(path).map(|e| &e.kind) else {
        bail!("{path} is not a regular file in the tree");
    };
    let mut r = c.open().with_context(|| format!("reading {path}"))?;
    let mut w = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    std::io::copy(&mut r, &mut w).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}

fn tool(v: ToolVersion) -> crate::outputs::manifest::Tool {
    crate::outputs::manifest::Tool {
        name: v.tool,
        version: v.version,
    }
}

/// Writes every bootable format in `formats` into `staging`; returns the host tools used.
pub fn write(
    def: &Definition,
    tree: &Tree,
    formats: &[OutputFormat],
    firstboot: &Path,
    staging: &Path,
    timings: &mut std::collections::BTreeMap<String, f64>,
) -> Result<Vec<crate::outputs::manifest::Tool>> {
    let bootable: Vec<OutputFormat> = formats
        .iter()
        .copied()
        .filter(|f| *f != OutputFormat::Tar)
        .collect();
    if bootable.is_empty() {
        return Ok(Vec::new());
    }
    let mut tools = Vec::new();
    let (kver, kpath) = kernel_of(tree)?;
    let work = tempfile::Builder::new()
        .prefix(".kiln-work-")
        .tempdir_in(staging.parent().unwrap_or(staging))
        .context("creating a work directory")?;
    let w = |name: &str| -> PathBuf { work.path().join(name) };
    let mut lap = |name: &str, t: std::time::Instant| {
        timings.insert(name.to_string(), t.elapsed().as_secs_f64());
    };

    let t = std::time::Instant::now();
    let kernel = w("vmlinuz");
    copy_out(tree, &kpath, &kernel)?;
    let root = w("root.squashfs");
    let opts = squashfs::Options {
        compression: squashfs::Compression::Zstd(def.compression_level),
    };
    tools.push(tool(
        squashfs::write(tree, &root, &opts).context("writing the root squashfs")?,
    ));
    lap("squashfs", t);

    let t = std::time::Instant::now();
    let initrd = w("initramfs");
    let spec = initramfs::Spec {
        kver: &kver,
        modules: modules::STAGE1,
        init: firstboot,
        extra: &[],
        embedded: &[],
        compression: initramfs::Compression::Gzip,
    };
    let report = initramfs::build(tree, &spec, &initrd).context("building the initramfs")?;
    log::info!(
        "initramfs: {} modules, {} bytes",
        report.modules.len(),
        report.size
    );
    lap("initramfs", t);

    let id = BootIdentity::new(&def.name, &def.version).with_args(&def.cmdline);
    let name = &def.name;
    let wants = |f: OutputFormat| bootable.contains(&f);
    // The install payload (ISO, PXE) is cut from the raw disk.
    let mut root_a_end = None;
    let raw = if wants(OutputFormat::Raw) {
        staging.join(format!("{name}.raw"))
    } else {
        w("disk.raw")
    };
    if [
        OutputFormat::Raw,
        OutputFormat::Qcow2,
        OutputFormat::Iso,
        OutputFormat::Pxe,
    ]
    .into_iter()
    .any(wants)
    {
        let t = std::time::Instant::now();
        let mut spec = disk::DiskSpec::new(&id, &kernel, &initrd, &root, def.epoch);
        spec.disk_size = def.disk_size;
        let report = disk::write_raw(&spec, &raw).context("writing the disk image")?;
        root_a_end = report
            .partitions
            .iter()
            .find(|p| p.label == disk::LABEL_ROOT_A)
            .map(|p| (p.last_lba + 1) * crate::outputs::boot::gpt::SECTOR);
        tools.extend(report.tools.into_iter().map(tool));
        lap("raw", t);
        if wants(OutputFormat::Qcow2) {
            let t = std::time::Instant::now();
            let q = staging.join(format!("{name}.qcow2"));
            tools.push(tool(
                disk::to_qcow2(&raw, &q, def.epoch).context("writing the qcow2 image")?,
            ));
            lap("qcow2", t);
        }
    }
    // The installer's payload, carried by the ISO (unless `iso-installer = false`) and
    // the PXE bundle.
    let cpio = w(install::PAYLOAD_CPIO);
    let payload = if (wants(OutputFormat::Iso) && def.iso_installer) || wants(OutputFormat::Pxe) {
        let t = std::time::Instant::now();
        let end = root_a_end.context("the disk layout has no kiln-root-a")?;
        let payload = install::write_payload_cpio(&raw, end, def.epoch, work.path(), &cpio)
            .context("writing the install payload")?;
        log::info!(
            "install payload: {} bytes for {} bytes of disk in {} extents, sha256 {}",
            payload.size,
            payload.image_bytes,
            payload.extents,
            payload.sha256
        );
        lap("install-payload", t);
        Some(payload)
    } else {
        None
    };
    if wants(OutputFormat::Iso) {
        let t = std::time::Instant::now();
        let spec = iso::IsoSpec {
            identity: &id,
            kernel: &kernel,
            initramfs: &initrd,
            root_squashfs: &root,
            epoch: def.epoch,
            install: payload
                .as_ref()
                .filter(|_| def.iso_installer)
                .map(|p| iso::IsoInstall {
                    payload_cpio: &cpio,
                    sha256: &p.sha256,
                    selector: &def.install_selector,
                }),
        };
        let out = staging.join(format!("{name}.iso"));
        tools.extend(
            iso::write(&spec, &out)
                .context("writing the ISO")?
                .into_iter()
                .map(tool),
        );
        lap("iso", t);
    }
    if wants(OutputFormat::Pxe) {
        let t = std::time::Instant::now();
        let pxe_initrd = w("initramfs-pxe");
        let embedded = pxe::embedded_root(&root);
        let spec = initramfs::Spec {
            embedded: &embedded,
            ..spec
        };
        initramfs::build(tree, &spec, &pxe_initrd).context("building the PXE initramfs")?;
        let payload = payload.as_ref().context("no install payload")?;
        let installer = pxe::Installer {
            initramfs: &initrd,
            payload_cpio: &cpio,
            script: install::boot_script(&id, &payload.sha256, &def.install_selector),
        };
        pxe::write(
            &id,
            &kernel,
            &pxe_initrd,
            Some(&installer),
            &staging.join(format!("{name}-pxe")),
        )
        .context("writing the PXE bundle")?;
        lap("pxe", t);
    }
    tools.sort();
    tools.dedup();
    Ok(tools)
}
