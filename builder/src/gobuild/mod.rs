//! `go` inputs: Go programs built from a pinned module version with the host toolchain.
//!
//! A throwaway main module requires the pinned version (Kubernetes' staging modules
//! replaced by their published tags, derived from the pinned go.mod), then `go build` runs
//! with `-trimpath -buildvcs=false`, `GOFLAGS=-mod=mod`, `GOTOOLCHAIN=local` and fixed
//! flags. Outputs are cached under `<cache_root>/go/<key>/bin/`, where the key hashes every
//! input and the `go version`; a cache hit runs nothing but `go version`.

pub mod buildinfo;
mod closure;
mod env;
mod input;
mod modfile;
mod run;

use std::collections::BTreeMap;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest};
use crate::outputs::manifest::describe;

pub use env::{GoEnv, GoNetwork, BUILD_CACHE_DIR, MODULE_CACHE_DIR};
pub use input::{GitCommit, GoInput, GoPackage, GoRelease, Stamp, DEFAULT_DEST, FIXED_ENV};
use run::GoCommand;

/// Bumped when the build recipe changes, so old cache entries are not reused.
const RECIPE: &str = "kiln-go-2";
const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("go input {name}: {reason}")]
    InvalidInput { name: String, reason: String },
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("parsing the output of `{command}`: {reason}")]
    Output { command: String, reason: String },
    #[error("module {module_version} not found: {message}")]
    ModuleNotFound {
        module_version: String,
        message: String,
    },
    #[error("package {package} not found in {module_version}: {message}")]
    PackageNotFound {
        package: String,
        module_version: String,
        message: String,
    },
    #[error(
        "package {package} in {module_version} is not a main package (it is `package {name}`)"
    )]
    NotMain {
        package: String,
        module_version: String,
        name: String,
    },
    #[error(
        "go input {name} ({module_version}): upstream commit unknown, needed by {what}; {hint}"
    )]
    NoCommit {
        name: String,
        module_version: String,
        what: String,
        hint: String,
    },
    #[error("go input {name} ({module_version}): {their_source} gives commit {theirs}, but the definition's `commit` is {ours}")]
    CommitMismatch {
        name: String,
        module_version: String,
        ours: String,
        theirs: String,
        their_source: &'static str,
    },
    #[error("building {package} from {module_version} failed:\n{stderr}")]
    Build {
        package: String,
        module_version: String,
        stderr: String,
    },
    #[error("{action} {path}")]
    Cache {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache entry {path} is damaged: {reason}")]
    BadCacheEntry { path: PathBuf, reason: String },
    #[error("go input {name}: binary {binary} has {actual}, the lock says {expected} (rerun with --relock to accept)")]
    LockMismatch {
        name: String,
        binary: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("go input {name}: built with {actual}, the lock says {expected} (rerun with --relock to accept)")]
    LockGoVersion {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("go input {name}: module {module_version} {reason}; rerun with --relock to accept")]
    Closure {
        name: String,
        module_version: String,
        reason: String,
    },
    #[error("go input {name}: toolchain {module}: {reason}")]
    Toolchain {
        name: String,
        module: String,
        reason: String,
    },
    #[error(
        "offline: module {module_version} is not in Kiln's Go module cache ({cache}); \
         `kiln fetch` the definition first"
    )]
    Offline {
        module_version: String,
        cache: PathBuf,
    },
    #[error("go input {name}: the lock lists binary {binary}, the build has no such binary")]
    LockMissing { name: String, binary: String },
}

/// One built binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GoBinary {
    pub name: String,
    pub package: String,
    /// Absolute path in the cache.
    #[serde(skip)]
    pub path: PathBuf,
    pub sha256: Digest,
    pub size: u64,
}

/// What a build did, for the caller's report and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoBuildReport {
    /// The outputs came from the cache: no download, no compile.
    pub cache_hit: bool,
    /// Every `go` command run, in order (`go version` first).
    pub commands: Vec<String>,
    pub elapsed: Duration,
    /// Of `elapsed`, the time in `go build` itself (what a build by hand with the same
    /// flags takes); the rest is Kiln's: downloads, the package listing, hashing.
    pub go_build: Duration,
}

#[derive(Debug, Clone)]
pub struct GoBuildOutput {
    /// Cache key (hex sha256 over the canonical inputs).
    pub key: String,
    /// `<cache_root>/go/<key>`.
    pub dir: PathBuf,
    pub binaries: Vec<GoBinary>,
    /// e.g. `go1.26.8`.
    pub go_version: String,
    /// The upstream commit of the module version, where known (the one the binaries were
    /// stamped with, when they are).
    pub commit: Option<String>,
    /// The toolchain fetched for an input that names one: its two go.sum lines.
    pub toolchain: Vec<String>,
    /// The module closure: the generated main module's go.sum lines, sorted.
    pub go_sum: Vec<String>,
    pub report: GoBuildReport,
}

/// What `kiln lock` records for a go input; `build_locked` checks a build against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GoLock {
    /// The upstream commit of the module version: the definition's `commit`, else the
    /// module proxy's Origin at `kiln lock` time. `kiln build` stamps with this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub go_version: String,
    /// Binary name -> sha256.
    pub binaries: BTreeMap<String, Digest>,
    /// The toolchain fetched for an input that names one: its two go.sum lines (the module
    /// zip's and its go.mod's hash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub toolchain: Vec<String>,
    /// The module closure (go.sum lines, sorted); empty in a lock written before Kiln
    /// pinned it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub go_sum: Vec<String>,
}

