//! modules.dep and friends for the root: Debian's kernel package ships none (its postinst
//! runs depmod), and without them `modprobe` and the kernel's module autoloading (netfilter,
//! overlay, bridge) fail on the running system. The host's `depmod -b` runs over the tree's
//! module directory staged to a temp dir; its index files go into the tree.

use std::fs;

use anyhow::{Context, Result};

use super::modules::modules_dir;
use crate::process::Tool;
use crate::tree::{Content, Entry, Kind, Tree, TreePath};

/// The index files depmod writes that the image keeps.
const OUTPUTS: &[&str] = &[
    "modules.alias",
    "modules.alias.bin",
    "modules.builtin.alias.bin",
    "modules.builtin.bin",
    "modules.dep",
    "modules.dep.bin",
    "modules.devname",
    "modules.softdep",
    "modules.symbols",
    "modules.symbols.bin",
];

/// Runs depmod for kernel `kver` and adds its index files to the tree. Returns how many.
pub fn add_indexes(tree: &mut Tree, kver: &str) -> Result<usize> {
    let Some(dir) = modules_dir(tree, kver) else {
        return Ok(0);
    };
    let stage = tempfile::tempdir().context("creating a temp dir for depmod")?;
    let root = stage.path().join("lib/modules").join(kver);
    let prefix = format!("{}/", dir.as_str());
    let mut entries = Vec::new();
    for (path, entry) in tree.iter() {
        if let (Some(rel), Kind::File(content)) = (path.as_str().strip_prefix(&prefix), &entry.kind)
        {
            entries.push((rel.to_string(), content.clone()));
        }
    }
    for (rel, content) in &entries {
        let dest = root.join(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        // Hard links where the content already is a file (no copy); otherwise write it.
        let linked = match content {
            Content::OnDisk { path, .. } => fs::hard_link(path, &dest).is_ok(),
            _ => false,
        };
        if !linked {
            let mut r = content
                .open()
                .with_context(|| format!("reading {prefix}{rel} from the tree"))?;
            let mut f =
                fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
            std::io::copy(&mut r, &mut f).with_context(|| format!("writing {}", dest.display()))?;
        }
    }
    // depmod lives in sbin, which a user's PATH may lack.
    let depmod = ["/usr/sbin/depmod", "/sbin/depmod"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or("depmod");
    Tool::new(depmod)
        .reproducible(tree.epoch())
        .arg("-b")
        .arg(stage.path())
        .arg(kver)
        .run()?;
    let mut added = 0;
    for name in OUTPUTS {
        let src = root.join(name);
        let Ok(bytes) = fs::read(&src) else { continue };
        let p = TreePath::from_archive(&format!("{prefix}{name}"))?;
        let e = Entry::file(Content::inline(bytes), 0o644, "depmod").at(tree.epoch());
        tree.replace(&p, e)?;
        added += 1;
    }
    Ok(added)
}
