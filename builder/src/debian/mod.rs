//! The `debian` source: lock a package set from a Debian suite.
//!
//! `kiln lock` for Debian: fetch the suite's InRelease (or Release), fetch the
//! `Packages` index of each component and check it against the sha256 the Release lists,
//! resolve the dependency closure ([`resolve`]) and pin every .deb by name, version,
//! pool path, sha256 and size ([`ResolvedDeb`]). The mirror defaults to the host's apt
//! configuration ([`host_mirror`]); the Release is believed only once its OpenPGP signature
//! verified against an archive keyring ([`keyring`]) and it is fresh ([`Release::check_fresh`]).

pub mod control;
pub mod depends;
pub mod index;
pub mod keyring;
pub mod release;
pub mod resolve;
pub mod sources;
pub mod version;

use std::error::Error as StdError;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub use index::Index;
pub use keyring::{Keyring, Signer};
pub use release::Release;
pub use resolve::resolve;
pub use sources::host_mirror;
pub use version::Version;

/// What to lock from a Debian suite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebianRequest {
    /// Mirror root URL (the directory holding `dists/` and `pool/`).
    pub mirror: String,
    pub suite: String,
    pub components: Vec<String>,
    /// Target architecture, e.g. `amd64`.
    pub arch: String,
    pub packages: Vec<String>,
    pub exclude: Vec<String>,
    /// Add every `Essential: yes` and `Priority: required` package, as debootstrap's
    /// minbase variant does.
    pub essential: bool,
}

/// One pinned .deb of the lock.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResolvedDeb {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Pool path relative to the mirror root (see [`deb_url`]).
    pub filename: String,
    pub sha256: Digest,
    pub size: u64,
    /// Source package name.
    pub source: String,
}

/// Errors of the Debian source.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("reading apt sources {path}: {source}")]
    ReadSources {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing apt sources {path} line {line}: {message}")]
    ParseSources {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "no `deb` entry for suite {suite:?} in the apt configuration under {etc_apt} \
         (read: {}); set `mirror` in the definition",
        show_paths(.files)
    )]
    NoMirror {
        suite: String,
        etc_apt: PathBuf,
        files: Vec<PathBuf>,
    },
    #[error("parsing {what} line {line}: {message}")]
    Control {
        what: String,
        line: usize,
        message: String,
    },
    #[error("invalid version {version:?}: {message}")]
    Version { version: String, message: String },
    #[error("invalid relationship field {field:?}: {message}")]
    Depends { field: String, message: String },
    #[error("index entry for package {name} {version}: {message}")]
    BadStanza {
        name: String,
        version: String,
        message: String,
    },
    #[error("fetching {url}: {source}")]
    Fetch {
        url: String,
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("keyring {origin}: {message}")]
    Keyring { origin: String, message: String },
    #[error("{file} is not signed: {message}")]
    Unsigned { file: String, message: String },
    #[error(
        "{file}: no valid signature by a key of the keyring {keyring} ({message}); \
         it was changed on the way or signed by a key Kiln does not trust"
    )]
    BadSignature {
        file: String,
        keyring: String,
        message: String,
    },
    #[error(
        "{file} expired at {valid_until} (its Valid-Until): the mirror is stale or \
         serves an old index; use a mirror that is up to date"
    )]
    Expired { file: String, valid_until: String },
    #[error("{file} is dated {date}, more than a day ahead of this machine's clock")]
    NotYetValid { file: String, date: String },
    #[error("Release file of suite {suite} does not list {what}")]
    NotInRelease { suite: String, what: String },
    #[error("Release file does not list index {file}")]
    IndexNotListed { file: String },
    #[error("index {file} has {actual} but the Release file lists {expected}")]
    IndexDigestMismatch {
        file: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("index {file} is {actual} bytes but the Release file lists {expected} bytes")]
    IndexSizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("decompressing index {file}: {source}")]
    Decompress {
        file: String,
        source: std::io::Error,
    },
    #[error("index {file} is not UTF-8")]
    NotUtf8 { file: String },
    #[error("package {name} (wanted by {wanted_by}) is in no index of the suite")]
    UnknownPackage { name: String, wanted_by: String },
    #[error("package {name} is both requested and excluded")]
    ExcludedRequested { name: String },
    #[error(
        "{package} depends on `{dependency}`, which only excluded package(s) {} satisfy; \
         remove them from `exclude` or drop {package}",
        .excluded.join(", ")
    )]
    ExcludedNeeded {
        package: String,
        dependency: String,
        excluded: Vec<String>,
    },
    #[error(
        "no package satisfies `{dependency}` (wanted by {wanted_by}); available: [{}]; \
         already selected: [{}]",
        .available.join(", "),
        .selected.join(", ")
    )]
    Unsatisfiable {
        dependency: String,
        wanted_by: String,
        available: Vec<String>,
        selected: Vec<String>,
    },
    #[error(
        "{name} {version} ({filename}) is no longer on the mirror: Debian mirrors drop \
         superseded versions. Either re-lock (`kiln lock`) to move to the current version, \
         or point `mirror` at a snapshot archive of the date the lock was made"
    )]
    Superseded {
        name: String,
        version: String,
        filename: String,
    },
}

fn show_paths(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return "no sources files found".into();
    }
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// URL of a .deb given the mirror root and its pool path.
pub fn deb_url(mirror: &str, filename: &str) -> String {
    format!(
        "{}/{}",
        mirror.trim_end_matches('/'),
        filename.trim_start_matches('/')
    )
}

