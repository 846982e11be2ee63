//! Relationship fields (`Depends`, `Pre-Depends`, `Provides`):
//! `a (>= 1) | b:any, c [amd64] <!nocheck>`.

use std::fmt;

use super::version::{Op, Version};
use super::DebianError;

/// One relation: a package name with optional architecture qualifier, version
/// constraint and architecture restriction list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    /// `:any`, `:native` or an architecture name after the package name.
    pub arch_qualifier: Option<String>,
    pub constraint: Option<(Op, Version)>,
    /// `[amd64 i386]` or `[!amd64]`: (negated, arch) pairs; empty means every architecture.
    pub arches: Vec<(bool, String)>,
}

impl Relation {
    /// Whether this relation applies on `arch` (its `[...]` list allows it).
    pub fn applies_to(&self, arch: &str) -> bool {
        if self.arches.is_empty() {
            return true;
        }
        let negated = self.arches.iter().all(|(neg, _)| *neg);
        if negated {
            !self.arches.iter().any(|(_, a)| a == arch || a == "any")
        } else {
            self.arches.iter().any(|(_, a)| a == arch || a == "any")
        }
    }

    /// Whether a package or provided version `have` satisfies the constraint. An
    /// unversioned provide (`have == None`) satisfies only unversioned relations.
    pub fn version_ok(&self, have: Option<&Version>) -> bool {
        match (&self.constraint, have) {
            (None, _) => true,
            (Some((op, want)), Some(have)) => op.holds(have, want),
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(q) = &self.arch_qualifier {
            write!(f, ":{q}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// A list of alternatives (`a | b`); any one satisfies it.
pub type Alternatives = Vec<Relation>;

/// Displays alternatives as `a (>= 1) | b`.
pub fn show_alternatives(alts: &[Relation]) -> String {
    alts.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Parses a relationship field into its comma-separated groups of alternatives.
/// Build-profile restrictions (`<!nocheck>`) are accepted and dropped: they never
/// appear in binary package indexes.
pub fn parse_relations(field: &str) -> Result<Vec<Alternatives>, DebianError> {
    let bad = |message: String| DebianError::Depends {
        field: field.to_string(),
        message,
    };
    let mut out = Vec::new();
    for group in field.split(',') {
        if group.trim().is_empty() {
            // dpkg tolerates a trailing comma.
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            alts.push(parse_one(alt.trim()).map_err(bad)?);
        }
        out.push(alts);
    }
    Ok(out)
}

fn parse_one(s: &str) -> Result<Relation, String> {
    if s.is_empty() {
        return Err("empty alternative".into());
    }
    let name_end = s
        .find(|c: char| c.is_whitespace() || c == '(' || c == '[' || c == '<')
        .unwrap_or(s.len());
    let (full_name, mut rest) = (&s[..name_end], s[name_end..].trim_start());
    let (name, arch_qualifier) = match full_name.split_once(':') {
        Some((n, q)) => (n, Some(q.to_string())),
        None => (full_name, None),
    };
    let name_ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        });
    if !name_ok {
        return Err(format!("bad package name {name:?}"));
    }
    if arch_qualifier.as_deref() == Some("") {
        return Err(format!("empty architecture qualifier after {name:?}"));
    }
    let mut constraint = None;
    if let Some(r) = rest.strip_prefix('(') {
        let close = r
            .find(')')
            .ok_or_else(|| format!("unclosed `(` after {name}"))?;
        let inner = r[..close].trim();
        let op_len = inner
            .find(|c: char| !matches!(c, '<' | '>' | '='))
            .unwrap_or(inner.len());
        let op = Op::parse(&inner[..op_len])
            .ok_or_else(|| format!("bad operator {:?} for {name}", &inner[..op_len]))?;
        let version = Version::parse(inner[op_len..].trim()).map_err(|e| e.to_string())?;
        constraint = Some((op, version));
        rest = r[close + 1..].trim_start();
    }
    let mut arches = Vec::new();
    if let Some(r) = rest.strip_prefix('[') {
        let close = r
            .find(']')
            .ok_or_else(|| format!("unclosed `[` after {name}"))?;
        for a in r[..close].split_whitespace() {
            match a.strip_prefix('!') {
                Some(a) => arches.push((true, a.to_string())),
                None => arches.push((false, a.to_string())),
            }
        }
        let negs = arches.iter().filter(|(n, _)| *n).count();
        if negs != 0 && negs != arches.len() {
            return Err(format!("mixed negated and plain architectures for {name}"));
        }
        rest = r[close + 1..].trim_start();
    }
    while let Some(r) = rest.strip_prefix('<') {
        let close = r
            .find('>')
            .ok_or_else(|| format!("unclosed `<` after {name}"))?;
        rest = r[close + 1..].trim_start();
    }
    if !rest.is_empty() {
        return Err(format!("unexpected {rest:?} after {name}"));
    }
    Ok(Relation {
        name: name.to_string(),
        arch_qualifier,
        constraint,
        arches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_alternatives_constraints_and_qualifiers() {
        let r = parse_relations("a (>= 1) | b:any, c [amd64], d (<<2:1.0~rc1-1) [!i386 !arm64]")
            .expect("parses");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].len(), 2);
        assert_eq!(r[0][0].name, "a");
        let (op, v) = r[0][0].constraint.clone().expect("versioned");
        assert_eq!((op, v.as_str()), (Op::GreaterEq, "1"));
        assert_eq!(r[0][1].name, "b");
        assert_eq!(r[0][1].arch_qualifier.as_deref(), Some("any"));
        assert_eq!(r[1][0].arches, vec![(false, "amd64".to_string())]);
        assert!(r[1][0].applies_to("amd64"));
        assert!(!r[1][0].applies_to("arm64"));
        let d = &r[2][0];
        assert_eq!(d.constraint.as_ref().map(|c| c.0), Some(Op::Less));
        assert!(d.applies_to("amd64"));
        assert!(!d.applies_to("i386"));
        assert_eq!(show_alternatives(&r[0]), "a (>= 1) | b:any");
    }

    #[test]
    fn accepts_multiline_trailing_comma_profiles_and_old_operators() {
        let r = parse_relations("libc6 (>= 2.34),\n libcap2 (> 1:2.10) <!nocheck> <stage1>,\n")
            .expect("parses");
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1][0].constraint.as_ref().map(|c| c.0),
            Some(Op::GreaterEq)
        );
    }

    #[test]
    fn version_ok_rules() {
        let r = &parse_relations("x (>= 2)").expect("parses")[0][0];
        assert!(r.version_ok(Some(&Version::parse("2.1").expect("v"))));
        assert!(!r.version_ok(Some(&Version::parse("1.9").expect("v"))));
        assert!(
            !r.version_ok(None),
            "unversioned provide never satisfies a versioned dep"
        );
        let u = &parse_relations("x").expect("parses")[0][0];
        assert!(u.version_ok(None));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "a (>= 1",
            "a (=> 1)",
            "A",
            "a | ",
            "a [amd64 !i386]",
            "a b",
            "a:",
        ] {
            assert!(parse_relations(bad).is_err(), "{bad:?} should fail");
        }
    }
}
