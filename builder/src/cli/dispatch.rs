//! Runs a parsed command line: turns arguments into the pipeline's options and prints
//! what it returns.

use anyhow::{bail, Result};

use std::path::Path;

use anyhow::Context;

use crate::cli::{
    BuildArgs, Cli, Command, FetchArgs, FetchDefinitionArgs, KubeconfigArgs, LockArgs,
    SecretsCommand, SecretsGenArgs,
};
use crate::definition;
use crate::pipeline::{self, BuildOptions, BuildSummary, FetchOptions, LockOptions};

pub fn run(cli: Cli) -> Result<()> {
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
    bail!(
        "{} does not match {}; run `kiln lock {}`",
        path.display(),
        args.definition.display(),
        args.definition.display()
    )
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
