//! Kernel command line parser.
//!
//! Follows the kernel's own rules (`next_arg` in lib/cmdline.c): words are split on
//! whitespace, double quotes group words and are removed, `key=value` splits at the first
//! `=`. Repeated keys: the last one wins. Garbage (unbalanced quotes, control bytes) never
//! fails the parse: an unterminated quote runs to the end of the line.

use std::collections::BTreeMap;
use std::path::Path;

/// A parsed kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// Every `key=value` or bare `key`, in order (bare keys have `None`).
    params: Vec<(String, Option<String>)>,
}

impl Cmdline {
    /// Parses the text of `/proc/cmdline`.
    pub fn parse(text: &str) -> Self {
        let mut params = Vec::new();
        let mut chars = text.chars().peekable();
        loop {
            while chars
                .peek()
                .is_some_and(|c| c.is_whitespace() || *c == '\0')
            {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut word = String::new();
            let mut in_quote = false;
            let mut eq_at: Option<usize> = None;
            while let Some(&c) = chars.peek() {
                if !in_quote && (c.is_whitespace() || c == '\0') {
                    break;
                }
                chars.next();
                if c == '"' {
                    in_quote = !in_quote;
                    continue;
                }
                if c == '=' && eq_at.is_none() {
                    eq_at = Some(word.len());
                }
                word.push(c);
            }
            match eq_at {
                Some(i) => {
                    let (k, v) = word.split_at(i);
                    params.push((k.to_string(), Some(v[1..].to_string())));
                }
                None => params.push((word, None)),
            }
        }
        Cmdline { params }
    }

    /// Reads and parses a cmdline file (normally `/proc/cmdline`).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        Ok(Self::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The value of the last `key=value` for `key` (a bare `key` counts as an empty value).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// Whether `key` appears at all.
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    /// All `kiln.*` parameters, last one winning, keyed without the `kiln.` prefix.
    pub fn kiln(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.params {
            if let Some(rest) = k.strip_prefix("kiln.") {
                out.insert(rest.to_string(), v.clone().unwrap_or_default());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_and_values() {
        let c = Cmdline::parse("BOOT_IMAGE=/vmlinuz ro quiet console=ttyS0,115200 kiln.slot=a\n");
        assert_eq!(c.get("console"), Some("ttyS0,115200"));
        assert_eq!(c.get("kiln.slot"), Some("a"));
        assert_eq!(c.get("ro"), Some(""));
        assert!(c.has("quiet"));
        assert_eq!(c.get("missing"), None);
    }

    #[test]
    fn quotes_group_words_and_are_removed() {
        let c = Cmdline::parse(r#"a="x y" "kiln.hostname=my host" b=c"d e"f"#);
        assert_eq!(c.get("a"), Some("x y"));
        assert_eq!(c.get("kiln.hostname"), Some("my host"));
        assert_eq!(c.get("b"), Some("cd ef"));
    }

    #[test]
    fn repeats_last_wins() {
        let c = Cmdline::parse("kiln.slot=a console=tty0 kiln.slot=b console=ttyS0");
        assert_eq!(c.get("kiln.slot"), Some("b"));
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert_eq!(c.kiln().get("slot").map(String::as_str), Some("b"));
    }

    #[test]
    fn value_keeps_later_equals_signs() {
        let c = Cmdline::parse("kiln.config=a2V5PSJ2Ig== x==y");
        assert_eq!(c.get("kiln.config"), Some("a2V5PSJ2Ig=="));
        assert_eq!(c.get("x"), Some("=y"));
    }

    #[test]
    fn garbage_is_tolerated() {
        let c = Cmdline::parse("  \t\n\0 \"unterminated kiln.slot=b\x01 = ==  ");
        // An unterminated quote swallows the rest of the line, as the kernel does.
        assert_eq!(c.get("kiln.slot"), None);
        assert_eq!(c.params.len(), 1);
        let c = Cmdline::parse("=v kiln.=x \u{fffd}=\u{fffd}");
        assert_eq!(c.get(""), Some("v"));
        assert_eq!(c.kiln().get("").map(String::as_str), Some("x"));
        assert_eq!(c.get("\u{fffd}"), Some("\u{fffd}"));
        assert_eq!(Cmdline::parse(""), Cmdline::default());
    }

    #[test]
    fn reads_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmdline");
        std::fs::write(&p, b"kiln.root=iso \xff\n").unwrap();
        let c = Cmdline::read(&p).unwrap();
        assert_eq!(c.get("kiln.root"), Some("iso"));
    }
}
