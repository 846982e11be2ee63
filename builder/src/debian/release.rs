//! A suite's Release/InRelease file and the checks of the indexes it lists.
//!
//! The Release is believed only once its signature verified ([`super::keyring`]) and it is
//! fresh: its `Valid-Until` has not passed and its `Date` is not in the future
//! ([`Release::check_fresh`]). Integrity of every index then rests on the sha256 the Release
//! lists, and of every .deb on the sha256 in the index and in the lock.

use std::collections::BTreeMap;
use std::io::Read;

use crate::digest::{Algorithm, Digest};

use super::control::parse_paragraphs;
use super::DebianError;

/// The parts of a Release file Kiln uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub architectures: Vec<String>,
    pub components: Vec<String>,
    /// `Acquire-By-Hash: yes`: indexes can be fetched under `by-hash/SHA256/<hex>`.
    pub acquire_by_hash: bool,
    /// Path relative to `dists/<suite>/` -> (sha256, size).
    pub sha256: BTreeMap<String, (Digest, u64)>,
    /// `Date`: when the archive made this Release.
    pub date: Option<String>,
    /// `Valid-Until`: after this a mirror serving it is stale (or replays an old index).
    pub valid_until: Option<String>,
}

impl Release {
    /// Parses Release text (already stripped of clear-sign armor).
    pub fn parse(text: &str) -> Result<Release, DebianError> {
        let paragraphs = parse_paragraphs(text, "Release")?;
        let p = paragraphs.first().ok_or_else(|| DebianError::Control {
            what: "Release".into(),
            line: 1,
            message: "empty Release file".into(),
        })?;
        let words = |name: &str| -> Vec<String> {
            p.get(name)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let mut sha256 = BTreeMap::new();
        for line in p.lines("SHA256") {
            let bad = |message: String| DebianError::Control {
                what: "Release SHA256 field".into(),
                line: p.line,
                message,
            };
            let mut w = line.split_whitespace();
            let (Some(hex), Some(size), Some(path), None) =
                (w.next(), w.next(), w.next(), w.next())
            else {
                return Err(bad(format!(
                    "expected `<sha256> <size> <path>`, found {line:?}"
                )));
            };
            let digest = Digest::sha256_hex(hex).map_err(|e| bad(e.to_string()))?;
            let size = size
                .parse::<u64>()
                .map_err(|_| bad(format!("bad size in {line:?}")))?;
            sha256.insert(path.to_string(), (digest, size));
        }
        Ok(Release {
            suite: p.get("Suite").map(str::to_string),
            codename: p.get("Codename").map(str::to_string),
            architectures: words("Architectures"),
            components: words("Components"),
            acquire_by_hash: p
                .get("Acquire-By-Hash")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            sha256,
            date: p.get("Date").map(str::to_string),
            valid_until: p.get("Valid-Until").map(str::to_string),
        })
    }

    /// Refuses a Release whose `Valid-Until` has passed or whose `Date` lies more than a day
    /// in the future (`file` names it in the error). A date that cannot be read is refused
    /// too: a check that silently passes on bad input is no check.
    pub fn check_fresh(&self, file: &str, now: std::time::SystemTime) -> Result<(), DebianError> {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let read = |field: &str, value: &str| {
            parse_release_date(value).ok_or_else(|| DebianError::Control {
                what: file.to_string(),
                line: 1,
                message: format!(
                    "{field}: {value:?} is not a date like `Sat, 09 Nov 2024 10:15:42 UTC`"
                ),
            })
        };
        if let Some(v) = &self.valid_until {
            if read("Valid-Until", v)? < now {
                return Err(DebianError::Expired {
                    file: file.to_string(),
                    valid_until: v.clone(),
                });
            }
        }
        if let Some(d) = &self.date {
            if read("Date", d)? > now + 24 * 3600 {
                return Err(DebianError::NotYetValid {
                    file: file.to_string(),
                    date: d.clone(),
                });
            }
        }
        Ok(())
    }

    /// The best listed form of the Packages index for `component`/`arch`:
    /// `.xz`, then `.gz`, then uncompressed.
    pub fn packages_index(&self, component: &str, arch: &str) -> Option<(&str, &Digest, u64)> {
        ["Packages.xz", "Packages.gz", "Packages"]
            .iter()
            .map(|f| format!("{component}/binary-{arch}/{f}"))
            .find_map(|p| self.sha256.get_key_value(&p))
            .map(|(p, (d, s))| (p.as_str(), d, *s))
    }

    /// Checks downloaded bytes of `path` against this Release's sha256 and size.
    pub fn verify(&self, path: &str, bytes: &[u8]) -> Result<(), DebianError> {
        let (expected, size) =
            self.sha256
                .get(path)
                .ok_or_else(|| DebianError::IndexNotListed {
                    file: path.to_string(),
                })?;
        let actual = Digest::of_bytes(Algorithm::Sha256, bytes);
        if &actual != expected {
            return Err(DebianError::IndexDigestMismatch {
                file: path.to_string(),
                expected: expected.clone(),
                actual,
            });
        }
        if bytes.len() as u64 != *size {
            return Err(DebianError::IndexSizeMismatch {
                file: path.to_string(),
                expected: *size,
                actual: bytes.len() as u64,
            });
        }
        Ok(())
    }
}

/// Seconds since the epoch of a Release date (`Sat, 09 Nov 2024 10:15:42 UTC`, as RFC 2822
/// with the zone `UTC`, `GMT`, `Z` or `+0000`); None if it is not one.
pub fn parse_release_date(s: &str) -> Option<u64> {
    let mut w = s.split_whitespace();
    let mut first = w.next()?;
    if first.ends_with(',') {
        first = w.next()?;
    }
    let day: u64 = first.parse().ok()?;
    let month = w.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(month))? as u64
        + 1;
    let year: u64 = w.next()?.parse().ok()?;
    let mut hms = w.next()?.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    let zone = w.next()?;
    if !["UTC", "GMT", "Z", "+0000"].contains(&zone) || w.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// The most an index may hold once decompressed (bookworm's main Packages is about 90 MiB):
/// a small file that expands past this is a decompression bomb, not an index.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;

/// Decompresses an index according to its file name (`.xz`, `.gz` or none), refusing one
/// that expands past `max_bytes`.
pub fn decompress(path: &str, bytes: &[u8], max_bytes: u64) -> Result<Vec<u8>, DebianError> {
    let mut out = Vec::new();
    let res = if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(bytes)
            .take(max_bytes + 1)
            .read_to_end(&mut out)
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(bytes)
            .take(max_bytes + 1)
            .read_to_end(&mut out)
    } else {
        out.extend_from_slice(bytes);
        Ok(out.len())
    };
    res.map_err(|source| DebianError::Decompress {
        file: path.to_string(),
        source,
    })?;
    if out.len() as u64 > max_bytes {
        return Err(DebianError::Decompress {
            file: path.to_string(),
            source: std::io::Error::other(format!(
                "it expands past {} MiB; not an index",
                max_bytes >> 20
            )),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const PACKAGES: &[u8] = b"Package: a\nVersion: 1\n";

    fn release_text() -> String {
        let d = Digest::of_bytes(Algorithm::Sha256, PACKAGES);
        format!(
            "Origin: Test\nSuite: stable\nCodename: x\nAcquire-By-Hash: yes\n\
             Architectures: all amd64\nComponents: main\nMD5Sum:\n \
             d41d8cd98f00b204e9800998ecf8427e 0 main/binary-amd64/Packages\nSHA256:\n \
             {} {} main/binary-amd64/Packages\n \
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 main/i18n/Index\n",
            d.hex(),
            PACKAGES.len()
        )
    }

    #[test]
    fn parses_release_and_picks_index() {
        let r = Release::parse(&release_text()).expect("parses");
        assert_eq!(r.codename.as_deref(), Some("x"));
        assert_eq!(r.architectures, vec!["all", "amd64"]);
        assert!(r.acquire_by_hash);
        assert_eq!(r.sha256.len(), 2);
        let (p, _, size) = r.packages_index("main", "amd64").expect("listed");
        assert_eq!(
            (p, size),
            ("main/binary-amd64/Packages", PACKAGES.len() as u64)
        );
        assert!(r.packages_index("contrib", "amd64").is_none());
        r.verify(p, PACKAGES).expect("matches");
    }

    #[test]
    fn tampered_index_is_rejected_naming_both_digests() {
        let r = Release::parse(&release_text()).expect("parses");
        let tampered = b"Package: a\nVersion: 2\n";
        let err = r
            .verify("main/binary-amd64/Packages", tampered)
            .expect_err("tampered");
        let msg = err.to_string();
        let good = Digest::of_bytes(Algorithm::Sha256, PACKAGES).to_string();
        let bad = Digest::of_bytes(Algorithm::Sha256, tampered).to_string();
        assert!(msg.contains("main/binary-amd64/Packages"), "{msg}");
        assert!(msg.contains(&good) && msg.contains(&bad), "{msg}");
        assert!(r.verify("main/binary-i386/Packages", PACKAGES).is_err());
    }

    #[test]
    fn release_dates_parse_to_unix_time() {
        assert_eq!(parse_release_date("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(
            parse_release_date("Sat, 09 Nov 2024 10:15:42 UTC"),
            Some(1_731_147_342)
        );
        assert_eq!(
            parse_release_date("29 Feb 2000 23:59:59 +0000"),
            Some(951_868_799)
        );
        for bad in [
            "",
            "Sat, 09 Nov 2024",
            "Sat, 09 Foo 2024 10:15:42 UTC",
            "Sat, 09 Nov 2024 10:15:42 CET",
            "Sat, 09 Nov 2024 25:15:42 UTC",
            "Sat, 09 Nov 2024 10:15:42 UTC trailing",
        ] {
            assert_eq!(parse_release_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn decompresses_xz_and_gz() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(PACKAGES).expect("gz");
        let gz = gz.finish().expect("gz");
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(PACKAGES).expect("xz");
        let xz = xz.finish().expect("xz");
        let max = MAX_INDEX_BYTES;
        assert_eq!(decompress("P.gz", &gz, max).expect("gz"), PACKAGES);
        assert_eq!(decompress("P.xz", &xz, max).expect("xz"), PACKAGES);
        assert_eq!(decompress("P", PACKAGES, max).expect("plain"), PACKAGES);
        let err = decompress("main/binary-amd64/Packages.xz", &gz, max).expect_err("not xz");
        assert!(err.to_string().contains("Packages.xz"), "{err}");
        // A bomb: 64 MiB of zeros in about 64 KiB of gzip, against a 1 MiB cap.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            bomb.write_all(&[0u8; 1 << 20]).expect("gz");
        }
        let bomb = bomb.finish().expect("gz");
        assert!(bomb.len() < 1 << 20);
        let err = decompress("main/binary-amd64/Packages.gz", &bomb, 1 << 20).expect_err("bomb");
        assert!(err.to_string().contains("expands past 1 MiB"), "{err}");
        assert_eq!(
            decompress("P.gz", &gz, PACKAGES.len() as u64).expect("exactly at the cap"),
            PACKAGES
        );
    }
}
