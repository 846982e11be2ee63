//! The module closure of a go input: the generated main module's go.sum, one line per module
//! zip and per go.mod (`path version[/go.mod] h1:hash`). `kiln lock` records it; `kiln build`
//! writes the lock's lines into go.sum before Go runs, so Go itself refuses a download whose
//! hash differs, and afterwards checks that Go needed no module the lock does not pin.

use std::fs;
use std::path::Path;

use super::GoError;

/// The go.sum of `dir`, its lines sorted (none when there is no go.sum).
pub fn read(dir: &Path) -> Result<Vec<String>, GoError> {
    let path = dir.join("go.sum");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(GoError::Cache {
                action: "reading",
                path,
                source,
            })
        }
    };
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines.dedup();
    Ok(lines)
}

/// Writes `lines` as the go.sum of `dir`.
pub fn write(dir: &Path, lines: &[String]) -> Result<(), GoError> {
    let path = dir.join("go.sum");
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(&path, text).map_err(|source| GoError::Cache {
        action: "writing",
        path,
        source,
    })
}

/// Checks each lock line is a go.sum line (`path version h1:base64`), so a damaged lock is
/// refused before Go runs.
pub fn validate(name: &str, lines: &[String]) -> Result<(), GoError> {
    for l in lines {
        let parts: Vec<&str> = l.split(' ').collect();
        let ok = parts.len() == 3
            && !parts[0].is_empty()
            && parts[1].starts_with('v')
            && parts[2].strip_prefix("h1:").is_some_and(|h| {
                h.len() == 44
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            });
        if !ok {
            return Err(GoError::Closure {
                name: name.to_string(),
                module_version: parts.first().copied().unwrap_or_default().to_string(),
                reason: format!("the lock's go-sum line {l:?} is not `path version h1:hash`"),
            });
        }
    }
    Ok(())
}

/// The built closure must be inside the locked one: a module Go used that the lock does not
/// pin is named.
pub fn check(name: &str, built: &[String], locked: &[String]) -> Result<(), GoError> {
    match built.iter().find(|l| locked.binary_search(l).is_err()) {
        None => Ok(()),
        Some(line) => Err(GoError::Closure {
            name: name.to_string(),
            module_version: module_of(line),
            reason: format!("was used by the build but the lock does not pin it ({line})"),
        }),
    }
}

/// `path@version` of a go.sum line.
fn module_of(line: &str) -> String {
    let mut parts = line.split(' ');
    let path = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    format!("{path}@{}", version.trim_end_matches("/go.mod"))
}

/// A Go failure that is a checksum mismatch against the lock's go.sum becomes
/// [`GoError::Closure`] naming the module.
pub fn explain(name: &str, e: GoError) -> GoError {
    if matches!(e, GoError::Toolchain { .. }) {
        return e;
    }
    let text = e.to_string();
    let Some(line) = text.lines().find(|l| l.contains(": checksum mismatch")) else {
        return e;
    };
    let module_version = line
        .split(": ")
        .map(str::trim)
        .find_map(|t| t.strip_prefix("verifying "))
        .map(|m| m.trim_end_matches("/go.mod").to_string());
    match module_version {
        Some(module_version) => GoError::Closure {
            name: name.to_string(),
            module_version,
            reason: "was downloaded with another hash than the lock pins (checksum mismatch)"
                .into(),
        },
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn lock_lines_are_checked() {
        let good = vec![
            format!("example.com/a v1.0.0 {H}"),
            format!("example.com/a v1.0.0/go.mod {H}"),
        ];
        validate("x", &good).unwrap();
        for bad in [
            format!("example.com/a v1.0.0 {H} extra"),
            "example.com/a v1.0.0 h1:short".to_string(),
            format!("example.com/a 1.0.0 {H}"),
            format!("example.com/a v1.0.0 h2:{}", &H[3..]),
        ] {
            let err = validate("x", std::slice::from_ref(&bad))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("go input x") && err.contains("example.com/a"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_module_outside_the_lock_is_named() {
        let locked = vec![format!("example.com/a v1.0.0 {H}")];
        check("x", &locked, &locked).unwrap();
        let built = vec![
            format!("example.com/a v1.0.0 {H}"),
            format!("example.com/b v1.2.0/go.mod {H}"),
        ];
        let err = check("x", &built, &locked).unwrap_err().to_string();
        assert!(err.contains("example.com/b@v1.2.0 "), "{err}");
    }

    #[test]
    fn checksum_mismatches_name_the_module() {
        let e = GoError::Build {
            package: "example.com/a/cmd".into(),
            module_version: "example.com/a@v1.0.0".into(),
            stderr: "exit status 1\nverifying example.com/dep@v0.3.0/go.mod: checksum mismatch\n\
                     \tdownloaded: h1:x\n\tgo.sum:     h1:y\n\nSECURITY ERROR"
                .into(),
        };
        let err = explain("x", e).to_string();
        assert!(
            err.contains("module example.com/dep@v0.3.0 was downloaded"),
            "{err}"
        );
        let other = GoError::ModuleNotFound {
            module_version: "m@v1".into(),
            message: "gone".into(),
        };
        assert!(matches!(
            explain("x", other),
            GoError::ModuleNotFound { .. }
        ));
    }
}
