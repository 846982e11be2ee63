//! Kiln's test support: local mirror server, QEMU harness.
pub mod mirror;
