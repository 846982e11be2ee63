//! The Debian resolver against apt itself, on the real mirror of the host's apt
//! configuration: the locked package *names* must equal what
//! `apt-get install --simulate` installs on an empty system.
//!
//! The host's apt configuration also has the suite's -updates and -security pockets,
//! while Kiln locks one suite (a newer kernel ABI in -security even changes a package
//! *name*). So apt is run with a sources list holding only `deb MIRROR SUITE main`,
//! reading the same apt lists the host already has. Names must match; versions must
//! match too when the host's lists are the same Release as the live mirror's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kiln::debian::{self, DebianRequest};
use kiln_tests::run;

const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "e2fsprogs",
];

/// GET into memory, at most 300 s in all; a 4xx or 5xx is an error (ureq's default).
fn http_get(url: &str) -> Result<Vec<u8>, ureq::Error> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .new_agent();
    agent
        .get(url)
        .call()?
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
}

/// The keys the host's apt trusts for the suite at `mirror`, read by Kiln's own reader.
fn host_keyring(mirror: &str) -> debian::Keyring {
    debian::sources::host_keyring(
        Path::new("/etc/apt"),
        mirror,
        SUITE,
        Path::new("/usr/share/keyrings/debian-archive-keyring.gpg"),
    )
    .expect("the host's apt keys")
}

fn ensure_apt_lists() {
    let has_lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if !has_lists {
        run(Command::new("apt-get").args(["update", "-qq"]));
    }
}

/// `Essential: yes` or `Priority: required` packages of the suite's main amd64 index as
/// apt has it, decompressed by apt's own helper and filtered by awk (an implementation
/// independent of Kiln's parser).
fn oracle_essential_set() -> BTreeSet<String> {
    let lists: Vec<String> = std::fs::read_dir("/var/lib/apt/lists")
        .expect("apt lists")
        .filter_map(Result::ok)
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.contains(&format!("_dists_{SUITE}_main_binary-amd64_Packages")))
        .collect();
    assert_eq!(lists.len(), 1, "one {SUITE} main amd64 list: {lists:?}");
    let script = format!(
        "/usr/lib/apt/apt-helper cat-file '{}' | awk 'BEGIN {{ RS = \"\"; FS = \"\\n\" }} \
         /(^|\\n)(Essential: yes|Priority: required)(\\n|$)/ {{ \
           for (i = 1; i <= NF; i++) if ($i ~ /^Package: /) print substr($i, 10) }}'",
        lists[0]
    );
    let out = run(Command::new("sh").args(["-c", &script]));
    let set: BTreeSet<String> = out.lines().map(str::to_string).collect();
    assert!(set.len() > 20, "implausibly small Essential set: {set:?}");
    set
}

/// What `apt-get install --simulate` would install on an empty system from `mirror`
/// `SUITE` main only: name -> version.
fn oracle_install_set(mirror: &str, packages: &[String]) -> BTreeMap<String, String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let status = tmp.path().join("status");
    std::fs::write(&status, "").expect("empty status");
    let sources = tmp.path().join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [trusted=yes] {mirror} {SUITE} main\n"),
    )
    .expect("sources.list");
    let parts = tmp.path().join("sources.list.d");
    std::fs::create_dir(&parts).expect("parts dir");
    let out = run(Command::new("apt-get")
        .args([
            "install",
            "--simulate",
            "--no-install-recommends",
            "-o",
            "Debug::NoLocking=1",
            "-o",
            "APT::Get::Show-Versions=0",
        ])
        .arg("-o")
        .arg(format!("Dir::State::status={}", status.display()))
        .arg("-o")
        .arg(format!("Dir::Etc::SourceList={}", sources.display()))
        .arg("-o")
        .arg(format!("Dir::Etc::SourceParts={}", parts.display()))
        .args(packages));
    // `Inst NAME (VERSION RELEASE [ARCH])`
    let set: BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let version = w.next()?.strip_prefix('(')?;
            Some((name.split(':').next()?.to_string(), version.to_string()))
        })
        .collect();
    assert!(!set.is_empty(), "apt-get installed nothing:\n{out}");
    set
}

#[test]
fn closure_matches_apt_get_simulate() {
    ensure_apt_lists();
    let mirror = debian::host_mirror(Path::new("/etc/apt"), SUITE).expect("host mirror");
    let req = DebianRequest {
        mirror,
        suite: SUITE.into(),
        components: vec!["main".into()],
        arch: "amd64".into(),
        packages: PACKAGES.iter().map(|s| s.to_string()).collect(),
        exclude: vec![],
        essential: true,
    };
    let started = std::time::Instant::now();
    let keyring = host_keyring(&req.mirror);
    let (lock, signer) = debian::lock(&req, &[], &keyring, &http_get).expect("lock resolves");
    eprintln!("Release signed by {signer}");
    eprintln!(
        "locked {} packages in {:.1}s",
        lock.len(),
        started.elapsed().as_secs_f64()
    );
    let ours: BTreeSet<String> = lock.iter().map(|d| d.name.clone()).collect();

    let mut wanted: Vec<String> = req.packages.clone();
    wanted.extend(oracle_essential_set());
    let apt = oracle_install_set(&req.mirror, &wanted);
    let theirs: BTreeSet<String> = apt.keys().cloned().collect();

    // Deliberate differences, each with its reason: none. (debootstrap's minbase also
    // adds `apt`; so does this oracle, because `apt` is `Priority: required`.)
    let only_ours: Vec<&String> = ours.difference(&theirs).collect();
    let only_theirs: Vec<&String> = theirs.difference(&ours).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "kiln and apt disagree\n only kiln: {only_ours:?}\n only apt: {only_theirs:?}"
    );

    // Versions: comparable only when apt's list is the same Release the lock read.
    let live = http_get(&format!("{}/dists/{SUITE}/InRelease", req.mirror)).expect("InRelease");
    let host_release = std::fs::read_dir("/var/lib/apt/lists")
        .expect("apt lists")
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("_dists_{SUITE}_InRelease"))
        })
        .and_then(|e| std::fs::read(e.path()).ok());
    let differing: Vec<String> = lock
        .iter()
        .filter(|d| apt.get(&d.name) != Some(&d.version))
        .map(|d| format!("{} kiln {} apt {:?}", d.name, d.version, apt.get(&d.name)))
        .collect();
    if host_release.as_deref() == Some(live.as_slice()) {
        assert!(
            differing.is_empty(),
            "same Release, different versions: {differing:?}"
        );
    } else {
        eprintln!("host apt lists are a different Release; version differences: {differing:?}");
    }

    // Every pin is complete and the re-lock from the same index is identical.
    for d in &lock {
        assert!(d.filename.starts_with("pool/"), "{d:?}");
        assert!(d.size > 0, "{d:?}");
    }
    let (index, _) = debian::fetch_index(
        &req.mirror,
        SUITE,
        &req.components,
        "amd64",
        &keyring,
        &http_get,
    )
    .expect("index");
    assert_eq!(debian::resolve(&index, &req, &lock).expect("relock"), lock);
    debian::check_pinned(&index, &lock).expect("all pins present upstream");
}
