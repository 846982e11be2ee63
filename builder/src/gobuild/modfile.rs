//! The pinned module's metadata and the generated throwaway main module.

use std::fmt::Write as _;

use serde::Deserialize;

use super::input::kube_major_minor;
use super::GoError;

/// `go mod download -json module@version` output (the fields we use).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Download {
    pub path: String,
    pub version: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub go_mod: Option<String>,
    #[serde(default)]
    pub origin: Option<Origin>,
    /// The module zip's go.sum hash (`h1:…`).
    #[serde(default)]
    pub sum: Option<String>,
    /// Its go.mod's go.sum hash.
    #[serde(default)]
    pub go_mod_sum: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Origin {
    #[serde(default)]
    pub hash: Option<String>,
}

/// `go mod edit -json` output (the fields we use).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModFile {
    #[serde(default)]
    pub go: Option<String>,
    #[serde(default)]
    pub godebug: Option<Vec<Godebug>>,
    #[serde(default)]
    pub require: Option<Vec<Require>>,
    #[serde(default)]
    pub replace: Option<Vec<Replace>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Godebug {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Require {
    pub path: String,
    pub version: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Replace {
    pub old: ModVersion,
    pub new: ModVersion,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModVersion {
    pub path: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// A `replace` line of the generated module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceLine {
    pub old: String,
    pub old_version: Option<String>,
    pub new: String,
    pub new_version: String,
}

fn is_local(path: &str) -> bool {
    path.starts_with("./") || path.starts_with("../") || path.starts_with('/')
}

/// The replace lines the generated module needs for `module@version`:
/// - replaces of the pinned module onto other published modules are copied (so the
///   dependency graph matches upstream's);
/// - for `k8s.io/kubernetes`, every module it replaces with `./staging/...` is replaced by
///   the published `v0.<minor>.<patch>` tag;
/// - other local replaces are dropped (Go ignores them in dependencies too; the module's
///   own `require` names a published version).
pub fn replaces_for(module: &str, version: &str, m: &ModFile) -> Result<Vec<ReplaceLine>, GoError> {
    let mut out = Vec::new();
    for r in m.replace.iter().flatten() {
        if !is_local(&r.new.path) {
            if let Some(v) = &r.new.version {
                out.push(ReplaceLine {
                    old: r.old.path.clone(),
                    old_version: r.old.version.clone(),
                    new: r.new.path.clone(),
                    new_version: v.clone(),
                });
            }
            continue;
        }
        if module == "k8s.io/kubernetes" && r.new.path.starts_with("./staging/") {
            let (_, minor, patch) =
                kube_major_minor(version).ok_or_else(|| GoError::InvalidInput {
                    name: module.to_string(),
                    reason: format!("cannot derive staging versions from {version}"),
                })?;
            out.push(ReplaceLine {
                old: r.old.path.clone(),
                old_version: None,
                new: r.old.path.clone(),
                new_version: format!("v0.{minor}.{patch}"),
            });
        }
    }
    out.sort_by(|a, b| a.old.cmp(&b.old));
    Ok(out)
}

/// The generated main module's go.mod text.
pub fn render_go_mod(module: &str, version: &str, m: &ModFile, replaces: &[ReplaceLine]) -> String {
    let mut s = String::from("module kiln.invalid/gobuild\n\n");
    if let Some(go) = &m.go {
        let _ = writeln!(s, "go {go}\n");
    }
    for g in m.godebug.iter().flatten() {
        let _ = writeln!(s, "godebug {}={}", g.key, g.value);
    }
    let _ = writeln!(s, "\nrequire {module} {version}\n");
    for r in replaces {
        match &r.old_version {
            Some(v) => {
                let _ = writeln!(s, "replace {} {} => {} {}", r.old, v, r.new, r.new_version);
            }
            None => {
                let _ = writeln!(s, "replace {} => {} {}", r.old, r.new, r.new_version);
            }
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn modfile(json: &str) -> ModFile {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn kubernetes_staging_becomes_published_tags() {
        let m = modfile(
            r#"{"Go":"1.25.0","Godebug":[{"Key":"default","Value":"go1.25"}],
            "Require":[{"Path":"k8s.io/api","Version":"v0.0.0"}],
            "Replace":[
              {"Old":{"Path":"k8s.io/client-go"},"New":{"Path":"./staging/src/k8s.io/client-go"}},
              {"Old":{"Path":"k8s.io/api"},"New":{"Path":"./staging/src/k8s.io/api"}},
              {"Old":{"Path":"ex.com/a","Version":"v1.0.0"},"New":{"Path":"ex.com/b","Version":"v1.0.1"}}]}"#,
        );
        let r = replaces_for("k8s.io/kubernetes", "v1.35.4", &m).unwrap();
        let text = render_go_mod("k8s.io/kubernetes", "v1.35.4", &m, &r);
        assert!(text.contains("go 1.25.0\n"), "{text}");
        assert!(text.contains("godebug default=go1.25\n"), "{text}");
        assert!(
            text.contains("require k8s.io/kubernetes v1.35.4\n"),
            "{text}"
        );
        assert!(
            text.contains("replace k8s.io/api => k8s.io/api v0.35.4\n"),
            "{text}"
        );
        assert!(text.contains("replace k8s.io/client-go => k8s.io/client-go v0.35.4\n"));
        assert!(text.contains("replace ex.com/a v1.0.0 => ex.com/b v1.0.1\n"));
        assert!(text.find("k8s.io/api =>") < text.find("k8s.io/client-go =>"));
    }

    #[test]
    fn other_local_replaces_are_dropped() {
        let m = modfile(
            r#"{"Replace":[{"Old":{"Path":"go.etcd.io/etcd/api/v3"},"New":{"Path":"../api"}}]}"#,
        );
        assert!(replaces_for("go.etcd.io/etcd/server/v3", "v3.6.6", &m)
            .unwrap()
            .is_empty());
    }
}
