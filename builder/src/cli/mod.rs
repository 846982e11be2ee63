//! The `kiln` command line: argument types (doc comments are the help text), `dispatch`
//! (runs a parsed command line, prints what the pipeline returns) and `kiln run`.

pub mod dispatch;
mod examples;
pub mod input;
pub mod manual;
pub mod node;
pub mod run;
pub mod timeline;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::definition::OutputFormat;

/// Kiln bakes immutable, bootable single-node Kubernetes machine images.
///
/// One TOML definition in; a qcow2/raw disk, a hybrid ISO and a PXE bundle out,
/// every input pinned by checksum in a lock file, every output reproducible byte
/// for byte.
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    propagate_version = true,
    after_long_help = examples::TOP
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). Logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from its definition and lock file.
    #[command(after_long_help = examples::BUILD)]
    Build(BuildArgs),
    /// Resolve every input of a definition and pin it in DEF's lock file.
    #[command(after_long_help = examples::LOCK)]
    Lock(LockArgs),
    /// Download every input of a definition as its lock pins it (Debian packages, artifacts,
    /// the modules of each go input), so that `kiln build --offline` then needs no network.
    #[command(after_long_help = examples::FETCH)]
    Fetch(FetchDefinitionArgs),
    /// Print the JSON Schema of the definition format (for editors).
    #[command(after_long_help = examples::SCHEMA)]
    Schema,
    /// Show what is inside a built output: partitions, slots, boot entries, root, manifest.
    #[command(after_long_help = examples::INSPECT)]
    Inspect(InspectArgs),
    /// Boot a built image under QEMU: API server and a NodePort forwarded to 127.0.0.1,
    /// operator secrets and an admin kubeconfig, boot phases from the console. Ctrl-C or
    /// SIGTERM shuts the guest down through ACPI.
    #[command(after_long_help = examples::RUN)]
    Run(RunArgs),
    /// Cluster secrets kept by the operator (CAs and the service-account key pair).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Mint an admin kubeconfig from a secrets file (group kiln:cluster-admins, revocable
    /// through RBAC), for a node that was given those secrets.
    #[command(after_long_help = examples::KUBECONFIG)]
    Kubeconfig(KubeconfigArgs),
    /// Check a running node from the host: API server, etcd, each component, node Ready,
    /// CoreDNS, certificates' expiry; a line each with pass or fail. Exit 1 if any fails.
    #[command(after_long_help = examples::HEALTH)]
    Health(HealthArgs),
    /// Show a running node's firstboot status (phases, components, certificates).
    #[command(after_long_help = examples::STATUS)]
    Status(StatusArgs),
    /// Print one component's log lines of this boot, from the node's journal.
    #[command(after_long_help = examples::LOGS)]
    Logs(LogsArgs),
    /// Show what the cache holds, by kind; `kiln cache prune` removes what no kept lock pins.
    #[command(after_long_help = examples::CACHE)]
    Cache(CacheArgs),
    /// Print a completion script for a shell on stdout.
    #[command(after_long_help = examples::COMPLETIONS)]
    Completions(CompletionsArgs),
    /// Write Kiln's manual pages (kiln.1 and one per subcommand) into a directory.
    #[command(after_long_help = examples::MAN)]
    Man(ManArgs),
}

/// How to reach a running node: its API server, with an admin kubeconfig.
#[derive(Debug, Args, Clone)]
pub struct NodeArgs {
    /// Admin kubeconfig (JSON, as `kiln run` and `kiln kubeconfig` write it).
    #[arg(
        long,
        env = "KUBECONFIG",
        value_name = "FILE",
        required_unless_present = "state_dir"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// The state directory of `kiln run` (its admin.kubeconfig), instead of --kubeconfig.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The node to ask (default: the cluster's only node).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The component.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(node::COMPONENTS), value_name = "COMPONENT")]
    pub component: String,
    /// Keep printing new lines.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: Option<CacheCommand>,
    /// Print JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Cache directory.
    #[arg(long, env = "KILN_CACHE", global = true, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove what no kept lock pins: blobs, unpacked .debs and their contents, go builds,
    /// Go's build cache, module versions, old temporary files. Entries that are not Kiln's
    /// are never touched. Run it while no build is running.
    #[command(after_long_help = examples::CACHE_PRUNE)]
    Prune(CachePruneArgs),
}

