//! Component supervision (design.md §5): a pure state machine ([`machine`]), HTTP(S) health
//! probes ([`probe`]) and the IO shell that spawns, probes, reaps and signals ([`shell`]).

pub mod machine;
pub mod probe;
pub mod shell;

pub use machine::{ComponentSpec, ComponentStatus, ProbeSpec};
pub use probe::{HttpProbe, TlsProbe};
pub use shell::{CommandSpec, Managed, SupervisedStatus, Supervisor, SupervisorError};
