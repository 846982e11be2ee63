//! Reading a definition: each file of the `extends` chain parsed strictly (errors with
//! file, line, column and the offending line), `local` sources made relative to the file
//! that names them, then merged (`merge`) and validated (`validate`).

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{merge, validate, Definition, DefinitionError, DefinitionFile, MAX_EXTENDS};

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// Walks a parsed document depth first for the innermost value `hit` accepts; returns where
/// it starts and leaves its dotted key in `keys` (the items of an array share its key).
fn find_value(
    table: &DeTable,
    hit: &dyn Fn(&Spanned<DeValue>) -> bool,
    keys: &mut Vec<String>,
) -> Option<usize> {
    fn in_value(
        v: &Spanned<DeValue>,
        hit: &dyn Fn(&Spanned<DeValue>) -> bool,
        keys: &mut Vec<String>,
    ) -> Option<usize> {
        let inner = match v.get_ref() {
            DeValue::Table(t) => find_value(t, hit, keys),
            DeValue::Array(items) => items.iter().find_map(|i| in_value(i, hit, keys)),
            _ => None,
        };
        inner.or_else(|| hit(v).then(|| v.span().start))
    }
    table.iter().find_map(|(k, v)| {
        keys.push(k.get_ref().to_string());
        let found = in_value(v, hit, keys);
        if found.is_none() {
            keys.pop();
        }
        found
    })
}

/// The dotted key (`symlink.path`, `image.name`) of the innermost value whose span holds
/// `offset`, when the text parses as TOML.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut keys = Vec::new();
    find_value(doc.get_ref(), &|v| v.span().contains(&offset), &mut keys)?;
    Some(keys.join("."))
}

/// The entries that put something at a path in the image: the table name and the key of the
/// path in each.
const PATH_ENTRIES: [(&str, &str); 4] = [
    ("file", "path"),
    ("local", "dest"),
    ("directory", "path"),
    ("symlink", "path"),
];

/// What a parsed file must not hold although each value is fine: two entries for one path
/// in the image (which wins would be an accident of order), and a private key anywhere (it
/// would be baked into every copy of the image). The error points at the second entry or at
/// the key.
fn check_entries(path: &Path, text: &str) -> Result<(), DefinitionError> {
    let Ok(doc) = DeTable::parse(text) else {
        return Ok(());
    };
    let at = |offset: usize, message: String| {
        let (line, column) = line_col(text, offset);
        DefinitionError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    // Every entry's path with where it is written, in the order of the text.
    let mut entries = Vec::new();
    for (table, key) in PATH_ENTRIES {
        for (offset, p) in strings_in(doc.get_ref(), Some(table), key) {
            entries.push((offset, table, key, p));
        }
    }
    entries.sort();
    let mut seen = std::collections::BTreeMap::new();
    for (offset, table, key, p) in entries {
        let (line, _) = line_col(text, offset);
        if let Some((first, other)) =
            seen.insert(p.trim_end_matches('/').to_string(), (line, table))
        {
            return Err(at(
                offset,
                format!(
                    "{p:?} is given twice: also by the [[{other}]] at line {first} \
                     (at {table}.{key})"
                ),
            ));
        }
    }
    if let Some((offset, key)) = private_key(doc.get_ref()) {
        return Err(at(
            offset,
            format!(
                "a private key would be baked into the image, readable in every copy of it; \
                 give cluster keys at boot (`kiln secrets`, fw_cfg or NoCloud) (at {key})"
            ),
        ));
    }
    Ok(())
}

/// The offset and dotted key of the first string value that holds a PEM private key.
fn private_key(table: &DeTable) -> Option<(usize, String)> {
    let pem = |v: &Spanned<DeValue>| {
        matches!(v.get_ref(), DeValue::String(s)
            if s.contains("-----BEGIN") && s.contains("PRIVATE KEY-----"))
    };
    let mut keys = Vec::new();
    let offset = find_value(table, &pem, &mut keys)?;
    Some((offset, keys.join(".")))
}

/// Parses one file (no `extends` processing).
pub fn parse_file(path: &Path, text: &str) -> Result<DefinitionFile, DefinitionError> {
    let file = parse_values(path, text)?;
    check_entries(path, text)?;
    Ok(file)
}

fn parse_values(path: &Path, text: &str) -> Result<DefinitionFile, DefinitionError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        let mut message = e.message().trim().to_string();
        // Name the key the value sits under (the message of a checked value does not).
        if let Some(key) = e.span().and_then(|s| key_at(text, s.start)) {
            message.push_str(&format!(" (at {key})"));
        }
        // Name the object too: the line the error points at, when it is short enough.
        if let Some(src) = e.span().and_then(|_| text.lines().nth(line - 1)) {
            let src = src.trim();
            if !src.is_empty() && src.len() <= 120 {
                message.push_str(&format!(", in `{src}`"));
            }
        }
        DefinitionError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    })
}

