//! Applies the declarative parts of a definition to a Tree: directories, files,
//! symlinks, local files, users and groups, and systemd unit enablement. This is
//! what Debian's maintainer scripts would have done, done without running them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::definition::{Definition, Group, User};
use crate::tree::{Content, Entry, Kind, Tree, TreeError, TreePath};

/// Files smaller than this are kept in memory.
const INLINE_MAX: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{key}: path {path:?}: {message}")]
    BadPath {
        key: &'static str,
        path: String,
        message: String,
    },
    #[error("local file {source_path}: {source}")]
    Local {
        source_path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("systemd.enable: unit {unit} is not in the image (looked in /etc/systemd/system and /usr/lib/systemd/system)")]
    UnitMissing { unit: String },
    #[error("systemd.enable: unit {unit} has no [Install] section with WantedBy= or RequiredBy=")]
    UnitNotInstallable { unit: String },
    #[error("reading {path}: {source}")]
    Read {
        path: TreePath,
        #[source]
        source: std::io::Error,
    },
    #[error("user {user}: group {group} does not exist")]
    UnknownGroup { user: String, group: String },
    #[error("{what} {name}: id {id} is already used by {other}")]
    DuplicateId {
        what: &'static str,
        name: String,
        id: u32,
        other: String,
    },
}

fn path(key: &'static str, raw: &str) -> Result<TreePath, AssembleError> {
    TreePath::from_definition(raw).map_err(|e| AssembleError::BadPath {
        key,
        path: raw.to_string(),
        message: e.to_string(),
    })
}

/// Applies everything in `def` that is not a package or artifact.
pub fn apply(tree: &mut Tree, def: &Definition) -> Result<(), AssembleError> {
    let origin = "definition";
    for d in &def.directories {
        let p = path("directory.path", &d.path)?;
        let mode = d.mode.map_or(0o755, |m| m.0);
        let at = tree.insert(&p, Entry::dir(mode, origin).owned(d.uid, d.gid))?;
        if let Some(e) = tree.get_mut(&at) {
            e.mode = mode;
            e.uid = d.uid;
            e.gid = d.gid;
        }
    }
    for l in &def.locals {
        let p = path("local.dest", &l.dest)?;
        let src = PathBuf::from(&l.source);
        let meta = std::fs::metadata(&src).map_err(|source| AssembleError::Local {
            source_path: src.clone(),
            source,
        })?;
        let content = if meta.len() <= INLINE_MAX {
            Content::inline(std::fs::read(&src).map_err(|source| AssembleError::Local {
                source_path: src.clone(),
                source,
            })?)
        } else {
            Content::OnDisk {
                path: src.clone(),
                size: meta.len(),
            }
        };
        let mode = l.mode.map_or_else(
            || {
                use std::os::unix::fs::PermissionsExt;
                if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                }
            },
            |m| m.0,
        );
        tree.replace(&p, Entry::file(content, mode, "local").at(def.epoch))?;
    }
    for f in &def.files {
        let p = path("file.path", &f.path)?;
        let mode = f.mode.map_or(0o644, |m| m.0);
        let e = Entry::file(Content::inline(f.content.as_bytes().to_vec()), mode, origin)
            .owned(f.uid, f.gid)
            .at(def.epoch);
        tree.replace(&p, e)?;
    }
    for s in &def.symlinks {
        let p = path("symlink.path", &s.path)?;
        tree.replace(&p, Entry::symlink(&s.target, origin).at(def.epoch))?;
    }
    if !def.users.is_empty() || !def.groups.is_empty() || has_base_passwd(tree) {
        write_accounts(tree, &def.users, &def.groups, def.epoch)?;
    }
    for unit in &def.systemd.enable {
        enable_unit(tree, unit, def.epoch)?;
    }
    for unit in &def.systemd.mask {
        let p = path("systemd.mask", &format!("etc/systemd/system/{unit}"))?;
        tree.replace(&p, Entry::symlink("/dev/null", origin).at(def.epoch))?;
    }
    mask_debug_shell(tree, def.epoch)?;
    if let Some(target) = &def.systemd.default_target {
        let p = TreePath::from_definition("etc/systemd/system/default.target").map_err(|e| {
            AssembleError::BadPath {
                key: "systemd.default-target",
                path: target.clone(),
                message: e.to_string(),
            }
        })?;
        tree.replace(
            &p,
            Entry::symlink(&format!("/usr/lib/systemd/system/{target}"), origin).at(def.epoch),
        )?;
    }
    Ok(())
}

