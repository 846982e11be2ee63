//! Runs a parsed command line: turns arguments into the pipeline's options and prints
//! what it returns.

use anyhow::{bail, Result};

use std::path::Path;

use anyhow::Context;

use crate::cli::input::{self, Kind, LockDrift, Usage};
use crate::cli::{
    BuildArgs, CacheArgs, CacheCommand, Cli, Command, FetchArgs, FetchDefinitionArgs, HealthArgs,
    KubeconfigArgs, LockArgs, LogsArgs, NodeArgs, SecretsCommand, SecretsGenArgs, StatusArgs,
};
use crate::definition;
use crate::pipeline::{self, BuildOptions, BuildSummary, FetchOptions, LockOptions};

pub fn run(cli: Cli) -> Result<()> {
    check_paths(&cli.command)?;
    match cli.command {
        Command::Schema => {
            let s = serde_json::to_string_pretty(&definition::schema())?;
            println!("{s}");
            Ok(())
        }
        Command::Lock(args) if args.check => lock_check(&args),
        Command::Lock(args) => lock(&args),
        Command::Build(args) => build(&args),
        Command::Fetch(args) => fetch(&args),
        Command::Secrets(SecretsCommand::Gen(args)) => secrets_gen(&args),
        Command::Kubeconfig(args) => kubeconfig(&args),
        Command::Run(args) => crate::cli::run::run(&args),
        Command::Cache(args) => cache(&args),
        Command::Health(args) => health(&args),
        Command::Status(args) => {
            let api = open_api(&args.node)?;
            let st = api.status(&api.node(args.node.node.as_deref())?)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", st.table());
            }
            Ok(())
        }
        Command::Logs(args) => {
            let api = open_api(&args.node)?;
            crate::cli::node::logs(
                &api,
                args.node.node.as_deref(),
                &args.component,
                args.follow,
            )
        }
        Command::Completions(args) => {
            crate::cli::manual::completions(args.shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man(args) => {
            for p in crate::cli::manual::write_pages(&args.out)? {
                eprintln!("{}", p.display());
            }
            Ok(())
        }
        Command::Inspect(args) => {
            let r = crate::outputs::inspect::inspect(&args.output)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                crate::outputs::inspect::print(&r);
            }
            Ok(())
        }
    }
}

/// Checks every path the command line names before any work starts: a missing one, a
/// directory where a file is wanted or a file of the wrong kind is a usage error.
fn check_paths(command: &Command) -> Result<()> {
    let mut wanted: Vec<(&Path, Kind)> = Vec::new();
    match command {
        Command::Build(a) => {
            wanted.push((&a.definition, Kind::Definition));
            if a.out.is_file() {
                return Err(Usage(format!(
                    "{}: a file, not an output directory (--out)",
                    a.out.display()
                ))
                .into());
            }
        }
        Command::Lock(a) => wanted.push((&a.definition, Kind::Definition)),
        Command::Fetch(a) => wanted.push((&a.definition, Kind::Definition)),
        Command::Inspect(a) => wanted.push((&a.output, Kind::Output)),
        Command::Run(a) => {
            if let Some(image) = &a.image {
                wanted.push((image, Kind::Image));
            }
            if let Some(d) = &a.stop {
                wanted.push((d, Kind::StateDir));
            }
            if let Some(c) = &a.config {
                wanted.push((c, Kind::MachineConfig));
            }
            // A --secrets file that does not exist yet is generated there.
            if let Some(s) = a.secrets.as_deref().filter(|s| s.exists()) {
                wanted.push((s, Kind::Secrets));
            }
        }
        Command::Kubeconfig(a) => wanted.push((&a.secrets, Kind::Secrets)),
        Command::Cache(a) => {
            if let Some(CacheCommand::Prune(p)) = &a.command {
                for d in &p.keep_locked {
                    wanted.push((d, Kind::Definition));
                }
            }
        }
        Command::Health(HealthArgs { node, .. })
        | Command::Status(StatusArgs { node, .. })
        | Command::Logs(LogsArgs { node, .. }) => {
            if let Some(k) = &node.kubeconfig {
                wanted.push((k, Kind::Kubeconfig));
            }
            if let Some(d) = &node.state_dir {
                wanted.push((d, Kind::StateDir));
            }
        }
        Command::Secrets(_) | Command::Schema | Command::Completions(_) | Command::Man(_) => {}
    }
    for (path, kind) in wanted {
        input::check(path, kind)?;
    }
    Ok(())
}