impl GoBuildOutput {
    pub fn lock(&self) -> GoLock {
        GoLock {
            commit: self.commit.clone(),
            go_version: self.go_version.clone(),
            toolchain: self.toolchain.clone(),
            go_sum: self.go_sum.clone(),
            binaries: self
                .binaries
                .iter()
                .map(|b| (b.name.clone(), b.sha256.clone()))
                .collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    key: String,
    go_version: String,
    #[serde(default)]
    commit: Option<String>,
    binaries: Vec<GoBinary>,
    /// Empty in an entry built before Kiln recorded the closure: such an entry is built again.
    #[serde(default)]
    go_sum: Vec<String>,
}

/// The canonical serialisation hashed into the cache key.
#[derive(Serialize)]
struct KeyMaterial<'a> {
    recipe: &'static str,
    go_version_output: &'a str,
    cc_version: Option<&'a str>,
    commit: Option<&'a str>,
    module: &'a str,
    version: &'a str,
    packages: Vec<(&'a str, &'a str)>,
    tags: &'a [String],
    ldflags: &'a [String],
    cgo: bool,
    env: &'a BTreeMap<String, String>,
    stamp: Option<Stamp>,
    epoch: Option<u64>,
}

/// Builds `input` (or takes it from the cache), resolving the upstream commit as `kiln lock`
/// does: the definition's `commit`, checked against the module proxy's Origin where it
/// reports one, else the Origin. `progress` shows what is compiling and the elapsed time
/// when stderr is a terminal.
pub fn build(
    input: &GoInput,
    epoch: u64,
    env: &GoEnv,
    progress: bool,
) -> Result<GoBuildOutput, GoError> {
    build_inner(input, epoch, env, progress, None).map_err(|e| explain(env, input, e))
}

/// A Go failure in Kiln's words where it has some: a module missing offline
/// ([`GoEnv::explain`]), a hash that differs from the lock ([`closure::explain`]).
fn explain(env: &GoEnv, input: &GoInput, e: GoError) -> GoError {
    closure::explain(&input.name, env.explain(e))
}

/// Like [`build`], but the upstream commit comes from `lock` alone (the module proxy is not
/// asked for it), and it fails naming the binary when a fresh build differs from `lock`; a
/// build that fails the check is not cached.
pub fn build_locked(
    input: &GoInput,
    epoch: u64,
    env: &GoEnv,
    progress: bool,
    lock: &GoLock,
) -> Result<GoBuildOutput, GoError> {
    build_inner(input, epoch, env, progress, Some(lock)).map_err(|e| explain(env, input, e))
}

/// `kiln fetch`: downloads what a locked build of `input` needs (the pinned module and every
/// module its packages compile from, each checked against the lock's hashes) into Kiln's
/// module cache, compiling nothing. Returns how many modules the lock's closure pins.
pub fn fetch(input: &GoInput, env: &GoEnv, lock: &GoLock) -> Result<usize, GoError> {
    let module_version = format!("{}@{}", input.module, input.version);
    let fetched = (|| {
        input.validate()?;
        if lock.go_sum.is_empty() {
            return Err(GoError::Closure {
                name: input.name.clone(),
                module_version: module_version.clone(),
                reason: "has no module closure in the lock (run `kiln lock`)".into(),
            });
        }
        closure::validate(&input.name, &lock.go_sum)?;
        let commit = locked_commit(input, &module_version, lock)?;
        let mut commands = Vec::new();
        fetch_toolchain(env, input, Some(lock), &mut commands)?;
        let tmp = temp_dir(&env.cache_root.join("go"), ".tmp-fetch-")?;
        let go = |dir: Option<&Path>| GoCommand::new(env, true, input, dir);
        let src = tmp.path();
        prepare(
            &go,
            env,
            input,
            Some(commit),
            Some(&lock.go_sum),
            src,
            &mut commands,
        )?;
        closure::check(&input.name, &closure::read(src)?, &lock.go_sum)?;
        Ok(lock
            .go_sum
            .iter()
            .filter(|l| !l.contains("/go.mod "))
            .count())
    })();
    fetched.map_err(|e| explain(env, input, e))
}

/// The toolchain an input names, downloaded as the module `golang.org/toolchain` by the host
/// `go` into Kiln's module cache, where [`GoEnv::toolchain_go`] finds its `go`. With the lock
/// pinning it, the download runs in a scratch module whose go.sum holds the lock's two lines,
/// so Go checks it against them (Go takes a toolchain only from go.sum or the checksum
/// database); without, the checksum database vouches for it. Returns its two go.sum lines
/// (none for an input built with the host's `go`).
fn fetch_toolchain(
    env: &GoEnv,
    input: &GoInput,
    lock: Option<&GoLock>,
    commands: &mut Vec<String>,
) -> Result<Vec<String>, GoError> {
    let (Some(module_version), Some(release)) = (input.toolchain_module(), input.go.as_ref())
    else {
        return Ok(Vec::new());
    };
    let err = |reason: String| GoError::Toolchain {
        name: input.name.clone(),
        module: module_version.clone(),
        reason,
    };
    let locked = lock
        .map(|l| l.toolchain.as_slice())
        .filter(|t| !t.is_empty());
    let dir = temp_dir(&env.cache_root.join("go"), ".tmp-toolchain-")?;
    if let Some(lines) = locked {
        closure::validate(&input.name, lines)?;
        let go_mod = dir.path().join("go.mod");
        fs::write(&go_mod, "module kiln.local/toolchain\n").map_err(|source| GoError::Cache {
            action: "writing",
            path: go_mod,
            source,
        })?;
        closure::write(dir.path(), lines)?;
    }
    let host = GoInput {
        go: None,
        ..input.clone()
    };
    let dl = GoCommand::new(env, locked.is_some(), &host, Some(dir.path()))
        .args(["mod", "download", "-json", module_version.as_str()])
        .output_allow_fail(commands)?;
    let d: modfile::Download = match serde_json::from_str(&dl.stdout) {
        Ok(d) => d,
        Err(_) => return Err(err(run::tail(&dl.stderr))),
    };
    if let Some(e) = d.error {
        return Err(err(e));
    }
    let (Some(sum), Some(go_mod_sum)) = (d.sum, d.go_mod_sum) else {
        return Err(err("the module proxy gave no hash".into()));
    };
    let (path, version) = (d.path, d.version);
    let mut lines = vec![
        format!("{path} {version} {sum}"),
        format!("{path} {version}/go.mod {go_mod_sum}"),
    ];
    lines.sort();
    if let Some(l) = locked.filter(|l| *l != lines.as_slice()) {
        return Err(err(format!(
            "the lock pins {}, the download has {} (rerun with --relock to accept)",
            l.join(", "),
            lines.join(", ")
        )));
    }
    let go = env.toolchain_go(release.as_str());
    if !go.is_file() {
        return Err(err(format!("no {} after the download", go.display())));
    }
    // A module zip keeps no execute bits: Go's own toolchain switch sets them on first use,
    // and Kiln runs the toolchain's `go` itself.
    if let Some(root) = go.parent().and_then(Path::parent) {
        for dir in ["bin", "pkg/tool"] {
            make_executable(&root.join(dir)).map_err(|source| GoError::Cache {
                action: "making executable",
                path: root.join(dir),
                source,
            })?;
        }
    }
    Ok(lines)
}

/// Gives every regular file under `dir` (when it exists) the execute bits its read bits
/// have.
fn make_executable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_executable(&entry.path())?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            let exec = (mode & 0o444) >> 2;
            if mode & exec != exec {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode | exec))?;
            }
        }
    }
    Ok(())
}