#[derive(Debug, Args)]
pub struct CachePruneArgs {
    /// Keep everything DEF's lock pins (the lock next to it). Repeatable.
    #[arg(long, value_name = "DEF", required_unless_present = "all")]
    pub keep_locked: Vec<PathBuf>,
    /// Keep nothing: remove all of Kiln's cache content.
    #[arg(long, conflicts_with = "keep_locked")]
    pub all: bool,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing; pages in it are replaced).
    #[arg(long, short, default_value = "man", value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A built .qcow2, .raw or .iso, or a PXE bundle directory.
    #[arg(value_name = "IMAGE", required_unless_present = "stop")]
    pub image: Option<PathBuf>,
    /// Return once the node is Ready, leaving the guest running (its pid in the state
    /// directory's qemu.pid); `kiln run --stop STATE_DIR` powers it off.
    #[arg(long)]
    pub detach: bool,
    /// Power off the guest of an earlier `kiln run` (through ACPI, killed after
    /// --shutdown-timeout), given its state directory; no image is booted.
    #[arg(long, value_name = "STATE_DIR", conflicts_with_all = ["image", "detach"])]
    pub stop: Option<PathBuf>,
    /// The machine's hostname (passed through fw_cfg).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Machine config (TOML) to pass through fw_cfg.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to write the admin kubeconfig (default: in the state directory).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Operator secrets to give the node (default: generated into the state directory).
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// Boot with SeaBIOS instead of UEFI (OVMF).
    #[arg(long)]
    pub bios: bool,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub cpus: u32,
    /// Boot the image itself instead of a throwaway overlay (its /var persists).
    #[arg(long)]
    pub persist: bool,
    /// Host port on 127.0.0.1 for the API server (default: a free one).
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<u16>,
    /// A NodePort of the guest to forward to a free port on 127.0.0.1.
    #[arg(long, value_name = "PORT")]
    pub node_port: Option<u16>,
    /// Directory for the console log, overlay, secrets and kubeconfig (default: a new one
    /// under the temp directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where to keep the full serial console log (default: in the state directory).
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// Seconds to wait for an ACPI shutdown before killing the guest.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub shutdown_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Generate a secrets file (mode 0600): the cluster, etcd and front-proxy CAs and the
    /// service-account key pair. `kiln kubeconfig` mints admin credentials from it.
    #[command(after_long_help = examples::SECRETS_GEN)]
    Gen(SecretsGenArgs),
}

#[derive(Debug, Args)]
pub struct SecretsGenArgs {
    /// Where to write the secrets (TOML); refuses to replace an existing file.
    #[arg(long, short, default_value = "secrets.toml", value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// Secrets file from `kiln secrets gen`.
    #[arg(long, value_name = "FILE")]
    pub secrets: PathBuf,
    /// API server URL, e.g. https://127.0.0.1:6443.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// Write here (mode 0600) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A built .raw, .qcow2 or .iso.
    #[arg(value_name = "OUTPUT")]
    pub output: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options that decide where inputs come from.
#[derive(Debug, Args, Clone, Default)]
pub struct FetchArgs {
    /// Never touch the network; fail naming the first input missing from the cache.
    #[arg(long)]
    pub offline: bool,
    /// Rewrite URLs starting with FROM to start with TO (air-gapped mirrors). Repeatable.
    #[arg(long, value_name = "FROM=TO")]
    pub mirror: Vec<String>,
    /// Content cache directory.
    #[arg(long, env = "KILN_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Downloads at the same time.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Image definition.
    #[arg(default_value = "images/single-node.toml", value_name = "DEF")]
    pub definition: PathBuf,
    /// Outputs to write, comma-separated (tar, raw, qcow2, iso, pxe); default: the definition's.
    #[arg(long, value_delimiter = ',', value_parser = parse_format, value_name = "FORMATS")]
    pub format: Vec<OutputFormat>,
    /// Output directory; outputs appear in it only once the whole build succeeded.
    #[arg(long, short, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Print a JSON summary of the build on stdout.
    #[arg(long)]
    pub json: bool,
    /// Accept Go binaries that differ from the lock (and go inputs missing from it) and
    /// rewrite the lock's go pins; without it such a build fails naming the binary.
    #[arg(long)]
    pub relock: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Args)]
pub struct FetchDefinitionArgs {
    /// Image definition (its lock must be up to date).
    #[arg(default_value = "images/single-node.toml", value_name = "DEF")]
    pub definition: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Image definition; the lock is written next to it with the `.lock` extension.
    #[arg(value_name = "DEF")]
    pub definition: PathBuf,
    /// Do not resolve: exit non-zero when the lock does not match the definition.
    /// Never touches the network.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

fn parse_format(s: &str) -> Result<OutputFormat, String> {
    OutputFormat::parse(s).ok_or_else(|| {
        let all: Vec<_> = OutputFormat::ALL.iter().map(|f| f.name()).collect();
        format!("unknown output format {s:?} (known: {})", all.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surface_is_pinned() {
        let c = Cli::try_parse_from([
            "kiln",
            "build",
            "x.toml",
            "--format",
            "tar,qcow2",
            "--out",
            "o",
            "--offline",
            "--mirror",
            "http://a=http://b",
        ])
        .expect("parses");
        match c.command {
            Command::Build(b) => {
                assert_eq!(b.format, [OutputFormat::Tar, OutputFormat::Qcow2]);
                assert!(b.fetch.offline);
                assert_eq!(b.fetch.mirror, ["http://a=http://b"]);
            }
            other => panic!("{other:?}"),
        }
        let err =
            Cli::try_parse_from(["kiln", "build", "--format", "vhd"]).expect_err("bad format");
        assert!(
            err.to_string().contains("unknown output format \"vhd\""),
            "{err}"
        );
        assert!(matches!(
            Cli::try_parse_from(["kiln", "lock", "d.toml", "--check"]).map(|c| c.command),
            Ok(Command::Lock(LockArgs { check: true, .. }))
        ));
        assert!(matches!(
            Cli::try_parse_from(["kiln", "completions", "zsh"]).map(|c| c.command),
            Ok(Command::Completions(CompletionsArgs {
                shell: clap_complete::Shell::Zsh
            }))
        ));
        assert!(Cli::try_parse_from(["kiln", "completions", "tcsh"]).is_err());
        match Cli::try_parse_from(["kiln", "man", "-o", "pages"]).map(|c| c.command) {
            Ok(Command::Man(m)) => assert_eq!(m.out, PathBuf::from("pages")),
            other => panic!("{other:?}"),
        }
    }
}