fn dists_url(mirror: &str, suite: &str, path: &str) -> String {
    format!("{}/dists/{suite}/{path}", mirror.trim_end_matches('/'))
}

fn fetch_with<E>(
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, E>,
    url: &str,
) -> Result<Vec<u8>, DebianError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    fetch(url).map_err(|e| DebianError::Fetch {
        url: url.to_string(),
        source: e.into(),
    })
}

/// Fetches the suite's Release, verifies its signature against `keyring` and its freshness,
/// and parses it: `InRelease` (clear-signed) first; if that cannot be fetched, `Release`
/// with its detached `Release.gpg`. An unsigned Release is refused.
pub fn fetch_release<E>(
    mirror: &str,
    suite: &str,
    keyring: &Keyring,
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, E>,
) -> Result<(Release, Signer), DebianError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let now = std::time::SystemTime::now();
    let in_release = dists_url(mirror, suite, "InRelease");
    let (text, signer, file) = match fetch_with(fetch, &in_release) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| DebianError::NotUtf8 {
                file: in_release.clone(),
            })?;
            let (text, signer) = keyring.verify_clearsigned(&text, &in_release, now)?;
            (text, signer, in_release)
        }
        Err(first) => {
            log::debug!("{first}; trying Release and Release.gpg");
            let plain = dists_url(mirror, suite, "Release");
            let bytes = fetch_with(fetch, &plain).map_err(|_| first)?;
            let sig = fetch_with(fetch, &dists_url(mirror, suite, "Release.gpg")).map_err(|e| {
                DebianError::Unsigned {
                    file: plain.clone(),
                    message: format!("there is no InRelease, and {e}"),
                }
            })?;
            let signer = keyring.verify_detached(&bytes, &sig, &plain, now)?;
            let text = String::from_utf8(bytes).map_err(|_| DebianError::NotUtf8 {
                file: plain.clone(),
            })?;
            (text, signer, plain)
        }
    };
    let release = Release::parse(&text)?;
    release.check_fresh(&file, now)?;
    Ok((release, signer))
}

/// Fetches every component's Packages index for `arch`, verifies each against the
/// Release sha256 and size, and parses them into one [`Index`]. With `Acquire-By-Hash`
/// the index is fetched by its digest (immune to a mirror updating mid-lock), falling
/// back to the plain path.
pub fn fetch_index<E>(
    mirror: &str,
    suite: &str,
    components: &[String],
    arch: &str,
    keyring: &Keyring,
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, E>,
) -> Result<(Index, Signer), DebianError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let (rel, signer) = fetch_release(mirror, suite, keyring, fetch)?;
    if !rel.architectures.is_empty() && !rel.architectures.iter().any(|a| a == arch) {
        return Err(DebianError::NotInRelease {
            suite: suite.to_string(),
            what: format!("architecture {arch}"),
        });
    }
    let mut texts = Vec::new();
    for comp in components {
        if !rel.components.is_empty() && !rel.components.iter().any(|c| c == comp) {
            return Err(DebianError::NotInRelease {
                suite: suite.to_string(),
                what: format!("component {comp}"),
            });
        }
        let (path, digest, _) =
            rel.packages_index(comp, arch)
                .ok_or_else(|| DebianError::NotInRelease {
                    suite: suite.to_string(),
                    what: format!("a Packages index for {comp}/binary-{arch}"),
                })?;
        let plain = dists_url(mirror, suite, path);
        let bytes = if rel.acquire_by_hash {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            let by_hash = dists_url(
                mirror,
                suite,
                &format!("{dir}/by-hash/SHA256/{}", digest.hex()),
            );
            match fetch_with(fetch, &by_hash) {
                Ok(b) => b,
                Err(e) => {
                    log::debug!("{e}; trying {plain}");
                    fetch_with(fetch, &plain)?
                }
            }
        } else {
            fetch_with(fetch, &plain)?
        };
        rel.verify(path, &bytes)?;
        let raw = release::decompress(path, &bytes, release::MAX_INDEX_BYTES)?;
        let text = String::from_utf8(raw).map_err(|_| DebianError::NotUtf8 {
            file: plain.clone(),
        })?;
        texts.push((plain, text));
    }
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(w, t)| (w.as_str(), t.as_str()))
        .collect();
    Ok((Index::from_texts(&refs, arch)?, signer))
}

/// `kiln lock` for one Debian source: index download, verification and resolution.
/// `previous` is the current lock's Debian entries (empty for a first lock). Returns the
/// pinned .debs and who signed the Release they were read from.
pub fn lock<E>(
    req: &DebianRequest,
    previous: &[ResolvedDeb],
    keyring: &Keyring,
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, E>,
) -> Result<(Vec<ResolvedDeb>, Signer), DebianError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let (index, signer) = fetch_index(
        &req.mirror,
        &req.suite,
        &req.components,
        &req.arch,
        keyring,
        fetch,
    )?;
    Ok((resolve(&index, req, previous)?, signer))
}

/// Checks that every pinned .deb is still in the index (same version and pool path);
/// the first that is not gives [`DebianError::Superseded`].
pub fn check_pinned(index: &Index, pinned: &[ResolvedDeb]) -> Result<(), DebianError> {
    for d in pinned {
        let present = index
            .versions(&d.name)
            .iter()
            .any(|p| p.filename == d.filename && p.sha256 == d.sha256);
        if !present {
            return Err(DebianError::Superseded {
                name: d.name.clone(),
                version: d.version.clone(),
                filename: d.filename.clone(),
            });
        }
    }
    Ok(())
}
