//! firstboot: Kiln's stage-1 init (PID 1 in the initramfs) and stage-2 machine agent.

pub mod agent;
pub mod atomic;
pub mod cmdline;
pub mod commands;
pub mod config;
pub mod console;
pub mod gpt;
pub mod hostname;
pub mod images;
pub mod install;
pub mod k8s;
pub mod logging;
pub mod markers;
pub mod memory;
pub mod network;
pub mod node;
pub mod notify;
pub mod pki;
pub mod probe;
pub mod sources;
pub mod stage1;
pub mod status;
pub mod supervisor;
pub mod sys;
pub mod timeline;
pub mod utc;
