//! The host's apt configuration: which mirror serves a suite.
//!
//! Reads `sources.list` (one-line format) and `sources.list.d/*.list` and `*.sources`
//! (deb822), in apt's order: `sources.list` first, then `sources.list.d` by file name.
//! Files with any other suffix (`.disabled`, `.save`, ...) are ignored, as apt does.

use std::path::{Path, PathBuf};

use super::control::parse_paragraphs;
use super::DebianError;

/// One source entry, one-line or deb822.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// `deb`, `deb-src`.
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `signed-by` / `Signed-By`: the keys apt trusts for this entry alone.
    pub signed_by: Option<SignedBy>,
    /// The file the entry came from.
    pub file: PathBuf,
}

/// The keys an entry names: keyring files, or (deb822 only) an armored key block inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedBy {
    Files(Vec<PathBuf>),
    Inline(String),
}

impl SignedBy {
    /// From an option value; fingerprints (which apt looks up among its trusted keys) give
    /// None, and the default keys are used.
    fn parse(value: &str) -> Option<SignedBy> {
        if value
            .trim_start()
            .starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
        {
            return Some(SignedBy::Inline(value.trim().to_string()));
        }
        let files: Vec<PathBuf> = value
            .split([',', ' ', '\t'])
            .filter(|f| f.starts_with('/'))
            .map(PathBuf::from)
            .collect();
        (!files.is_empty()).then_some(SignedBy::Files(files))
    }
}

/// Every enabled entry of the apt configuration under `etc_apt` (normally `/etc/apt`),
/// in apt's order, plus the list of files read.
pub fn read_sources(etc_apt: &Path) -> Result<(Vec<SourceEntry>, Vec<PathBuf>), DebianError> {
    let mut files = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let dir = etc_apt.join("sources.list.d");
    if dir.is_dir() {
        let rd = std::fs::read_dir(&dir).map_err(|source| DebianError::ReadSources {
            path: dir.clone(),
            source,
        })?;
        let mut extra = Vec::new();
        for e in rd {
            let e = e.map_err(|source| DebianError::ReadSources {
                path: dir.clone(),
                source,
            })?;
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.ends_with(".list") || name.ends_with(".sources")) && p.is_file() {
                extra.push(p);
            }
        }
        extra.sort();
        files.extend(extra);
    }
    let mut entries = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| DebianError::ReadSources {
            path: f.clone(),
            source,
        })?;
        if f.extension().is_some_and(|e| e == "sources") {
            entries.extend(parse_deb822_sources(&text, f)?);
        } else {
            entries.extend(parse_one_line_sources(&text, f)?);
        }
    }
    Ok((entries, files))
}

/// The URI of the first `deb` entry whose suites include `suite`.
pub fn host_mirror(etc_apt: &Path, suite: &str) -> Result<String, DebianError> {
    let (entries, files) = read_sources(etc_apt)?;
    entries
        .into_iter()
        .filter(|e| e.types.iter().any(|t| t == "deb"))
        .find(|e| e.suites.iter().any(|s| s == suite))
        .and_then(|e| e.uris.into_iter().next())
        .ok_or_else(|| DebianError::NoMirror {
            suite: suite.to_string(),
            etc_apt: etc_apt.to_path_buf(),
            files,
        })
}

/// The keys the host's apt trusts for `suite` at `mirror`: the `signed-by` of the entry that
/// serves it, else apt's own trusted keys (`trusted.gpg` and `trusted.gpg.d/*.gpg|*.asc`
/// under `etc_apt`), else Debian's archive keyring at `default_keyring`.
pub fn host_keyring(
    etc_apt: &Path,
    mirror: &str,
    suite: &str,
    default_keyring: &Path,
) -> Result<super::Keyring, DebianError> {
    let (entries, _) = read_sources(etc_apt)?;
    let same = |u: &String| u.trim_end_matches('/') == mirror.trim_end_matches('/');
    let signed_by = entries
        .into_iter()
        .filter(|e| e.types.iter().any(|t| t == "deb"))
        .find(|e| e.suites.iter().any(|s| s == suite) && e.uris.iter().any(same))
        .and_then(|e| e.signed_by.map(|s| (s, e.file)));
    match signed_by {
        Some((SignedBy::Files(files), _)) => {
            let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            super::Keyring::read_files(&files)
        }
        Some((SignedBy::Inline(block), file)) => super::Keyring::parse(
            block.as_bytes(),
            &format!("the Signed-By key block in {}", file.display()),
        ),
        None => {
            let mut files = Vec::new();
            let main = etc_apt.join("trusted.gpg");
            if main.is_file() {
                files.push(main);
            }
            if let Ok(rd) = std::fs::read_dir(etc_apt.join("trusted.gpg.d")) {
                let mut extra: Vec<PathBuf> = rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.is_file() && p.extension().is_some_and(|x| x == "gpg" || x == "asc")
                    })
                    .collect();
                extra.sort();
                files.extend(extra);
            }
            if files.is_empty() && default_keyring.is_file() {
                files.push(default_keyring.to_path_buf());
            }
            if files.is_empty() {
                return Err(DebianError::Keyring {
                    origin: format!("the apt configuration under {}", etc_apt.display()),
                    message: format!(
                        "no trusted key for {mirror} {suite} (no signed-by, no trusted.gpg.d, \
                         no {}); set `keyring` in the definition's [debian]",
                        default_keyring.display()
                    ),
                });
            }
            let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            super::Keyring::read_files(&files)
        }
    }
}