/// Unix seconds now (certificates are valid from here).
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Writes `data` to `path` with mode 0600 through a temp file and a rename.
pub(crate) fn write_private(path: &Path, data: &str) -> Result<()> {
    firstboot::pki::write_atomic(path, data.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

fn secrets_gen(args: &SecretsGenArgs) -> Result<()> {
    if args.out.exists() {
        bail!(
            "{} exists; not replacing cluster secrets (remove it first if you mean to)",
            args.out.display()
        );
    }
    let secrets = firstboot::pki::Secrets::generate(now())?;
    write_private(&args.out, &secrets.to_toml()?)?;
    eprintln!(
        "{}: cluster CA, etcd CA, front-proxy CA and service-account key (keep it private)",
        args.out.display()
    );
    Ok(())
}

/// Reads and checks a secrets file from `kiln secrets gen`; errors name the file.
pub(crate) fn read_secrets(path: &Path) -> Result<firstboot::pki::Secrets> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    firstboot::pki::Secrets::from_toml(&text).with_context(|| format!("{}", path.display()))
}

fn kubeconfig(args: &KubeconfigArgs) -> Result<()> {
    let secrets = read_secrets(&args.secrets)?;
    if !(args.server.starts_with("https://")) {
        bail!("--server {:?} must be an https:// URL", args.server);
    }
    let kc = firstboot::pki::admin_kubeconfig(&secrets, &args.server, now())?;
    match &args.out {
        Some(p) => write_private(p, &kc),
        None => {
            print!("{kc}");
            Ok(())
        }
    }
}

impl From<&FetchArgs> for FetchOptions {
    fn from(a: &FetchArgs) -> Self {
        FetchOptions {
            offline: a.offline,
            mirror: a.mirror.clone(),
            cache: a.cache.clone(),
            jobs: a.jobs,
        }
    }
}

fn say(line: &str) {
    eprintln!("{line}");
}

fn lock(args: &LockArgs) -> Result<()> {
    let s = pipeline::lock(&LockOptions {
        definition: args.definition.clone(),
        fetch: (&args.fetch).into(),
    })?;
    for c in &s.changes {
        eprintln!("  {c}");
    }
    if let Some(signer) = &s.release_signer {
        eprintln!("Debian Release signed by {signer}");
    }
    eprintln!(
        "{}: {} packages, {} artifacts, {} go inputs",
        s.path.display(),
        s.packages,
        s.artifacts,
        s.go_inputs
    );
    Ok(())
}

fn fetch(args: &FetchDefinitionArgs) -> Result<()> {
    let s = pipeline::fetch(&pipeline::FetchDefinitionOptions {
        definition: args.definition.clone(),
        fetch: (&args.fetch).into(),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    }
    eprintln!(
        "{}: {} downloaded, {} already cached; {} go inputs, {} modules in the module cache",
        args.definition.display(),
        s.downloaded,
        s.cached,
        s.go_inputs,
        s.go_modules
    );
    Ok(())
}

fn lock_check(args: &LockArgs) -> Result<()> {
    let (path, m) = pipeline::check_lock(&args.definition)?;
    if m.is_empty() {
        eprintln!("{}: up to date", path.display());
        return Ok(());
    }
    for line in &m {
        eprintln!("{}: {line}", path.display());
    }
    Err(LockDrift {
        lock: path.display().to_string(),
        definition: args.definition.display().to_string(),
    }
    .into())
}

fn build(args: &BuildArgs) -> Result<()> {
    let summary = pipeline::build(
        &BuildOptions {
            definition: args.definition.clone(),
            formats: args.format.clone(),
            out: args.out.clone(),
            relock: args.relock,
            fetch: (&args.fetch).into(),
        },
        &say,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &BuildSummary) {
    for o in &s.outputs {
        eprintln!(
            "{}  {}  ({} bytes)",
            o.sha256,
            s.out.join(&o.name).display(),
            o.size
        );
    }
    eprintln!(
        "built {} {} in {:.1}s ({} downloaded, {} cached)",
        s.image,
        s.version,
        s.seconds.get("total").copied().unwrap_or_default(),
        s.downloaded,
        s.cached
    );
}

fn cache(args: &CacheArgs) -> Result<()> {
    let root = match &args.cache {
        Some(d) => d.clone(),
        None => crate::cache::Cache::from_env()?.root().to_path_buf(),
    };
    match &args.command {
        None => {
            let u = crate::cache_admin::usage(&root)
                .with_context(|| format!("reading the cache {}", root.display()))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&u)?);
                return Ok(());
            }
            println!("{}", root.display());
            for k in &u.kinds {
                println!(
                    "  {:<16} {:>10}  {:>8} files",
                    k.kind,
                    bytes(k.bytes),
                    k.files
                );
            }
            for k in &u.other {
                println!(
                    "  {:<16} {:>10}  {:>8} files  (not Kiln's: never pruned)",
                    k.kind,
                    bytes(k.bytes),
                    k.files
                );
            }
            println!("  {:<16} {:>10}", "total", bytes(u.total_bytes));
            Ok(())
        }
        Some(CacheCommand::Prune(p)) => {
            let mut keep = crate::cache_admin::Keep::default();
            for def in &p.keep_locked {
                let lock = crate::lock::lock_path(def);
                keep.add(&crate::lock::Lock::read(&lock, def)?);
            }
            let r = crate::cache_admin::prune(&root, &keep, p.dry_run)
                .with_context(|| format!("pruning the cache {}", root.display()))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let verb = if r.dry_run { "would remove" } else { "removed" };
            for k in &r.kinds {
                eprintln!(
                    "  {:<16} {verb} {:>10} ({} files), kept {:>10} ({} files)",
                    k.kind,
                    bytes(k.removed_bytes),
                    k.removed_files,
                    bytes(k.kept_bytes),
                    k.kept_files
                );
            }
            eprintln!("{}: {verb} {}", root.display(), bytes(r.removed_bytes));
            Ok(())
        }
    }
}

/// A size for people: 1.2 GiB, 340.0 MiB, 12 B.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The API server of the node the arguments name (its admin kubeconfig checked first).
fn open_api(args: &NodeArgs) -> Result<crate::cli::node::Api> {
    let path =
        crate::cli::node::kubeconfig_path(args.kubeconfig.as_deref(), args.state_dir.as_deref())?;
    input::check(&path, Kind::Kubeconfig)?;
    crate::cli::node::Api::open(&path, std::time::Duration::from_secs(args.timeout))
}

fn health(args: &HealthArgs) -> Result<()> {
    let api = open_api(&args.node)?;
    let checks = crate::cli::node::health(&api, args.node.node.as_deref(), now());
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ok": failed.is_empty(),
                "checks": checks,
            }))?
        );
    } else {
        for c in &checks {
            println!(
                "{}  {:<24} {}",
                if c.ok { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("unhealthy: {}", failed.join(", "))
    }
}
