//! `kiln lock` and `kiln build` as functions: the data flow of design.md, from definition to
//! outputs. They take options (no command-line types), report progress through a `say`
//! callback and return summaries; printing is the CLI's.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cache::{write_atomic_bytes, Cache};
use crate::debian::{self, DebianRequest};
use crate::definition::{Definition, OutputFormat};
use crate::digest::Digest;
use crate::fetch::{FetchError, FetchRequest, Fetcher, FetcherOptions, Rewrite};
use crate::gobuild::{GoBuilt, GoError};
use crate::lock::{self, lock_path, Lock, LOCK_VERSION};
use crate::outputs::manifest::{self, Input, Manifest, OutputFile, Tool};
use crate::outputs::staging::Staging;
use crate::tree::{Content, Entry, Tree, TreePath};
use crate::unpack::{self, ContentStore, DebInput, Limits};

/// Where apt's configuration lives on the host.
const HOST_APT: &str = "/etc/apt";
/// The package that carries Debian's archive keys, and where it (and a Debian host) keeps them.
const ARCHIVE_KEYRING_PACKAGE: &str = "debian-archive-keyring";
const ARCHIVE_KEYRING: &str = "usr/share/keyrings/debian-archive-keyring.gpg";

/// Where inputs come from.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Never touch the network.
    pub offline: bool,
    /// URL rewrites, `FROM=TO`.
    pub mirror: Vec<String>,
    /// The content cache; default: `$KILN_CACHE`, else `~/.cache/kiln`.
    pub cache: Option<PathBuf>,
    /// Downloads at the same time.
    pub jobs: usize,
}

/// What `kiln lock` resolves.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The definition; the lock is written next to it.
    pub definition: PathBuf,
    pub fetch: FetchOptions,
}

/// What `kiln build` builds.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The definition; its lock is read from next to it.
    pub definition: PathBuf,
    /// Outputs to write; empty: the definition's.
    pub formats: Vec<OutputFormat>,
    /// The output directory.
    pub out: PathBuf,
    /// Accept Go binaries that differ from the lock and rewrite its go pins.
    pub relock: bool,
    pub fetch: FetchOptions,
}

fn cache_of(args: &FetchOptions) -> Result<Cache> {
    match &args.cache {
        Some(dir) => Ok(Cache::at(dir)),
        None => Cache::from_env().context("locating the cache directory"),
    }
}

fn fetcher_of(args: &FetchOptions) -> Result<Fetcher> {
    let rewrites = args
        .mirror
        .iter()
        .map(|m| m.parse::<Rewrite>())
        .collect::<Result<Vec<_>, _>>()?;
    let opts = FetcherOptions {
        offline: args.offline,
        rewrites,
        parallel: args.jobs.max(1),
        ..FetcherOptions::default()
    };
    Ok(Fetcher::new(cache_of(args)?, opts)?)
}

/// Go's environment for this run: Kiln's cache, and the toolchain's proxy rewritten by the
/// same `--mirror` rules as every URL, or none with `--offline`.
fn go_env_of(fetcher: &Fetcher) -> Result<crate::gobuild::GoEnv> {
    let o = fetcher.options();
    crate::gobuild::GoEnv::with(fetcher.cache().root(), o.offline, &o.rewrites)
        .context("reading the Go toolchain's defaults")
}

/// The Debian mirror: the definition's, else the host's apt configuration.
fn mirror_of(d: &crate::definition::Debian) -> Result<String> {
    match &d.mirror {
        Some(m) => Ok(m.trim_end_matches('/').to_string()),
        None => Ok(debian::host_mirror(Path::new(HOST_APT), &d.suite)?),
    }
}