/// A temporary directory in `go_dir` (created if need be), named with `prefix`.
fn temp_dir(go_dir: &Path, prefix: &str) -> Result<tempfile::TempDir, GoError> {
    fs::create_dir_all(go_dir).map_err(|source| GoError::Cache {
        action: "creating",
        path: go_dir.to_path_buf(),
        source,
    })?;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(go_dir)
        .map_err(|source| GoError::Cache {
            action: "creating a temporary directory in",
            path: go_dir.to_path_buf(),
            source,
        })
}

/// Checks built binaries against a lock entry.
pub fn check_lock(
    name: &str,
    go_version: &str,
    bins: &[GoBinary],
    lock: &GoLock,
) -> Result<(), GoError> {
    if lock.go_version != go_version {
        return Err(GoError::LockGoVersion {
            name: name.to_string(),
            expected: lock.go_version.clone(),
            actual: go_version.to_string(),
        });
    }
    for (binary, expected) in &lock.binaries {
        let Some(b) = bins.iter().find(|b| &b.name == binary) else {
            return Err(GoError::LockMissing {
                name: name.to_string(),
                binary: binary.clone(),
            });
        };
        if &b.sha256 != expected {
            return Err(GoError::LockMismatch {
                name: name.to_string(),
                binary: binary.clone(),
                expected: expected.clone(),
                actual: b.sha256.clone(),
            });
        }
    }
    Ok(())
}

