//! sbom.spdx.json: an SPDX 2.3 JSON document listing every input of the image, with
//! the license Debian's machine-readable copyright file states for it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::debian::control::parse_paragraphs;
use crate::gobuild::buildinfo::GoModule;
use crate::outputs::manifest::Input;
use crate::tree::{Kind, Tree, TreePath};

/// Debian short license names mapped to SPDX identifiers.
const SPDX_NAMES: &[(&str, &str)] = &[
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("Apache-2.0", "Apache-2.0"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("MIT", "MIT"),
    ("Expat", "MIT"),
    ("ISC", "ISC"),
    ("Zlib", "Zlib"),
    ("public-domain", "LicenseRef-public-domain"),
    ("PD", "LicenseRef-public-domain"),
    ("MPL-2.0", "MPL-2.0"),
    ("Artistic", "Artistic-1.0-Perl"),
    ("CC0-1.0", "CC0-1.0"),
];

/// The license of the `Files: *` paragraph of a DEP-5 copyright file, as written.
pub fn debian_license(copyright: &str) -> Option<String> {
    if !copyright.starts_with("Format:") {
        return None;
    }
    let paragraphs = parse_paragraphs(copyright, "copyright").ok()?;
    let files_star = paragraphs.iter().find(|p| {
        p.get("Files")
            .is_some_and(|f| f.split_whitespace().any(|f| f == "*"))
    })?;
    let license = files_star.get("License")?.lines().next()?.trim();
    (!license.is_empty()).then(|| license.to_string())
}

/// A Debian license expression (`GPL-2+ or Artistic`) as an SPDX expression. The words
/// between two operators are one license: a known name alone becomes its SPDX identifier,
/// anything else one `LicenseRef-` of all its words (`GPL-2+ with OpenSSL exception` becomes
/// `LicenseRef-GPL-2--with-OpenSSL-exception`).
pub fn spdx_expression(debian: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut term: Vec<&str> = Vec::new();
    let flush = |term: &mut Vec<&str>, out: &mut Vec<String>| {
        let id = match term.as_slice() {
            [] => return,
            [one] => SPDX_NAMES
                .iter()
                .find(|(d, _)| d.eq_ignore_ascii_case(one))
                .map(|(_, s)| s.to_string())
                .unwrap_or_else(|| format!("LicenseRef-{}", idstring(one))),
            many => format!("LicenseRef-{}", idstring(&many.join("-"))),
        };
        out.push(id);
        term.clear();
    };
    for word in debian.split_whitespace() {
        let w = word.trim_matches(',');
        let lower = w.to_ascii_lowercase();
        if lower == "or" || lower == "and" {
            if term.is_empty() {
                return "NOASSERTION".into();
            }
            flush(&mut term, &mut out);
            out.push(lower.to_uppercase());
        } else if !w.is_empty() {
            term.push(w);
        }
    }
    if term.is_empty() {
        return "NOASSERTION".into();
    }
    flush(&mut term, &mut out);
    out.join(" ")
}

/// Licenses of the installed Debian packages, read from the tree.
pub fn licenses_from_tree(tree: &Tree, inputs: &[Input]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for i in inputs.iter().filter(|i| i.kind == "deb") {
        let Ok(p) = TreePath::from_definition(&format!("usr/share/doc/{}/copyright", i.name))
        else {
            continue;
        };
        if let Some(Kind::File(c)) = tree.get(&p).map(|e| &e.kind) {
            if let Ok(bytes) = c.read_all() {
                if let Some(l) = debian_license(&String::from_utf8_lossy(&bytes)) {
                    out.insert(i.name.clone(), l);
                }
            }
        }
    }
    out
}

/// SPDX's idstring: letters, digits, `.` and `-`; anything else becomes `-`.
fn idstring(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn spdx_id(kind: &str, name: &str) -> String {
    format!("SPDXRef-{kind}-{}", idstring(name))
}

/// The SPDX 2.3 document for an image. `go_modules`: for each Go binary (by its input
/// name), the modules linked into it; each module is listed once, and each binary that links
/// it has a STATIC_LINK relationship to it.
pub fn document(
    image: &str,
    version: &str,
    epoch: u64,
    lock_hex: &str,
    inputs: &[Input],
    licenses: &BTreeMap<String, String>,
    go_modules: &BTreeMap<String, Vec<GoModule>>,
) -> Value {
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-image",
        "name": image,
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-image",
    })];
    let mut extracted: BTreeMap<String, String> = BTreeMap::new();
    let mut sorted = inputs.to_vec();
    sorted.sort();
    for i in &sorted {
        let id = spdx_id(&i.kind, &i.name);
        let license = licenses
            .get(&i.name)
            .filter(|_| i.kind == "deb")
            .map(|l| spdx_expression(l))
            .unwrap_or_else(|| "NOASSERTION".into());
        for word in license
            .split_whitespace()
            .filter(|w| w.starts_with("LicenseRef-"))
        {
            extracted.insert(
                word.to_string(),
                format!(
                    "License named \"{}\" in the package's Debian copyright file.",
                    &word[11..]
                ),
            );
        }
        let alg = match i.checksum.algorithm() {
            crate::digest::Algorithm::Sha256 => "SHA256",
            crate::digest::Algorithm::Sha512 => "SHA512",
        };
        let mut p = json!({
            "SPDXID": id,
            "name": i.name,
            "versionInfo": i.version,
            "downloadLocation": if i.source.starts_with("http") { i.source.clone() } else { "NOASSERTION".into() },
            "filesAnalyzed": false,
            "checksums": [{"algorithm": alg, "checksumValue": i.checksum.hex()}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license,
            "copyrightText": "NOASSERTION",
            "sourceInfo": format!("{} input from {}", i.kind, i.source),
        });
        if i.kind == "deb" {
            p["supplier"] = json!("Organization: Debian");
            p["externalRefs"] = json!([{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:deb/debian/{}@{}?arch=amd64", i.name, i.version.replace(':', "%3A")),
            }]);
        }
        packages.push(p);
        relationships.push(json!({
            "spdxElementId": "SPDXRef-image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let mut listed = std::collections::BTreeSet::new();
    for (binary, modules) in go_modules {
        for m in modules {
            let id = spdx_id("gomod", &format!("{}@{}", m.path, m.version));
            if listed.insert(id.clone()) {
                packages.push(json!({
                    "SPDXID": id,
                    "name": m.path,
                    "versionInfo": m.version,
                    "downloadLocation": "NOASSERTION",
                    "filesAnalyzed": false,
                    "licenseConcluded": "NOASSERTION",
                    "licenseDeclared": "NOASSERTION",
                    "copyrightText": "NOASSERTION",
                    "sourceInfo": format!("Go module, go.sum hash {}", if m.sum.is_empty() { "none" } else { &m.sum }),
                    "externalRefs": [{
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": m.purl(),
                    }],
                }));
            }
            relationships.push(json!({
                "spdxElementId": spdx_id("go", binary),
                "relationshipType": "STATIC_LINK",
                "relatedSpdxElement": id,
            }));
        }
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{image}-{version}"),
        "documentNamespace": format!("https://spdx.kiln.invalid/{image}/{version}/{lock_hex}"),
        "creationInfo": {
            "created": firstboot::utc::seconds(epoch),
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = Value::Array(
            extracted
                .into_iter()
                .map(|(id, text)| json!({"licenseId": id, "extractedText": text}))
                .collect(),
        );
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{Algorithm, Digest};

    #[test]
    fn go_binaries_link_their_modules() {
        let bin = |name: &str| Input {
            kind: "go".into(),
            name: name.into(),
            version: "v1.0.0".into(),
            source: "example.com/m@v1.0.0".into(),
            checksum: Digest::of_bytes(Algorithm::Sha256, name.as_bytes()),
        };
        let module = |path: &str| GoModule {
            path: path.into(),
            version: "v0.1.0".into(),
            sum: "h1:x=".into(),
            main: false,
        };
        let mut mods = BTreeMap::new();
        mods.insert(
            "a".to_string(),
            vec![module("example.com/x"), module("example.com/y")],
        );
        mods.insert("b".to_string(), vec![module("example.com/x")]);
        let d = document(
            "img",
            "1",
            0,
            "ab",
            &[bin("a"), bin("b")],
            &BTreeMap::new(),
            &mods,
        );
        let pkgs = d["packages"].as_array().expect("packages");
        // image, two binaries, two modules (x once).
        assert_eq!(pkgs.len(), 5);
        let x = pkgs
            .iter()
            .find(|p| p["name"] == "example.com/x")
            .expect("x");
        assert_eq!(
            x["externalRefs"][0]["referenceLocator"],
            "pkg:golang/example.com/x@v0.1.0"
        );
        let links: Vec<(String, String)> = d["relationships"]
            .as_array()
            .expect("relationships")
            .iter()
            .filter(|r| r["relationshipType"] == "STATIC_LINK")
            .map(|r| {
                (
                    r["spdxElementId"].to_string(),
                    r["relatedSpdxElement"].to_string(),
                )
            })
            .collect();
        assert_eq!(links.len(), 3);
        // Every relationship names packages that exist.
        for r in d["relationships"].as_array().expect("relationships") {
            for end in ["spdxElementId", "relatedSpdxElement"] {
                let id = &r[end];
                assert!(
                    *id == "SPDXRef-DOCUMENT" || pkgs.iter().any(|p| p["SPDXID"] == *id),
                    "{id} is not a package"
                );
            }
        }
    }

    #[test]
    fn reads_dep5_licenses() {
        let c = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: debian/*\nLicense: MIT\n\nFiles: *\nCopyright: someone\nLicense: GPL-2+ or Artistic\n";
        let l = debian_license(c).expect("license");
        assert_eq!(l, "GPL-2+ or Artistic");
        // `Files:` with its patterns on continuation lines (libacl1, libbsd0, polkitd...).
        let c = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles:\n *\nCopyright:\n someone\nLicense: GPL-2+\n full text\n .\n more\n\nFiles:\n debian/*\nLicense: MIT\n";
        assert_eq!(debian_license(c).as_deref(), Some("GPL-2+"));
        assert_eq!(debian_license("Format: x\nno colon\n"), None);
        assert_eq!(spdx_expression(&l), "GPL-2.0-or-later OR Artistic-1.0-Perl");
        assert_eq!(spdx_expression("Weird License"), "LicenseRef-Weird-License");
        assert_eq!(
            spdx_expression("GPL-2+ with OpenSSL exception or MIT"),
            "LicenseRef-GPL-2--with-OpenSSL-exception OR MIT"
        );
        assert_eq!(spdx_expression("GPL-2+ or"), "NOASSERTION");
        assert_eq!(spdx_expression("or MIT"), "NOASSERTION");
        assert_eq!(debian_license("not machine readable"), None);
    }

    #[test]
    fn document_lists_every_input() {
        let inputs = vec![Input {
            kind: "deb".into(),
            name: "hostname".into(),
            version: "3.23+nmu1".into(),
            source: "pool/main/h/hostname/hostname_3.23+nmu1_amd64.deb".into(),
            checksum: Digest::of_bytes(Algorithm::Sha256, b"x"),
        }];
        let mut lic = BTreeMap::new();
        lic.insert("hostname".to_string(), "GPL-2+".to_string());
        let d = document("minimal", "1", 0, "ab", &inputs, &lic, &BTreeMap::new());
        assert_eq!(d["spdxVersion"], "SPDX-2.3");
        let pkgs = d["packages"].as_array().expect("packages");
        assert_eq!(pkgs.len(), 2);
        assert_eq!(pkgs[1]["licenseDeclared"], "GPL-2.0-or-later");
        assert_eq!(
            pkgs[1]["checksums"][0]["checksumValue"],
            inputs[0].checksum.hex()
        );
        assert_eq!(d["relationships"].as_array().map(Vec::len), Some(2));
    }
}
