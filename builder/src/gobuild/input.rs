//! The `[[go]]` input: what to build, from which pinned module version, and how.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::GoError;

/// Environment variables the builder fixes itself; an input may not override them.
pub const FIXED_ENV: &[&str] = &[
    "GOFLAGS",
    "GOTOOLCHAIN",
    "GOOS",
    "GOARCH",
    "GOAMD64",
    "CGO_ENABLED",
    "GOPROXY",
    "GONOPROXY",
    "GOPRIVATE",
    "GONOSUMDB",
    "GONOSUMCHECK",
    "GOSUMDB",
    "GOWORK",
    "GO111MODULE",
    "GOCACHE",
    "GOMODCACHE",
    "GOPATH",
    "GOENV",
    "GOVCS",
    "GOINSECURE",
];

/// A Go program built from a pinned module version with the host Go toolchain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GoInput {
    /// Name of this input (used in messages and the lock).
    pub name: String,
    /// Module path, e.g. `k8s.io/kubernetes`.
    pub module: String,
    /// Exact module version, e.g. `v1.35.4`.
    pub version: String,
    /// Main packages to build. Binary name = Go's default (last path element without a
    /// `/vN` suffix) unless given as `{ path = "...", binary = "..." }`.
    pub packages: Vec<GoPackage>,
    /// Build tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra `-ldflags` (after the fixed `-s -w -buildid=`). Placeholders: `{version}` (the
    /// module version), `{version-bare}` (without a leading `v`), `{commit}` (the upstream
    /// commit pinned in the lock: see `commit`), `{build-date}` (the image epoch, RFC 3339
    /// UTC).
    #[serde(default)]
    pub ldflags: Vec<String>,
    /// Build with cgo (`CGO_ENABLED=1`); off by default.
    #[serde(default)]
    pub cgo: bool,
    /// The upstream commit (40 lowercase hex digits) the version was tagged at, for
    /// `{commit}` and version stamping. `kiln lock` records it in the lock; without it the
    /// commit is taken from the module proxy's Origin, where the proxy reports one (when
    /// both are known they must agree). `kiln build` takes the commit from the lock only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<GitCommit>,
    /// Extra environment for the Go toolchain (may not override the fixed variables).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The Go release to build with, exact (`1.25.9`): Kiln fetches it as the module
    /// `golang.org/toolchain@v0.0.1-go1.25.9.linux-amd64` through the module proxy and pins
    /// its hash in the lock. Default: the host's `go`, whose version the lock records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<GoRelease>,
    /// Module path patterns (Go's GONOSUMDB syntax, e.g. `example.com/private`) that the
    /// public checksum database cannot know: private modules, or ones only a local mirror
    /// serves. `kiln lock` does not ask it about them; their hashes are pinned in the lock
    /// like every other module's. Kiln never takes GONOSUMDB from the caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_sumdb: Vec<String>,
    /// Version stamping scheme of the upstream build, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<Stamp>,
    /// Directory in the image the binaries go to (default `/usr/bin`). Not part of the
    /// build's cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
}

/// A full git commit id: 40 lowercase hex digits, checked when the definition is parsed
/// (so a bad one is reported with its file, line and column).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct GitCommit(String);

impl GitCommit {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GitCommit {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(GitCommit(s))
        } else {
            Err(format!(
                "commit {s:?} is not a full commit id (40 lowercase hex digits)"
            ))
        }
    }
}

impl From<GitCommit> for String {
    fn from(c: GitCommit) -> String {
        c.0
    }
}

impl std::fmt::Display for GitCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An exact Go release (`1.25.9`), checked when the definition is parsed (so a bad one is
/// reported with its file, line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub struct GoRelease(String);

impl GoRelease {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for GoRelease {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        let numbers = parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && !(p.len() > 1 && p.starts_with('0'))
        });
        if parts.len() == 3 && numbers {
            Ok(GoRelease(s))
        } else {
            Err(format!(
                "go {s:?} must be an exact Go release like 1.25.9 (not a prefix, a `go` \
                 prefix or a query)"
            ))
        }
    }
}

