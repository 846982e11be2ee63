//! Kiln: bakes immutable, bootable single-node Kubernetes machine images.
//!
//! Data flow (see the README): definition -> lock -> fetch -> Tree -> outputs.

pub mod boot;
pub mod digest;
pub mod tree;
