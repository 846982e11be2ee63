//! Choosing the install disk: the `kiln.install=` selector, matching it against the disks
//! seen, the "why not" report for every disk, and the safety rule. Pure logic.

/// A whole disk as the installer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vda`); the node is `/dev/<name>`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size in bytes.
    pub sector: u64,
    pub removable: bool,
    pub read_only: bool,
    /// Empty when the disk does not say.
    pub model: String,
    pub serial: String,
    pub wwid: String,
    /// `gpt` or `mbr`, if the disk has a partition table.
    pub table: Option<String>,
    /// Filesystem signatures found, e.g. `ext4 (whole disk)`, `vfat (partition 2)`.
    pub filesystems: Vec<String>,
    /// Whether a GPT partition is named `kiln-data`.
    pub kiln_data: bool,
    /// Whether the first bytes read (the probe's window) hold anything but zeros.
    pub data: bool,
}

impl Disk {
    /// `/dev/<name>`.
    pub fn path(&self) -> String {
        format!("/dev/{}", self.name)
    }

    /// One line for the console: path, size, model, serial, table, filesystems.
    pub fn describe(&self) -> String {
        let q = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                format!("{s:?}")
            }
        };
        let mut s = format!(
            "{} {} model {} serial {} partition table {}",
            self.path(),
            human_size(self.size),
            q(&self.model),
            q(&self.serial),
            self.table.as_deref().unwrap_or("none"),
        );
        if !self.filesystems.is_empty() {
            s.push_str(&format!(", holds {}", self.filesystems.join(", ")));
        }
        if self.kiln_data {
            s.push_str(", has a kiln-data partition");
        }
        if self.removable {
            s.push_str(", removable");
        }
        s
    }
}

/// One condition of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    SizeAtLeast(u64),
    SizeAtMost(u64),
    /// Glob (`*` matches anything), ASCII case-insensitive.
    Model(String),
    Serial(String),
    Wwid(String),
}

/// The value of `kiln.install=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The first non-removable, writable disk without a partition table, large enough.
    Auto,
    /// Exactly this device (`/dev/vda`).
    Path(String),
    /// The first disk meeting every condition (comma-separated).
    All(Vec<Cond>),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Auto => write!(f, "auto"),
            Selector::Path(p) => write!(f, "{p}"),
            Selector::All(cs) => {
                let parts: Vec<String> = cs
                    .iter()
                    .map(|c| match c {
                        Cond::SizeAtLeast(n) => format!("size>={}", size_str(*n)),
                        Cond::SizeAtMost(n) => format!("size<={}", size_str(*n)),
                        Cond::Model(m) => format!("model={m}"),
                        Cond::Serial(m) => format!("serial={m}"),
                        Cond::Wwid(m) => format!("wwid={m}"),
                    })
                    .collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// `20G` for 20 GiB: the largest unit that divides exactly.
fn size_str(n: u64) -> String {
    for (shift, u) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n > 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{u}", n >> shift);
        }
    }
    n.to_string()
}

/// Parses `20G`, `512M`, `1T`, `4096` (powers of 1024; `GiB`/`GB`/`G` alike).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let unit = s[digits..].to_ascii_uppercase();
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Bytes as `8.0 GiB`, `512.0 MiB`, `100 B`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Parses a selector.
pub fn parse(s: &str) -> Result<Selector, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty selector (auto, /dev/<disk>, or size>=, model=, serial=, wwid= conditions joined by commas)".into());
    }
    if s == "auto" {
        return Ok(Selector::Auto);
    }
    if s.starts_with("/dev/") {
        return Ok(Selector::Path(s.to_string()));
    }
    let mut conds = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let size = |v: &str| {
            parse_size(v).ok_or_else(|| format!("{part:?}: {v:?} is not a size (e.g. 20G)"))
        };
        let c = if let Some(v) = part.strip_prefix("size>=") {
            Cond::SizeAtLeast(size(v)?)
        } else if let Some(v) = part.strip_prefix("size<=") {
            Cond::SizeAtMost(size(v)?)
        } else if let Some(v) = part.strip_prefix("model=") {
            Cond::Model(v.to_string())
        } else if let Some(v) = part.strip_prefix("serial=") {
            Cond::Serial(v.to_string())
        } else if let Some(v) = part.strip_prefix("wwid=") {
            Cond::Wwid(v.to_string())
        } else {
            return Err(format!(
                "unknown condition {part:?} (size>=, size<=, model=, serial=, wwid=)"
            ));
        };
        conds.push(c);
    }
    Ok(Selector::All(conds))
}