impl From<GoRelease> for String {
    fn from(r: GoRelease) -> String {
        r.0
    }
}

impl std::str::FromStr for GoRelease {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        GoRelease::try_from(s.to_string())
    }
}

/// Where built binaries go in the image unless the input says otherwise.
pub const DEFAULT_DEST: &str = "/usr/bin";

/// A main package to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum GoPackage {
    /// Import path; binary named by Go's rule.
    Path(String),
    /// Import path with an explicit binary name.
    Named {
        /// Import path.
        path: String,
        /// Binary name.
        binary: String,
    },
}

impl GoPackage {
    pub fn path(&self) -> &str {
        match self {
            GoPackage::Path(p) => p,
            GoPackage::Named { path, .. } => path,
        }
    }

    /// Binary name: explicit, or Go's rule (last element, skipping a `/vN` major suffix).
    pub fn binary(&self) -> &str {
        match self {
            GoPackage::Named { binary, .. } => binary,
            GoPackage::Path(p) => default_binary_name(p),
        }
    }
}

/// The name `go build -o DIR/` gives a main package's executable.
pub fn default_binary_name(path: &str) -> &str {
    let mut parts = path.rsplit('/');
    let last = parts.next().unwrap_or(path);
    let is_major =
        last.len() > 1 && last.starts_with('v') && last[1..].bytes().all(|b| b.is_ascii_digit());
    match (is_major, parts.next()) {
        (true, Some(prev)) => prev,
        _ => last,
    }
}

/// Upstream version-stamping schemes the builder knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Stamp {
    /// `-X` gitVersion, gitMajor, gitMinor, gitCommit, gitTreeState, buildDate on
    /// `k8s.io/component-base/version` and `k8s.io/client-go/pkg/version`.
    Kubernetes,
}

/// A semantic version as Go modules pin them: `v1.2.3`, with an optional pre-release
/// (`v1.2.3-rc.1`, pseudo-versions `v0.0.0-20240101000000-abcdef123456`) and build suffix
/// (`+incompatible`); not a query (`latest`, `v1.2`, a branch).
pub fn exact_module_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let (rest, build) = rest
        .split_once('+')
        .map_or((rest, None), |(r, b)| (r, Some(b)));
    let (core, pre) = rest
        .split_once('-')
        .map_or((rest, None), |(c, p)| (c, Some(p)));
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let numbers: Vec<&str> = core.split('.').collect();
    numbers.len() == 3
        && numbers.iter().all(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n.len() == 1 || !n.starts_with('0'))
        })
        && pre.is_none_or(|p| p.split('.').all(ident))
        && build.is_none_or(|b| b.split('.').all(ident))
}

impl GoInput {
    /// The toolchain module of `go`, if set.
    pub fn toolchain_module(&self) -> Option<String> {
        self.go
            .as_ref()
            .map(|v| format!("golang.org/toolchain@v0.0.1-go{}.linux-amd64", v.as_str()))
    }

