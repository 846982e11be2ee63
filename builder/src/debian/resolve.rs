//! The dependency closure of a package set within one suite.
//!
//! Rules (deterministic, documented because the lock depends on them):
//! - Follows `Pre-Depends` and `Depends`; never `Recommends` or `Suggests`.
//! - A name resolves to its highest version in the index whose architecture is the target
//!   architecture or `all`; a versioned relation takes the highest version satisfying it.
//!   Only one version of a name is ever selected.
//! - `:any`, `:native` and the target architecture as qualifiers are satisfied by the
//!   target-architecture or `all` package; any other qualifier is unsatisfiable.
//!   Relations restricted by `[arch]` lists to other architectures are skipped.
//! - For a group of alternatives `a | b`, in order of preference:
//!   1. nothing is added if any alternative is satisfied by a package already selected;
//!   2. else the first candidate (alternatives in order) that was in the previous lock,
//!      so a re-lock keeps earlier choices while they stay valid;
//!   3. else the first alternative that has any candidate.
//!
//!   Within one alternative the candidates are: the real package of that name (highest
//!   satisfying version) first, then the packages that `Provides` it, sorted by name.
//!   So a virtual package resolves to a real package of that name if one exists, else
//!   to a provider already selected, else to one in the previous lock, else to the first
//!   provider by name.
//! - Versioned relations are satisfied by a provider only through a versioned `Provides`.
//! - Roots are processed in request order, then (with `essential`) every `Essential: yes`
//!   or `Priority: required` package in name order, as debootstrap's minbase does (minbase
//!   also adds `apt`; Kiln does not: list it if the image needs it). Dependencies are
//!   expanded breadth-first.
//! - Excluded names are never selected; a relation only an excluded package satisfies is
//!   an error naming both packages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::depends::{show_alternatives, Relation};
use super::index::{Index, Package};
use super::{DebianError, DebianRequest, ResolvedDeb};

/// Who asked for the root packages, in messages.
const DEFINITION: &str = "the image definition";

struct Resolver<'a> {
    index: &'a Index,
    arch: &'a str,
    exclude: BTreeSet<&'a str>,
    previous: BTreeSet<&'a str>,
    selected: BTreeMap<String, &'a Package>,
    queue: VecDeque<&'a Package>,
}

