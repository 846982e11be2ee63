//! From a merged [`DefinitionFile`] to a checked [`Definition`]: required keys, names,
//! sizes, paths, the machine defaults (firstboot's schema), go inputs and container images;
//! every error names the key.

use std::path::Path;

use super::*;

/// Parses sizes like `8GiB`, `512MiB`, `8G`, `1024` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
}

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
        .ok_or_else(|| invalid("image.name", "is required".into()))?;
    if !valid_name(&name) {
        return Err(invalid(
            "image.name",
            format!("{name:?} must be 1-63 lower-case letters, digits or '-'"),
        ));
    }
    let version = image
        .version
        .ok_or_else(|| invalid("image.version", "is required".into()))?;
    if version.is_empty() || version.contains(char::is_whitespace) || version.contains('/') {
        return Err(invalid(
            "image.version",
            format!("{version:?} must be non-empty, without spaces or '/'"),
        ));
    }
    let arch = image.arch.unwrap_or_else(|| "amd64".into());
    if arch != "amd64" {
        return Err(invalid(
            "image.arch",
            format!("{arch:?} is not supported (only amd64)"),
        ));
    }
    let epoch = image
        .epoch
        .ok_or_else(|| invalid("image.epoch", "is required (SOURCE_DATE_EPOCH)".into()))?;
    let outputs = image.outputs.unwrap_or_else(|| vec![OutputFormat::Tar]);
    let compression_level = image.compression_level.unwrap_or(DEFAULT_COMPRESSION_LEVEL);
    if !(1..=22).contains(&compression_level) {
        return Err(invalid(
            "image.compression-level",
            format!("{compression_level} is not a zstd level (1-22)"),
        ));
    }

    let debian = match f.debian {
        None => None,
        Some(d) => {
            let suite = d
                .suite
                .ok_or_else(|| invalid("debian.suite", "is required".into()))?;
            for p in d.packages.iter().chain(&d.exclude) {
                if p.is_empty() || p.contains(char::is_whitespace) {
                    return Err(invalid(
                        "debian.packages",
                        format!("{p:?} is not a package name"),
                    ));
                }
            }
            if let Some(pkg) = d.packages.iter().find(|p| d.exclude.contains(p)) {
                return Err(invalid(
                    "debian.exclude",
                    format!("{pkg:?} is both in packages and exclude"),
                ));
            }
            Some(Debian {
                suite,
                components: d.components.unwrap_or_else(|| vec!["main".into()]),
                packages: d.packages,
                exclude: d.exclude,
                essential: d.essential.unwrap_or(false),
                mirror: d.mirror,
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
        if !(a.url.starts_with("https://") || a.url.starts_with("http://")) {
            return Err(invalid(
                &format!("artifact.{}.url", a.name),
                format!("{:?} is not an http(s) URL", a.url),
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
        if let Some(d) = &a.dest {
            check_path(&format!("artifact.{}.dest", a.name), d)?;
        }
        for (from, to) in &a.extract {
            TreePath::from_archive(from)
                .map_err(|e| invalid(&format!("artifact.{}.extract", a.name), e.to_string()))?;
            check_path(&format!("artifact.{}.extract", a.name), to)?;
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
    for l in &f.local {
        check_path("local.dest", &l.dest)?;
    }
    for x in &f.file {
        check_path("file.path", &x.path)?;
    }
    for x in &f.directory {
        check_path("directory.path", &x.path)?;
    }
    for x in &f.symlink {
        check_path("symlink.path", &x.path)?;
    }
    for u in &f.user {
        if !valid_user_name(&u.name) {
            return Err(invalid(
                "user.name",
                format!("{:?} is not a valid user name", u.name),
            ));
        }
    }
    for g in &f.group {
        if !valid_user_name(&g.name) {
            return Err(invalid(
                "group.name",
                format!("{:?} is not a valid group name", g.name),
            ));
        }
    }
    let disk = f.disk.unwrap_or_default();
    let install_selector = match disk.install {
        None => "auto".to_string(),
        Some(sel) => {
            if sel.contains(char::is_whitespace) {
                return Err(invalid("disk.install", format!("{sel:?} contains spaces")));
            }
            firstboot::install::select::parse(&sel).map_err(|e| invalid("disk.install", e))?;
            sel
        }
    };
    let disk_size = match disk.size {
        None => DEFAULT_DISK_SIZE,
        Some(s) => parse_size(&s)
            .ok_or_else(|| invalid("disk.size", format!("{s:?} is not a size like \"8GiB\"")))?,
    };
    let machine = f.machine.unwrap_or_default();
    if !machine.is_empty() {
        let text = toml::to_string(&machine).unwrap_or_default();
        firstboot::config::MachineConfig::from_toml(&text)
            .map_err(|e| invalid("machine", e.to_string()))?;
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

fn valid_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !s.starts_with('-')
}
