//! The boot's timeline as node mode sees it when the node is Ready: the status phases and
//! each component's first spawn and first readiness, all in milliseconds since the kernel
//! started. Printed once on the console (`kiln: timeline {json}`) so that `kiln run`, outside
//! the guest, can draw it.

use serde::{Deserialize, Serialize};

/// The console line's prefix.
pub const PREFIX: &str = "kiln: timeline ";

/// A milestone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub name: String,
    pub at_ms: u64,
}

/// A component from its first spawn to its first readiness (None: not ready yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub name: String,
    pub start_ms: u64,
    pub ready_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub phases: Vec<Mark>,
    pub components: Vec<Span>,
}

impl Timeline {
    /// The console line (one line: compact JSON).
    pub fn line(&self) -> String {
        format!(
            "{PREFIX}{}",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        )
    }

    /// The last timeline line of a console log that parses (a reboot prints another one;
    /// a line broken by kernel messages is skipped).
    pub fn from_console(log: &str) -> Option<Timeline> {
        log.lines()
            .rev()
            .filter_map(|l| l.find(PREFIX).map(|i| &l[i + PREFIX.len()..]))
            .find_map(|json| serde_json::from_str(json.trim_end()).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Timeline {
        Timeline {
            phases: vec![
                Mark {
                    name: "stage2".into(),
                    at_ms: 21_000,
                },
                Mark {
                    name: "node-ready".into(),
                    at_ms: 200_000,
                },
            ],
            components: vec![Span {
                name: "etcd".into(),
                start_ms: 30_000,
                ready_ms: Some(33_500),
            }],
        }
    }

    #[test]
    fn the_console_line_round_trips_and_the_last_good_one_wins() {
        let t = sample();
        let mut other = sample();
        other.phases.pop();
        let log = format!(
            "[  1.0] boot\n{}\nkiln: timeline {{\"phases\": [broken\n[ 9.9] x {}\r\n",
            other.line(),
            t.line()
        );
        assert_eq!(Timeline::from_console(&log), Some(t));
        assert_eq!(
            Timeline::from_console(&format!("{}\nkiln: timeline {{broken", other.line())),
            Some(other)
        );
        assert_eq!(Timeline::from_console("kiln: node x Ready\n"), None);
    }
}