/// Where in `text` each string value of `key` sits, in the order of the text: the top-level
/// key when `table` is None, else the key in each entry of the array of tables `table`.
fn string_values(text: &str, table: Option<&str>, key: &str) -> Vec<(usize, String)> {
    match DeTable::parse(text) {
        Ok(doc) => strings_in(doc.get_ref(), table, key),
        Err(_) => Vec::new(),
    }
}

/// [`string_values`] of a parsed document.
fn strings_in(doc: &DeTable, table: Option<&str>, key: &str) -> Vec<(usize, String)> {
    let string = |v: &Spanned<DeValue>| match v.get_ref() {
        DeValue::String(s) => Some((v.span().start, s.to_string())),
        _ => None,
    };
    let Some(table) = table else {
        return doc.get(key).and_then(string).into_iter().collect();
    };
    let Some(DeValue::Array(items)) = doc.get(table).map(Spanned::get_ref) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item.get_ref() {
            DeValue::Table(t) => t.get(key).and_then(string),
            _ => None,
        })
        .collect()
}

/// The project directory: the one holding the definition Kiln was given, with every symlink
/// resolved.
fn project_dir(definition: &Path) -> Result<PathBuf, DefinitionError> {
    let dir = match definition.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.canonicalize().map_err(|source| DefinitionError::Read {
        path: dir.to_path_buf(),
        source,
    })
}

/// `rel` (an `extends` or a `[[local]]` source, relative to `dir`, the directory of the
/// file that names it) joined to `dir`, when it stays inside the project directory `root`:
/// not absolute, no `..`, and no symlink on the way leading out. A path that does not exist
/// passes: reading it says so.
fn confined(root: &Path, dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    let why = if p.is_absolute() {
        "is an absolute path"
    } else if p.components().any(|c| c == std::path::Component::ParentDir) {
        "climbs with `..`"
    } else {
        let joined = dir.join(p);
        return match joined.canonicalize() {
            Ok(real) if !real.starts_with(root) => Err(format!(
                "{rel:?} leads out of the project directory {} through a symlink (to {}); \
                 a definition reads only files inside it",
                root.display(),
                real.display()
            )),
            _ => Ok(joined),
        };
    };
    Err(format!(
        "{rel:?} {why}; a definition reads only files inside its project directory {} \
         (paths relative to the file that names them)",
        root.display()
    ))
}

