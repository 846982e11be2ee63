//! Debian binary packages: the ar container, `control.tar.*` for the control
//! fields, `data.tar.{xz,zst,gz}` for the files. Maintainer scripts are listed,
//! never run.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use super::archive::{read_tar, Compression, LimitReader};
use super::{file_sha256, index, insert_members, Limits, Member, UnpackError};
use crate::debian::control::parse_paragraphs;
use crate::digest::Digest;
use crate::tree::Tree;
use crate::unpack::store::ContentStore;

/// The control fields of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebControl {
    pub package: String,
    pub version: String,
    pub architecture: String,
    /// Source package name (the `Source` field without its version, else `Package`).
    pub source: String,
    /// Every field as written (continuation lines joined with `\n`).
    pub fields: BTreeMap<String, String>,
    /// Maintainer scripts the package carries (never run; listed for the build log).
    pub maintainer_scripts: Vec<String>,
}

impl DebControl {
    /// Parses a `control` file (deb822, [`crate::debian::control`]). A multi-line value
    /// keeps its continuation lines, each without its leading whitespace.
    pub fn parse(text: &str) -> Result<Self, String> {
        let paragraphs = parse_paragraphs(text, "control").map_err(|e| e.to_string())?;
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in paragraphs.iter().flat_map(|p| p.fields()) {
            // The first line trimmed (empty for a field whose value starts on the next
            // line), each continuation line without its indent.
            let value: Vec<&str> = v
                .lines()
                .enumerate()
                .map(|(i, l)| if i == 0 { l.trim() } else { l.trim_start() })
                .collect();
            fields.insert(k.to_string(), value.join("\n"));
        }
        let get = |k: &str| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| format!("missing {k} field"))
        };
        let package = get("Package")?;
        let source = fields
            .get("Source")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or(&package)
            .to_string();
        Ok(DebControl {
            version: get("Version")?,
            architecture: get("Architecture")?,
            package,
            source,
            fields,
            maintainer_scripts: Vec::new(),
        })
    }
}

/// A package to add with `add_debs`; `sha256` (from the lock) saves hashing it again.
#[derive(Debug, Clone)]
pub struct DebInput {
    pub path: PathBuf,
    pub origin: String,
    pub sha256: Option<Digest>,
}

const SCRIPTS: [&str; 6] = [
    "preinst", "postinst", "prerm", "postrm", "config", "triggers",
];

/// Adds one .deb's files to the tree and returns its control fields.
pub fn add_deb(
    tree: &mut Tree,
    deb_path: &Path,
    origin: &str,
    store: &ContentStore,
    limits: &Limits,
) -> Result<DebControl, UnpackError> {
    let (control, members) = load_or_unpack(deb_path, None, store, limits)?;
    insert_members(tree, &members, origin, &deb_path.display().to_string())?;
    Ok(control)
}

/// Adds many .debs: unpacking (or reading the cached index) runs on two worker
/// threads, insertion happens in input order, so the tree and the first error
/// reported are the same on every run.
pub fn add_debs(
    tree: &mut Tree,
    debs: &[DebInput],
    store: &ContentStore,
    limits: &Limits,
) -> Result<Vec<DebControl>, UnpackError> {
    const WORKERS: usize = 2;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel(8);
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= debs.len() || stop.load(Ordering::SeqCst) {
                    break;
                }
                let d = &debs[i];
                let r = load_or_unpack(&d.path, d.sha256.as_ref(), store, limits);
                if tx.send((i, r)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending: HashMap<usize, Result<(DebControl, Vec<Member>), UnpackError>> =
            HashMap::new();
        let mut controls = Vec::with_capacity(debs.len());
        let result = (|| {
            for (want, d) in debs.iter().enumerate() {
                let r = loop {
                    if let Some(r) = pending.remove(&want) {
                        break r;
                    }
                    match rx.recv() {
                        Ok((i, r)) => {
                            pending.insert(i, r);
                        }
                        Err(_) => {
                            return Err(UnpackError::Read {
                                archive: d.path.display().to_string(),
                                what: "package (worker thread ended)".into(),
                                source: std::io::Error::other("unpack worker stopped"),
                            })
                        }
                    }
                };
                let (control, members) = r?;
                insert_members(tree, &members, &d.origin, &d.path.display().to_string())?;
                controls.push(control);
            }
            Ok(controls)
        })();
        if result.is_err() {
            stop.store(true, Ordering::SeqCst);
            // Drain so blocked workers can finish.
            while rx.recv().is_ok() {}
        }
        result
    })
}

