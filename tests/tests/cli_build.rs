//! `kiln build --format tar` and `kiln lock` through the real binary: reproducibility
//! and every bad input (clear message, nothing changed in the cache or the output).

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln::digest::{Algorithm, Digest};
use kiln_tests::mirror::{Behaviour, Mirror};
use kiln_tests::{kiln, snapshot, text};

/// The shared cache (real .debs downloaded once).
fn shared_cache() -> PathBuf {
    std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kiln")
        })
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write definition");
    p
}

const HEAD: &str =
    "[image]\nname = \"t\"\nversion = \"1\"\nepoch = 1767225600\noutputs = [\"tar\"]\n";

#[test]
fn minimal_tar_is_reproducible_across_dirs_times_and_umask() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = shared_cache();
    let a = tmp.path().join("a");
    let b = tmp.path().join("deeper/b");
    let o = kiln(
        &[
            "build",
            "images/minimal.toml",
            "--format",
            "tar",
            "--out",
            a.to_str().expect("utf8"),
        ],
        &[("KILN_CACHE", &cache)],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A different umask for the second build.
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "umask 077 && exec {} build images/minimal.toml --format tar --out {}",
            kiln_tests::kiln_bin().display(),
            b.display()
        ))
        .current_dir(kiln_tests::workspace_root())
        .env("KILN_CACHE", &cache);
    let o = c.output().expect("second build");
    assert!(o.status.success(), "{}", text(&o));
    let (sa, sb) = (snapshot(&a), snapshot(&b));
    assert_eq!(
        sa.keys().collect::<Vec<_>>(),
        [
            "SHA256SUMS",
            "manifest.json",
            "minimal.tar",
            "sbom.spdx.json"
        ]
    );
    assert_eq!(sa, sb, "outputs differ between the two builds");

    // The tar is what GNU tar sees: numeric root owners, clamped mtimes, merged /usr.
    let listing = std::process::Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvf"])
        .arg(a.join("minimal.tar"))
        .output()
        .expect("tar runs");
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for want in [
        "./bin -> usr/bin",
        "./usr/lib/systemd/systemd",
        "./etc/passwd",
        "./boot/vmlinuz-",
    ] {
        assert!(listing.contains(want), "tar lacks {want}");
    }
    assert!(
        !listing
            .lines()
            .any(|l| l.contains("2026-01-01 00:00:01") || l.contains(" 2027-")),
        "an mtime is later than the epoch"
    );
    // The module indexes depmod makes (Debian's kernel package ships none): modprobe and
    // the kernel's module autoloading need them. Read modules.dep with tar as the oracle.
    let dep_path = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|p| p.ends_with("/modules.dep"))
        .expect("modules.dep in the tar")
        .to_string();
    let dep = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(a.join("minimal.tar"))
        .arg(&dep_path)
        .output()
        .expect("tar runs");
    let dep = String::from_utf8_lossy(&dep.stdout);
    let line = dep
        .lines()
        .find(|l| l.contains("/br_netfilter.ko"))
        .unwrap_or_else(|| panic!("no br_netfilter in {dep_path}"));
    assert!(line.contains("bridge.ko"), "{line}");
    // SHA256SUMS verifies with the real tool.
    let st = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&a)
        .output()
        .expect("sha256sum");
    assert!(st.status.success(), "{}", text(&st));
    // The manifest lists every locked .deb with its checksum.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("manifest.json")).expect("manifest"))
            .expect("json");
    let lock = std::fs::read_to_string(kiln_tests::workspace_root().join("images/minimal.lock"))
        .expect("lock");
    let n_debs = lock.matches("[[debian.deb]]").count();
    let inputs = m["inputs"].as_array().expect("inputs");
    let debs = inputs.iter().filter(|i| i["kind"] == "deb").count();
    assert_eq!(debs, n_debs, "every locked .deb is an input");
    assert!(
        inputs
            .iter()
            .any(|i| i["kind"] == "local" && i["name"] == "firstboot"),
        "the firstboot binary is an input"
    );
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("sbom.spdx.json")).expect("sbom"))
            .expect("json");
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    kiln_tests::validate_spdx(&a.join("sbom.spdx.json"));
    // The image itself, every input (the .debs and firstboot).
    assert_eq!(
        sbom["packages"].as_array().map(Vec::len),
        Some(inputs.len() + 1)
    );
    let systemd = sbom["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "systemd"))
        .expect("systemd in sbom");
    assert_ne!(
        systemd["licenseDeclared"], "NOASSERTION",
        "systemd's DEP-5 license is read"
    );
}