    /// Checks the fields that can be checked without the network.
    pub fn validate(&self) -> Result<(), GoError> {
        let bad = |reason: String| GoError::InvalidInput {
            name: self.name.clone(),
            reason,
        };
        if self.module.is_empty() || self.module.contains(char::is_whitespace) {
            return Err(bad(format!("bad module path {:?}", self.module)));
        }
        if !exact_module_version(&self.version) {
            return Err(bad(format!(
                "version {:?} must be an exact module version like v1.2.3 (a query such as \
                 latest, a branch or v1.2 would change under the pin)",
                self.version
            )));
        }
        if self.packages.is_empty() {
            return Err(bad("no packages to build".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.packages {
            let path = p.path();
            if path != self.module && !path.starts_with(&format!("{}/", self.module)) {
                return Err(bad(format!(
                    "package {path} is not inside module {}",
                    self.module
                )));
            }
            let bin = p.binary();
            if bin.is_empty() || bin.contains('/') || bin.starts_with('.') {
                return Err(bad(format!("bad binary name {bin:?} for {path}")));
            }
            if !seen.insert(bin) {
                return Err(bad(format!("two packages build the binary {bin}")));
            }
        }
        for t in &self.tags {
            if t.is_empty() || t.contains([',', ' ']) {
                return Err(bad(format!("bad build tag {t:?}")));
            }
        }
        for p in &self.no_sumdb {
            if p.is_empty() || p.contains(|c: char| c == ',' || c.is_whitespace()) {
                return Err(bad(format!("bad no-sumdb pattern {p:?}")));
            }
        }
        for k in self.env.keys() {
            if FIXED_ENV.contains(&k.as_str()) {
                return Err(bad(format!("env {k} is fixed by the builder")));
            }
        }
        if let Some(d) = &self.dest {
            if !d.starts_with('/') || d.split('/').any(|c| c == "..") {
                return Err(bad(format!(
                    "dest {d:?} must be an absolute path without `..`"
                )));
            }
        }
        if self.stamp == Some(Stamp::Kubernetes) && kube_major_minor(&self.version).is_none() {
            return Err(bad(format!(
                "kubernetes stamping needs a vMAJOR.MINOR.PATCH version, got {}",
                self.version
            )));
        }
        Ok(())
    }

    /// The image directory the binaries go to.
    pub fn dest(&self) -> &str {
        self.dest.as_deref().unwrap_or(DEFAULT_DEST)
    }

    /// Whether the binaries carry the upstream commit (`{commit}` or a stamping scheme).
    pub fn needs_commit(&self) -> bool {
        self.stamp.is_some() || self.ldflags.iter().any(|f| f.contains("{commit}"))
    }

    /// Whether the build output depends on the image epoch.
    pub fn uses_epoch(&self) -> bool {
        self.stamp.is_some() || self.ldflags.iter().any(|f| f.contains("{build-date}"))
    }
}

/// `v1.35.4` -> ("1", "35", "4").
pub(crate) fn kube_major_minor(version: &str) -> Option<(&str, &str, &str)> {
    let core = version.strip_prefix('v')?;
    let core = core.split(['-', '+']).next()?;
    let mut it = core.split('.');
    let (ma, mi, pa) = (it.next()?, it.next()?, it.next()?);
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (it.next().is_none() && num(ma) && num(mi) && num(pa)).then_some((ma, mi, pa))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn binary_names_follow_go() {
        assert_eq!(
            default_binary_name("k8s.io/kubernetes/cmd/kubelet"),
            "kubelet"
        );
        assert_eq!(default_binary_name("go.etcd.io/etcd/etcdctl/v3"), "etcdctl");
        assert_eq!(default_binary_name("github.com/x/v2ray"), "v2ray");
        assert_eq!(default_binary_name("runc"), "runc");
    }

    #[test]
    fn parses_toml_and_rejects_unknown_fields() {
        let ok: GoInput = toml::from_str(
            r#"name = "etcd"
module = "go.etcd.io/etcd/server/v3"
version = "v3.6.6"
packages = [{ path = "go.etcd.io/etcd/server/v3", binary = "etcd" }, "go.etcd.io/etcd/server/v3/x"]
stamp = "kubernetes"
"#,
        )
        .unwrap();
        assert_eq!(ok.packages[0].binary(), "etcd");
        assert_eq!(ok.packages[1].binary(), "x");
        assert_eq!(ok.stamp, Some(Stamp::Kubernetes));
        let err = toml::from_str::<GoInput>(
            "name='a'\nmodule='m'\nversion='v1.0.0'\npackages=['m']\ncgo-enabled=true\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("cgo-enabled"), "{err}");
    }

    #[test]
    fn commit_is_a_full_lowercase_commit_id() {
        let head = "name='a'\nmodule='ex.com/m'\nversion='v1.0.0'\npackages=['ex.com/m']\n";
        let full = "7b8c6cf0edd376b3d7c2f255142977c7f93db258";
        let ok: GoInput = toml::from_str(&format!("{head}commit = '{full}'\n")).unwrap();
        assert_eq!(ok.commit.as_ref().map(GitCommit::as_str), Some(full));
        assert!(!ok.needs_commit());
        for bad in [
            "7b8c6cf",
            "7B8C6CF0EDD376B3D7C2F255142977C7F93DB258",
            "7b8c6cf0edd376b3d7c2f255142977c7f93db25g",
            "7b8c6cf0edd376b3d7c2f255142977c7f93db2580",
            "v1.35.4",
        ] {
            let err = toml::from_str::<GoInput>(&format!("{head}commit = '{bad}'\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("40 lowercase hex digits"), "{bad}: {err}");
            // The error points at the offending line.
            assert!(err.contains("line 5"), "{bad}: {err}");
        }
        let stamped: GoInput = toml::from_str(&format!("{head}stamp = 'kubernetes'\n")).unwrap();
        assert!(stamped.needs_commit());
        let ld: GoInput =
            toml::from_str(&format!("{head}ldflags = ['-X=main.c={{commit}}']\n")).unwrap();
        assert!(ld.needs_commit());
    }

    #[test]
    fn validate_rejects_bad_inputs() {
        let base: GoInput = toml::from_str(
            "name='a'\nmodule='ex.com/m'\nversion='v1.0.0'\npackages=['ex.com/m/cmd/a']\n",
        )
        .unwrap();
        base.validate().unwrap();
        let mut i = base.clone();
        i.packages = vec![GoPackage::Path("ex.com/other/a".into())];
        assert!(i
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not inside module"));
        let mut i = base.clone();
        i.env.insert("GOPROXY".into(), "off".into());
        assert!(i.validate().unwrap_err().to_string().contains("GOPROXY"));
        let mut i = base.clone();
        i.version = "latest".into();
        assert!(i.validate().is_err());
        let head = "name='a'\nmodule='ex.com/m'\nversion='v1.0.0'\npackages=['ex.com/m/cmd/a']\n";
        for bad in ["1.25", "go1.25.9", "1.25.x", "1.25.09", "latest", "1.25.9 "] {
            let err = toml::from_str::<GoInput>(&format!("{head}go = '{bad}'\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("exact Go release"), "{bad}: {err}");
            // The error points at the offending line.
            assert!(err.contains("line 5"), "{bad}: {err}");
        }
        let mut i = base.clone();
        i.go = Some("1.25.9".parse().unwrap());
        i.validate().unwrap();
        assert_eq!(
            i.toolchain_module().as_deref(),
            Some("golang.org/toolchain@v0.0.1-go1.25.9.linux-amd64")
        );
        let mut i = base;
        i.packages.push(GoPackage::Path("ex.com/m/cmd2/a".into()));
        assert!(i
            .validate()
            .unwrap_err()
            .to_string()
            .contains("two packages"));
    }

    #[test]
    fn only_exact_module_versions_pin() {
        for ok in [
            "v1.35.4",
            "v0.0.0-20240101000000-abcdef123456",
            "v2.2.9",
            "v1.0.0-rc.1",
            "v3.2.1+incompatible",
        ] {
            assert!(exact_module_version(ok), "{ok}");
        }
        for bad in [
            "latest", "v1.2", "v1", "master", "1.2.3", "v1.2.3 ", "v01.2.3", "v1.2.3-", "v1..3",
            "vlatest",
        ] {
            assert!(!exact_module_version(bad), "{bad}");
        }
    }

    #[test]
    fn kube_versions() {
        assert_eq!(kube_major_minor("v1.35.4"), Some(("1", "35", "4")));
        assert_eq!(kube_major_minor("v1.35.0-rc.1"), Some(("1", "35", "0")));
        assert_eq!(kube_major_minor("1.35.4"), None);
        assert_eq!(kube_major_minor("v1.35"), None);
    }
}
