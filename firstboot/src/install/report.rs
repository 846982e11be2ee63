//! The install report: phases and figures, published to /run/kiln/install.json at each
//! phase.

use super::*;

/// Figures of one install, also written to /run/kiln/install.json as each phase
/// starts and ends, so that a reader sees where a running or failed install is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// `choosing-disk`, `checking-payload`, `writing`, `verifying`, `done` or `failed`.
    pub state: &'static str,
    /// Why the install failed (with `state = "failed"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub disk: String,
    pub disk_size: u64,
    pub payload_sha256: String,
    pub payload_bytes: u64,
    pub bytes_written: u64,
    pub backup_gpt_moved: bool,
    /// Milliseconds per phase, in order: checking the payload, writing, verifying.
    pub phases: Vec<(String, u64)>,
}

/// Writes the report atomically to `status`; a reader never sees half a file. Failing to
/// write it does not stop the install: the console has the same lines.
pub(super) fn publish(status: Option<&Path>, report: &Report) {
    if let (Some(path), Ok(json)) = (status, serde_json::to_string_pretty(report)) {
        let _ = crate::atomic::Replace::runtime(0o644).write(path, json.as_bytes());
    }
}

/// Marks `report` failed with `e`, publishes it and hands `e` back.
pub(super) fn failed(status: Option<&Path>, report: &mut Report, e: Stage1Error) -> Stage1Error {
    report.state = "failed";
    report.error = Some(format!("{}: {}", e.step, e.detail));
    publish(status, report);
    e
}
