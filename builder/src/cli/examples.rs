//! The examples (and, for `kiln` itself, the exit codes) at the end of each command's long
//! help (`--help`) and of its manual page.

pub const TOP: &str = "\
Examples:
  kiln lock images/single-node.toml      pin every input in images/single-node.lock
  kiln build                             build images/single-node.toml into out/
  kiln run out/single-node.qcow2         boot it under QEMU, print the kubeconfig's path
  kiln COMMAND --help                    each command's options and examples

Exit codes:
  0  success
  1  the command failed (a build, lock, fetch, boot or check did not succeed)
  2  usage: an unknown option or bad value, a missing file, a directory where a file is
     wanted, a file of the wrong kind
  3  kiln lock --check: the lock does not match its definition";

pub const BUILD: &str = "\
Examples:
  kiln build
      images/single-node.toml into out/, in the formats the definition names
  kiln build images/minimal.toml --format qcow2,iso --out /tmp/minimal
  kiln build --offline
      only from the cache (after `kiln fetch`); fails naming the first missing input
  kiln build --json > summary.json
      outputs with sizes and sha256, downloads, time per step";

pub const LOCK: &str = "\
Examples:
  kiln lock images/single-node.toml
      resolve and write images/single-node.lock
  kiln lock --check images/single-node.toml
      exit 3 when the lock does not match the definition (network never used)";

pub const FETCH: &str = "\
Examples:
  kiln fetch images/single-node.toml
      fill the cache so that `kiln build --offline` needs no network
  KILN_CACHE=/media/usb/kiln kiln fetch --json";

pub const SCHEMA: &str = "\
Examples:
  kiln schema > kiln.schema.json
      for editors: taplo and the TOML language servers read JSON Schema";

pub const INSPECT: &str = "\
Examples:
  kiln inspect out/single-node.qcow2
  kiln inspect out/single-node.iso --json";

pub const RUN: &str = "\
Examples:
  kiln run out/single-node.qcow2
      boot with UEFI, the API server on a free port of 127.0.0.1
  kiln run out/single-node.qcow2 --api-port 6443 --node-port 30080 --state-dir st
  kiln run out/single-node-pxe --bios
      boot a PXE bundle directory (kernel, initramfs, boot.ipxe)
  kiln run out/single-node.qcow2 --state-dir st --detach && kiln health --state-dir st
      return at node Ready, the guest left running
  kiln run --stop st
      power the guest of state directory st off";

pub const SECRETS_GEN: &str = "\
Examples:
  kiln secrets gen --out secrets.toml
  kiln run out/single-node.qcow2 --secrets secrets.toml";

pub const KUBECONFIG: &str = "\
Examples:
  kiln kubeconfig --secrets secrets.toml --server https://127.0.0.1:6443 --out admin.conf
  KUBECONFIG=admin.conf kubectl get nodes";

pub const COMPLETIONS: &str = "\
Examples:
  kiln completions bash > /etc/bash_completion.d/kiln
  kiln completions zsh > \"${fpath[1]}/_kiln\"
  kiln completions fish > ~/.config/fish/completions/kiln.fish";

pub const MAN: &str = "\
Examples:
  kiln man --out /usr/local/share/man/man1 && man kiln-build
  kiln man --out man && man -l man/kiln.1";

pub const CACHE: &str = "\
Examples:
  kiln cache
      size per kind: blobs, unpacked, go builds, Go build cache, Go module cache
  kiln cache --json
  KILN_CACHE=/media/usb/kiln kiln cache";

pub const CACHE_PRUNE: &str = "\
Examples:
  kiln cache prune --keep-locked images/single-node.toml --dry-run
      what would go, and what stays
  kiln cache prune --keep-locked images/single-node.toml --keep-locked images/minimal.toml
      keep what either lock pins: both build offline afterwards
  kiln cache prune --all";

pub const HEALTH: &str = "\
Examples:
  kiln health --state-dir st
      the node of `kiln run --state-dir st`
  kiln health --kubeconfig admin.kubeconfig --json";

pub const STATUS: &str = "\
Examples:
  kiln status --state-dir st
  kiln status --kubeconfig admin.kubeconfig --json";

pub const LOGS: &str = "\
Examples:
  kiln logs kube-apiserver --state-dir st
  kiln logs etcd -f --kubeconfig admin.kubeconfig";
