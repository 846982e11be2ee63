//! Kernel module selection: names (with `prefix*` globs) -> the dependency closure,
//! dependencies first. Dependencies come from `modules.dep` when the tree has one;
//! Debian's linux-image package ships none (depmod runs in its postinst), so
//! otherwise they are read from each module's `.modinfo` `depends=` field, the
//! same list modpost wrote and depmod would have copied.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use super::{BootError, Result};
use crate::tree::{Content, Kind, Tree, TreePath};

/// What stage 1 needs to find and mount a root on every boot path (the list).
pub const STAGE1: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "ata_piix",
    "sd_mod",
    "sr_mod",
    "isofs",
    "squashfs",
    "crc32c_generic",
    "ext4",
    "vfat",
    "efivarfs",
    "nls_*",
    "overlay",
    "loop",
    "qemu_fw_cfg",
];

// crc32c_generic: ext4 asks the crypto API for "crc32c" at mount time (a modinfo
// softdep, not a depends), and fails with ENOENT without it.

/// Load-order needs invisible to modinfo: these modules call `load_nls()` (a runtime
/// request_module) for another one in their init and fail with EINVAL without it.
const RUNTIME_DEPS: &[(&str, &str)] = &[("nls_koi8_ru", "nls_koi8_u")];

/// One module file in the kernel tree.
#[derive(Debug, Clone)]
struct ModFile {
    /// Path relative to `lib/modules/<kver>/`, as stored (maybe `.ko.xz`).
    rel: String,
    content: Content,
}

/// The modules of one kernel found in a Tree.
pub struct ModuleIndex {
    kver: String,
    files: BTreeMap<String, ModFile>,
    builtin: BTreeSet<String>,
    /// From modules.dep, when present.
    dep_file: Option<BTreeMap<String, Vec<String>>>,
}

/// A module chosen for the initramfs.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    /// Path relative to `lib/modules/<kver>/`, always ending in `.ko`.
    pub rel: String,
    /// Uncompressed module bytes.
    pub bytes: Vec<u8>,
}

/// `virtio-pci` and `virtio_pci` name the same module.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    let stem = base
        .strip_suffix(".ko")
        .or_else(|| base.strip_suffix(".ko.xz"))
        .or_else(|| base.strip_suffix(".ko.zst"))
        .or_else(|| base.strip_suffix(".ko.gz"))?;
    Some(normalise(stem))
}

/// Finds `lib/modules/<kver>` (or its merged-/usr location) in the tree.
pub fn modules_dir(tree: &Tree, kver: &str) -> Option<TreePath> {
    for cand in [
        format!("lib/modules/{kver}"),
        format!("usr/lib/modules/{kver}"),
    ] {
        let p = TreePath::from_archive(&cand).ok()?;
        if matches!(tree.get(&p).map(|e| &e.kind), Some(Kind::Dir)) {
            return Some(p);
        }
    }
    None
}

fn read_content(path: &str, c: &Content) -> Result<Vec<u8>> {
    c.read_all().map_err(|source| BootError::TreeRead {
        path: path.to_string(),
        source,
    })
}

