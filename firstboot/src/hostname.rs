//! Applying the hostname: sethostname, /etc/hostname, an /etc/hosts entry.

use std::path::Path;

use crate::config::Hostname;
use crate::sys::Sys;

/// Errors from applying the hostname.
#[derive(Debug, thiserror::Error)]
pub enum HostnameError {
    #[error("setting the kernel hostname to {name}: {source}")]
    Set {
        name: String,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The /etc/hosts text with one `127.0.1.1` line for `h` (replacing an earlier one).
pub fn hosts_with(existing: &str, h: &Hostname) -> String {
    let entry = if h.is_fqdn() {
        format!("127.0.1.1\t{} {}", h.as_str(), h.short())
    } else {
        format!("127.0.1.1\t{}", h.as_str())
    };
    let mut out: Vec<String> = existing
        .lines()
        .filter(|l| !l.trim_start().starts_with("127.0.1.1"))
        .map(str::to_string)
        .collect();
    if !out
        .iter()
        .any(|l| l.split_whitespace().next() == Some("127.0.0.1"))
    {
        out.insert(0, "127.0.0.1\tlocalhost".to_string());
    }
    let at = out
        .iter()
        .position(|l| l.starts_with("127.0.0.1"))
        .map_or(0, |i| i + 1);
    out.insert(at, entry);
    out.join("\n") + "\n"
}

/// Sets the kernel hostname (short name) and writes `<etc>/hostname` and `<etc>/hosts`.
pub fn apply(sys: &dyn Sys, etc: &Path, h: &Hostname) -> Result<(), HostnameError> {
    sys.sethostname(h.short())
        .map_err(|source| HostnameError::Set {
            name: h.short().to_string(),
            source,
        })?;
    let write = |name: &str, text: String| {
        let p = etc.join(name);
        std::fs::write(&p, text).map_err(|source| HostnameError::Write {
            path: p.display().to_string(),
            source,
        })
    };
    write("hostname", format!("{}\n", h.short()))?;
    let hosts = std::fs::read_to_string(etc.join("hosts")).unwrap_or_default();
    write("hosts", hosts_with(&hosts, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSys};

    #[test]
    fn applies_short_name_and_hosts_entry() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1\tlocalhost ip6-localhost\n",
        )
        .unwrap();
        let sys = RecordingSys::new();
        let h: Hostname = "web.example.com".parse().unwrap();
        apply(&sys, t.path(), &h).unwrap();
        assert_eq!(sys.calls(), vec![Call::Sethostname("web".into())]);
        assert_eq!(
            std::fs::read_to_string(t.path().join("hostname")).unwrap(),
            "web\n"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("hosts")).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb.example.com web\n::1\tlocalhost ip6-localhost\n"
        );
        // Idempotent.
        apply(&sys, t.path(), &h).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("hosts"))
                .unwrap()
                .matches("127.0.1.1")
                .count(),
            1
        );
    }

    #[test]
    fn missing_hosts_file_gets_localhost_too() {
        let h: Hostname = "node1".parse().unwrap();
        assert_eq!(
            hosts_with("", &h),
            "127.0.0.1\tlocalhost\n127.0.1.1\tnode1\n"
        );
    }

    #[test]
    fn sethostname_failure_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let sys = RecordingSys::with_hook(|_| Err(std::io::Error::from_raw_os_error(1)));
        let e = apply(&sys, t.path(), &"n".parse().unwrap()).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("setting the kernel hostname to n"));
        assert!(!t.path().join("hostname").exists());
    }
}
