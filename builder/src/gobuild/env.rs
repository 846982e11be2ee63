//! Go's whole environment, set by Kiln. A `go` command starts from an empty environment;
//! of the caller's only `PATH` (to find `go` and the C compiler) and `TMPDIR` (scratch
//! space; `-trimpath` keeps its path out of the binaries) pass. Everything else Go reads —
//! GOFLAGS, GOPROXY, GOSUMDB, GONOSUMDB, GOPRIVATE, GONOPROXY, GOINSECURE, GOVCS, GOENV,
//! GOTOOLCHAIN, GOEXPERIMENT, the caches, the CGO variables — is Kiln's: `GOENV=off` (no user
//! `go env -w` file), the module cache and the build cache under Kiln's cache, and the
//! module proxy and checksum database from the toolchain's own defaults (its `go.env`),
//! rewritten by `--mirror`, or `off` with `--offline`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::GoError;
use crate::fetch::{rewrite_url, Rewrite};
use crate::process::Tool;

/// The variables passed through from the caller (each only when set).
pub const PASSED: &[&str] = &["PATH", "TMPDIR"];

/// The module cache under Kiln's cache root.
pub const MODULE_CACHE_DIR: &str = "go-mod";
/// Go's build cache under Kiln's cache root.
pub const BUILD_CACHE_DIR: &str = "go-build";

/// Where modules come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoNetwork {
    /// Go's `GOPROXY` list, and the checksum database that vouches for a module not yet
    /// pinned (Kiln turns it off where the lock pins every hash).
    Proxy { proxy: String, sumdb: String },
    /// `GOPROXY=off`: only what Kiln's module cache holds.
    Offline,
}

/// Go's environment for one Kiln run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoEnv {
    /// Kiln's cache root: built binaries under `go/`, modules under `go-mod/`.
    pub cache_root: PathBuf,
    /// Go's module cache (`GOMODCACHE`). Default `<cache_root>/go-mod`.
    pub module_cache: PathBuf,
    /// Go's build cache: compiled packages, addressed by their complete inputs, so sharing
    /// one between cache roots never changes an output. Default `<cache_root>/go-build`.
    pub build_cache: PathBuf,
    pub network: GoNetwork,
}

impl GoEnv {
    /// The toolchain's own proxy and checksum database, no rewrite.
    pub fn new(cache_root: &Path) -> Result<GoEnv, GoError> {
        GoEnv::with(cache_root, false, &[])
    }

    /// `offline`: no proxy at all. Otherwise the toolchain's defaults, each URL in the
    /// proxy list rewritten by the `--mirror` rules.
    pub fn with(cache_root: &Path, offline: bool, rewrites: &[Rewrite]) -> Result<GoEnv, GoError> {
        let mut env = GoEnv {
            cache_root: cache_root.to_path_buf(),
            module_cache: cache_root.join(MODULE_CACHE_DIR),
            build_cache: cache_root.join(BUILD_CACHE_DIR),
            network: GoNetwork::Offline,
        };
        if !offline {
            let (proxy, sumdb) = env.toolchain_defaults()?;
            env.network = GoNetwork::Proxy {
                proxy: rewrite_proxy_list(&proxy, rewrites),
                sumdb,
            };
        }
        Ok(env)
    }

    pub fn offline(&self) -> bool {
        self.network == GoNetwork::Offline
    }

    /// A `go` command with nothing of the caller's environment but [`PASSED`], and every
    /// variable Go reads set by Kiln. `pinned`: every module hash is in go.sum already, so
    /// the checksum database is not asked.
    pub fn tool(&self, program: Option<&Path>, pinned: bool) -> Tool {
        let mut tool = self.clean(program.unwrap_or(Path::new("go")));
        let (proxy, sumdb) = match &self.network {
            GoNetwork::Proxy { proxy, sumdb } if !pinned => (proxy.as_str(), sumdb.as_str()),
            GoNetwork::Proxy { proxy, .. } => (proxy.as_str(), "off"),
            GoNetwork::Offline => ("off", "off"),
        };
        tool.env("GOPROXY", proxy).env("GOSUMDB", sumdb);
        tool
    }

    /// The `go` of a toolchain fetched into the module cache (`release`: `1.25.9`).
    pub fn toolchain_go(&self, release: &str) -> PathBuf {
        self.module_cache
            .join(format!(
                "golang.org/toolchain@v0.0.1-go{release}.linux-amd64"
            ))
            .join("bin/go")
    }

    /// `program` (a `go`) with an empty environment but [`PASSED`] and the fixed variables.
    fn clean(&self, program: &Path) -> Tool {
        let mut tool = Tool::new(program);
        tool.env_clear();
        for name in PASSED {
            if let Some(v) = std::env::var_os(name) {
                tool.env(name, v);
            }
        }
        tool.envs(self.fixed());
        tool
    }