fn build_inner(
    input: &GoInput,
    epoch: u64,
    env: &GoEnv,
    progress: bool,
    lock: Option<&GoLock>,
) -> Result<GoBuildOutput, GoError> {
    let start = Instant::now();
    // Where the lock pins the closure, go.sum holds every hash before Go runs: Go refuses a
    // download that differs, and the checksum database is not asked.
    let locked_sum = lock.map(|l| l.go_sum.as_slice()).filter(|s| !s.is_empty());
    if let Some(lines) = locked_sum {
        closure::validate(&input.name, lines)?;
    }
    let go = |dir: Option<&Path>| GoCommand::new(env, locked_sum.is_some(), input, dir);
    input.validate()?;
    let progress = progress && std::io::stderr().is_terminal();
    let module_version = format!("{}@{}", input.module, input.version);
    let mut commands = Vec::new();

    let toolchain = fetch_toolchain(env, input, lock, &mut commands)?;
    let go_version_output = go(None).args(["version"]).output(&mut commands)?;
    let go_version = go_version_output
        .split_whitespace()
        .nth(2)
        .filter(|v| v.starts_with("go"))
        .ok_or_else(|| GoError::Output {
            command: "go version".into(),
            reason: format!("unexpected {go_version_output:?}"),
        })?
        .to_string();
    let cc_version = if input.cgo {
        Some(run::cc_version(env, input, &mut commands)?)
    } else {
        None
    };

    // `kiln build`: the commit is the lock's, and nothing else is asked.
    let locked_commit = match lock {
        Some(l) => Some(locked_commit(input, &module_version, l)?),
        None => None,
    };

    let key = cache_key(
        input,
        epoch,
        go_version_output.trim(),
        cc_version.as_deref(),
    );
    let go_dir = env.cache_root.join("go");
    let dir = go_dir.join(&key);
    if dir.join(MANIFEST).is_file() {
        let cached = read_manifest(&dir, &key)?;
        if cached.go_sum.is_empty() {
            // Built before the closure was recorded: build it again.
            fs::remove_dir_all(&dir).map_err(|source| GoError::Cache {
                action: "removing the outdated entry",
                path: dir.clone(),
                source,
            })?;
        } else {
            if let Some(lock) = lock {
                check_lock(&input.name, &go_version, &cached.binaries, lock)?;
                if let Some(lines) = locked_sum {
                    closure::check(&input.name, &cached.go_sum, lines)?;
                }
            }
            return Ok(GoBuildOutput {
                key,
                dir,
                binaries: cached.binaries,
                go_version,
                commit: locked_commit.unwrap_or(cached.commit),
                toolchain,
                go_sum: cached.go_sum,
                report: GoBuildReport {
                    cache_hit: true,
                    commands,
                    elapsed: start.elapsed(),
                    go_build: Duration::ZERO,
                },
            });
        }
    }

    let tmp = temp_dir(&go_dir, &format!(".tmp-{}-", &key[..16]))?;
    let src = tmp.path().join("src");
    let out = tmp.path().join("out");
    let bin = out.join("bin");
    for d in [&src, &bin] {
        fs::create_dir_all(d).map_err(|source| GoError::Cache {
            action: "creating",
            path: d.clone(),
            source,
        })?;
    }

    let commit = prepare(
        &go,
        env,
        input,
        locked_commit,
        locked_sum,
        &src,
        &mut commands,
    )?;
    let stamp_commit = commit.as_deref().filter(|_| input.needs_commit());
    let tags = input.tags.join(",");

    // 4. Build the packages: one `go build` for all of them, so the package graph is loaded
    // once and the links run side by side; each binary is then moved to its name. Packages
    // whose executables Go would give one name are built one at a time.
    let ldflags = ldflags(input, epoch, stamp_commit, &module_version)?;
    let built = out.join("built");
    let go_names: Vec<&str> = input
        .packages
        .iter()
        .map(|p| input::default_binary_name(p.path()))
        .collect();
    let distinct = go_names
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        == go_names.len();
    let groups: Vec<Vec<&GoPackage>> = match distinct {
        true => vec![input.packages.iter().collect()],
        false => input.packages.iter().map(|p| vec![p]).collect(),
    };
    let mut go_build = Duration::ZERO;
    for (i, group) in groups.into_iter().enumerate() {
        let group_dir = built.join(i.to_string());
        fs::create_dir_all(&group_dir).map_err(|source| GoError::Cache {
            action: "creating",
            path: group_dir.clone(),
            source,
        })?;
        let mut cmd = go(Some(&src));
        cmd.args(["build", "-p", "2", "-trimpath", "-buildvcs=false"]);
        if progress {
            cmd.args(["-v"]);
        }
        if !tags.is_empty() {
            cmd.args(["-tags", tags.as_str()]);
        }
        cmd.args(["-ldflags", ldflags.as_str()]);
        cmd.arg("-o")
            .arg(format!("{}/", group_dir.display()))
            .args(group.iter().map(|p| p.path()));
        let packages: Vec<&str> = group.iter().map(|p| p.path()).collect();
        let started = Instant::now();
        let result = cmd.build(&mut commands, progress.then_some(input.name.as_str()));
        go_build += started.elapsed();
        result.map_err(|e| match e {
            run::BuildFailure::Go(e) => e,
            run::BuildFailure::Failed(stderr) => GoError::Build {
                package: packages.join(" "),
                module_version: module_version.clone(),
                stderr,
            },
        })?;
        for p in group {
            let from = group_dir.join(input::default_binary_name(p.path()));
            let target = bin.join(p.binary());
            fs::rename(&from, &target).map_err(|source| GoError::Cache {
                action: "moving the built binary to",
                path: target.clone(),
                source,
            })?;
        }
    }
    fs::remove_dir_all(&built).map_err(|source| GoError::Cache {
        action: "removing",
        path: built.clone(),
        source,
    })?;
    let mut binaries = Vec::new();
    for p in &input.packages {
        let target = bin.join(p.binary());
        let hashed = describe(&target).map_err(|source| GoError::Cache {
            action: "hashing built binary",
            path: target.clone(),
            source,
        })?;
        binaries.push(GoBinary {
            name: p.binary().to_string(),
            package: p.path().to_string(),
            path: dir.join("bin").join(p.binary()),
            sha256: hashed.sha256,
            size: hashed.size,
        });
    }
    let go_sum = closure::read(&src)?;
    if let Some(lock) = lock {
        check_lock(&input.name, &go_version, &binaries, lock)?;
    }
    if let Some(lines) = locked_sum {
        closure::check(&input.name, &go_sum, lines)?;
    }

    // 5. Commit atomically: manifest, then rename the whole directory.
    let manifest = Manifest {
        key: key.clone(),
        go_version: go_version.clone(),
        commit: commit.clone(),
        binaries: binaries.clone(),
        go_sum: go_sum.clone(),
    };
    let manifest_path = out.join(MANIFEST);
    let manifest_text = serde_json::to_vec_pretty(&manifest).map_err(|e| GoError::Output {
        command: "serialising the manifest".into(),
        reason: e.to_string(),
    })?;
    fs::write(&manifest_path, manifest_text).map_err(|source| GoError::Cache {
        action: "writing",
        path: manifest_path.clone(),
        source,
    })?;
    if let Err(source) = fs::rename(&out, &dir) {
        // Another build of the same key may have won the race: use its result.
        if !dir.join(MANIFEST).is_file() {
            return Err(GoError::Cache {
                action: "moving the finished build into",
                path: dir,
                source,
            });
        }
    }
    drop(tmp);
    Ok(GoBuildOutput {
        key,
        dir,
        binaries,
        go_version,
        commit,
        toolchain,
        go_sum,
        report: GoBuildReport {
            cache_hit: false,
            commands,
            elapsed: start.elapsed(),
            go_build,
        },
    })
}