const PASSWD_MASTER: &str = "usr/share/base-passwd/passwd.master";
const GROUP_MASTER: &str = "usr/share/base-passwd/group.master";

/// systemd's debug shell is a root shell on tty9 with no password, started by
/// `systemd.debug_shell` on the kernel command line: masked in every image that has it.
fn mask_debug_shell(tree: &mut Tree, epoch: u64) -> Result<(), AssembleError> {
    const UNIT: &str = "debug-shell.service";
    let shipped = ["usr/lib/systemd/system", "lib/systemd/system"]
        .iter()
        .filter_map(|d| TreePath::from_definition(&format!("{d}/{UNIT}")).ok())
        .any(|p| tree.get(&p).is_some());
    if shipped {
        let p = path("systemd.mask", &format!("etc/systemd/system/{UNIT}"))?;
        tree.replace(&p, Entry::symlink("/dev/null", "kiln").at(epoch))?;
    }
    Ok(())
}

fn has_base_passwd(tree: &Tree) -> bool {
    TreePath::from_definition(PASSWD_MASTER)
        .ok()
        .and_then(|p| tree.get(&p))
        .is_some()
}

fn read_text(tree: &Tree, raw: &str) -> Result<Option<String>, AssembleError> {
    let Ok(p) = TreePath::from_definition(raw) else {
        return Ok(None);
    };
    match tree.get(&p).map(|e| &e.kind) {
        Some(Kind::File(c)) => {
            let bytes = c.read_all().map_err(|source| AssembleError::Read {
                path: p.clone(),
                source,
            })?;
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        }
        _ => Ok(None),
    }
}

/// One line of /etc/passwd.
#[derive(Debug, Clone)]
struct PasswdLine {
    name: String,
    uid: u32,
    gid: u32,
    gecos: String,
    home: String,
    shell: String,
}

