//! Kiln: bakes immutable, bootable single-node Kubernetes machine images.
//!
//! Data flow (see the README): definition -> lock -> fetch -> Tree -> outputs.

pub mod digest;
pub mod gobuild;
pub mod tree;