/// Steps 1–3 of a build in `src`: the pinned module downloaded (for `kiln lock` also its
/// upstream commit resolved), the generated main module written, with the lock's go.sum
/// where it pins the closure, and the packages listed, which downloads every module they
/// compile from and fills go.sum. Returns the upstream commit.
fn prepare(
    go: &dyn Fn(Option<&Path>) -> GoCommand,
    env: &GoEnv,
    input: &GoInput,
    locked_commit: Option<Option<String>>,
    locked_sum: Option<&[String]>,
    src: &Path,
    commands: &mut Vec<String>,
) -> Result<Option<String>, GoError> {
    let module_version = format!("{}@{}", input.module, input.version);
    if let Some(lines) = locked_sum {
        closure::write(src, lines)?;
    }

    // 1. The pinned module: its go.mod and, for `kiln lock`, the upstream commit.
    let (go_mod_path, commit) = match locked_commit {
        Some(commit) => (
            download_module(go, env, input, &module_version, src, commands)?,
            commit,
        ),
        None => resolve_module(go, input, &module_version, src, commands)?,
    };
    let modfile_json = go(Some(src))
        .args(["mod", "edit", "-json", go_mod_path.as_str()])
        .output(commands)?;
    let pinned: modfile::ModFile =
        serde_json::from_str(&modfile_json).map_err(|e| GoError::Output {
            command: format!("go mod edit -json {go_mod_path}"),
            reason: e.to_string(),
        })?;

    // 2. The generated main module.
    let replaces = modfile::replaces_for(&input.module, &input.version, &pinned)?;
    let go_mod_text = modfile::render_go_mod(&input.module, &input.version, &pinned, &replaces);
    let go_mod_file = src.join("go.mod");
    fs::write(&go_mod_file, go_mod_text).map_err(|source| GoError::Cache {
        action: "writing",
        path: go_mod_file.clone(),
        source,
    })?;

    // 3. Check the packages exist and are commands (this also fills go.sum).
    let tags = input.tags.join(",");
    let mut list = go(Some(src));
    list.args(["list", "-e", "-json=ImportPath,Name,Error,DepsErrors"]);
    if !tags.is_empty() {
        list.args(["-tags", tags.as_str()]);
    }
    list.args(input.packages.iter().map(|p| p.path()));
    let listed = list.output_allow_fail(commands)?;
    check_packages(input, &module_version, &listed)?;
    // With -mod=mod, go may "find" a missing package by upgrading the module: refuse that.
    let after_json = go(Some(src))
        .args(["mod", "edit", "-json", "go.mod"])
        .output(commands)?;
    let after: modfile::ModFile =
        serde_json::from_str(&after_json).map_err(|e| GoError::Output {
            command: "go mod edit -json go.mod".into(),
            reason: e.to_string(),
        })?;
    let resolved = after
        .require
        .iter()
        .flatten()
        .find(|r| r.path == input.module)
        .map(|r| r.version.clone());
    if resolved.as_deref() != Some(input.version.as_str()) {
        return Err(GoError::PackageNotFound {
            package: input
                .packages
                .iter()
                .map(|p| p.path())
                .collect::<Vec<_>>()
                .join(" "),
            module_version,
            message: format!(
                "resolving the packages moved {} to {}",
                input.module,
                resolved.as_deref().unwrap_or("nothing")
            ),
        });
    }
    Ok(commit)
}

/// The commit `kiln build` stamps with: the lock's. A lock without one for an input that
/// needs it, or one that disagrees with the definition's `commit`, is an error.
fn locked_commit(
    input: &GoInput,
    module_version: &str,
    lock: &GoLock,
) -> Result<Option<String>, GoError> {
    agrees_with_definition(input, module_version, lock.commit.as_deref(), "the lock")?;
    if input.needs_commit() && lock.commit.is_none() {
        return Err(GoError::NoCommit {
            name: input.name.clone(),
            module_version: module_version.to_string(),
            what: needs_commit_what(input).into(),
            hint: "the lock records no commit for it: run `kiln lock`".into(),
        });
    }
    Ok(lock.commit.clone())
}

/// A commit from elsewhere (`source`: the lock, the proxy) must be the definition's, where
/// both are known.
fn agrees_with_definition(
    input: &GoInput,
    module_version: &str,
    theirs: Option<&str>,
    source: &'static str,
) -> Result<(), GoError> {
    match (&input.commit, theirs) {
        (Some(ours), Some(theirs)) if ours.as_str() != theirs => Err(GoError::CommitMismatch {
            name: input.name.clone(),
            module_version: module_version.to_string(),
            ours: ours.to_string(),
            theirs: theirs.to_string(),
            their_source: source,
        }),
        _ => Ok(()),
    }
}