impl ModuleIndex {
    pub fn from_tree(tree: &Tree, kver: &str) -> Result<Self> {
        let dir = modules_dir(tree, kver).ok_or_else(|| BootError::MissingKernel {
            kver: kver.to_string(),
            what: format!("/lib/modules/{kver}"),
        })?;
        let prefix = format!("{}/", dir.as_str());
        let mut files = BTreeMap::new();
        let mut builtin = BTreeSet::new();
        let mut dep_file = None;
        let mut stack = vec![dir.clone()];
        // Walk everything under the modules dir (children() is one level).
        while let Some(d) = stack.pop() {
            for (p, e) in tree.children(&d) {
                let rel = p.as_str()[prefix.len()..].to_string();
                match &e.kind {
                    Kind::Dir => stack.push(p.clone()),
                    Kind::File(c) => {
                        if rel == "modules.builtin" {
                            let text = read_content(&p.to_string(), c)?;
                            builtin.extend(
                                String::from_utf8_lossy(&text)
                                    .lines()
                                    .filter_map(module_name),
                            );
                        } else if rel == "modules.dep" {
                            let text = read_content(&p.to_string(), c)?;
                            dep_file = Some(parse_modules_dep(&String::from_utf8_lossy(&text)));
                        } else if let Some(name) = module_name(&rel) {
                            files.insert(
                                name,
                                ModFile {
                                    rel,
                                    content: c.clone(),
                                },
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(ModuleIndex {
            kver: kver.to_string(),
            files,
            builtin,
            dep_file,
        })
    }

    /// Expands names and globs to module names; built-in modules drop out, unknown
    /// names are an error (a typo must not silently ship an unbootable initramfs).
    fn expand(&self, requested: &[&str]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for r in requested {
            let r = normalise(r);
            if let Some(prefix) = r.strip_suffix('*') {
                let hits: Vec<_> = self
                    .files
                    .keys()
                    .filter(|n| n.starts_with(prefix))
                    .cloned()
                    .collect();
                if hits.is_empty() && !self.builtin.iter().any(|n| n.starts_with(prefix)) {
                    return Err(self.unknown(&r));
                }
                out.extend(hits);
            } else if self.files.contains_key(&r) {
                out.push(r);
            } else if !self.builtin.contains(&r) {
                return Err(self.unknown(&r));
            }
        }
        Ok(out)
    }

    fn unknown(&self, name: &str) -> BootError {
        BootError::UnknownModule {
            kver: self.kver.clone(),
            name: name.to_string(),
        }
    }

    /// The requested modules and everything they depend on, dependencies first.
    pub fn closure(&self, requested: &[&str]) -> Result<Vec<Module>> {
        let mut done: BTreeMap<String, ()> = BTreeMap::new();
        let mut order = Vec::new();
        for name in self.expand(requested)? {
            self.visit(&name, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeMap<String, ()>,
        path: &mut Vec<String>,
        order: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains_key(name) {
            return Ok(());
        }
        let file = self.files.get(name).ok_or_else(|| self.unknown(name))?;
        if path.iter().any(|p| p == name) {
            return Err(BootError::BadModule {
                path: file.rel.clone(),
                reason: format!("dependency cycle through {}", path.join(" -> ")),
            });
        }
        let bytes = decompress(&file.rel, &read_content(&file.rel, &file.content)?)?;
        let mut deps = match &self.dep_file {
            Some(map) => map.get(name).cloned().unwrap_or_default(),
            None => modinfo_depends(&bytes).map_err(|reason| BootError::BadModule {
                path: file.rel.clone(),
                reason,
            })?,
        };
        deps.extend(
            RUNTIME_DEPS
                .iter()
                .filter(|(m, _)| *m == name)
                .map(|(_, d)| d.to_string()),
        );
        path.push(name.to_string());
        for d in deps {
            if !self.builtin.contains(&d) {
                self.visit(&d, done, path, order)?;
            }
        }
        path.pop();
        done.insert(name.to_string(), ());
        let rel = match file.rel.rfind(".ko") {
            Some(i) => format!("{}.ko", &file.rel[..i]),
            None => file.rel.clone(),
        };
        order.push(Module {
            name: name.to_string(),
            rel,
            bytes,
        });
        Ok(())
    }
}

/// `kernel/a/x.ko: kernel/b/y.ko kernel/c/z.ko` -> {x: [y, z]}.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let Some((m, deps)) = line.split_once(':') else {
            continue;
        };
        if let Some(name) = module_name(m.trim()) {
            map.insert(
                name,
                deps.split_whitespace().filter_map(module_name).collect(),
            );
        }
    }
    map
}

fn decompress(rel: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let bad = |e: std::io::Error| BootError::BadModule {
        path: rel.to_string(),
        reason: format!("decompressing: {e}"),
    };
    let mut out = Vec::new();
    if rel.ends_with(".xz") {
        liblzma::read::XzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(bad)?;
    } else if rel.ends_with(".zst") {
        out = zstd::decode_all(bytes).map_err(bad)?;
    } else if rel.ends_with(".gz") {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(bad)?;
    } else {
        out = bytes.to_vec();
    }
    Ok(out)
}

/// Reads `depends=a,b` from the `.modinfo` section of an ELF64 little-endian module.
pub fn modinfo_depends(elf: &[u8]) -> std::result::Result<Vec<String>, String> {
    let section = elf_section(elf, ".modinfo")?;
    for field in section.split(|b| *b == 0) {
        if let Some(v) = field.strip_prefix(b"depends=") {
            let v = String::from_utf8_lossy(v);
            let mut deps: Vec<String> = v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(normalise)
                .collect();
            deps.sort();
            return Ok(deps);
        }
    }
    Ok(Vec::new())
}

fn elf_section<'a>(elf: &'a [u8], want: &str) -> std::result::Result<&'a [u8], String> {
    let u16_at = |o: usize| -> std::result::Result<u64, String> {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
            .ok_or_else(|| "truncated ELF".to_string())
    };
    let u32_at = |o: usize| -> std::result::Result<u64, String> {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
            .ok_or_else(|| "truncated ELF".to_string())
    };
    let u64_at = |o: usize| -> std::result::Result<u64, String> {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .ok_or_else(|| "truncated ELF".to_string())
    };
    if elf.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not an ELF64 little-endian object".into());
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let slice = |off: u64, size: u64| {
        elf.get(off as usize..(off + size) as usize)
            .ok_or_else(|| "section outside the file".to_string())
    };
    let names = slice(u64_at(sh(shstrndx) + 0x18)?, u64_at(sh(shstrndx) + 0x20)?)?;
    for i in 0..shnum {
        let name_off = u32_at(sh(i))? as usize;
        let name = names
            .get(name_off..)
            .and_then(|n| n.split(|b| *b == 0).next())
            .unwrap_or_default();
        if name == want.as_bytes() {
            return slice(u64_at(sh(i) + 0x18)?, u64_at(sh(i) + 0x20)?);
        }
    }
    Err(format!("no {want} section"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep_lines_parse_to_names() {
        let m = parse_modules_dep(
            "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko.xz\n\
             kernel/fs/nls/nls_iso8859-1.ko:\n",
        );
        assert_eq!(m["virtio_pci"], ["virtio_pci_modern_dev", "virtio"]);
        assert!(m["nls_iso8859_1"].is_empty());
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(modinfo_depends(b"not elf at all").is_err());
    }
}
