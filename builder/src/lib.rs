//! Kiln: bakes immutable, bootable single-node Kubernetes machine images.
//!
//! Layers, each calling only the ones below it (see the README's Layout):
//! `cli` (arguments, dispatch, `kiln run`) -> `pipeline` (`kiln lock` and `kiln build` as
//! functions of options, returning summaries) -> stages: `definition`, `lock`, `fetch` and
//! `cache`, `debian`, `gobuild`, `unpack`, `assemble`, `container_image` and `oci`,
//! `outputs` -> foundations: `tree`, `digest`, `selfbuild`, `qemu` (argv of a VM).

pub mod assemble;
pub mod cache;
pub mod cache_admin;
pub mod cli;
pub mod container_image;
pub mod debian;
pub mod definition;
pub mod digest;
pub mod fetch;
pub mod gobuild;
pub mod lock;
pub mod oci;
pub mod outputs;
pub mod pipeline;
pub mod process;
pub mod qemu;
pub mod selfbuild;
pub mod tree;
pub mod unpack;
