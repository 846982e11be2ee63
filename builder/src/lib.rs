//! Kiln: bakes immutable, bootable single-node Kubernetes machine images.
//!
//! Data flow (see the README): definition -> lock -> fetch -> Tree -> outputs.

pub mod assemble;
pub mod boot;
pub mod build;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod container_image;
pub mod debian;
pub mod definition;
pub mod digest;
pub mod fetch;
pub mod gobuild;
pub mod images;
pub mod inspect;
pub mod lock;
pub mod manifest;
pub mod oci;
pub mod output;
pub mod run;
pub mod sbom;
pub mod selfbuild;
pub mod staging;
pub mod timeline;
pub mod tree;
pub mod unpack;