fn load_or_unpack(
    deb_path: &Path,
    sha256: Option<&Digest>,
    store: &ContentStore,
    limits: &Limits,
) -> Result<(DebControl, Vec<Member>), UnpackError> {
    let sha = match sha256 {
        Some(d) if d.algorithm() == crate::digest::Algorithm::Sha256 => d.clone(),
        _ => file_sha256(deb_path)?,
    };
    let key = format!("deb-{}", sha.hex());
    if let Some((Some(control), members)) = index::load(store, &key, limits) {
        return Ok((control, members));
    }
    let archive = deb_path.display().to_string();
    let (control, members) = unpack_deb(deb_path, &archive, store, limits)?;
    index::save(store, &key, Some(&control), &members, &archive)?;
    Ok((control, members))
}

/// Reads a .deb: control fields and every data member (contents to the store).
pub(crate) fn unpack_deb(
    deb_path: &Path,
    archive: &str,
    store: &ContentStore,
    limits: &Limits,
) -> Result<(DebControl, Vec<Member>), UnpackError> {
    let f = File::open(deb_path).map_err(|source| UnpackError::Open {
        path: deb_path.to_path_buf(),
        source,
    })?;
    let not_deb = |reason: String| UnpackError::NotADeb {
        archive: archive.to_string(),
        reason,
    };
    let mut ar = ar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let mut control: Option<DebControl> = None;
    let mut members: Option<Vec<Member>> = None;
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(|source| UnpackError::Read {
            archive: archive.to_string(),
            what: "ar member".into(),
            source,
        })?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let name = name.trim_end_matches('/').to_string();
        if first {
            first = false;
            let mut v = Vec::new();
            (&mut entry)
                .take(64)
                .read_to_end(&mut v)
                .map_err(|source| UnpackError::Read {
                    archive: archive.to_string(),
                    what: "debian-binary".into(),
                    source,
                })?;
            if name != "debian-binary" || !v.starts_with(b"2.") {
                return Err(not_deb(format!(
                    "first member is {name:?}, not debian-binary with format 2.x"
                )));
            }
            continue;
        }
        let Some(kind) = name
            .strip_prefix("control.tar")
            .map(|_| "control")
            .or_else(|| name.strip_prefix("data.tar").map(|_| "data"))
        else {
            continue;
        };
        let compression = Compression::from_member_name(&name).ok_or_else(|| {
            UnpackError::UnknownCompression {
                archive: archive.to_string(),
                what: name.clone(),
            }
        })?;
        let stream = compression
            .decoder(BufReader::with_capacity(256 * 1024, &mut entry))
            .map_err(|source| UnpackError::Read {
                archive: archive.to_string(),
                what: name.clone(),
                source,
            })?;
        if kind == "control" {
            control = Some(read_control(stream, archive, limits)?);
        } else {
            members = Some(read_tar(
                stream,
                archive,
                store,
                limits,
                &|p| Some(p.clone()),
                true,
            )?);
        }
    }
    let control = control.ok_or_else(|| not_deb("no control.tar member".into()))?;
    let members = members.ok_or_else(|| not_deb("no data.tar member".into()))?;
    Ok((control, members))
}

