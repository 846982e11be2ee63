//! Leaving the initramfs: its files freed, the root moved to / and systemd executed.

use super::*;

/// Deletes the initramfs contents (files on the root's device, not crossing mounts, not
/// the new root), as switch_root does, to free the memory.
pub fn clean_initramfs(l: &Layout) {
    fn rm(dir: &Path, dev: u64, keep: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p == keep {
                continue;
            }
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.dev() != dev {
                continue;
            }
            if md.is_dir() {
                rm(&p, dev, keep);
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let Ok(md) = std::fs::metadata(&l.root) else {
        return;
    };
    let sysroot = l.sysroot();
    // The API filesystems are mounts in real life; in case they are not, keep them too.
    let Ok(rd) = std::fs::read_dir(&l.root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p == sysroot || p == l.proc() || p == l.sys() || p == l.dev() || p == l.run() {
            continue;
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.dev() == md.dev() && m.is_dir() => {
                rm(&p, md.dev(), &sysroot);
                let _ = std::fs::remove_dir(&p);
            }
            Ok(m) if m.dev() == md.dev() => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {}
        }
    }
}

/// Moves the API filesystems into the new root, makes it `/` and execs systemd. Returns
/// only on failure.
pub fn switch_root(sys: &dyn Sys, l: &Layout) -> Stage1Error {
    let sysroot = l.sysroot();
    for (from, name) in [
        (l.dev(), "dev"),
        (l.proc(), "proc"),
        (l.sys(), "sys"),
        (l.run(), "run"),
    ] {
        if let Err(e) = sys.mount_move(&from, &sysroot.join(name)) {
            return fail(
                "moving the API filesystems",
                format!("{}: {e}", from.display()),
            );
        }
    }
    clean_initramfs(l);
    if let Err(e) = sys.chdir(&sysroot) {
        return fail(
            "switching root",
            format!("chdir {}: {e}", sysroot.display()),
        );
    }
    if let Err(e) = sys.mount_move(Path::new("."), &l.root) {
        return fail(
            "switching root",
            format!("moving {} to /: {e}", sysroot.display()),
        );
    }
    if let Err(e) = sys.chroot(Path::new(".")) {
        return fail("switching root", format!("chroot: {e}"));
    }
    if let Err(e) = sys.chdir(Path::new("/")) {
        return fail("switching root", format!("chdir /: {e}"));
    }
    let e = sys.exec(Path::new(INIT));
    fail("starting systemd", format!("exec {INIT}: {e}"))
}