    /// The variables that do not depend on the network (GOPROXY and GOSUMDB are left to
    /// the caller).
    fn fixed(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("GOENV", "off".into()),
            ("GOTOOLCHAIN", "local".into()),
            ("GOFLAGS", "-mod=mod -modcacherw".into()),
            ("GO111MODULE", "on".into()),
            ("GOWORK", "off".into()),
            ("GONOPROXY", "".into()),
            ("GONOSUMDB", "".into()),
            ("GOPRIVATE", "".into()),
            ("GOINSECURE", "".into()),
            // Modules come from the proxy only, never from a version control checkout.
            ("GOVCS", "*:off".into()),
            ("GOMODCACHE", self.module_cache.clone().into_os_string()),
            ("GOCACHE", self.build_cache.clone().into_os_string()),
            ("GOPATH", self.cache_root.join("go-path").into_os_string()),
            ("GOOS", "linux".into()),
            ("GOARCH", "amd64".into()),
            ("GOAMD64", "v1".into()),
        ]
    }

    /// GOPROXY and GOSUMDB as the toolchain sets them by default (its `go.env`), read with
    /// the same clean environment.
    fn toolchain_defaults(&self) -> Result<(String, String), GoError> {
        let mut tool = self.clean(Path::new("go"));
        tool.args(["env", "GOPROXY", "GOSUMDB"]);
        let command = tool.cmdline().to_string();
        let out = tool.run_text()?;
        let mut lines = out.lines().map(str::trim);
        match (lines.next(), lines.next()) {
            (Some(proxy), Some(sumdb)) if !proxy.is_empty() => {
                Ok((proxy.to_string(), sumdb.to_string()))
            }
            _ => Err(GoError::Output {
                command,
                reason: format!("expected GOPROXY and GOSUMDB, got {out:?}"),
            }),
        }
    }

    /// An error of a Go command run offline that names a module missing from the cache
    /// becomes [`GoError::Offline`], naming the first such module.
    pub fn explain(&self, e: GoError) -> GoError {
        if !self.offline() {
            return e;
        }
        match first_missing_offline(&e.to_string()) {
            Some(module_version) => GoError::Offline {
                module_version,
                cache: self.module_cache.clone(),
            },
            None => e,
        }
    }
}

/// Rewrites each URL of a GOPROXY list (entries split at `,` and `|`, which Go keeps as
/// fallback rules); `direct` and `off` stay.
pub fn rewrite_proxy_list(list: &str, rewrites: &[Rewrite]) -> String {
    let mut out = String::new();
    let mut entry = String::new();
    for c in list.chars().chain(std::iter::once('\0')) {
        if matches!(c, ',' | '|' | '\0') {
            let e = entry.trim();
            if e == "direct" || e == "off" {
                out.push_str(e);
            } else {
                out.push_str(&rewrite_url(rewrites, e));
            }
            entry.clear();
            if c != '\0' {
                out.push(c);
            }
        } else {
            entry.push(c);
        }
    }
    out
}

/// The `module@version` of Go's "module lookup disabled by GOPROXY=off" message, if any.
fn first_missing_offline(text: &str) -> Option<String> {
    const DISABLED: &str = "module lookup disabled by GOPROXY=off";
    text.lines().find(|l| l.contains(DISABLED)).and_then(|l| {
        l.split(": ")
            .map(str::trim)
            .map(|t| t.strip_prefix("go: ").unwrap_or(t))
            .find(|t| t.contains('@') && !t.contains(' '))
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_lists_are_rewritten_per_entry() {
        let r = vec![Rewrite {
            from: "https://p.example".into(),
            to: "file:///srv/mirror".into(),
        }];
        assert_eq!(
            rewrite_proxy_list("https://p.example,direct", &r),
            "file:///srv/mirror,direct"
        );
        assert_eq!(
            rewrite_proxy_list("https://q.example|https://p.example/x,off", &r),
            "https://q.example|file:///srv/mirror/x,off"
        );
        assert_eq!(rewrite_proxy_list("off", &r), "off");
    }

    #[test]
    fn the_first_module_missing_offline_is_named() {
        let text = "building: exit status 1\ngo: finding module for package x\n\
                    go: example.com/dep@v1.2.0: module lookup disabled by GOPROXY=off\n\
                    go: example.com/other@v1.0.0: module lookup disabled by GOPROXY=off";
        assert_eq!(
            first_missing_offline(text).as_deref(),
            Some("example.com/dep@v1.2.0")
        );
        let nested = "go: downloading example.com/a v1.0.0\n\
                      example.com/m/cmd imports\n\texample.com/a/b: example.com/a@v1.0.0: \
                      module lookup disabled by GOPROXY=off";
        assert_eq!(
            first_missing_offline(nested).as_deref(),
            Some("example.com/a@v1.0.0")
        );
        assert_eq!(first_missing_offline("go: no such package"), None);
    }

    #[test]
    fn nothing_of_the_callers_go_environment_reaches_go() {
        let env = GoEnv {
            cache_root: "/c".into(),
            module_cache: "/m".into(),
            build_cache: "/b".into(),
            network: GoNetwork::Proxy {
                proxy: "https://p.example,direct".into(),
                sumdb: "sum.example".into(),
            },
        };
        let names: Vec<&str> = env.fixed().iter().map(|(k, _)| *k).collect();
        for must in [
            "GOENV",
            "GOFLAGS",
            "GONOSUMDB",
            "GOPRIVATE",
            "GOVCS",
            "GOMODCACHE",
            "GOCACHE",
            "GOTOOLCHAIN",
        ] {
            assert!(names.contains(&must), "{must}");
        }
        // Every variable the input may not set is one Kiln sets.
        for fixed in super::super::FIXED_ENV {
            assert!(
                names.contains(fixed)
                    || ["GOPROXY", "GOSUMDB", "CGO_ENABLED", "GONOSUMCHECK"].contains(fixed),
                "{fixed}"
            );
        }
    }
}