/// The keys that must have signed the suite's Release: the definition's `keyring`; else the
/// keys of the `debian-archive-keyring` package the previous lock pins (so a lock, once
/// reviewed, also pins whom the next one trusts); else the keys the host's apt trusts for
/// the mirror.
fn keyring_of(
    d: &crate::definition::Debian,
    mirror: &str,
    previous: &[debian::ResolvedDeb],
    fetcher: &Fetcher,
) -> Result<debian::Keyring> {
    if let Some(k) = &d.keyring {
        return Ok(debian::Keyring::read_files(&[Path::new(k)])?);
    }
    if let Some(deb) = previous.iter().find(|p| p.name == ARCHIVE_KEYRING_PACKAGE) {
        match locked_keyring(deb, mirror, fetcher) {
            Ok(k) => return Ok(k),
            Err(e) => log::warn!("{e:#}; trusting the keys the host's apt trusts instead"),
        }
    }
    Ok(debian::sources::host_keyring(
        Path::new(HOST_APT),
        mirror,
        &d.suite,
        &Path::new("/").join(ARCHIVE_KEYRING),
    )?)
}

/// The archive keys inside the pinned `debian-archive-keyring` .deb (fetched by its hash).
fn locked_keyring(
    deb: &debian::ResolvedDeb,
    mirror: &str,
    fetcher: &Fetcher,
) -> Result<debian::Keyring> {
    let path = fetcher.fetch_one(&FetchRequest {
        name: deb.name.clone(),
        url: debian::deb_url(mirror, &deb.filename),
        digest: deb.sha256.clone(),
        size: Some(deb.size),
    })?;
    let origin = format!("{} {} (pinned by the lock)", deb.name, deb.version);
    let bytes = unpack::read_data_file(&path, ARCHIVE_KEYRING, 16 << 20)?
        .with_context(|| format!("{origin} has no /{ARCHIVE_KEYRING}"))?;
    Ok(debian::Keyring::parse(&bytes, &origin)?)
}

/// What `kiln lock` wrote.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct LockSummary {
    /// The lock file.
    pub path: PathBuf,
    pub packages: usize,
    pub artifacts: usize,
    pub go_inputs: usize,
    /// Debian packages added (`+ name version`), changed (`~ name old -> new`) and removed
    /// (`- name version`) against the previous lock.
    pub changes: Vec<String>,
    /// Who signed the Debian suite's Release (None without a `[debian]` section).
    pub release_signer: Option<debian::Signer>,
}

