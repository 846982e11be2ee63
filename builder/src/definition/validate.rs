//! From a merged [`DefinitionFile`] to a checked [`Definition`]: required keys, what relates
//! several values (names defined twice, `dest` or `extract`), the machine defaults
//! (firstboot's schema), go inputs and container images; every error names the key. Each
//! single value was checked as it was parsed (`values`), where its line and column are known.

use std::path::Path;

use super::*;

pub(super) fn finish(path: &Path, f: DefinitionFile) -> Result<Definition, DefinitionError> {
    let invalid = |key: &str, message: String| DefinitionError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let image = f
        .image
        .ok_or_else(|| invalid("image", "the [image] table is missing".into()))?;
    let name = image
        .name
        .ok_or_else(|| invalid("image.name", "is required".into()))?
        .into();
    let version = image
        .version
        .ok_or_else(|| invalid("image.version", "is required".into()))?
        .into();
    let arch = image.arch.map_or_else(|| "amd64".into(), String::from);
    let epoch = image
        .epoch
        .ok_or_else(|| invalid("image.epoch", "is required (SOURCE_DATE_EPOCH)".into()))?;
    let outputs = image.outputs.unwrap_or_else(|| vec![OutputFormat::Tar]);
    let compression_level = image
        .compression_level
        .map_or(DEFAULT_COMPRESSION_LEVEL, u32::from);

    let debian = match f.debian {
        None => None,
        Some(d) => {
            let suite = d
                .suite
                .ok_or_else(|| invalid("debian.suite", "is required".into()))?;
            if let Some(pkg) = d.packages.iter().find(|p| d.exclude.contains(p)) {
                return Err(invalid(
                    "debian.exclude",
                    format!("{pkg:?} is both in packages and exclude"),
                ));
            }
            Some(Debian {
                suite,
                components: d.components.unwrap_or_else(|| vec!["main".into()]),
                packages: d.packages.into_iter().map(String::from).collect(),
                exclude: d.exclude.into_iter().map(String::from).collect(),
                essential: d.essential.unwrap_or(false),
                mirror: d.mirror,
                keyring: d.keyring,
            })
        }
    };

    let check_path = |key: &str, p: &str| {
        TreePath::from_definition(p)
            .map(|_| ())
            .map_err(|e| invalid(key, e.to_string()))
    };
    let mut seen = std::collections::BTreeSet::new();
    for a in &f.artifact {
        if !seen.insert(a.name.clone()) {
            return Err(invalid(
                "artifact.name",
                format!("{:?} is defined twice", a.name),
            ));
        }
        match (&a.dest, a.extract.is_empty()) {
            (Some(_), false) => {
                return Err(invalid(
                    &format!("artifact.{}", a.name),
                    "give either `dest` (a single file) or `extract` (an archive), not both".into(),
                ))
            }
            (None, true) => {
                return Err(invalid(
                    &format!("artifact.{}", a.name),
                    "needs `dest` (a single file) or `extract` (an archive)".into(),
                ))
            }
            _ => {}
        }
    }
    let mut names = std::collections::BTreeSet::new();
    let mut installed = std::collections::BTreeMap::new();
    for g in &f.go {
        if !names.insert(g.name.clone()) {
            return Err(invalid("go.name", format!("{:?} is defined twice", g.name)));
        }
        g.validate()
            .map_err(|e| invalid(&format!("go.{}", g.name), e.to_string()))?;
        check_path(&format!("go.{}.dest", g.name), g.dest())?;
        for p in &g.packages {
            let at = format!("{}/{}", g.dest().trim_end_matches('/'), p.binary());
            if let Some(other) = installed.insert(at.clone(), g.name.clone()) {
                return Err(invalid(
                    &format!("go.{}", g.name),
                    format!("{at} is also built by go input {other}"),
                ));
            }
        }
    }
    container_image::validate(&f.container_image, &f.go)
        .map_err(|(key, message)| invalid(&key, message))?;
    // Within one file two entries for a path were refused where they were written (load);
    // merged over a base, one of each kind replaces the other, but two kinds stay ambiguous.
    let mut at = std::collections::BTreeMap::new();
    let entries = (f.file.iter().map(|e| ("file", "path", &*e.path)))
        .chain(f.local.iter().map(|e| ("local", "dest", &*e.dest)))
        .chain(f.directory.iter().map(|e| ("directory", "path", &*e.path)))
        .chain(f.symlink.iter().map(|e| ("symlink", "path", &*e.path)));
    for (kind, key, p) in entries {
        if let Some(other) = at.insert(p.trim_end_matches('/'), kind) {
            return Err(invalid(
                &format!("{kind}.{key}"),
                format!("{p:?} is given by a [[{other}]] and a [[{kind}]] (this file and the one it extends)"),
            ));
        }
    }
    let disk = f.disk.unwrap_or_default();
    let install_selector = disk.install.map_or_else(|| "auto".into(), String::from);
    let disk_size = disk.size.map_or(DEFAULT_DISK_SIZE, |s| s.bytes());
    let machine = f.machine.unwrap_or_default();
    if !machine.is_empty() {
        let text = toml::to_string(&machine).unwrap_or_default();
        let cfg = firstboot::config::MachineConfig::from_toml(&text)
            .map_err(|e| invalid("machine", e.to_string()))?;
        check_ranges(&cfg.kubernetes).map_err(|m| invalid("machine.kubernetes", m))?;
    }
    let kernel = f.kernel.unwrap_or_default();
    Ok(Definition {
        path: path.to_path_buf(),
        name,
        version,
        arch,
        epoch,
        compression_level,
        outputs,
        debian,
        artifacts: f.artifact,
        go: f.go,
        container_images: f.container_image,
        locals: f.local,
        files: f.file,
        directories: f.directory,
        symlinks: f.symlink,
        users: f.user,
        groups: f.group,
        systemd: f.systemd.unwrap_or_default(),
        kernel_package: kernel.package,
        cmdline: kernel.cmdline.unwrap_or_default(),
        disk_size,
        install_selector,
        iso_installer: disk.iso_installer.unwrap_or(true),
        machine,
    })
}

/// Address ranges that parse but cannot work: a service range without the cluster DNS
/// address (its 10th, as kubeadm places it), or pods and services sharing addresses.
fn check_ranges(k: &firstboot::config::Kubernetes) -> Result<(), String> {
    use firstboot::k8s::nth_address;
    let services = &k.service_cidr;
    nth_address(services, 10).map_err(|_| {
        format!("service-cidr {services} has no room for the cluster DNS address (its 10th)")
    })?;
    let pods = &k.pod_cidr;
    if overlap(pods, services) {
        return Err(format!(
            "pod-cidr {pods} and service-cidr {services} overlap"
        ));
    }
    Ok(())
}

/// Whether two ranges share an address (one holds the other's network address).
fn overlap(a: &firstboot::config::Cidr, b: &firstboot::config::Cidr) -> bool {
    let bits = |c: &firstboot::config::Cidr| match c.addr() {
        std::net::IpAddr::V4(v) => (32u32, u128::from(u32::from(v))),
        std::net::IpAddr::V6(v) => (128u32, u128::from(v)),
    };
    let ((fa, va), (fb, vb)) = (bits(a), bits(b));
    if fa != fb {
        return false;
    }
    // Both ranges masked to the shorter prefix: equal if one lies within the other.
    let prefix = u32::from(a.prefix().min(b.prefix()));
    let mask = if prefix == 0 {
        0
    } else {
        (u128::MAX << (fa - prefix)) & (u128::MAX >> (128 - fa))
    };
    va & mask == vb & mask
}