#[test]
fn lock_check_is_offline_and_detects_drift() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = kiln_tests::workspace_root();
    let o = kiln(&["lock", "images/minimal.toml", "--check"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let def = std::fs::read_to_string(root.join("images/minimal.toml")).expect("def");
    let lock = std::fs::read_to_string(root.join("images/minimal.lock")).expect("lock");
    let d = write(
        tmp.path(),
        "m.toml",
        &def.replace("\"e2fsprogs\",", "\"e2fsprogs\",\n  \"busybox\","),
    );
    write(tmp.path(), "m.lock", &lock);
    let before = snapshot(tmp.path());
    let o = kiln(&["lock", d.to_str().expect("utf8"), "--check"], &[]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "drift has its own code: {}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("package busybox is in the definition but not in the lock"),
        "{err}"
    );
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn bad_definitions_are_located_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).expect("out");
    std::fs::write(out.join("keep.txt"), b"old output").expect("seed");
    let cases: &[(&str, String, &str)] = &[
        ("malformed.toml", format!("{HEAD}[debian\n"), "malformed.toml:6:"),
        ("unknown.toml", format!("{HEAD}colour = \"red\"\n"), "unknown field `colour`"),
        (
            "traversal.toml",
            format!("{HEAD}[[file]]\npath = \"/etc/../../x\"\ncontent = \"\"\n"),
            "file.path",
        ),
        (
            "digest.toml",
            format!("{HEAD}[[artifact]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/a\"\nchecksum = \"sha256:abc\"\ndest = \"/a\"\n"),
            "digest.toml:9:12:",
        ),
    ];
    for (name, body, want) in cases {
        let d = write(tmp.path(), name, body);
        let before = (snapshot(&out), snapshot(&cache));
        let o = kiln(
            &[
                "build",
                d.to_str().expect("utf8"),
                "--out",
                out.to_str().expect("utf8"),
            ],
            &[("KILN_CACHE", &cache)],
        );
        assert!(!o.status.success(), "{name}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{name}: wanted {want:?} in {err}");
        assert_eq!(
            (snapshot(&out), snapshot(&cache)),
            before,
            "{name} changed something"
        );
    }
}

/// A tar.gz whose member climbs out of the root.
fn hostile_tgz() -> Vec<u8> {
    let mut raw = Vec::new();
    {
        let mut b = tar::Builder::new(&mut raw);
        let mut h = tar::Header::new_gnu();
        let body = b"owned";
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly: the tar crate refuses `..` in set_path.
        h.as_old_mut().name[..12].copy_from_slice(b"../../escape");
        h.set_cksum();
        b.append(&h, &body[..]).expect("append");
        b.finish().expect("finish");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).expect("gz");
    gz.finish().expect("gz")
}

