//! Orchestration of the `kiln` subcommands.

use anyhow::{bail, Result};

use crate::cli::{Cli, Command, LockArgs};
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