/// Resolves every input of the definition and writes its lock (temp file, rename).
pub fn lock(args: &LockOptions) -> Result<LockSummary> {
    let def = crate::definition::load(&args.definition)?;
    let path = lock_path(&args.definition);
    let previous = Lock::read(&path, &args.definition).ok();
    let fetcher = fetcher_of(&args.fetch)?;
    let mut release_signer = None;
    let debian = match &def.debian {
        None => None,
        Some(d) => {
            let mirror = mirror_of(d)?;
            let prev: Vec<_> = previous
                .as_ref()
                .and_then(|l| l.debian.as_ref())
                .map(|d| d.debs.clone())
                .unwrap_or_default();
            let keyring = keyring_of(d, &mirror, &prev, &fetcher)?;
            let req = DebianRequest {
                mirror,
                suite: d.suite.clone(),
                components: d.components.clone(),
                arch: def.arch.clone(),
                packages: d.packages.clone(),
                exclude: d.exclude.clone(),
                essential: d.essential,
            };
            let (debs, signer) =
                debian::lock(&req, &prev, &keyring, &|url: &str| fetcher.get_bytes(url))
                    .with_context(|| {
                        format!("locking Debian packages of {}", args.definition.display())
                    })?;
            release_signer = Some(signer);
            let mut dl = lock::debian_request(d);
            dl.debs = debs;
            Some(dl)
        }
    };
    let mut go = Vec::new();
    if !def.go.is_empty() {
        let env = go_env_of(&fetcher)?;
        for input in &def.go {
            let out = crate::gobuild::build(input, def.epoch, &env, true)
                .with_context(|| format!("building go input {}", input.name))?;
            go.push(lock::GoInputLock::new(input, &out.lock()));
        }
    }
    let new = Lock {
        version: LOCK_VERSION,
        debian,
        artifact: Lock::artifacts_of(&def),
        go,
    };
    let changes = changes(previous.as_ref(), &new);
    write_atomic_bytes(&path, new.to_toml().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(LockSummary {
        packages: new.debian.as_ref().map_or(0, |d| d.debs.len()),
        artifacts: new.artifact.len(),
        go_inputs: new.go.len(),
        path,
        changes,
        release_signer,
    })
}

fn changes(old: Option<&Lock>, new: &Lock) -> Vec<String> {
    let versions = |l: Option<&Lock>| -> BTreeMap<String, String> {
        l.and_then(|l| l.debian.as_ref())
            .map(|d| {
                d.debs
                    .iter()
                    .map(|b| (b.name.clone(), b.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (versions(old), versions(Some(new)));
    let mut out = Vec::new();
    for (name, v) in &b {
        match a.get(name) {
            None if old.is_some() => out.push(format!("+ {name} {v}")),
            Some(ov) if ov != v => out.push(format!("~ {name} {ov} -> {v}")),
            _ => {}
        }
    }
    for (name, v) in &a {
        if !b.contains_key(name) {
            out.push(format!("- {name} {v}"));
        }
    }
    out
}

/// `kiln lock --check`: how the definition's lock disagrees with it (empty: up to date).
/// Never touches the network.
pub fn check_lock(definition: &Path) -> Result<(PathBuf, Vec<String>)> {
    let (def, path, lock) = read_with_lock(definition)?;
    Ok((path, lock.mismatches(&def)))
}

/// The definition at `def_path`, where its lock is, and the lock.
fn read_with_lock(def_path: &Path) -> Result<(Definition, PathBuf, Lock)> {
    let def = crate::definition::load(def_path)?;
    let path = lock_path(def_path);
    let lock = Lock::read(&path, def_path)?;
    Ok((def, path, lock))
}

/// Reads a definition and its lock and checks that they agree.
/// With `relock`, disagreements about go inputs are left for the build to repair.
pub fn definition_and_lock(def_path: &Path, relock: bool) -> Result<(Definition, Lock)> {
    let (def, path, lock) = read_with_lock(def_path)?;
    let mut m = lock.mismatches(&def);
    if relock {
        let go = lock.go_mismatches(&def);
        m.retain(|x| !go.contains(x));
    }
    if !m.is_empty() {
        let go = lock.go_mismatches(&def);
        let fix = match m.iter().all(|x| go.contains(x)) {
            true => format!("kiln build --relock {}", def_path.display()),
            false => format!("kiln lock {}", def_path.display()),
        };
        anyhow::bail!(
            "{} is out of date ({}); run `{fix}`",
            path.display(),
            m.join("; "),
        );
    }
    Ok((def, lock))
}

/// What `kiln fetch` downloads for.
#[derive(Debug, Clone)]
pub struct FetchDefinitionOptions {
    pub definition: PathBuf,
    pub fetch: FetchOptions,
}

/// What `kiln fetch` did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FetchSummary {
    /// Debian packages and artifacts: downloaded now, already in the cache.
    pub downloaded: usize,
    pub cached: usize,
    pub go_inputs: usize,
    /// Modules pinned by the go inputs' closures (zips), now all in Kiln's module cache.
    pub go_modules: usize,
}

/// Downloads every input of a definition as its lock pins it (Debian packages, artifacts,
/// each go input's modules), so that `kiln build --offline` needs no network afterwards.
pub fn fetch(args: &FetchDefinitionOptions) -> Result<FetchSummary> {
    let (def, lock) = definition_and_lock(&args.definition, false)?;
    let fetcher = fetcher_of(&args.fetch)?;
    let fetched = fetch_inputs(&def, &lock, &fetcher)?;
    let mut go_modules = 0;
    if !def.go.is_empty() {
        let env = go_env_of(&fetcher)?;
        for input in &def.go {
            let Some(locked) = lock.go.iter().find(|l| l.name == input.name) else {
                anyhow::bail!("go input {} is not in the lock", input.name);
            };
            go_modules += crate::gobuild::fetch(input, &env, &locked.built())
                .with_context(|| format!("fetching the modules of go input {}", input.name))?;
        }
    }
    Ok(FetchSummary {
        downloaded: fetched.downloaded,
        cached: fetched.cached,
        go_inputs: def.go.len(),
        go_modules,
    })
}

/// What `kiln build --json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BuildSummary {
    pub image: String,
    pub version: String,
    pub out: PathBuf,
    pub outputs: Vec<OutputFile>,
    pub downloaded: usize,
    pub cached: usize,
    /// What each go input's build did: a cache hit runs no compile and no download.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub go: Vec<GoSummary>,
    pub seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GoSummary {
    pub name: String,
    pub cache_hit: bool,
    /// Every `go` command the build ran.
    pub commands: Vec<String>,
    pub seconds: f64,
    /// Of `seconds`, the time in `go build` itself.
    pub go_build_seconds: f64,
    pub binaries: Vec<crate::gobuild::GoBinary>,
}

/// Everything fetched for a build, in lock order.
struct Fetched {
    debs: Vec<(crate::debian::ResolvedDeb, PathBuf)>,
    artifacts: BTreeMap<String, PathBuf>,
    downloaded: usize,
    cached: usize,
}

fn fetch_inputs(def: &Definition, lock: &Lock, fetcher: &Fetcher) -> Result<Fetched> {
    let mut reqs = Vec::new();
    let mut debs = Vec::new();
    if let (Some(d), Some(l)) = (&def.debian, &lock.debian) {
        let mirror = mirror_of(d)?;
        for b in &l.debs {
            reqs.push(FetchRequest {
                name: b.name.clone(),
                url: debian::deb_url(&mirror, &b.filename),
                digest: b.sha256.clone(),
                size: Some(b.size),
            });
            debs.push(b.clone());
        }
    }
    for a in &def.artifacts {
        reqs.push(FetchRequest {
            name: a.name.clone(),
            url: a.url.to_string(),
            digest: a.checksum.clone(),
            size: None,
        });
    }
    let (paths, report) = fetcher.fetch_all_with_report(&reqs).map_err(|e| match e {
        FetchError::NotFound { ref name, .. } => match debs.iter().find(|d| &d.name == name) {
            Some(d) => anyhow::Error::new(debian::DebianError::Superseded {
                name: d.name.clone(),
                version: d.version.clone(),
                filename: d.filename.clone(),
            })
            .context(e.to_string()),
            None => anyhow::Error::new(e),
        },
        e => anyhow::Error::new(e),
    })?;
    let n = debs.len();
    let artifacts = def
        .artifacts
        .iter()
        .zip(&paths[n..])
        .map(|(a, p)| (a.name.clone(), p.clone()))
        .collect();
    Ok(Fetched {
        debs: debs.into_iter().zip(paths.into_iter().take(n)).collect(),
        artifacts,
        downloaded: report.downloaded,
        cached: report.cached,
    })
}

/// The image's root file tree: packages, artifacts, then the definition's own entries.
pub fn assemble(
    def: &Definition,
    fetched_debs: &[DebInput],
    artifacts: &BTreeMap<String, PathBuf>,
    go: &[GoBuilt],
    store: &ContentStore,
    firstboot: &Path,
) -> Result<Tree> {
    let limits = Limits::default();
    let mut tree = Tree::new(def.epoch);
    unpack::merged_usr(&mut tree)?;
    unpack::add_debs(&mut tree, fetched_debs, store, &limits)?;
    for a in &def.artifacts {
        let path = artifacts
            .get(&a.name)
            .with_context(|| format!("artifact {} was not fetched", a.name))?;
        if a.extract.is_empty() {
            let dest = a.dest.as_deref().unwrap_or_default();
            let p = TreePath::from_definition(dest)?;
            let size = std::fs::metadata(path)
                .with_context(|| format!("artifact {}: {}", a.name, path.display()))?
                .len();
            let content = Content::OnDisk {
                path: path.clone(),
                size,
            };
            let mode = a.mode.map_or(0o755, |m| m.0);
            tree.replace(&p, Entry::file(content, mode, &a.name).at(def.epoch))?;
        } else {
            let extract = a
                .extract
                .iter()
                .map(|(from, to)| (from.to_string(), to.to_string()))
                .collect();
            unpack::add_tar_archive(&mut tree, path, &a.name, &extract, store, &limits)
                .with_context(|| format!("artifact {}", a.name))?;
        }
    }
    for g in go {
        for b in &g.output.binaries {
            let at = format!("{}/{}", g.input.dest().trim_end_matches('/'), b.name);
            let p = TreePath::from_definition(&at)?;
            let content = Content::OnDisk {
                path: b.path.clone(),
                size: b.size,
            };
            tree.replace(&p, Entry::file(content, 0o755, &g.input.name).at(def.epoch))?;
        }
    }
    add_firstboot(&mut tree, def, firstboot)?;
    crate::assemble::apply(&mut tree, def)?;
    if let Ok((kver, _)) = crate::outputs::images::kernel_of(&tree) {
        let n = crate::outputs::boot::depmod::add_indexes(&mut tree, &kver)
            .with_context(|| format!("generating the module indexes of kernel {kver}"))?;
        log::info!("depmod: {n} module index files for {kver}");
    }
    Ok(tree)
}

/// Builds every go input of the definition (cache hits are instant) and checks each against
/// the lock, unless `relock`: then the lock's go entries are rewritten from the fresh builds.
fn build_go(
    def: &Definition,
    lock: &mut Lock,
    fetcher: &Fetcher,
    relock: bool,
    say: &dyn Fn(&str),
) -> Result<Vec<GoBuilt>> {
    let mut out = Vec::new();
    if def.go.is_empty() {
        return Ok(out);
    }
    let env = go_env_of(fetcher)?;
    let mut changed = false;
    for input in &def.go {
        let locked = lock.go.iter().find(|l| l.name == input.name).cloned();
        let output = match (&locked, relock) {
            (Some(l), false) => {
                crate::gobuild::build_locked(input, def.epoch, &env, true, &l.built()).map_err(
                    |e| {
                        let hint = match e {
                            GoError::LockMismatch { .. }
                            | GoError::LockGoVersion { .. }
                            | GoError::LockMissing { .. } => format!(
                                "the fresh build differs from {} (a reproducibility regression?); \
                                 `kiln build --relock` accepts the new binaries",
                                lock_path(&def.path).display()
                            ),
                            _ => format!("building go input {}", input.name),
                        };
                        anyhow::Error::new(e).context(hint)
                    },
                )?
            }
            _ => crate::gobuild::build(input, def.epoch, &env, true)
                .with_context(|| format!("building go input {}", input.name))?,
        };
        let fresh = lock::GoInputLock::new(input, &output.lock());
        if locked.as_ref() != Some(&fresh) {
            lock.go.retain(|l| l.name != input.name);
            lock.go.push(fresh);
            changed = true;
        }
        for b in &output.binaries {
            if !output.report.cache_hit {
                say(&format!(
                    "go {}: built {} ({} bytes)",
                    input.name, b.name, b.size
                ));
            }
        }
        out.push(GoBuilt {
            input: input.clone(),
            output,
        });
    }
    if changed {
        let path = lock_path(&def.path);
        write_atomic_bytes(&path, lock.to_toml().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        say(&format!("{}: go pins updated (--relock)", path.display()));
    }
    Ok(out)
}

/// The systemd unit of firstboot's stage 2.
const FIRSTBOOT_UNIT: &str = include_str!("../../firstboot/units/firstboot.service");

/// Every Kiln image carries firstboot: the binary, its unit (enabled), and the
/// definition's machine defaults where firstboot reads them.
fn add_firstboot(tree: &mut Tree, def: &Definition, firstboot: &Path) -> Result<()> {
    let size = std::fs::metadata(firstboot)
        .with_context(|| format!("firstboot binary {}", firstboot.display()))?
        .len();
    let bin = TreePath::from_definition("/usr/bin/firstboot")?;
    let content = Content::OnDisk {
        path: firstboot.to_path_buf(),
        size,
    };
    tree.replace(&bin, Entry::file(content, 0o755, "firstboot").at(def.epoch))?;
    let unit = TreePath::from_definition("/usr/lib/systemd/system/firstboot.service")?;
    let content = Content::inline(FIRSTBOOT_UNIT.as_bytes().to_vec());
    tree.replace(
        &unit,
        Entry::file(content, 0o644, "firstboot").at(def.epoch),
    )?;
    crate::assemble::enable_unit(tree, "firstboot.service", def.epoch)?;
    if !def.machine.is_empty() {
        let p = TreePath::from_definition(firstboot::config::DEFAULT_CONFIG_PATH)?;
        let text = toml::to_string(&def.machine)?;
        let content = Content::inline(text.into_bytes());
        tree.replace(&p, Entry::file(content, 0o644, "definition").at(def.epoch))?;
    }
    Ok(())
}

fn inputs_of(lock: &Lock, go: &[GoBuilt]) -> Vec<Input> {
    let mut v: Vec<Input> = lock
        .debian
        .iter()
        .flat_map(|d| &d.debs)
        .map(|b| Input {
            kind: "deb".into(),
            name: b.name.clone(),
            version: b.version.clone(),
            source: b.filename.clone(),
            checksum: b.sha256.clone(),
        })
        .collect();
    v.extend(lock.artifact.iter().map(|a| Input {
        kind: "artifact".into(),
        name: a.name.clone(),
        version: String::new(),
        source: a.url.clone(),
        checksum: a.checksum.clone(),
    }));
    for g in go {
        v.extend(g.output.binaries.iter().map(|b| Input {
            kind: "go".into(),
            name: b.name.clone(),
            version: g.input.version.clone(),
            source: format!(
                "{}@{} ({}, {})",
                g.input.module, g.input.version, b.package, g.output.go_version
            ),
            checksum: b.sha256.clone(),
        }));
    }
    v
}

fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    write(&mut w).with_context(|| format!("writing {}", path.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Builds the definition's outputs into `args.out` (they appear only once all succeeded).
/// `say` gets progress lines (Go binaries built, lock pins rewritten).
pub fn build(args: &BuildOptions, say: &dyn Fn(&str)) -> Result<BuildSummary> {
    let started = Instant::now();
    let mut seconds = BTreeMap::new();
    let (def, mut lock) = definition_and_lock(&args.definition, args.relock)?;
    let formats: Vec<OutputFormat> = if args.formats.is_empty() {
        def.outputs.clone()
    } else {
        args.formats.clone()
    };
    let fetcher = fetcher_of(&args.fetch)?;
    let t = Instant::now();
    let fetched = fetch_inputs(&def, &lock, &fetcher)?;
    seconds.insert("fetch".to_string(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let go = build_go(&def, &mut lock, &fetcher, args.relock, say)?;
    if !def.go.is_empty() {
        seconds.insert("go".to_string(), t.elapsed().as_secs_f64());
    }

    let t = Instant::now();
    let store = ContentStore::open(fetcher.cache().root()).with_context(|| {
        format!(
            "opening the content store in {}",
            fetcher.cache().root().display()
        )
    })?;
    let deb_inputs: Vec<DebInput> = fetched
        .debs
        .iter()
        .map(|(d, p)| DebInput {
            path: p.clone(),
            origin: d.name.clone(),
            sha256: Some(d.sha256.clone()),
        })
        .collect();
    let firstboot = crate::selfbuild::firstboot()?;
    let mut tree = assemble(
        &def,
        &deb_inputs,
        &fetched.artifacts,
        &go,
        &store,
        &firstboot,
    )?;
    seconds.insert("assemble".to_string(), t.elapsed().as_secs_f64());

    // Container images: their archives live in `scratch` until the outputs are written.
    let t = Instant::now();
    let scratch = tempfile::tempdir_in(fetcher.cache().tmp_dir()?)
        .context("creating a scratch directory in the cache")?;
    let mut self_bins = BTreeMap::new();
    for name in def.container_images.iter().flat_map(|i| i.self_binaries()) {
        if let std::collections::btree_map::Entry::Vacant(v) = self_bins.entry(name) {
            let path = crate::selfbuild::by_name(v.key())?;
            v.insert(path);
        }
    }
    let baked = crate::container_image::bake(
        &def.container_images,
        def.epoch,
        &mut tree,
        &go,
        &self_bins,
        scratch.path(),
    )?;
    if !baked.is_empty() {
        seconds.insert("container-images".to_string(), t.elapsed().as_secs_f64());
    }

    let staging = Staging::new(&args.out)?;
    let mut tools: Vec<Tool> = Vec::new();
    let base = def.name.clone();
    if formats.contains(&OutputFormat::Tar) {
        let t = Instant::now();
        let p = staging.dir().join(format!("{base}.tar"));
        write_file(&p, |w| crate::outputs::tar::write_tar(&tree, w))?;
        seconds.insert("tar".to_string(), t.elapsed().as_secs_f64());
    }
    tools.extend(crate::outputs::images::write(
        &def,
        &tree,
        &formats,
        &firstboot,
        staging.dir(),
        &mut seconds,
    )?);
    let mut outputs: Vec<OutputFile> = Vec::new();
    for entry in std::fs::read_dir(staging.dir())? {
        let p = entry?.path();
        if p.is_file() {
            outputs.push(manifest::describe(&p)?);
        } else if p.is_dir() {
            // A bundle (PXE): each file, named dir/file.
            let dir = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for f in std::fs::read_dir(&p)? {
                let f = f?.path();
                let mut d = manifest::describe(&f)?;
                d.name = format!("{dir}/{}", d.name);
                outputs.push(d);
            }
        }
    }
    outputs.sort();
    tools.sort();
    let mut inputs = inputs_of(&lock, &go);
    inputs.push(Input {
        kind: "local".into(),
        name: "firstboot".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        source: "firstboot/ (this workspace)".into(),
        checksum: Digest::of_reader(
            crate::digest::Algorithm::Sha256,
            std::fs::File::open(&firstboot)?,
        )?,
    });
    for (name, path) in &self_bins {
        inputs.push(Input {
            kind: "local".into(),
            name: name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            source: "firstboot/ (this workspace)".into(),
            checksum: Digest::of_reader(
                crate::digest::Algorithm::Sha256,
                std::fs::File::open(path)?,
            )?,
        });
    }
    inputs.extend(baked.iter().map(|b| b.input()));
    let lock_digest: Digest = lock.digest();
    let manifest = Manifest {
        image: def.name.clone(),
        version: def.version.clone(),
        arch: def.arch.clone(),
        epoch: def.epoch,
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        lock: lock_digest.clone(),
        inputs: inputs.clone(),
        tools,
        outputs: outputs.clone(),
    };
    let licenses = crate::outputs::sbom::licenses_from_tree(&tree, &inputs);
    let mut go_modules = BTreeMap::new();
    for b in go.iter().flat_map(|g| &g.output.binaries) {
        let info = crate::gobuild::buildinfo::read(&b.path)
            .map_err(|e| anyhow::anyhow!("the Go modules of {}: {e}", b.name))?;
        go_modules.insert(b.name.clone(), info.modules);
    }
    let sbom = crate::outputs::sbom::document(
        &def.name,
        &def.version,
        def.epoch,
        lock_digest.hex(),
        &inputs,
        &licenses,
        &go_modules,
    );
    let mut sbom_text = serde_json::to_string_pretty(&sbom)?;
    sbom_text.push('\n');
    std::fs::write(staging.dir().join("manifest.json"), manifest.to_json())?;
    std::fs::write(staging.dir().join("sbom.spdx.json"), sbom_text)?;
    let mut all = outputs.clone();
    all.push(manifest::describe(&staging.dir().join("manifest.json"))?);
    all.push(manifest::describe(&staging.dir().join("sbom.spdx.json"))?);
    std::fs::write(staging.dir().join("SHA256SUMS"), manifest::sha256sums(&all))?;
    let out = staging.out().to_path_buf();
    staging.commit()?;
    seconds.insert("total".to_string(), started.elapsed().as_secs_f64());
    let summary = BuildSummary {
        image: def.name.clone(),
        version: def.version.clone(),
        out: out.clone(),
        outputs,
        downloaded: fetched.downloaded,
        cached: fetched.cached,
        go: go
            .iter()
            .map(|g| GoSummary {
                name: g.input.name.clone(),
                cache_hit: g.output.report.cache_hit,
                commands: g.output.report.commands.clone(),
                seconds: g.output.report.elapsed.as_secs_f64(),
                go_build_seconds: g.output.report.go_build.as_secs_f64(),
                binaries: g.output.binaries.clone(),
            })
            .collect(),
        seconds,
    };
    Ok(summary)
}
