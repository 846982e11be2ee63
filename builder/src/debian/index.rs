//! The parsed Packages index of a suite: every binary package with its pin data and
//! relationships, plus the map of virtual package names to their providers.

use std::collections::BTreeMap;

use crate::digest::Digest;

use super::control::parse_paragraphs;
use super::depends::{parse_relations, Alternatives};
use super::version::Version;
use super::DebianError;

/// One binary package stanza.
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub arch: String,
    /// Pool path relative to the mirror root.
    pub filename: String,
    pub sha256: Digest,
    pub size: u64,
    /// Source package name (the `Source` field without its version, or the package name).
    pub source: String,
    pub essential: bool,
    pub priority: Option<String>,
    /// `(virtual name, provided version)`.
    pub provides: Vec<(String, Option<Version>)>,
    /// Raw `Pre-Depends` and `Depends`, parsed on demand (most packages are never looked at).
    pre_depends: Option<String>,
    depends: Option<String>,
}

impl Package {
    /// Pre-Depends followed by Depends, as groups of alternatives.
    pub fn relations(&self) -> Result<Vec<Alternatives>, DebianError> {
        let mut out = Vec::new();
        for f in [&self.pre_depends, &self.depends].into_iter().flatten() {
            out.extend(parse_relations(f).map_err(|e| DebianError::BadStanza {
                name: self.name.clone(),
                version: self.version.to_string(),
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// `name version`, for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// A provider of a virtual package: the package (by name and index into its versions)
/// and the version it provides, if any.
#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub index: usize,
    pub provided: Option<Version>,
}

/// All packages of one suite/arch, every version, highest version first per name.
#[derive(Clone, Debug, Default)]
pub struct Index {
    packages: BTreeMap<String, Vec<Package>>,
    providers: BTreeMap<String, Vec<Provider>>,
}

impl Index {
    /// Parses the text of one or more Packages files (`what` names them in errors),
    /// keeping only packages of architecture `arch` or `all`.
    pub fn from_texts(texts: &[(&str, &str)], arch: &str) -> Result<Index, DebianError> {
        let mut packages: BTreeMap<String, Vec<Package>> = BTreeMap::new();
        for (what, text) in texts {
            for p in parse_paragraphs(text, what)? {
                let pkg = parse_package(&p, what)?;
                if pkg.arch != arch && pkg.arch != "all" {
                    continue;
                }
                packages.entry(pkg.name.clone()).or_default().push(pkg);
            }
        }
        let mut providers: BTreeMap<String, Vec<Provider>> = BTreeMap::new();
        for versions in packages.values_mut() {
            versions.sort_by(|a, b| b.version.cmp(&a.version));
            // The same version listed twice (two components) is one package.
            versions.dedup_by(|a, b| a.version == b.version);
            for (index, p) in versions.iter().enumerate() {
                for (virt, provided) in &p.provides {
                    providers.entry(virt.clone()).or_default().push(Provider {
                        name: p.name.clone(),
                        index,
                        provided: provided.clone(),
                    });
                }
            }
        }
        for list in providers.values_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name).then(a.index.cmp(&b.index)));
        }
        Ok(Index {
            packages,
            providers,
        })
    }

    /// Every version of a real package, highest first (empty if none).
    pub fn versions(&self, name: &str) -> &[Package] {
        self.packages.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Providers of a virtual name, sorted by provider name.
    pub fn providers(&self, name: &str) -> &[Provider] {
        self.providers.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn provider_package(&self, p: &Provider) -> Option<&Package> {
        self.packages.get(&p.name).and_then(|v| v.get(p.index))
    }

    /// Whether `name` is known at all, as a real or a virtual package.
    pub fn knows(&self, name: &str) -> bool {
        self.packages.contains_key(name) || self.providers.contains_key(name)
    }

    /// Highest version of every package, in name order.
    pub fn latest(&self) -> impl Iterator<Item = &Package> {
        self.packages.values().filter_map(|v| v.first())
    }

    pub fn len(&self) -> usize {
        self.packages.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }
}

fn parse_package(p: &super::control::Paragraph<'_>, what: &str) -> Result<Package, DebianError> {
    let Some(name) = p.get("Package") else {
        return Err(DebianError::Control {
            what: what.to_string(),
            line: p.line,
            message: "stanza without a Package field".into(),
        });
    };
    let version_text = p.get("Version").unwrap_or("");
    let bad = |message: String| DebianError::BadStanza {
        name: name.to_string(),
        version: version_text.to_string(),
        message: format!("{message} ({what} line {})", p.line),
    };
    let version = Version::parse(version_text).map_err(|e| bad(e.to_string()))?;
    let field = |f: &str| p.get(f).ok_or_else(|| bad(format!("missing {f}")));
    let sha256 = Digest::sha256_hex(field("SHA256")?).map_err(|e| bad(e.to_string()))?;
    let size = field("Size")?
        .parse::<u64>()
        .map_err(|_| bad("bad Size".into()))?;
    let source = p
        .get("Source")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or(name)
        .to_string();
    let mut provides = Vec::new();
    if let Some(f) = p.get("Provides") {
        for group in parse_relations(f).map_err(|e| bad(e.to_string()))? {
            for r in group {
                provides.push((r.name, r.constraint.map(|(_, v)| v)));
            }
        }
    }
    Ok(Package {
        name: name.to_string(),
        version,
        arch: field("Architecture")?.to_string(),
        filename: field("Filename")?.to_string(),
        sha256,
        size,
        source,
        essential: p
            .get("Essential")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        priority: p.get("Priority").map(str::to_string),
        provides,
        pre_depends: p.get("Pre-Depends").map(str::to_string),
        depends: p.get("Depends").map(str::to_string),
    })
}
