//! deb822 control data: paragraphs of `Field: value` lines with continuation lines, as
//! used by Packages indexes, Release files and `.sources` files.

use super::DebianError;

/// One paragraph (stanza). Field values borrow from the parsed text; a multi-line value
/// keeps its continuation lines (with their leading whitespace) after the first line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph<'a> {
    fields: Vec<(&'a str, &'a str)>,
    /// 1-based line number of the paragraph's first field.
    pub line: usize,
}

impl<'a> Paragraph<'a> {
    /// The raw value of a field (field names are case-insensitive), first line trimmed.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// The continuation lines of a multi-line field, each trimmed, empty ones dropped
    /// (the first line, usually empty for such fields, is included when not empty).
    pub fn lines(&self, name: &str) -> Vec<&'a str> {
        self.get(name)
            .map(|v| v.lines().map(str::trim).filter(|l| !l.is_empty()).collect())
            .unwrap_or_default()
    }

    /// All fields in order.
    pub fn fields(&self) -> &[(&'a str, &'a str)] {
        &self.fields
    }
}

/// Splits deb822 text into paragraphs. Lines starting with `#` are comments (allowed in
/// `.sources` files, absent from archive indexes). `what` names the input in errors.
pub fn parse_paragraphs<'a>(text: &'a str, what: &str) -> Result<Vec<Paragraph<'a>>, DebianError> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    // Byte offsets of the current field's name and value start, and value end.
    let mut open: Option<(&'a str, usize, usize)> = None;
    let mut offset = 0usize;
    let close = |open: &mut Option<(&'a str, usize, usize)>, cur: &mut Paragraph<'a>| {
        if let Some((name, start, end)) = open.take() {
            cur.fields.push((name, &text[start..end]));
        }
    };
    for (idx, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let line_end = line_start + line.len();
        if line.trim().is_empty() {
            close(&mut open, &mut cur);
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match open.as_mut() {
                Some((_, _, end)) => *end = line_end,
                None => {
                    return Err(DebianError::Control {
                        what: what.to_string(),
                        line: idx + 1,
                        message: "continuation line outside a field".into(),
                    })
                }
            }
            continue;
        }
        let Some(colon) = line.find(':') else {
            return Err(DebianError::Control {
                what: what.to_string(),
                line: idx + 1,
                message: format!("expected `Field: value`, found {line:?}"),
            });
        };
        let name = &line[..colon];
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(DebianError::Control {
                what: what.to_string(),
                line: idx + 1,
                message: format!("bad field name {name:?}"),
            });
        }
        close(&mut open, &mut cur);
        if cur.fields.is_empty() {
            cur.line = idx + 1;
        }
        open = Some((name, line_start + colon + 1, line_end));
    }
    close(&mut open, &mut cur);
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paragraphs_with_continuations_and_comments() {
        let text = "Package: a\nVersion: 1.0\nDescription: short\n long line\n .\n more\n\n\n\
                    # a comment\nPackage: b\r\nDepends: c,\n d\n";
        let ps = parse_paragraphs(text, "fixture").expect("parses");
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("package"), Some("a"));
        assert_eq!(ps[0].get("VERSION"), Some("1.0"));
        assert_eq!(
            ps[0].lines("Description"),
            vec!["short", "long line", ".", "more"]
        );
        assert_eq!(ps[0].line, 1);
        assert_eq!(ps[1].get("Package"), Some("b"));
        assert_eq!(ps[1].get("Depends"), Some("c,\n d"));
        assert_eq!(ps[1].line, 10);
        assert_eq!(ps[1].get("Missing"), None);
    }

    #[test]
    fn comment_inside_a_paragraph_does_not_split_it() {
        let text = "Types: deb\n# URIs: http://old\nURIs: http://new\nSuites: s\n";
        let ps = parse_paragraphs(text, "x").expect("parses");
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].get("URIs"), Some("http://new"));
    }

    #[test]
    fn rejects_garbage_with_line_number() {
        let err = parse_paragraphs("Package: a\nno colon here\n", "idx").expect_err("bad");
        let msg = err.to_string();
        assert!(msg.contains("idx") && msg.contains("line 2"), "{msg}");
        assert!(parse_paragraphs(" leading continuation\n", "idx").is_err());
    }
}
