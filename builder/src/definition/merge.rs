//! `extends`: a child definition merged over its base, as a pure function of the two files.
//! Sections merge key by key, lists of named things by name, the rest child-wins.

use super::{DebianSection, DefinitionFile, DiskSection, ImageSection, KernelSection, Systemd};

/// A section present in both files is merged with `f`; otherwise whichever exists.
fn merge_opt<T>(base: Option<T>, child: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
    match (base, child) {
        (Some(b), Some(c)) => Some(f(b, c)),
        (b, c) => c.or(b),
    }
}

fn pick<T>(child: Option<T>, base: Option<T>) -> Option<T> {
    child.or(base)
}

fn append_unique<T: PartialEq>(mut base: Vec<T>, child: Vec<T>) -> Vec<T> {
    for c in child {
        if !base.contains(&c) {
            base.push(c);
        }
    }
    base
}

/// Replace base entries that the child redefines (same key), then append the rest.
fn merge_keyed<T, K: PartialEq>(base: Vec<T>, child: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut out: Vec<T> = base
        .into_iter()
        .filter(|b| !child.iter().any(|c| key(c) == key(b)))
        .collect();
    out.extend(child);
    out
}

/// Merges a variant over its base: scalars in the child win, lists add up, entries
/// with the same name or path are replaced. A pure function.
pub fn merge(base: DefinitionFile, child: DefinitionFile) -> DefinitionFile {
    let image = merge_opt(base.image, child.image, |b, c| ImageSection {
        name: pick(c.name, b.name),
        version: pick(c.version, b.version),
        arch: pick(c.arch, b.arch),
        epoch: pick(c.epoch, b.epoch),
        compression_level: pick(c.compression_level, b.compression_level),
        outputs: pick(c.outputs, b.outputs),
    });
    let debian = merge_opt(base.debian, child.debian, |b, c| DebianSection {
        suite: pick(c.suite, b.suite),
        components: pick(c.components, b.components),
        packages: append_unique(b.packages, c.packages),
        exclude: append_unique(b.exclude, c.exclude),
        essential: pick(c.essential, b.essential),
        mirror: pick(c.mirror, b.mirror),
        keyring: pick(c.keyring, b.keyring),
    });
    let systemd = merge_opt(base.systemd, child.systemd, |b, c| Systemd {
        enable: append_unique(b.enable, c.enable),
        mask: append_unique(b.mask, c.mask),
        default_target: pick(c.default_target, b.default_target),
    });
    let kernel = merge_opt(base.kernel, child.kernel, |b, c| KernelSection {
        package: pick(c.package, b.package),
        cmdline: pick(c.cmdline, b.cmdline),
    });
    let machine = merge_opt(base.machine, child.machine, |mut b, c| {
        merge_tables(&mut b, c);
        b
    });
    DefinitionFile {
        extends: None,
        image,
        debian,
        artifact: merge_keyed(base.artifact, child.artifact, |a| a.name.clone()),
        go: merge_keyed(base.go, child.go, |g| g.name.clone()),
        container_image: merge_keyed(base.container_image, child.container_image, |c| {
            c.name.clone()
        }),
        local: merge_keyed(base.local, child.local, |l| l.dest.clone()),
        file: merge_keyed(base.file, child.file, |f| f.path.clone()),
        directory: merge_keyed(base.directory, child.directory, |d| d.path.clone()),
        symlink: merge_keyed(base.symlink, child.symlink, |s| s.path.clone()),
        user: merge_keyed(base.user, child.user, |u| u.name.clone()),
        group: merge_keyed(base.group, child.group, |g| g.name.clone()),
        systemd,
        kernel,
        disk: merge_opt(base.disk, child.disk, |b, c| DiskSection {
            size: pick(c.size, b.size),
            install: pick(c.install, b.install),
            iso_installer: pick(c.iso_installer, b.iso_installer),
        }),
        machine,
    }
}

fn merge_tables(base: &mut toml::Table, child: toml::Table) {
    for (k, v) in child {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(c)) => merge_tables(b, c),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}