/// `deb [opt=val ...] URI SUITE [COMPONENT ...]`, `#` comments.
pub fn parse_one_line_sources(text: &str, file: &Path) -> Result<Vec<SourceEntry>, DebianError> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: &str| DebianError::ParseSources {
            path: file.to_path_buf(),
            line: idx + 1,
            message: message.to_string(),
        };
        let (ty, mut rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `deb URI SUITE [COMPONENT...]`"))?;
        rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']').ok_or_else(|| bad("unclosed `[` options"))?;
            signed_by = r[..close]
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .and_then(SignedBy::parse);
            rest = r[close + 1..].trim_start();
        }
        let mut words = rest.split_whitespace();
        let uri = words.next().ok_or_else(|| bad("missing URI"))?;
        let suite = words.next().ok_or_else(|| bad("missing suite"))?;
        out.push(SourceEntry {
            types: vec![ty.to_string()],
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
            file: file.to_path_buf(),
        });
    }
    Ok(out)
}

/// deb822 `.sources`: `Types`, `URIs`, `Suites`, `Components`; `Enabled: no` skips a
/// paragraph.
pub fn parse_deb822_sources(text: &str, file: &Path) -> Result<Vec<SourceEntry>, DebianError> {
    let what = file.display().to_string();
    let mut out = Vec::new();
    for p in parse_paragraphs(text, &what)? {
        if p.get("Enabled")
            .is_some_and(|v| v.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let words = |name: &str| -> Vec<String> {
            p.get(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let entry = SourceEntry {
            types: words("Types"),
            uris: words("URIs"),
            suites: words("Suites"),
            components: words("Components"),
            signed_by: p.get("Signed-By").and_then(|_| {
                SignedBy::parse(
                    &p.lines("Signed-By")
                        .iter()
                        .map(|l| {
                            // A line of just `.` stands for an empty line in deb822.
                            if *l == "." {
                                ""
                            } else {
                                l
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            }),
            file: file.to_path_buf(),
        };
        if entry.types.is_empty() || entry.uris.is_empty() || entry.suites.is_empty() {
            return Err(DebianError::ParseSources {
                path: file.to_path_buf(),
                line: p.line,
                message: "a paragraph needs Types, URIs and Suites".into(),
            });
        }
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write fixture");
    }

    #[test]
    fn reads_one_line_and_deb822_in_apt_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let etc = tmp.path();
        std::fs::create_dir(etc.join("sources.list.d")).expect("mkdir");
        write(
            etc,
            "sources.list",
            "# comment\n\ndeb-src http://src.invalid/d stable main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/d stable main contrib # tail\n",
        );
        write(
            &etc.join("sources.list.d"),
            "b.sources",
            "Types: deb deb-src\n# URIs: http://commented.invalid/\nURIs: http://two.invalid/d\n\
             Suites: stable stable-updates\nComponents: main\n\n\
             Enabled: no\nTypes: deb\nURIs: http://off.invalid/\nSuites: testing\n",
        );
        write(
            &etc.join("sources.list.d"),
            "a.list",
            "deb http://three.invalid/sec stable-security main\n",
        );
        write(
            &etc.join("sources.list.d"),
            "c.list.disabled",
            "deb http://disabled.invalid/ testing main\n",
        );
        write(
            &etc.join("sources.list.d"),
            "d.sources.save",
            "Types: deb\nURIs: http://disabled.invalid/\nSuites: testing\n",
        );
        assert_eq!(
            host_mirror(etc, "stable").expect("found"),
            "http://one.invalid/d"
        );
        assert_eq!(
            host_mirror(etc, "stable-updates").expect("found"),
            "http://two.invalid/d"
        );
        assert_eq!(
            host_mirror(etc, "stable-security").expect("found"),
            "http://three.invalid/sec"
        );
        let err = host_mirror(etc, "testing").expect_err("disabled only");
        let msg = err.to_string();
        assert!(msg.contains("testing"), "{msg}");
        assert!(
            msg.contains("sources.list") && msg.contains("b.sources"),
            "{msg}"
        );
        assert!(!msg.contains("disabled"), "{msg}");
        let (entries, files) = read_sources(etc).expect("reads");
        assert_eq!(files.len(), 3);
        assert_eq!(entries[1].components, vec!["main", "contrib"]);
        assert_eq!(
            entries[1].signed_by,
            Some(SignedBy::Files(vec![PathBuf::from("/k.gpg")]))
        );
        assert_eq!(entries[2].signed_by, None);
    }

    #[test]
    fn missing_config_is_a_clear_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = host_mirror(tmp.path(), "bookworm").expect_err("nothing configured");
        assert!(err.to_string().contains("bookworm"), "{err}");
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let err = parse_one_line_sources("deb\n", Path::new("/x/sources.list")).expect_err("bad");
        assert!(err.to_string().contains("/x/sources.list"), "{err}");
        let err = parse_one_line_sources("deb [arch=amd64 http://x s\n", Path::new("/y"))
            .expect_err("bad");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse_deb822_sources("Types: deb\nSuites: s\n", Path::new("/z.sources"))
            .expect_err("no URIs");
        assert!(err.to_string().contains("/z.sources"), "{err}");
    }
}