fn needs_commit_what(input: &GoInput) -> &'static str {
    if input.stamp.is_some() {
        "version stamping"
    } else {
        "ldflags {commit}"
    }
}

/// `kiln build`: downloads the pinned module (never asking for its Origin) and returns the
/// path of its go.mod in the module cache.
fn download_module(
    go: &dyn Fn(Option<&Path>) -> GoCommand,
    env: &GoEnv,
    input: &GoInput,
    module_version: &str,
    src: &Path,
    commands: &mut Vec<String>,
) -> Result<String, GoError> {
    let dl = go(Some(src))
        .args(["mod", "download", module_version])
        .output_allow_fail(commands)?;
    if !dl.success {
        return Err(GoError::ModuleNotFound {
            module_version: module_version.to_string(),
            message: run::tail(&dl.stderr),
        });
    }
    Ok(format!(
        "{}/cache/download/{}/@v/{}.mod",
        env.module_cache.display(),
        escape_module_path(&input.module),
        escape_module_path(&input.version)
    ))
}

/// `kiln lock`: downloads the pinned module, reads the upstream commit from the module
/// proxy's Origin and settles it against the definition's `commit`.
fn resolve_module(
    go: &dyn Fn(Option<&Path>) -> GoCommand,
    input: &GoInput,
    module_version: &str,
    src: &Path,
    commands: &mut Vec<String>,
) -> Result<(String, Option<String>), GoError> {
    let download_json = go(Some(src))
        .args(["mod", "download", "-json", module_version])
        .output_allow_fail(commands)?;
    let dl: modfile::Download =
        serde_json::from_str(&download_json.stdout).map_err(|e| GoError::ModuleNotFound {
            module_version: module_version.to_string(),
            message: format!("{} ({e})", run::tail(&download_json.stderr)),
        })?;
    if let Some(message) = dl.error {
        return Err(GoError::ModuleNotFound {
            module_version: module_version.to_string(),
            message,
        });
    }
    if dl.path != input.module || dl.version != input.version {
        return Err(GoError::ModuleNotFound {
            message: format!("the module proxy resolved it to {}@{}", dl.path, dl.version),
            module_version: module_version.to_string(),
        });
    }
    let go_mod_path = dl.go_mod.ok_or_else(|| GoError::Output {
        command: format!("go mod download -json {module_version}"),
        reason: "no GoMod path".into(),
    })?;
    let origin = dl.origin.and_then(|o| o.hash);
    let commit = settle_commit(input, module_version, origin)?;
    Ok((go_mod_path, commit))
}

/// The commit `kiln lock` records: the definition's and the proxy's Origin must agree where
/// both are known; an input that needs a commit and has neither fails naming the key.
fn settle_commit(
    input: &GoInput,
    module_version: &str,
    origin: Option<String>,
) -> Result<Option<String>, GoError> {
    agrees_with_definition(
        input,
        module_version,
        origin.as_deref(),
        "the module proxy's Origin",
    )?;
    match (&input.commit, origin) {
        (Some(ours), _) => Ok(Some(ours.to_string())),
        (None, Some(theirs)) => Ok(Some(theirs)),
        (None, None) if input.needs_commit() => Err(GoError::NoCommit {
            name: input.name.clone(),
            module_version: module_version.to_string(),
            what: needs_commit_what(input).into(),
            hint: format!(
                "the module proxy reports no Origin for this version: set \
                 `commit = \"<40 hex digits>\"` (the tag's commit) in the [[go]] table of {}",
                input.name
            ),
        }),
        (None, None) => Ok(None),
    }
}

/// Module paths and versions as the module cache stores them: each upper-case letter
/// becomes `!` and its lower-case form.
pub fn escape_module_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn cache_key(
    input: &GoInput,
    epoch: u64,
    go_version_output: &str,
    cc_version: Option<&str>,
) -> String {
    let material = KeyMaterial {
        recipe: RECIPE,
        go_version_output,
        cc_version,
        commit: input.commit.as_ref().map(GitCommit::as_str),
        module: &input.module,
        version: &input.version,
        packages: input
            .packages
            .iter()
            .map(|p| (p.path(), p.binary()))
            .collect(),
        tags: &input.tags,
        ldflags: &input.ldflags,
        cgo: input.cgo,
        env: &input.env,
        stamp: input.stamp,
        epoch: input.uses_epoch().then_some(epoch),
    };
    // Serialising plain strings, numbers and maps cannot fail.
    let bytes = serde_json::to_vec(&material).unwrap_or_default();
    Digest::of_bytes(Algorithm::Sha256, &bytes)
        .hex()
        .to_string()
}

/// The binaries (name -> sha256) a cache entry's manifest lists, without hashing them
/// again; None when the entry has no readable manifest.
pub fn cached_binaries(dir: &Path) -> Option<BTreeMap<String, Digest>> {
    let bytes = fs::read(dir.join(MANIFEST)).ok()?;
    let m: Manifest = serde_json::from_slice(&bytes).ok()?;
    Some(m.binaries.into_iter().map(|b| (b.name, b.sha256)).collect())
}

