//! Outputs: each takes the assembled Tree (and the definition) and writes one artifact into
//! the staging directory: the tar, the boot outputs (squashfs, initramfs, disk, ISO, PXE),
//! the manifest and the SBOM. `inspect` reads them back.

pub mod boot;
pub mod images;
pub mod inspect;
pub mod manifest;
pub mod sbom;
pub mod staging;
pub mod tar;