/// The bytes of one regular file of a .deb's data (`path` without a leading `./` or `/`),
/// at most `max_bytes` of it; None if the package has no such file.
pub fn read_data_file(
    deb_path: &Path,
    path: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, UnpackError> {
    let archive = deb_path.display().to_string();
    let read_err = |what: &str, source| UnpackError::Read {
        archive: archive.clone(),
        what: what.to_string(),
        source,
    };
    let f = File::open(deb_path).map_err(|source| UnpackError::Open {
        path: deb_path.to_path_buf(),
        source,
    })?;
    let mut ar = ar::Archive::new(BufReader::new(f));
    while let Some(entry) = ar.next_entry() {
        let mut entry = entry.map_err(|e| read_err("ar member", e))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if !name.starts_with("data.tar") {
            continue;
        }
        let compression =
            Compression::from_member_name(name.trim_end_matches('/')).ok_or_else(|| {
                UnpackError::UnknownCompression {
                    archive: archive.clone(),
                    what: name.clone(),
                }
            })?;
        let stream = compression
            .decoder(BufReader::new(&mut entry))
            .map_err(|e| read_err(&name, e))?;
        let mut tar = tar::Archive::new(stream);
        for member in tar.entries().map_err(|e| read_err(&name, e))? {
            let member = member.map_err(|e| read_err(&name, e))?;
            let p = String::from_utf8_lossy(&member.path_bytes()).into_owned();
            if p.trim_start_matches("./").trim_start_matches('/') != path
                || member.header().entry_type() != tar::EntryType::Regular
            {
                continue;
            }
            let mut bytes = Vec::new();
            member
                .take(max_bytes)
                .read_to_end(&mut bytes)
                .map_err(|e| read_err(path, e))?;
            return Ok(Some(bytes));
        }
        return Ok(None);
    }
    Ok(None)
}

fn read_control(
    stream: impl Read,
    archive: &str,
    limits: &Limits,
) -> Result<DebControl, UnpackError> {
    let read_err = |what: &str, source| UnpackError::Read {
        archive: archive.to_string(),
        what: what.to_string(),
        source,
    };
    let (limited, _) = LimitReader::new(stream, limits.max_entry_bytes.min(64 << 20));
    let mut tar = tar::Archive::new(limited);
    let mut text: Option<String> = None;
    let mut scripts = Vec::new();
    for entry in tar.entries().map_err(|e| read_err("control.tar", e))? {
        let mut entry = entry.map_err(|e| read_err("control.tar", e))?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = path.trim_start_matches("./");
        if name == "control" {
            let mut s = String::new();
            entry
                .read_to_string(&mut s)
                .map_err(|e| read_err("control file", e))?;
            text = Some(s);
        } else if SCRIPTS.contains(&name) {
            scripts.push(name.to_string());
        }
    }
    let text = text.ok_or_else(|| UnpackError::NotADeb {
        archive: archive.to_string(),
        reason: "control.tar has no control file".into(),
    })?;
    let mut control = DebControl::parse(&text).map_err(|reason| UnpackError::NotADeb {
        archive: archive.to_string(),
        reason: format!("control file: {reason}"),
    })?;
    scripts.sort();
    control.maintainer_scripts = scripts;
    Ok(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_parse() {
        let c = DebControl::parse(
            "Package: libfoo1\nSource: foo (1.2-3)\nVersion: 1.2-3+b1\nArchitecture: amd64\n\
             Description: a library\n more text\n .\n end\nConffiles:\n /etc/a 0123\n /etc/b 4567\n",
        )
        .expect("parse");
        assert_eq!(c.package, "libfoo1");
        assert_eq!(c.source, "foo");
        assert_eq!(c.version, "1.2-3+b1");
        assert_eq!(
            c.fields.get("Description").map(String::as_str),
            Some("a library\nmore text\n.\nend")
        );
        assert_eq!(
            c.fields.get("Conffiles").map(String::as_str),
            Some("\n/etc/a 0123\n/etc/b 4567")
        );
        assert!(DebControl::parse("Package: x\n").is_err());
        assert!(DebControl::parse(" oops\n").is_err());
    }
}