/// `*`-glob match, ASCII case-insensitive.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !t.starts_with(first) || t.len() < first.len() + last.len() || !t.ends_with(last) {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Why `disk` does not match `sel` for an image of `min_size` bytes; empty when it does.
pub fn why_not(sel: &Selector, disk: &Disk, min_size: u64) -> Vec<String> {
    let mut no = Vec::new();
    let text = |what: &str, have: &str, want: &str| {
        if have.is_empty() {
            format!("no {what} (wanted {want:?})")
        } else {
            format!("{what} {have:?} is not {want:?}")
        }
    };
    match sel {
        Selector::Auto => {
            if disk.removable {
                no.push("removable".to_string());
            }
            if let Some(t) = &disk.table {
                no.push(format!("has a partition table ({t})"));
            }
        }
        Selector::Path(p) => {
            if *p != disk.path() {
                no.push(format!("not {p}"));
            }
        }
        Selector::All(conds) => {
            for c in conds {
                match c {
                    Cond::SizeAtLeast(n) if disk.size < *n => no.push(format!(
                        "size {} < {}",
                        human_size(disk.size),
                        human_size(*n)
                    )),
                    Cond::SizeAtMost(n) if disk.size > *n => no.push(format!(
                        "size {} > {}",
                        human_size(disk.size),
                        human_size(*n)
                    )),
                    Cond::Model(m) if !glob(m, &disk.model) => {
                        no.push(text("model", &disk.model, m))
                    }
                    Cond::Serial(m) if !glob(m, &disk.serial) => {
                        no.push(text("serial", &disk.serial, m))
                    }
                    Cond::Wwid(m) if !glob(m, &disk.wwid) => no.push(text("wwid", &disk.wwid, m)),
                    _ => {}
                }
            }
        }
    }
    if disk.size < min_size {
        no.push(format!(
            "smaller than the image ({} < {})",
            human_size(disk.size),
            human_size(min_size)
        ));
    }
    if disk.read_only {
        no.push("read-only".to_string());
    }
    if disk.sector != 512 {
        no.push(format!(
            "{}-byte sectors (the image has 512-byte sectors)",
            disk.sector
        ));
    }
    no
}

/// The first disk (in the order given) that `sel` matches.
pub fn choose<'a>(sel: &Selector, disks: &'a [Disk], min_size: u64) -> Option<&'a Disk> {
    disks.iter().find(|d| why_not(sel, d, min_size).is_empty())
}

/// The console report: every disk seen and, for each, why it was ruled out.
pub fn report(sel: &Selector, disks: &[Disk], min_size: u64) -> Vec<String> {
    let mut out = vec![format!(
        "disks seen for kiln.install={sel} (image needs {}):",
        human_size(min_size)
    )];
    if disks.is_empty() {
        out.push("  (no disks)".to_string());
    }
    for d in disks {
        let why = why_not(sel, d, min_size);
        let verdict = if why.is_empty() {
            "matches".to_string()
        } else {
            format!("ruled out: {}", why.join("; "))
        };
        out.push(format!("  {}: {verdict}", d.describe()));
    }
    out
}