#[test]
fn artifacts_wrong_checksum_hostile_archive_and_offline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let good = b"#!/bin/sh\necho hello\n".to_vec();
    let bad_tgz = hostile_tgz();
    let mirror = Mirror::start([
        ("/tool", Behaviour::Serve(good.clone())),
        ("/evil.tgz", Behaviour::Serve(bad_tgz.clone())),
    ])
    .expect("mirror");
    let sha = |b: &[u8]| Digest::of_bytes(Algorithm::Sha256, b).to_string();
    let art = |name: &str, path: &str, sum: &str, tail: &str| {
        format!("[[artifact]]\nname = \"{name}\"\nurl = \"https://dl.example.invalid{path}\"\nchecksum = \"{sum}\"\n{tail}")
    };
    let rewrite = format!("https://dl.example.invalid={}", mirror.url());
    let run = |def: &Path, extra: &[&str]| {
        let mut args = vec![
            "build",
            def.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
            "--mirror",
            &rewrite,
        ];
        args.extend_from_slice(extra);
        kiln(&args, &[("KILN_CACHE", &cache)])
    };
    let lock_of = |def: &Path| {
        let o = kiln(
            &["lock", def.to_str().expect("utf8")],
            &[("KILN_CACHE", &cache)],
        );
        assert!(o.status.success(), "{}", text(&o));
    };

    // Wrong checksum: both digests and the URL named, nothing cached, nothing written.
    let wrong = Digest::of_bytes(Algorithm::Sha256, b"something else").to_string();
    let d = write(
        tmp.path(),
        "wrong.toml",
        &format!(
            "{HEAD}{}",
            art("tool", "/tool", &wrong, "dest = \"/usr/bin/tool\"\n")
        ),
    );
    lock_of(&d);
    let before = (snapshot(&out), snapshot(&cache.join("blobs")));
    let o = run(&d, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&wrong) && err.contains(&sha(&good)) && err.contains("/tool"),
        "{err}"
    );
    assert_eq!((snapshot(&out), snapshot(&cache.join("blobs"))), before);

    // Offline with an empty cache names the first missing blob.
    let d = write(
        tmp.path(),
        "ok.toml",
        &format!(
            "{HEAD}{}",
            art("tool", "/tool", &sha(&good), "dest = \"/usr/bin/tool\"\n")
        ),
    );
    lock_of(&d);
    let o = run(&d, &["--offline"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("first missing blob tool"),
        "{}",
        text(&o)
    );
    assert_eq!(mirror.total_requests(), 1, "offline made no request");

    // The right checksum is accepted and the file lands where the definition says.
    let o = run(&d, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let listing = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(out.join("t.tar"))
        .output()
        .expect("tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("./usr/bin/tool")),
        "{listing}"
    );

    // A hostile archive is refused naming the artifact and the member; the earlier
    // good output is untouched.
    let before = snapshot(&out);
    let d = write(
        tmp.path(),
        "evil.toml",
        &format!(
            "{HEAD}{}",
            art(
                "evil",
                "/evil.tgz",
                &sha(&bad_tgz),
                "extract = { \"\" = \"/opt/evil\" }\n"
            )
        ),
    );
    lock_of(&d);
    let o = run(&d, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("evil") && err.contains(".."), "{err}");
    assert_eq!(snapshot(&out), before);
}

/// `[disk] iso-installer = false`: the ISO has only the live entry and no payload, while
/// the minimal image's ISO (same inputs otherwise) has both. Here rather than with the
/// installer's VM tests, so that its build does not slow their boots.
#[test]
fn live_only_iso_leaves_the_installer_out() {
    let with = kiln_tests::images::minimal();
    let t = tempfile::tempdir().expect("tmp");
    let root = kiln_tests::workspace_root();
    // A low zstd level: this test is about what goes on the ISO, not its squashfs.
    let def = t.path().join("live.toml");
    kiln_tests::copy_definitions(t.path());
    std::fs::write(
        &def,
        "extends = \"minimal.toml\"\n[image]\nname = \"live\"\noutputs = [\"iso\"]\ncompression-level = 1\n[disk]\niso-installer = false\n",
    )
    .expect("definition");
    std::fs::copy(root.join("images/minimal.lock"), t.path().join("live.lock")).expect("lock");
    let out = t.path().join("out");
    let o = kiln_tests::kiln(
        &[
            "build",
            def.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let run = |c: &mut std::process::Command| {
        let o = c.output().expect("command runs");
        assert!(o.status.success(), "{c:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let listing = |iso: &Path| {
        run(std::process::Command::new("xorriso")
            .arg("-indev")
            .arg(iso)
            .args(["-find", "/kiln", "-type", "f"]))
    };
    let live = out.join("live.iso");
    let files = listing(&live);
    assert!(files.contains("'/kiln/root.squashfs'"), "{files}");
    assert!(!files.contains("install.cpio"), "{files}");
    assert!(
        listing(&with.iso()).contains("'/kiln/install.cpio'"),
        "the default keeps the installer"
    );
    let cfg = t.path().join("grub.cfg");
    run(std::process::Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&live)
        .args(["-extract", "/boot/grub/grub.cfg"])
        .arg(&cfg));
    let menu = std::fs::read_to_string(&cfg).expect("grub.cfg");
    assert!(menu.contains("kiln.root=iso"), "{menu}");
    assert!(!menu.contains("kiln.install"), "{menu}");
    // Nothing else was asked for.
    assert!(!out.join("live-pxe").exists() && !out.join("live.qcow2").exists());
    let (a, b) = (
        std::fs::metadata(&live).expect("live").len(),
        std::fs::metadata(with.iso()).expect("minimal").len(),
    );
    eprintln!("live-only ISO {a} bytes, with the installer {b} bytes");
}

/// The host's own copy of the suite's InRelease, as apt fetched it (`ci/setup` runs
/// `apt-get update`): real bytes signed by Debian's archive keys.
fn host_in_release(suite: &str) -> Vec<u8> {
    let dir = Path::new("/var/lib/apt/lists");
    let name = format!("_dists_{suite}_InRelease");
    let found = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (ci/setup runs apt-get update)", dir.display()))
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(&name))
        .unwrap_or_else(|| panic!("no *{name} under {} (run apt-get update)", dir.display()));
    std::fs::read(found.path()).expect("read the InRelease")
}

/// `kiln lock` believes a Release only when Debian's keys signed it: the real InRelease
/// passes the signature check (the lock then goes on to the index), the same bytes with one
/// byte of the signed text changed are refused naming the file, and the lock is untouched.
#[test]
fn lock_refuses_a_tampered_in_release_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = kiln_tests::workspace_root();
    let real = host_in_release("bookworm");
    let signed = String::from_utf8(real.clone()).expect("InRelease is text");
    let at = signed
        .find("Codename: bookworm")
        .expect("signed text names the codename");
    let mut tampered = real.clone();
    tampered[at + "Codename: bookwor".len()] = b'n';
    assert_ne!(tampered, real);

    for (bytes, good) in [(tampered, false), (real, true)] {
        let mirror = Mirror::start([("/debian/dists/bookworm/InRelease", Behaviour::Serve(bytes))])
            .expect("mirror");
        let def = std::fs::read_to_string(root.join("images/minimal.toml"))
            .expect("def")
            .replace(
                "suite = \"bookworm\"",
                &format!("suite = \"bookworm\"\nmirror = \"{}/debian\"", mirror.url()),
            );
        let d = write(tmp.path(), "m.toml", &def);
        let lock = std::fs::read_to_string(root.join("images/minimal.lock")).expect("lock");
        write(tmp.path(), "m.lock", &lock);
        let before = snapshot(tmp.path());
        let o = kiln(&["lock", d.to_str().expect("utf8")], &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        if good {
            assert!(!err.contains("no valid signature"), "{err}");
            assert!(
                err.contains("binary-amd64/Packages"),
                "on to the index: {err}"
            );
        } else {
            assert!(
                err.contains(&format!("{}/debian/dists/bookworm/InRelease", mirror.url()))
                    && err.contains("no valid signature"),
                "{err}"
            );
            assert_eq!(mirror.requests("/debian/dists/bookworm/InRelease"), 1);
        }
        assert_eq!(snapshot(tmp.path()), before, "nothing changed");
    }
}
