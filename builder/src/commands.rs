//! Orchestration of the `kiln` subcommands.

use anyhow::{bail, Result};

use std::path::Path;

use anyhow::Context;

use crate::cli::{Cli, Command, KubeconfigArgs, LockArgs, SecretsCommand, SecretsGenArgs};
use crate::definition;
use crate::lock::{lock_path, Lock};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Schema => {
            let s = serde_json::to_string_pretty(&definition::schema())?;
            println!("{s}");
            Ok(())
        }
        Command::Lock(args) if args.check => lock_check(&args),
        Command::Lock(args) => crate::build::lock(&args),
        Command::Build(args) => crate::build::build(&args),
        Command::Secrets(SecretsCommand::Gen(args)) => secrets_gen(&args),
        Command::Kubeconfig(args) => kubeconfig(&args),
        Command::Run(args) => crate::run::run(&args),
        Command::Inspect(args) => {
            let r = crate::inspect::inspect(&args.output)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                crate::inspect::print(&r);
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

fn lock_check(args: &LockArgs) -> Result<()> {
    let def = definition::load(&args.definition)?;
    let path = lock_path(&args.definition);
    let lock = Lock::read(&path, &args.definition)?;
    let m = lock.mismatches(&def);
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

/// Reads a definition and its lock and checks that they agree.
/// With `relock`, disagreements about go inputs are left for the build to repair.
pub fn definition_and_lock(
    def_path: &std::path::Path,
    relock: bool,
) -> Result<(definition::Definition, Lock)> {
    let def = definition::load(def_path)?;
    let path = lock_path(def_path);
    let lock = Lock::read(&path, def_path)?;
    let mut m = lock.mismatches(&def);
    if relock {
        let go = lock.go_mismatches(&def);
        m.retain(|x| !go.contains(x));
    }
    if !m.is_empty() {
        bail!(
            "{} is out of date ({}); run `kiln lock {}`",
            path.display(),
            m.join("; "),
            def_path.display()
        );
    }
    Ok((def, lock))
}
