//! Debian version numbers and dpkg's ordering of them (`[epoch:]upstream[-revision]`).

use std::cmp::Ordering;
use std::fmt;

use super::DebianError;

/// A parsed Debian version. Equality and ordering follow `dpkg --compare-versions`,
/// so `1.0` and `1.0-0` are equal even though they are spelled differently.
#[derive(Clone)]
pub struct Version {
    epoch: u64,
    upstream: String,
    revision: String,
    text: String,
}

impl Version {
    /// Parses `[epoch:]upstream[-revision]`. The epoch is everything before the first colon,
    /// the revision everything after the last hyphen, as dpkg splits them.
    pub fn parse(text: &str) -> Result<Version, DebianError> {
        let bad = |message: &str| DebianError::Version {
            version: text.to_string(),
            message: message.to_string(),
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(bad("empty version"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(bad("contains whitespace"));
        }
        let (epoch, rest) = match s.split_once(':') {
            Some((e, rest)) => {
                let epoch = e
                    .parse::<u64>()
                    .map_err(|_| bad("epoch is not a non-negative number"))?;
                (epoch, rest)
            }
            None => (0, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((_, "")) => return Err(bad("empty revision after the last hyphen")),
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if upstream.is_empty() {
            return Err(bad("empty upstream version"));
        }
        if !upstream.as_bytes()[0].is_ascii_digit() {
            // dpkg only warns about this; real archives contain no such versions, but
            // comparison is still well defined, so accept it.
            log::debug!("version {text:?} does not start with a digit");
        }
        Ok(Version {
            epoch,
            upstream: upstream.to_string(),
            revision: revision.to_string(),
            text: s.to_string(),
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn upstream(&self) -> &str {
        &self.upstream
    }
    pub fn revision(&self) -> &str {
        &self.revision
    }
    /// The version as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.text)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(&self.upstream, &other.upstream))
            .then_with(|| verrevcmp(&self.revision, &other.revision))
    }
}

/// dpkg's weight of a non-digit character: `~` sorts before everything, even the end of
/// the string; letters sort before other characters.
fn order(c: u8) -> i32 {
    if c.is_ascii_digit() {
        0
    } else if c.is_ascii_alphabetic() {
        i32::from(c)
    } else if c == b'~' {
        -1
    } else if c != 0 {
        i32::from(c) + 256
    } else {
        0
    }
}

/// dpkg's `verrevcmp`: alternate non-digit runs (compared by `order`) and digit runs
/// (compared numerically, leading zeros ignored).
fn verrevcmp(a: &str, b: &str) -> Ordering {
    let a = a.as_bytes();
    let b = b.as_bytes();
    let at = |i: usize| a.get(i).copied().unwrap_or(0);
    let bt = |j: usize| b.get(j).copied().unwrap_or(0);
    let (mut i, mut j) = (0usize, 0usize);
    while i < a.len() || j < b.len() {
        while (at(i) != 0 && !at(i).is_ascii_digit()) || (bt(j) != 0 && !bt(j).is_ascii_digit()) {
            let (ac, bc) = (order(at(i)), order(bt(j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(i) == b'0' {
            i += 1;
        }
        while bt(j) == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while at(i).is_ascii_digit() && bt(j).is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = at(i).cmp(&bt(j));
            }
            i += 1;
            j += 1;
        }
        if at(i).is_ascii_digit() {
            return Ordering::Greater;
        }
        if bt(j).is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// A version relation operator as written in a dependency field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Less,
    /// `<=` (and the obsolete `<`)
    LessEq,
    /// `=`
    Eq,
    /// `>=` (and the obsolete `>`)
    GreaterEq,
    /// `>>`
    Greater,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Less,
            "<=" | "<" => Op::LessEq,
            "=" => Op::Eq,
            ">=" | ">" => Op::GreaterEq,
            ">>" => Op::Greater,
            _ => return None,
        })
    }

    /// Whether `have OP want` holds.
    pub fn holds(self, have: &Version, want: &Version) -> bool {
        let o = have.cmp(want);
        match self {
            Op::Less => o == Ordering::Less,
            Op::LessEq => o != Ordering::Greater,
            Op::Eq => o == Ordering::Equal,
            Op::GreaterEq => o != Ordering::Less,
            Op::Greater => o == Ordering::Greater,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Less => "<<",
            Op::LessEq => "<=",
            Op::Eq => "=",
            Op::GreaterEq => ">=",
            Op::Greater => ">>",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("valid version")
    }

    /// (a, b, expected ordering of a against b); the cases come from dpkg's own
    /// t-version.c table and Debian Policy 5.6.12 examples.
    pub(crate) const CASES: &[(&str, &str, Ordering)] = &[
        ("1.0", "1.0", Ordering::Equal),
        ("1.0", "1.0-0", Ordering::Equal),
        ("0:1.0", "1.0", Ordering::Equal),
        ("1:1.0", "1.0", Ordering::Greater),
        ("1.0", "2:0.1", Ordering::Less),
        ("1.0~rc1", "1.0", Ordering::Less),
        ("1.0~~", "1.0~", Ordering::Less),
        ("1.0~~a", "1.0~~", Ordering::Greater),
        ("1.0~", "1.0", Ordering::Less),
        ("1.0", "1.0a", Ordering::Less),
        ("1.0a", "1.0+", Ordering::Less),
        ("1.0+", "1.0.", Ordering::Less),
        ("1.0-1", "1.0-2", Ordering::Less),
        ("1.0-1", "1.0-1.1", Ordering::Less),
        ("1.0-1~bpo1", "1.0-1", Ordering::Less),
        ("1.0-1+deb12u1", "1.0-1", Ordering::Greater),
        ("1.10", "1.9", Ordering::Greater),
        ("1.010", "1.10", Ordering::Equal),
        ("1.001", "1.1", Ordering::Equal),
        ("2.36-9+deb12u10", "2.36-9+deb12u9", Ordering::Greater),
        ("252.39-1~deb12u1", "252.39-1", Ordering::Less),
        ("1:2.38.1-5+deb12u3", "2.40", Ordering::Greater),
        ("1.2.3-a-b", "1.2.3-a-c", Ordering::Less),
        ("a", "b", Ordering::Less),
        ("0.0.0", "0", Ordering::Greater),
        ("7.88.1-10+deb12u12", "7.88.1-10+deb12u5", Ordering::Greater),
    ];

    #[test]
    fn compares_like_dpkg_table() {
        for (a, b, want) in CASES {
            assert_eq!(v(a).cmp(&v(b)), *want, "{a} vs {b}");
            assert_eq!(v(b).cmp(&v(a)), want.reverse(), "{b} vs {a}");
        }
    }

    /// Versions built to hit every branch of verrevcmp: tildes against end of string,
    /// letters against symbols, leading zeros, digit runs of different length, epochs,
    /// hyphens inside the upstream part.
    fn oracle_versions() -> Vec<String> {
        let mut out: Vec<String> = CASES
            .iter()
            .flat_map(|(a, b, _)| [a.to_string(), b.to_string()])
            .collect();
        let tails = [
            "", "~", "~~", "~a", "a", "+", ".", "0", "00", "1", "01", "10", "+b1", "-1",
        ];
        for t in tails {
            out.push(format!("1.0{t}"));
            out.push(format!("1:1.0{t}-1"));
            out.push(format!("1.0-1{t}"));
        }
        out.sort();
        out.dedup();
        out
    }

    /// `dpkg --compare-versions` is the oracle: every pair of `oracle_versions` must
    /// order the same way.
    #[test]
    fn matches_dpkg_compare_versions() {
        let vs = oracle_versions();
        let mut script = String::new();
        let mut pairs = Vec::new();
        for (i, a) in vs.iter().enumerate() {
            for b in &vs[i..] {
                script.push_str(&format!(
                    "if dpkg --compare-versions '{a}' lt '{b}'; then echo lt; \
                     elif dpkg --compare-versions '{a}' eq '{b}'; then echo eq; else echo gt; fi\n"
                ));
                pairs.push((a, b));
            }
        }
        let mut child = std::process::Command::new("sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sh");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(script.as_bytes()).expect("write script");
        });
        let out = child
            .wait_with_output()
            .expect("run dpkg (is dpkg installed?)");
        writer.join().expect("writer");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answers: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(answers.len(), pairs.len());
        assert!(pairs.len() > 500, "only {} pairs", pairs.len());
        for ((a, b), want) in pairs.iter().zip(&answers) {
            let got = match v(a).cmp(&v(b)) {
                Ordering::Less => "lt",
                Ordering::Equal => "eq",
                Ordering::Greater => "gt",
            };
            assert_eq!(got, want, "{a} vs {b}: kiln {got}, dpkg {want}");
        }
    }

    #[test]
    fn splits_epoch_upstream_revision() {
        let x = v("2:1.2-3-4");
        assert_eq!((x.epoch(), x.upstream(), x.revision()), (2, "1.2-3", "4"));
        let y = v("1.2");
        assert_eq!((y.epoch(), y.upstream(), y.revision()), (0, "1.2", ""));
    }

    #[test]
    fn rejects_bad_versions() {
        assert!(Version::parse("").is_err());
        assert!(Version::parse("x:1.0").is_err());
        assert!(Version::parse("1:").is_err());
        assert!(Version::parse("1.0 2").is_err());
        assert!(Version::parse("1.0-").is_err());
    }

    #[test]
    fn operators() {
        let (a, b) = (v("1.0"), v("1.1"));
        assert!(Op::Less.holds(&a, &b));
        assert!(!Op::Less.holds(&a, &a));
        assert!(Op::LessEq.holds(&a, &a));
        assert!(Op::Eq.holds(&a, &v("0:1.0-0")));
        assert!(Op::GreaterEq.holds(&b, &a));
        assert!(Op::Greater.holds(&b, &a));
        assert!(!Op::Greater.holds(&a, &a));
        assert_eq!(Op::parse("<"), Some(Op::LessEq));
        assert_eq!(Op::parse(">"), Some(Op::GreaterEq));
        assert_eq!(Op::parse("=>"), None);
    }
}