/// Reads a cache entry's manifest; every binary is hashed again and must match it.
fn read_manifest(dir: &Path, key: &str) -> Result<Manifest, GoError> {
    let path = dir.join(MANIFEST);
    let bad = |reason: String| GoError::BadCacheEntry {
        path: dir.to_path_buf(),
        reason,
    };
    let text = fs::read(&path).map_err(|source| GoError::Cache {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if m.key != key {
        return Err(bad(format!("manifest key {} is not {key}", m.key)));
    }
    let mut m = m;
    for b in &mut m.binaries {
        b.path = dir.join("bin").join(&b.name);
        let hashed = describe(&b.path).map_err(|e| bad(format!("{}: {e}", b.path.display())))?;
        if hashed.size != b.size {
            return Err(bad(format!(
                "{} is {} bytes, manifest says {}",
                b.name, hashed.size, b.size
            )));
        }
        if hashed.sha256 != b.sha256 {
            return Err(bad(format!(
                "{} has {}, manifest says {}",
                b.name, hashed.sha256, b.sha256
            )));
        }
    }
    Ok(m)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    import_path: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    error: Option<ListError>,
    #[serde(default)]
    deps_errors: Option<Vec<ListError>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListError {
    #[serde(rename = "Err")]
    err: String,
}

fn check_packages(
    input: &GoInput,
    module_version: &str,
    listed: &run::Captured,
) -> Result<(), GoError> {
    let mut found: BTreeMap<String, Listed> = BTreeMap::new();
    for item in serde_json::Deserializer::from_str(&listed.stdout).into_iter::<Listed>() {
        let item = item.map_err(|e| GoError::Output {
            command: "go list".into(),
            reason: format!("{e}; stderr: {}", run::tail(&listed.stderr)),
        })?;
        found.insert(item.import_path.clone(), item);
    }
    for p in &input.packages {
        let path = p.path();
        let Some(item) = found.get(path) else {
            return Err(GoError::PackageNotFound {
                package: path.to_string(),
                module_version: module_version.to_string(),
                message: run::tail(&listed.stderr),
            });
        };
        if let Some(e) = &item.error {
            return Err(GoError::PackageNotFound {
                package: path.to_string(),
                module_version: module_version.to_string(),
                message: e.err.clone(),
            });
        }
        if let Some(e) = item.deps_errors.iter().flatten().next() {
            return Err(GoError::Build {
                package: path.to_string(),
                module_version: module_version.to_string(),
                stderr: e.err.clone(),
            });
        }
        if item.name != "main" {
            return Err(GoError::NotMain {
                package: path.to_string(),
                module_version: module_version.to_string(),
                name: item.name.clone(),
            });
        }
    }
    if !listed.success {
        return Err(GoError::Command {
            command: "go list".into(),
            status: "failed".into(),
            stderr: run::tail(&listed.stderr),
        });
    }
    Ok(())
}

/// The full `-ldflags` value: fixed flags, the stamping scheme, then the input's own.
fn ldflags(
    input: &GoInput,
    epoch: u64,
    commit: Option<&str>,
    module_version: &str,
) -> Result<String, GoError> {
    let date = firstboot::utc::seconds(epoch);
    let need_commit = |what: &str| {
        commit.ok_or_else(|| GoError::NoCommit {
            name: input.name.clone(),
            module_version: module_version.to_string(),
            what: what.to_string(),
            hint: "set `commit` in its [[go]] table".into(),
        })
    };
    let mut flags = vec!["-s".to_string(), "-w".to_string(), "-buildid=".to_string()];
    if input.stamp == Some(Stamp::Kubernetes) {
        let (major, minor, _) =
            input::kube_major_minor(&input.version).ok_or_else(|| GoError::InvalidInput {
                name: input.name.clone(),
                reason: format!("cannot stamp version {}", input.version),
            })?;
        let commit = need_commit("kubernetes version stamping")?;
        for pkg in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for (var, value) in [
                ("gitVersion", input.version.as_str()),
                ("gitMajor", major),
                ("gitMinor", minor),
                ("gitCommit", commit),
                ("gitTreeState", "clean"),
                ("buildDate", date.as_str()),
            ] {
                flags.push(format!("-X={pkg}.{var}={value}"));
            }
        }
    }
    for f in &input.ldflags {
        let mut f = f
            .replace("{version}", &input.version)
            .replace(
                "{version-bare}",
                input.version.strip_prefix('v').unwrap_or(&input.version),
            )
            .replace("{build-date}", &date);
        if f.contains("{commit}") {
            f = f.replace("{commit}", need_commit("ldflags {commit}")?);
        }
        flags.push(f);
    }
    Ok(flags.join(" "))
}

/// A go input and what its build gave.
pub struct GoBuilt {
    pub input: GoInput,
    pub output: GoBuildOutput,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_fetched_toolchain_gets_execute_bits_where_it_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("pkg/tool/linux_amd64");
        fs::create_dir_all(&tool).unwrap();
        let files = [
            (dir.path().join("go"), 0o444, 0o555),
            (tool.join("compile"), 0o644, 0o755),
            (tool.join("vet"), 0o400, 0o500),
        ];
        for (f, mode, _) in &files {
            fs::write(f, "x").unwrap();
            fs::set_permissions(f, fs::Permissions::from_mode(*mode)).unwrap();
        }
        make_executable(dir.path()).unwrap();
        for (f, _, want) in &files {
            let got = fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, *want, "{}", f.display());
        }
        // A toolchain without the directory is left as it is.
        make_executable(&dir.path().join("absent")).unwrap();
    }

    fn input(toml_text: &str) -> GoInput {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn kubernetes_stamp_flags() {
        let i = input(
            "name='k'\nmodule='k8s.io/kubernetes'\nversion='v1.35.4'\npackages=['k8s.io/kubernetes/cmd/kubelet']\nstamp='kubernetes'\nldflags=['-X=a.b={version-bare}']\n",
        );
        let f = ldflags(&i, 0, Some("abc"), "m@v").unwrap();
        for pkg in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            assert!(f.contains(&format!("-X={pkg}.gitVersion=v1.35.4 ")), "{f}");
            assert!(f.contains(&format!("-X={pkg}.gitMinor=35 ")), "{f}");
            assert!(f.contains(&format!("-X={pkg}.gitCommit=abc ")), "{f}");
            assert!(
                f.contains(&format!("-X={pkg}.buildDate=1970-01-01T00:00:00Z")),
                "{f}"
            );
        }
        assert!(f.starts_with("-s -w -buildid= "));
        assert!(f.ends_with(" -X=a.b=1.35.4"));
        assert!(matches!(
            ldflags(&i, 0, None, "m@v"),
            Err(GoError::NoCommit { .. })
        ));
    }

    #[test]
    fn key_covers_inputs_and_epoch_only_when_used() {
        let a = input("name='a'\nmodule='ex.com/m'\nversion='v1.0.0'\npackages=['ex.com/m']\n");
        let k = |i: &GoInput, e| cache_key(i, e, "go version go1.26.8 linux/amd64", None);
        assert_eq!(k(&a, 1), k(&a, 2), "epoch unused");
        let mut renamed = a.clone();
        renamed.name = "b".into();
        assert_eq!(k(&a, 1), k(&renamed, 1));
        let mut b = a.clone();
        b.tags.push("x".into());
        assert_ne!(k(&a, 1), k(&b, 1));
        let mut c = a.clone();
        c.env.insert("GOEXPERIMENT".into(), "x".into());
        assert_ne!(k(&a, 1), k(&c, 1));
        let mut d = a.clone();
        d.ldflags.push("-X=a.b={build-date}".into());
        assert_ne!(k(&d, 1), k(&d, 2));
        assert_ne!(
            k(&a, 1),
            cache_key(&a, 1, "go version go1.26.7 linux/amd64", None)
        );
        let mut e = a.clone();
        e.commit = Some(GitCommit::try_from(C1.to_string()).unwrap());
        assert_ne!(k(&a, 1), k(&e, 1), "the pinned commit is part of the key");
    }

    const C1: &str = "7b8c6cf0edd376b3d7c2f255142977c7f93db258";
    const C2: &str = "bb14dabeb7185bb72c8c86735d090dcb20f36587";

    fn stamped(commit: Option<&str>) -> GoInput {
        let mut i = input(
            "name='k'\nmodule='k8s.io/kubernetes'\nversion='v1.35.4'\npackages=['k8s.io/kubernetes/cmd/kubelet']\nstamp='kubernetes'\n",
        );
        i.commit = commit.map(|c| GitCommit::try_from(c.to_string()).unwrap());
        i
    }

    #[test]
    fn lock_settles_the_commit_from_the_definition_and_the_origin() {
        let mv = "k8s.io/kubernetes@v1.35.4";
        // Neither: fails naming the input and the key to set.
        let e = settle_commit(&stamped(None), mv, None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, GoError::NoCommit { .. }), "{e:?}");
        assert!(
            msg.contains("go input k ") && msg.contains("`commit = "),
            "{msg}"
        );
        // Only the Origin, only the definition, both agreeing.
        let origin = Some(C1.to_string());
        assert_eq!(
            settle_commit(&stamped(None), mv, origin.clone()).unwrap(),
            origin
        );
        assert_eq!(settle_commit(&stamped(Some(C1)), mv, None).unwrap(), origin);
        assert_eq!(
            settle_commit(&stamped(Some(C1)), mv, origin.clone()).unwrap(),
            origin
        );
        // Disagreeing: both named.
        let e = settle_commit(&stamped(Some(C2)), mv, origin).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(C1) && msg.contains(C2), "{msg}");
        // An input that does not use the commit still records a known one, needs none.
        let mut plain = stamped(None);
        plain.stamp = None;
        assert_eq!(settle_commit(&plain, mv, None).unwrap(), None);
    }

    #[test]
    fn build_takes_the_commit_from_the_lock_only() {
        let mv = "k8s.io/kubernetes@v1.35.4";
        let lock = |c: Option<&str>| GoLock {
            commit: c.map(str::to_string),
            go_version: "go1.26.8".into(),
            binaries: BTreeMap::new(),
            toolchain: Vec::new(),
            go_sum: Vec::new(),
        };
        assert_eq!(
            locked_commit(&stamped(None), mv, &lock(Some(C1))).unwrap(),
            Some(C1.to_string())
        );
        let e = locked_commit(&stamped(None), mv, &lock(None)).unwrap_err();
        assert!(e.to_string().contains("kiln lock"), "{e}");
        let e = locked_commit(&stamped(Some(C2)), mv, &lock(Some(C1))).unwrap_err();
        assert!(
            e.to_string().contains(C1) && e.to_string().contains(C2),
            "{e}"
        );
    }

    #[test]
    fn module_cache_paths_are_escaped() {
        assert_eq!(
            escape_module_path("github.com/BurntSushi/toml"),
            "github.com/!burnt!sushi/toml"
        );
        assert_eq!(escape_module_path("v1.0.0-RC1"), "v1.0.0-!r!c1");
        assert_eq!(escape_module_path("k8s.io/kubernetes"), "k8s.io/kubernetes");
    }
}