/// Resolves `req.packages` (plus the Essential set when asked) to the full closure,
/// sorted by name. `previous` is the last lock, used only to keep earlier choices.
pub fn resolve(
    index: &Index,
    req: &DebianRequest,
    previous: &[ResolvedDeb],
) -> Result<Vec<ResolvedDeb>, DebianError> {
    let mut r = Resolver {
        index,
        arch: &req.arch,
        exclude: req.exclude.iter().map(String::as_str).collect(),
        previous: previous.iter().map(|d| d.name.as_str()).collect(),
        selected: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    for name in &req.packages {
        if r.exclude.contains(name.as_str()) {
            return Err(DebianError::ExcludedRequested { name: name.clone() });
        }
        let rel = Relation {
            name: name.clone(),
            arch_qualifier: None,
            constraint: None,
            arches: Vec::new(),
        };
        r.satisfy(&[rel], DEFINITION)?;
    }
    if req.essential {
        let essential: Vec<&Package> = index
            .latest()
            .filter(|p| p.essential || p.priority.as_deref() == Some("required"))
            .filter(|p| !r.exclude.contains(p.name.as_str()))
            .collect();
        for p in essential {
            r.select(p);
        }
    }
    while let Some(p) = r.queue.pop_front() {
        let who = p.label();
        for group in p.relations()? {
            r.satisfy(&group, &who)?;
        }
    }
    Ok(r.selected
        .values()
        .map(|p| ResolvedDeb {
            name: p.name.clone(),
            version: p.version.to_string(),
            arch: p.arch.clone(),
            filename: p.filename.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
            source: p.source.clone(),
        })
        .collect())
}

impl<'a> Resolver<'a> {
    fn select(&mut self, p: &'a Package) {
        if !self.selected.contains_key(&p.name) {
            self.selected.insert(p.name.clone(), p);
            self.queue.push_back(p);
        }
    }

    fn qualifier_ok(&self, r: &Relation) -> bool {
        match r.arch_qualifier.as_deref() {
            None | Some("any") | Some("native") => true,
            Some(a) => a == self.arch,
        }
    }

    /// Candidates for one relation, best first, ignoring exclusions and selections.
    fn candidates(&self, r: &Relation) -> Vec<&'a Package> {
        if !self.qualifier_ok(r) {
            return Vec::new();
        }
        let mut out: Vec<&'a Package> = self
            .index
            .versions(&r.name)
            .iter()
            .filter(|p| r.version_ok(Some(&p.version)))
            .collect();
        for prov in self.index.providers(&r.name) {
            if !r.version_ok(prov.provided.as_ref()) {
                continue;
            }
            if let Some(p) = self.index.provider_package(prov) {
                out.push(p);
            }
        }
        out
    }

    /// A candidate is usable if not excluded and not in conflict with the version of the
    /// same name already selected.
    fn usable(&self, p: &Package) -> bool {
        !self.exclude.contains(p.name.as_str())
            && !matches!(self.selected.get(&p.name), Some(s) if s.version != p.version)
    }

    fn satisfy(&mut self, group: &[Relation], who: &str) -> Result<(), DebianError> {
        let alts: Vec<&Relation> = group.iter().filter(|r| r.applies_to(self.arch)).collect();
        if alts.is_empty() {
            return Ok(());
        }
        let all: Vec<Vec<&'a Package>> = alts.iter().map(|r| self.candidates(r)).collect();
        let usable: Vec<Vec<&'a Package>> = all
            .iter()
            .map(|c| c.iter().copied().filter(|p| self.usable(p)).collect())
            .collect();
        // 1. Already satisfied by a selected package.
        if usable
            .iter()
            .flatten()
            .any(|p| self.selected.contains_key(&p.name))
        {
            return Ok(());
        }
        // 2. Keep the previous lock's choice.
        let keep = usable
            .iter()
            .flatten()
            .find(|p| self.previous.contains(p.name.as_str()))
            .copied();
        // 3. First alternative with a candidate.
        let pick = keep.or_else(|| usable.iter().find_map(|c| c.first().copied()));
        if let Some(p) = pick {
            self.select(p);
            return Ok(());
        }
        let dependency = show_alternatives(group);
        let excluded: BTreeSet<&str> = all
            .iter()
            .flatten()
            .map(|p| p.name.as_str())
            .filter(|n| self.exclude.contains(n))
            .collect();
        if !excluded.is_empty() {
            return Err(DebianError::ExcludedNeeded {
                package: who.to_string(),
                dependency,
                excluded: excluded.into_iter().map(str::to_string).collect(),
            });
        }
        if !alts.iter().any(|r| self.index.knows(&r.name)) {
            return Err(DebianError::UnknownPackage {
                name: dependency,
                wanted_by: who.to_string(),
            });
        }
        let mut available = Vec::new();
        for r in &alts {
            for p in self.index.versions(&r.name) {
                available.push(p.label());
            }
            for prov in self.index.providers(&r.name) {
                if let Some(p) = self.index.provider_package(prov) {
                    let v = prov
                        .provided
                        .as_ref()
                        .map(|v| format!(" = {v}"))
                        .unwrap_or_default();
                    available.push(format!("{} (provides {}{v})", p.label(), r.name));
                }
            }
        }
        let selected = alts
            .iter()
            .filter_map(|r| self.selected.get(&r.name))
            .map(|p| p.label())
            .collect();
        Err(DebianError::Unsatisfiable {
            dependency,
            wanted_by: who.to_string(),
            available,
            selected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Packages stanza with a digest derived from its name and version.
    fn stanza(name: &str, version: &str, arch: &str, extra: &str) -> String {
        let d = crate::digest::Digest::of_bytes(
            crate::digest::Algorithm::Sha256,
            format!("{name}_{version}").as_bytes(),
        );
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {arch}\n\
             Filename: pool/main/{name}_{version}_{arch}.deb\nSize: 100\nSHA256: {}\n{extra}\n",
            d.hex()
        )
    }

    fn index(stanzas: &[String]) -> Index {
        let text = stanzas.join("\n");
        Index::from_texts(&[("fixture", text.as_str())], "amd64").expect("index parses")
    }

    fn req(packages: &[&str], exclude: &[&str], essential: bool) -> DebianRequest {
        DebianRequest {
            mirror: "http://mirror.invalid/debian".into(),
            suite: "stable".into(),
            components: vec!["main".into()],
            arch: "amd64".into(),
            packages: packages.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            essential,
        }
    }

    fn names(r: &[ResolvedDeb]) -> Vec<String> {
        r.iter()
            .map(|d| format!("{}={}", d.name, d.version))
            .collect()
    }

    fn base() -> Vec<String> {
        vec![
            stanza(
                "app",
                "1.0-1",
                "amd64",
                "Pre-Depends: libc6 (>= 2.30)\nDepends: awk-impl | mawk, mail-transport-agent, \
                 data (= 1.0-1), helper:any, win32 [i386]\nRecommends: bloat\nSource: app-src (1.0-1)",
            ),
            stanza("libc6", "2.36-9", "amd64", "Priority: required"),
            stanza("libc6", "2.28-1", "amd64", ""),
            stanza("mawk", "1.3.4-1", "amd64", "Provides: awk"),
            stanza("gawk", "5.2-1", "amd64", "Provides: awk, awk-impl"),
            stanza("postfix", "3.7-1", "amd64", "Provides: mail-transport-agent"),
            stanza("exim4", "4.96-1", "amd64", "Provides: mail-transport-agent"),
            stanza("data", "1.0-1", "all", ""),
            stanza("data", "1.1-1", "all", ""),
            stanza("helper", "2", "all", "Depends: libc6"),
            stanza("bloat", "1", "amd64", ""),
            stanza("win32", "1", "i386", ""),
            stanza("base-files", "12", "amd64", "Essential: yes\nPriority: required"),
            stanza("mandatory", "1", "all", "Priority: required\nDepends: base-files"),
            stanza("optional-thing", "1", "all", "Priority: optional"),
        ]
    }

    #[test]
    fn resolves_closure_with_alternatives_virtuals_and_versions() {
        let idx = index(&base());
        let got = resolve(&idx, &req(&["app"], &[], false), &[]).expect("resolves");
        assert_eq!(
            names(&got),
            vec![
                "app=1.0-1",
                "data=1.0-1",
                "exim4=4.96-1",
                "gawk=5.2-1",
                "helper=2",
                "libc6=2.36-9",
            ],
            "awk-impl only via gawk; MTA: first provider by name; data pinned by =; \
             no Recommends; [i386] skipped"
        );
        let app = got.iter().find(|d| d.name == "app").expect("app");
        assert_eq!(app.source, "app-src");
        assert_eq!(app.filename, "pool/main/app_1.0-1_amd64.deb");
        assert_eq!(
            got.iter().find(|d| d.name == "helper").map(|d| &*d.arch),
            Some("all")
        );
    }

    #[test]
    fn prefers_already_selected_alternative_and_provider() {
        let idx = index(&base());
        let got =
            resolve(&idx, &req(&["mawk", "postfix", "app"], &[], false), &[]).expect("resolves");
        let n = names(&got);
        assert!(n.contains(&"postfix=3.7-1".to_string()), "{n:?}");
        assert!(!n.iter().any(|x| x.starts_with("exim4")), "{n:?}");
        // awk-impl | mawk: mawk is already selected, so gawk is not pulled in.
        assert!(!n.iter().any(|x| x.starts_with("gawk")), "{n:?}");
    }

    #[test]
    fn relock_keeps_previous_provider_choice() {
        let idx = index(&base());
        let first = resolve(&idx, &req(&["app"], &[], false), &[]).expect("resolves");
        let mut prev = first.clone();
        for d in &mut prev {
            if d.name == "exim4" {
                d.name = "postfix".into();
            }
        }
        let again = resolve(&idx, &req(&["app"], &[], false), &prev).expect("resolves");
        assert!(names(&again).contains(&"postfix=3.7-1".to_string()));
        assert_eq!(
            resolve(&idx, &req(&["app"], &[], false), &first).expect("same"),
            first
        );
    }

    #[test]
    fn essential_adds_essential_and_required() {
        let idx = index(&base());
        let got = resolve(&idx, &req(&[], &[], true), &[]).expect("resolves");
        assert_eq!(
            names(&got),
            vec!["base-files=12", "libc6=2.36-9", "mandatory=1"]
        );
        let none = resolve(&idx, &req(&[], &[], false), &[]).expect("resolves");
        assert!(none.is_empty());
    }

    #[test]
    fn exclude_errors_name_both_packages_unless_an_alternative_exists() {
        let idx = index(&base());
        // exim4 excluded: postfix still provides the MTA.
        let got = resolve(&idx, &req(&["app"], &["exim4"], false), &[]).expect("resolves");
        assert!(names(&got).contains(&"postfix=3.7-1".to_string()));
        let err = resolve(&idx, &req(&["app"], &["helper"], false), &[]).expect_err("needed");
        let msg = err.to_string();
        assert!(msg.contains("app 1.0-1") && msg.contains("helper"), "{msg}");
        assert!(matches!(err, DebianError::ExcludedNeeded { .. }));
        // Excluding a required package drops it from the Essential set.
        let got = resolve(&idx, &req(&[], &["mandatory"], true), &[]).expect("resolves");
        assert_eq!(names(&got), vec!["base-files=12", "libc6=2.36-9"]);
        let err = resolve(&idx, &req(&["app"], &["app"], false), &[]).expect_err("both");
        assert!(err.to_string().contains("app"));
    }

    #[test]
    fn unknown_and_unsatisfiable_name_the_asker() {
        let mut s = base();
        s.push(stanza(
            "broken",
            "1",
            "amd64",
            "Depends: no-such-thing (>= 1)",
        ));
        s.push(stanza("old", "1", "amd64", "Depends: libc6 (>= 3.0)"));
        s.push(stanza(
            "versioned-virt",
            "1",
            "amd64",
            "Depends: awk (>= 1)",
        ));
        s.push(stanza("foreign", "1", "amd64", "Depends: libc6:i386"));
        let idx = index(&s);
        let err = resolve(&idx, &req(&["nope"], &[], false), &[]).expect_err("unknown");
        assert!(err.to_string().contains("nope") && err.to_string().contains("definition"));
        let err = resolve(&idx, &req(&["broken"], &[], false), &[]).expect_err("unknown dep");
        let msg = err.to_string();
        assert!(
            msg.contains("no-such-thing") && msg.contains("broken 1"),
            "{msg}"
        );
        let err = resolve(&idx, &req(&["old"], &[], false), &[]).expect_err("too old");
        let msg = err.to_string();
        assert!(
            msg.contains("libc6 (>= 3.0)") && msg.contains("libc6 2.36-9"),
            "{msg}"
        );
        // Unversioned Provides never satisfy a versioned dependency.
        assert!(resolve(&idx, &req(&["versioned-virt"], &[], false), &[]).is_err());
        assert!(resolve(&idx, &req(&["foreign"], &[], false), &[]).is_err());
    }

    #[test]
    fn versioned_provides_and_version_conflicts() {
        let s = vec![
            stanza("a", "1", "amd64", "Depends: v (>= 2), b (>= 2)"),
            stanza("p", "1", "amd64", "Provides: v (= 2.5)"),
            stanza("q", "1", "amd64", "Provides: v (= 1.0)"),
            stanza("b", "1", "amd64", ""),
            stanza("b", "2", "amd64", ""),
            stanza("c", "1", "amd64", "Depends: b (<< 2)"),
        ];
        let idx = index(&s);
        let got = resolve(&idx, &req(&["a"], &[], false), &[]).expect("resolves");
        assert_eq!(names(&got), vec!["a=1", "b=2", "p=1"]);
        let got = resolve(&idx, &req(&["c"], &[], false), &[]).expect("resolves");
        assert_eq!(names(&got), vec!["b=1", "c=1"]);
        // a selects b 2, then c needs b << 2: one version per name, so this fails.
        let err = resolve(&idx, &req(&["a", "c"], &[], false), &[]).expect_err("conflict");
        assert!(err.to_string().contains("already selected: [b 2]"), "{err}");
    }

    #[test]
    fn lock_serializes_kebab_case() {
        let idx = index(&base());
        let got = resolve(&idx, &req(&["helper"], &[], false), &[]).expect("resolves");
        let json = serde_json::to_value(&got[0]).expect("json");
        assert!(json.get("sha256").is_some() && json.get("filename").is_some());
        let back: ResolvedDeb = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, got[0]);
    }
}
