//! Kiln: bakes immutable, bootable single-node Kubernetes machine images.
//!
//! Data flow (see the README): definition -> lock -> fetch -> Tree -> outputs.

pub mod assemble;
pub mod definition;
pub mod digest;
pub mod lock;
pub mod manifest;
pub mod staging;
pub mod tree;