/// Loads a definition and its `extends` chain, merges and validates it. Every file of the
/// chain and every `[[local]]` source must lie inside the project directory ([`confined`]).
pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
    let root = project_dir(path)?;
    let mut chain: Vec<(PathBuf, DefinitionFile)> = Vec::new();
    let mut next = Some(path.to_path_buf());
    while let Some(p) = next.take() {
        if chain.len() >= MAX_EXTENDS {
            return Err(DefinitionError::ExtendsTooDeep {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&p).map_err(|source| DefinitionError::Read {
            path: p.clone(),
            source,
        })?;
        let mut file = parse_file(&p, &text)?;
        let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
        let outside = |offsets: Vec<(usize, String)>, i: usize, key: &str, message: String| {
            let offset = offsets.get(i).map_or(0, |o| o.0);
            let (line, column) = line_col(&text, offset);
            DefinitionError::Parse {
                path: p.clone(),
                line,
                column,
                message: format!("{message} (at {key})"),
            }
        };
        for (i, l) in file.local.iter_mut().enumerate() {
            l.source = confined(&root, &dir, &l.source)
                .map_err(|m| {
                    let at = string_values(&text, Some("local"), "source");
                    outside(at, i, "local.source", m)
                })?
                .to_string_lossy()
                .into_owned();
        }
        if let Some(keyring) = file.debian.as_mut().and_then(|d| d.keyring.as_mut()) {
            *keyring = confined(&root, &dir, keyring)
                .map_err(|m| {
                    let at = DeTable::parse(&text)
                        .ok()
                        .and_then(
                            |doc| match doc.get_ref().get("debian").map(Spanned::get_ref) {
                                Some(DeValue::Table(t)) => strings_in(t, None, "keyring").pop(),
                                _ => None,
                            },
                        )
                        .into_iter()
                        .collect();
                    outside(at, 0, "debian.keyring", m)
                })?
                .to_string_lossy()
                .into_owned();
        }
        if let Some(base) = &file.extends {
            next =
                Some(confined(&root, &dir, base).map_err(|m| {
                    outside(string_values(&text, None, "extends"), 0, "extends", m)
                })?);
        }
        chain.push((p, file));
    }
    let merged = chain
        .into_iter()
        .rev()
        .map(|(_, f)| f)
        .reduce(merge::merge)
        .unwrap_or_default();
    validate::finish(path, merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_at_an_offset_is_named_through_tables_and_arrays_of_tables() {
        let text = "[image]\nname = \"x\"\n[[file]]\npath = \"/a\"\n[[file]]\npath = \"/b\"\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap()).unwrap_or_default();
        assert_eq!(at("\"x\""), "image.name");
        assert_eq!(at("\"/b\""), "file.path");
        assert_eq!(key_at("a = [", 4), None, "not TOML: no key");
    }

    fn parse_error(text: &str) -> String {
        parse_file(Path::new("d.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn two_entries_for_one_path_are_refused_at_the_second() {
        let msg = parse_error(
            "[[file]]\npath = \"/etc/a\"\n[[symlink]]\npath = \"/etc/b\"\ntarget = \"x\"\n\
             [[file]]\npath = \"/etc/b/\"\n",
        );
        assert!(
            msg.starts_with("d.toml:7:8: \"/etc/b/\" is given twice"),
            "{msg}"
        );
        assert!(
            msg.contains("also by the [[symlink]] at line 4 (at file.path)"),
            "{msg}"
        );
        let msg = parse_error(
            "[[local]]\nsource = \"a\"\ndest = \"/x\"\n[[local]]\nsource = \"b\"\ndest = \"/x\"\n",
        );
        assert!(msg.starts_with("d.toml:6:8: "), "{msg}");
        // Different paths are fine.
        parse_file(
            Path::new("d.toml"),
            "[[file]]\npath = \"/a\"\n[[directory]]\npath = \"/b\"\n",
        )
        .unwrap();
    }

    #[test]
    fn a_private_key_anywhere_is_refused_where_it_is() {
        let key = "-----BEGIN EC PRIVATE KEY-----\\nMHcC\\n-----END EC PRIVATE KEY-----";
        let msg = parse_error(&format!("[[file]]\npath = \"/k\"\ncontent = \"{key}\"\n"));
        assert!(msg.starts_with("d.toml:3:11: a private key"), "{msg}");
        assert!(msg.ends_with("(at file.content)"), "{msg}");
        let msg = parse_error(&format!(
            "[machine.secrets]\nca-key = \"{}\"\n",
            key.replace("EC ", "")
        ));
        assert!(msg.contains("(at machine.secrets.ca-key)"), "{msg}");
        // A certificate is public.
        parse_file(
            Path::new("d.toml"),
            "[[file]]\npath = \"/c\"\ncontent = \"-----BEGIN CERTIFICATE-----\"\n",
        )
        .unwrap();
    }

    #[test]
    fn extends_and_local_sources_stay_inside_the_project_directory() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("project");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let secret = outer.path().join("secret");
        std::fs::write(&secret, "host file").unwrap();
        std::os::unix::fs::symlink(&secret, root.join("sub/link")).unwrap();
        std::fs::write(root.join("sub/inside"), "ok").unwrap();
        std::fs::write(
            root.join("base.toml"),
            "[image]\nname = \"b\"\nversion = \"1\"\nepoch = 0\n",
        )
        .unwrap();
        let def = root.join("d.toml");
        let load_with = |body: &str| {
            std::fs::write(&def, body).unwrap();
            load(&def).map(|_| ()).map_err(|e| e.to_string())
        };
        let local = |source: &str| {
            format!(
                "extends = \"base.toml\"\n[[local]]\nsource = \"sub/inside\"\ndest = \"/a\"\n\
                 [[local]]\nsource = \"{source}\"\ndest = \"/b\"\n"
            )
        };
        // Inside: a plain relative path, also through a subdirectory.
        load_with(&local("sub/inside")).unwrap();
        for (source, why) in [
            (secret.to_str().unwrap(), "is an absolute path"),
            ("../secret", "climbs with `..`"),
            ("sub/../sub/inside", "climbs with `..`"),
            ("sub/link", "leads out of the project directory"),
        ] {
            let msg = load_with(&local(source)).unwrap_err();
            assert!(
                msg.starts_with(&format!("{}:6:10: ", def.display())),
                "{source}: {msg}"
            );
            assert!(msg.contains(why), "{source}: {msg}");
            assert!(msg.ends_with("(at local.source)"), "{source}: {msg}");
        }
        // extends too, named where it is written; and a link to a base inside is fine.
        std::os::unix::fs::symlink(root.join("base.toml"), root.join("sub/base.toml")).unwrap();
        load_with("extends = \"sub/base.toml\"\n").unwrap();
        for base in ["../secret", "/etc/hostname"] {
            let msg = load_with(&format!("\n\nextends = \"{base}\"\n")).unwrap_err();
            assert!(
                msg.starts_with(&format!("{}:3:11: ", def.display())),
                "{base}: {msg}"
            );
            assert!(msg.ends_with("(at extends)"), "{base}: {msg}");
        }
        // A base's own local sources are confined to the project directory too: a base in a
        // subdirectory may not climb back out of it either.
        std::fs::write(
            root.join("sub/b2.toml"),
            "[[local]]\nsource = \"../../secret\"\ndest = \"/c\"\n",
        )
        .unwrap();
        let msg = load_with("extends = \"sub/b2.toml\"\n").unwrap_err();
        assert!(msg.contains("sub/b2.toml:2:10: "), "{msg}");
    }

    #[test]
    fn a_checked_value_is_located_in_the_file_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.toml"),
            "[image]\nname = \"b\"\nversion = \"1\"\nepoch = 0\n[disk]\nsize = \"lots\"\n",
        )
        .unwrap();
        let child = dir.path().join("child.toml");
        std::fs::write(&child, "extends = \"base.toml\"\n[image]\nname = \"c\"\n").unwrap();
        let msg = load(&child).unwrap_err().to_string();
        assert!(msg.contains("base.toml:6:8: "), "{msg}");
        assert!(
            msg.contains("\"lots\" is not a size like \"8GiB\" (at disk.size)"),
            "{msg}"
        );
    }
}
