//! The module list a Go binary carries (its build info, what `go version -m` prints): the
//! module of the main package and every module linked in, each with its go.sum `h1:` hash.
//! Read from the binary's bytes, so the SBOM names exactly what each binary contains.

use std::path::Path;

/// The build info's header: 16-byte aligned, then the pointer size and a flags byte.
const MAGIC: &[u8] = b"\xff Go buildinf:";
/// Flag: the version and module strings follow the header inline (Go 1.18 and later).
const INLINE: u8 = 0x2;
/// The module info string is wrapped in 16 bytes of sentinel on each side.
const SENTINEL: usize = 16;

/// One module in a binary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct GoModule {
    pub path: String,
    pub version: String,
    /// The go.sum hash (`h1:…`), empty for a module without one (a local replacement).
    pub sum: String,
    /// The module of the main package (`mod`), rather than a dependency (`dep`).
    pub main: bool,
}

impl GoModule {
    /// Package URL (`pkg:golang/path@version`).
    pub fn purl(&self) -> String {
        format!("pkg:golang/{}@{}", self.path, self.version)
    }
}

/// What a binary's build info says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// e.g. `go1.26.8`.
    pub go_version: String,
    pub modules: Vec<GoModule>,
}

/// Reads the build info of the binary at `path`.
pub fn read(path: &Path) -> Result<BuildInfo, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses the build info out of a binary's bytes.
pub fn parse(bytes: &[u8]) -> Result<BuildInfo, String> {
    let start = (0..bytes.len().saturating_sub(32))
        .step_by(16)
        .find(|&i| bytes[i..].starts_with(MAGIC))
        .ok_or("no Go build info")?;
    let flags = bytes[start + 15];
    if flags & INLINE == 0 {
        return Err("build info of a Go release before 1.18".into());
    }
    let mut at = start + 32;
    let go_version = utf8(string(bytes, &mut at)?)?;
    let modinfo = string(bytes, &mut at)?;
    let modinfo = match modinfo.len() >= 2 * SENTINEL {
        true => &modinfo[SENTINEL..modinfo.len() - SENTINEL],
        false => &[][..],
    };
    Ok(BuildInfo {
        go_version: go_version.to_string(),
        modules: modules(utf8(modinfo)?)?,
    })
}

fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| "build info string is not UTF-8".to_string())
}

/// A uvarint-length-prefixed string at `*at`.
fn string<'a>(bytes: &'a [u8], at: &mut usize) -> Result<&'a [u8], String> {
    let (mut len, mut shift) = (0usize, 0u32);
    loop {
        let b = *bytes.get(*at).ok_or("build info cut short")?;
        *at += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 28 {
            return Err("build info string length overflows".into());
        }
    }
    let s = bytes
        .get(*at..*at + len)
        .ok_or("build info string runs past the end")?;
    *at += len;
    Ok(s)
}

/// The `mod` and `dep` lines; a `=>` line replaces the module above it.
fn modules(modinfo: &str) -> Result<Vec<GoModule>, String> {
    let mut out: Vec<GoModule> = Vec::new();
    for line in modinfo.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.first().copied() {
            Some(kind @ ("mod" | "dep")) if f.len() >= 3 => out.push(GoModule {
                path: f[1].to_string(),
                version: f[2].to_string(),
                sum: f.get(3).copied().unwrap_or_default().to_string(),
                main: kind == "mod",
            }),
            Some("=>") if f.len() >= 3 => {
                let last = out.last_mut().ok_or("a replacement before any module")?;
                last.path = f[1].to_string();
                last.version = f[2].to_string();
                last.sum = f.get(3).copied().unwrap_or_default().to_string();
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build info block as the Go linker lays it out.
    fn blob(go: &str, modinfo: &str) -> Vec<u8> {
        let mut b = vec![0u8; 48];
        b.extend(MAGIC);
        b.extend([8, INLINE]);
        b.extend([0u8; 16]);
        // The linker's sentinels are not UTF-8.
        let mut wrapped = vec![0xffu8; 16];
        wrapped.extend(modinfo.as_bytes());
        wrapped.extend([0xf9u8; 16]);
        for s in [go.as_bytes().to_vec(), wrapped] {
            let mut n = s.len();
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                b.push(if n > 0 { byte | 0x80 } else { byte });
                if n == 0 {
                    break;
                }
            }
            b.extend(&s);
        }
        b.extend([0u8; 64]);
        b
    }

    #[test]
    fn modules_and_replacements() {
        let info = "path\texample.com/m/cmd\n\
                    mod\texample.com/m\tv1.0.0\th1:main=\n\
                    dep\texample.com/a\tv0.1.0\th1:aaa=\n\
                    dep\tk8s.io/api\tv0.0.0\t\n\
                    =>\tk8s.io/api\tv0.35.4\th1:api=\n\
                    build\tGOOS=linux\n";
        let parsed = parse(&blob("go1.26.8", info)).unwrap();
        assert_eq!(parsed.go_version, "go1.26.8");
        let names: Vec<String> = parsed
            .modules
            .iter()
            .map(|m| format!("{}@{} {} {}", m.path, m.version, m.sum, m.main))
            .collect();
        assert_eq!(
            names,
            [
                "example.com/m@v1.0.0 h1:main= true",
                "example.com/a@v0.1.0 h1:aaa= false",
                "k8s.io/api@v0.35.4 h1:api= false",
            ]
        );
        assert_eq!(parsed.modules[1].purl(), "pkg:golang/example.com/a@v0.1.0");
    }

    #[test]
    fn not_a_go_binary() {
        assert!(parse(b"\x7fELF and nothing else").is_err());
        let mut cut = blob("go1.26.8", "mod\tx\tv1\n");
        cut.truncate(70);
        assert!(parse(&cut).is_err());
    }
}
