//! The definition's checked values: each is validated as it is parsed, so a bad one is
//! reported at its own file, line and column (and the key it sits under, see
//! `load::parse_file`), in the file of the `extends` chain that wrote it. Checks that relate
//! several values (a name defined twice, `dest` and `extract` together) are `validate`'s.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tree::TreePath;

/// A string newtype checked by `$check: fn(&str) -> Result<(), String>` when parsed.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s)?;
                Ok($name(s))
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::try_from(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

fn image_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-');
    ok.then_some(())
        .ok_or_else(|| format!("{s:?} must be 1-63 lower-case letters, digits or '-'"))
}

fn image_version(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('/');
    ok.then_some(())
        .ok_or_else(|| format!("{s:?} must be non-empty, without spaces or '/'"))
}

fn arch(s: &str) -> Result<(), String> {
    (s == "amd64")
        .then_some(())
        .ok_or_else(|| format!("{s:?} is not supported (only amd64)"))
}

fn package_name(s: &str) -> Result<(), String> {
    (!s.is_empty() && !s.contains(char::is_whitespace))
        .then_some(())
        .ok_or_else(|| format!("{s:?} is not a package name"))
}

fn http_url(s: &str) -> Result<(), String> {
    (s.starts_with("https://") || s.starts_with("http://"))
        .then_some(())
        .ok_or_else(|| format!("{s:?} is not an http(s) URL"))
}

fn image_path(s: &str) -> Result<(), String> {
    TreePath::from_definition(s)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn archive_path(s: &str) -> Result<(), String> {
    TreePath::from_archive(s)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn account_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !s.starts_with('-');
    ok.then_some(())
        .ok_or_else(|| format!("{s:?} is not a valid user or group name"))
}

fn size(s: &str) -> Result<(), String> {
    match parse_size(s) {
        None => Err(format!("{s:?} is not a size like \"8GiB\"")),
        Some(0) => Err(format!("{s:?} is a size of zero")),
        Some(_) => Ok(()),
    }
}

fn install_selector(s: &str) -> Result<(), String> {
    if s.contains(char::is_whitespace) {
        return Err(format!("{s:?} contains spaces"));
    }
    firstboot::install::select::parse(s).map(|_| ())
}

checked_string!(
    /// An image name: 1-63 lower-case letters, digits and `-`.
    ImageName,
    image_name
);
checked_string!(
    /// An image version: non-empty, no spaces, no `/`.
    ImageVersion,
    image_version
);
checked_string!(
    /// A Debian architecture Kiln builds for (only `amd64`).
    Arch,
    arch
);
checked_string!(
    /// A Debian package name.
    PackageName,
    package_name
);
checked_string!(
    /// An `http://` or `https://` URL.
    HttpUrl,
    http_url
);
checked_string!(
    /// An absolute path in the image that stays inside it.
    ImagePath,
    image_path
);
checked_string!(
    /// A path inside an archive (a file, or a directory prefix).
    ArchivePath,
    archive_path
);
checked_string!(
    /// A user or group name (lower-case letters, digits, `-` and `_`, at most 32).
    AccountName,
    account_name
);
checked_string!(
    /// A size like `8GiB`, `512MiB`, `8G` or a number of bytes.
    Size,
    size
);
checked_string!(
    /// The installer's disk selector (`auto`, `/dev/<disk>` or conditions).
    InstallSelector,
    install_selector
);

impl Size {
    /// The size in bytes.
    pub fn bytes(&self) -> u64 {
        parse_size(&self.0).unwrap_or(0)
    }
}

/// A zstd compression level, 1-22.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "u32", into = "u32")]
pub struct ZstdLevel(u32);

impl TryFrom<u32> for ZstdLevel {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if (1..=22).contains(&n) {
            Ok(ZstdLevel(n))
        } else {
            Err(format!("{n} is not a zstd level (1-22)"))
        }
    }
}

impl From<ZstdLevel> for u32 {
    fn from(l: ZstdLevel) -> u32 {
        l.0
    }
}

/// Parses sizes like `8GiB`, `512MiB`, `8G`, `1024` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_is_checked_when_parsed() {
        assert!("web-1".parse::<ImageName>().is_ok());
        let e = "Bad Name".parse::<ImageName>().unwrap_err();
        assert!(e.contains("lower-case"), "{e}");
        assert!("1.0".parse::<ImageVersion>().is_ok());
        assert!("1 0".parse::<ImageVersion>().is_err());
        assert!("a/b".parse::<ImageVersion>().is_err());
        assert!("arm64".parse::<Arch>().is_err());
        assert!("two words".parse::<PackageName>().is_err());
        assert!("ftp://x/a".parse::<HttpUrl>().is_err());
        assert!("/etc/motd".parse::<ImagePath>().is_ok());
        let e = "../../etc".parse::<ImagePath>().unwrap_err();
        assert!(e.contains(".."), "{e}");
        assert!("Root".parse::<AccountName>().is_err());
        assert_eq!("512MiB".parse::<Size>().map(|s| s.bytes()), Ok(512 << 20));
        assert!("12 parsecs".parse::<Size>().is_err());
        assert!("size>=20G".parse::<InstallSelector>().is_ok());
        assert!("a b".parse::<InstallSelector>().is_err());
        assert!(ZstdLevel::try_from(0).is_err() && ZstdLevel::try_from(23).is_err());
        assert_eq!(ZstdLevel::try_from(19).map(u32::from), Ok(19));
    }

    #[test]
    fn values_round_trip_as_plain_strings() {
        #[derive(Debug, Serialize, Deserialize)]
        struct T {
            name: ImageName,
            level: ZstdLevel,
        }
        let t: T = toml::from_str("name = \"web\"\nlevel = 3\n").unwrap();
        assert_eq!(toml::to_string(&t).unwrap(), "name = \"web\"\nlevel = 3\n");
        let e = toml::from_str::<T>("name = \"web\"\nlevel = 30\n").unwrap_err();
        assert_eq!(e.span().map(|s| s.start), Some(21), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1X"), None);
        assert_eq!(parse_size(""), None);
    }
}