/// The safety rule: only a blank disk is overwritten without `kiln.install.wipe=true`. A
/// disk is not blank when it holds a Kiln data partition, any filesystem, any partition
/// table, or any other data (a signature Kiln does not know) in its first bytes.
pub fn safety(disk: &Disk, wipe: bool) -> Result<(), String> {
    let mut what = disk.filesystems.clone();
    if disk.kiln_data {
        what.insert(0, "a kiln-data partition".into());
    }
    if what.is_empty() {
        if let Some(t) = &disk.table {
            what.push(format!("a {t} partition table"));
        } else if disk.data {
            what.push("data of no kind Kiln knows in its first 68 KiB".into());
        }
    }
    if wipe || what.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} holds {}; not overwritten without kiln.install.wipe=true",
        disk.path(),
        what.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn disk(name: &str, size: u64) -> Disk {
        Disk {
            name: name.into(),
            size,
            sector: 512,
            ..Disk::default()
        }
    }

    #[test]
    fn sizes_and_globs() {
        assert_eq!(parse_size("20G"), Some(20 * G));
        assert_eq!(parse_size("20GiB"), Some(20 * G));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("5X"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(human_size(8 * G), "8.0 GiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(100), "100 B");
        assert!(glob("Samsung*", "SAMSUNG SSD 870"));
        assert!(glob("*SSD*", "Samsung SSD 870"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("exact", "EXACT"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn selectors_parse() {
        assert_eq!(parse("auto").unwrap(), Selector::Auto);
        assert_eq!(
            parse("/dev/vdb").unwrap(),
            Selector::Path("/dev/vdb".into())
        );
        assert_eq!(
            parse("size>=20G,model=QEMU*, serial=abc").unwrap(),
            Selector::All(vec![
                Cond::SizeAtLeast(20 * G),
                Cond::Model("QEMU*".into()),
                Cond::Serial("abc".into())
            ])
        );
        assert_eq!(
            parse("wwid=naa.5000,size<=1T").unwrap().to_string(),
            "wwid=naa.5000,size<=1T"
        );
        assert!(parse("size>=lots").is_err());
        assert!(parse("colour=blue").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn auto_takes_the_first_blank_fixed_disk_large_enough() {
        let mut usb = disk("sda", 32 * G);
        usb.removable = true;
        let mut used = disk("vda", 100 * G);
        used.table = Some("gpt".into());
        let small = disk("vdb", 4 * G);
        let good = disk("vdc", 10 * G);
        let later = disk("vdd", 10 * G);
        let disks = vec![usb, used, small, good, later];
        let d = choose(&Selector::Auto, &disks, 8 * G).unwrap();
        assert_eq!(d.name, "vdc");
        let r = report(&Selector::Auto, &disks, 8 * G);
        assert_eq!(r.len(), 6, "{r:#?}");
        assert!(r[0].contains("kiln.install=auto") && r[0].contains("8.0 GiB"));
        assert!(r[1].contains("/dev/sda 32.0 GiB") && r[1].ends_with("ruled out: removable"));
        assert!(
            r[2].ends_with("ruled out: has a partition table (gpt)"),
            "{}",
            r[2]
        );
        assert!(
            r[3].ends_with("ruled out: smaller than the image (4.0 GiB < 8.0 GiB)"),
            "{}",
            r[3]
        );
        assert!(r[4].ends_with(": matches"));
    }

    #[test]
    fn nothing_matches_and_every_disk_says_why() {
        let mut a = disk("vda", 10 * G);
        a.model = "QEMU HARDDISK".into();
        a.serial = "S1".into();
        let mut b = disk("vdb", 30 * G);
        b.read_only = true;
        let mut c = disk("nvme0n1", 30 * G);
        c.sector = 4096;
        let disks = vec![a, b, c];
        let sel = parse("size>=20G,model=Samsung*,serial=X*").unwrap();
        assert!(choose(&sel, &disks, 8 * G).is_none());
        let r = report(&sel, &disks, 8 * G);
        assert!(r[1].contains("model \"QEMU HARDDISK\" serial \"S1\" partition table none"));
        assert!(
            r[1].ends_with(
                "ruled out: size 10.0 GiB < 20.0 GiB; model \"QEMU HARDDISK\" is not \"Samsung*\"; serial \"S1\" is not \"X*\""
            ),
            "{}",
            r[1]
        );
        assert!(r[2].contains("no model (wanted \"Samsung*\")"), "{}", r[2]);
        assert!(r[2].ends_with("; read-only"), "{}", r[2]);
        assert!(r[3].contains("4096-byte sectors"), "{}", r[3]);
        // An explicit path ignores the partition table but not the size.
        let sel = parse("/dev/vda").unwrap();
        assert_eq!(choose(&sel, &disks, 8 * G).unwrap().name, "vda");
        assert!(choose(&sel, &disks, 16 * G).is_none());
        assert!(report(&sel, &disks, 8 * G)[2].contains("not /dev/vda"));
        assert_eq!(
            report(&Selector::Auto, &[], G),
            vec![
                "disks seen for kiln.install=auto (image needs 1.0 GiB):".to_string(),
                "  (no disks)".to_string()
            ]
        );
    }

    #[test]
    fn only_a_blank_disk_is_overwritten_without_wipe() {
        let blank = disk("vda", 10 * G);
        assert!(safety(&blank, false).is_ok());
        let mut fs = blank.clone();
        fs.filesystems = vec!["ext4 (whole disk)".into()];
        let e = safety(&fs, false).unwrap_err();
        assert_eq!(
            e,
            "/dev/vda holds ext4 (whole disk); not overwritten without kiln.install.wipe=true"
        );
        assert!(safety(&fs, true).is_ok());
        let mut kiln = blank.clone();
        kiln.table = Some("gpt".into());
        kiln.kiln_data = true;
        assert!(safety(&kiln, false)
            .unwrap_err()
            .contains("holds a kiln-data partition;"));
        // A partition table alone, or bytes of no known kind, are protected too.
        let mut table = blank.clone();
        table.table = Some("mbr".into());
        assert_eq!(
            safety(&table, false).unwrap_err(),
            "/dev/vda holds a mbr partition table; not overwritten without kiln.install.wipe=true"
        );
        assert!(safety(&table, true).is_ok());
        let mut unknown = blank;
        unknown.data = true;
        assert!(safety(&unknown, false)
            .unwrap_err()
            .contains("holds data of no kind Kiln knows"));
        assert!(safety(&unknown, true).is_ok());
    }
}