/// One line of /etc/group.
#[derive(Debug, Clone)]
struct GroupLine {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() != 7 {
                return None;
            }
            Some(PasswdLine {
                name: f[0].into(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                gecos: f[4].into(),
                home: f[5].into(),
                shell: f[6].into(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() != 4 {
                return None;
            }
            Some(GroupLine {
                name: f[0].into(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Writes /etc/passwd, /etc/group, /etc/shadow and /etc/gshadow: Debian's
/// base-passwd master files (when the package is in the tree) plus the definition's
/// users and groups. Every password is locked.
fn write_accounts(
    tree: &mut Tree,
    users: &[User],
    groups: &[Group],
    epoch: u64,
) -> Result<(), AssembleError> {
    let mut passwd = match read_text(tree, PASSWD_MASTER)? {
        Some(t) => parse_passwd(&t),
        None => parse_passwd("root:*:0:0:root:/root:/bin/sh\n"),
    };
    let mut group = match read_text(tree, GROUP_MASTER)? {
        Some(t) => parse_group(&t),
        None => parse_group("root:*:0:\n"),
    };
    for g in groups {
        if let Some(other) = group.iter().find(|x| x.gid == g.gid && x.name != g.name) {
            return Err(AssembleError::DuplicateId {
                what: "group",
                name: g.name.to_string(),
                id: g.gid,
                other: other.name.clone(),
            });
        }
        group.retain(|x| x.name != g.name);
        group.push(GroupLine {
            name: g.name.to_string(),
            gid: g.gid,
            members: Vec::new(),
        });
    }
    for u in users {
        if let Some(other) = passwd.iter().find(|x| x.uid == u.uid && x.name != u.name) {
            return Err(AssembleError::DuplicateId {
                what: "user",
                name: u.name.to_string(),
                id: u.uid,
                other: other.name.clone(),
            });
        }
        let gid = u.gid.unwrap_or(u.uid);
        if !group.iter().any(|g| g.gid == gid) {
            group.push(GroupLine {
                name: u.name.to_string(),
                gid,
                members: Vec::new(),
            });
        }
        for gname in &u.groups {
            let g = group.iter_mut().find(|g| &g.name == gname).ok_or_else(|| {
                AssembleError::UnknownGroup {
                    user: u.name.to_string(),
                    group: gname.clone(),
                }
            })?;
            if !g.members.iter().any(|m| *m == u.name) {
                g.members.push(u.name.to_string());
            }
        }
        passwd.retain(|x| x.name != u.name);
        passwd.push(PasswdLine {
            name: u.name.to_string(),
            uid: u.uid,
            gid,
            gecos: u.gecos.clone(),
            home: u.home.clone().unwrap_or_else(|| "/nonexistent".into()),
            shell: u
                .shell
                .clone()
                .unwrap_or_else(|| "/usr/sbin/nologin".into()),
        });
    }
    passwd.sort_by_key(|p| (p.uid, p.name.clone()));
    group.sort_by_key(|g| (g.gid, g.name.clone()));
    let days = epoch / 86_400;
    let passwd_text: String = passwd
        .iter()
        .map(|p| {
            format!(
                "{}:x:{}:{}:{}:{}:{}\n",
                p.name, p.uid, p.gid, p.gecos, p.home, p.shell
            )
        })
        .collect();
    let shadow_text: String = passwd
        .iter()
        .map(|p| format!("{}:!*:{days}::::::\n", p.name))
        .collect();
    let group_text: String = group
        .iter()
        .map(|g| format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")))
        .collect();
    let gshadow_text: String = group
        .iter()
        .map(|g| format!("{}:!*::{}\n", g.name, g.members.join(",")))
        .collect();
    let shadow_gid = group.iter().find(|g| g.name == "shadow").map(|g| g.gid);
    let secret_mode = if shadow_gid.is_some() { 0o640 } else { 0o600 };
    let files: [(&str, String, u32, u32); 4] = [
        ("etc/passwd", passwd_text, 0o644, 0),
        ("etc/group", group_text, 0o644, 0),
        (
            "etc/shadow",
            shadow_text,
            secret_mode,
            shadow_gid.unwrap_or(0),
        ),
        (
            "etc/gshadow",
            gshadow_text,
            secret_mode,
            shadow_gid.unwrap_or(0),
        ),
    ];
    for (p, text, mode, gid) in files {
        let p = path("user", p)?;
        let e = Entry::file(Content::inline(text.into_bytes()), mode, "accounts")
            .owned(0, gid)
            .at(epoch);
        tree.replace(&p, e)?;
    }
    Ok(())
}

/// `[Install]` keys of a unit file.
fn install_section(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_install = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string())
                .or_default()
                .extend(v.split_whitespace().map(String::from));
        }
    }
    out
}

/// Enables a unit as `systemctl enable` would: symlinks in the `.wants`/`.requires`
/// directories of its `WantedBy=`/`RequiredBy=` targets, plus `Alias=` links.
pub fn enable_unit(tree: &mut Tree, unit: &str, epoch: u64) -> Result<(), AssembleError> {
    // foo@bar.service is installed from the template foo@.service.
    let template = match (unit.find('@'), unit.rfind('.')) {
        (Some(at), Some(dot)) if dot > at + 1 => format!("{}{}", &unit[..=at], &unit[dot..]),
        _ => unit.to_string(),
    };
    let dirs = [
        "etc/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
    ];
    let mut found = None;
    for d in dirs {
        for name in [unit, template.as_str()] {
            let raw = format!("{d}/{name}");
            if let Some(text) = read_text(tree, &raw)? {
                found = Some((format!("/{raw}"), text));
                break;
            }
        }
        if found.is_some() {
            break;
        }
    }
    let (unit_path, text) = found.ok_or_else(|| AssembleError::UnitMissing {
        unit: unit.to_string(),
    })?;
    let unit_path = unit_path
        .replacen("/lib/systemd", "/usr/lib/systemd", 1)
        .replacen("/usr/usr/", "/usr/", 1);
    let install = install_section(&text);
    let mut links = Vec::new();
    for (key, suffix) in [("WantedBy", "wants"), ("RequiredBy", "requires")] {
        for target in install.get(key).into_iter().flatten() {
            links.push(format!("etc/systemd/system/{target}.{suffix}/{unit}"));
        }
    }
    if links.is_empty() {
        return Err(AssembleError::UnitNotInstallable {
            unit: unit.to_string(),
        });
    }
    for alias in install.get("Alias").into_iter().flatten() {
        links.push(format!("etc/systemd/system/{alias}"));
    }
    for l in links {
        let p = path("systemd.enable", &l)?;
        tree.replace(&p, Entry::symlink(&unit_path, "systemd.enable").at(epoch))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePath {
        TreePath::from_definition(s).expect("path")
    }

    fn text(tree: &Tree, s: &str) -> String {
        match &tree.get(&p(s)).expect("exists").kind {
            Kind::File(c) => String::from_utf8(c.read_all().expect("read")).expect("utf8"),
            k => panic!("{s} is a {}", k.name()),
        }
    }

    #[test]
    fn the_debug_shell_is_masked_where_systemd_ships_it() {
        let mut t = Tree::new(0);
        mask_debug_shell(&mut t, 0).expect("nothing to mask");
        let masked = p("etc/systemd/system/debug-shell.service");
        assert!(t.get(&masked).is_none());
        t.insert(
            &p("usr/lib/systemd/system/debug-shell.service"),
            Entry::file(Content::inline(b"[Service]\n".to_vec()), 0o644, "t"),
        )
        .expect("unit");
        mask_debug_shell(&mut t, 0).expect("mask");
        match &t.get(&masked).expect("masked").kind {
            Kind::Symlink(target) => assert_eq!(target, "/dev/null"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn enables_units_like_systemctl() {
        let mut t = Tree::new(0);
        t.insert(&p("lib"), Entry::symlink("usr/lib", "base"))
            .expect("merged usr");
        t.insert(
            &p("usr/lib/systemd/system/firstboot.service"),
            Entry::file(
                Content::inline(b"[Unit]\n[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\nAlias=fb.service\n".to_vec()),
                0o644,
                "t",
            ),
        )
        .expect("unit");
        t.insert(
            &p("usr/lib/systemd/system/getty@.service"),
            Entry::file(
                Content::inline(b"[Install]\nWantedBy=getty.target\n".to_vec()),
                0o644,
                "t",
            ),
        )
        .expect("template");
        enable_unit(&mut t, "firstboot.service", 0).expect("enable");
        enable_unit(&mut t, "getty@ttyS0.service", 0).expect("enable template");
        match &t
            .get(&p(
                "etc/systemd/system/multi-user.target.wants/firstboot.service",
            ))
            .expect("link")
            .kind
        {
            Kind::Symlink(target) => {
                assert_eq!(target, "/usr/lib/systemd/system/firstboot.service")
            }
            k => panic!("{}", k.name()),
        }
        assert!(t.get(&p("etc/systemd/system/fb.service")).is_some());
        match &t
            .get(&p(
                "etc/systemd/system/getty.target.wants/getty@ttyS0.service",
            ))
            .expect("link")
            .kind
        {
            Kind::Symlink(target) => assert_eq!(target, "/usr/lib/systemd/system/getty@.service"),
            k => panic!("{}", k.name()),
        }
        let err = enable_unit(&mut t, "nope.service", 0).expect_err("missing");
        assert!(err.to_string().contains("nope.service"));
    }

    #[test]
    fn accounts_are_declarative_and_locked() {
        let mut t = Tree::new(86_400 * 10);
        t.insert(
            &p(GROUP_MASTER),
            Entry::file(
                Content::inline(b"root:*:0:\nshadow:*:42:\n".to_vec()),
                0o644,
                "base-passwd",
            ),
        )
        .expect("group master");
        t.insert(
            &p(PASSWD_MASTER),
            Entry::file(
                Content::inline(b"root:*:0:0:root:/root:/bin/sh\n".to_vec()),
                0o644,
                "base-passwd",
            ),
        )
        .expect("passwd master");
        let users = vec![User {
            name: "etcd".parse().unwrap(),
            uid: 990,
            gid: None,
            gecos: String::new(),
            home: Some("/var/lib/etcd".into()),
            shell: None,
            groups: vec!["shadow".into()],
        }];
        let epoch = t.epoch();
        write_accounts(&mut t, &users, &[], epoch).expect("accounts");
        assert_eq!(
            text(&t, "etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\netcd:x:990:990::/var/lib/etcd:/usr/sbin/nologin\n"
        );
        assert_eq!(
            text(&t, "etc/group"),
            "root:x:0:\nshadow:x:42:etcd\netcd:x:990:\n"
        );
        assert_eq!(
            text(&t, "etc/shadow"),
            "root:!*:10::::::\netcd:!*:10::::::\n"
        );
        let shadow = t.get(&p("etc/shadow")).expect("shadow");
        assert_eq!((shadow.mode, shadow.gid), (0o640, 42));
        let bad = vec![User {
            groups: vec!["nogroup-here".into()],
            ..users[0].clone()
        }];
        assert!(matches!(
            write_accounts(&mut t, &bad, &[], 0),
            Err(AssembleError::UnknownGroup { .. })
        ));
        let dup = vec![User {
            name: "other".parse().unwrap(),
            uid: 0,
            ..users[0].clone()
        }];
        assert!(matches!(
            write_accounts(&mut t, &dup, &[], 0),
            Err(AssembleError::DuplicateId { .. })
        ));
    }
}
