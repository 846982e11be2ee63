//! RealSys against the real kernel: loop-attach a squashfs made by mksquashfs and mount it.
//! Needs root, /dev/loop-control and mksquashfs; skipped (with a message) otherwise.

use std::path::Path;
use std::process::Command;

use firstboot::sys::{MountFlags, RealSys, Sys};

#[test]
fn loop_attach_and_mount_a_real_squashfs() {
    if !rustix::process::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipping: needs root and /dev/loop-control");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/os-release"), "ID=kiln\n").unwrap();
    let img = t.path().join("root.squashfs");
    let Ok(out) = Command::new("mksquashfs")
        .arg(&src)
        .arg(&img)
        .args(["-quiet", "-noappend"])
        .output()
    else {
        eprintln!("skipping: mksquashfs not installed");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sys = RealSys;
    let dev = sys.loop_attach(Path::new("/dev"), &img).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = sys.mount(
        &dev.to_string_lossy(),
        &mnt,
        "squashfs",
        MountFlags::RDONLY,
        "",
    );
    let content = std::fs::read_to_string(mnt.join("etc/os-release"));
    if mounted.is_ok() {
        sys.umount(&mnt).unwrap();
    }
    // Detach the loop device again (losetup -d), whatever happened.
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    mounted.unwrap();
    assert_eq!(content.unwrap(), "ID=kiln\n");
}
