//! The image definition: one TOML file (optionally `extends` another) describing
//! everything that goes into an image. Parsing is strict: unknown keys are errors,
//! and every error names the file, line, column and key.

pub mod container_image;
mod load;
mod merge;
mod validate;
mod values;

pub use load::{load, parse_file};
pub use merge::merge;
pub use values::{
    parse_size, AccountName, Arch, ArchivePath, HttpUrl, ImageName, ImagePath, ImageVersion,
    InstallSelector, PackageName, Size, ZstdLevel,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;
use crate::gobuild::GoInput;
use crate::tree::TreePath;
use container_image::ContainerImage;

/// How deep `extends` chains may go before Kiln suspects a cycle.
const MAX_EXTENDS: usize = 8;

/// One definition file as written, before `extends` is merged. Every key is optional
/// here so a variant can override just what it changes.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DefinitionFile {
    /// Another definition (path relative to this file) this one is based on. It must lie
    /// inside the project directory (the directory of the definition given to Kiln): no
    /// absolute path, no `..`, no symlink leading out.
    pub extends: Option<String>,
    pub image: Option<ImageSection>,
    pub debian: Option<DebianSection>,
    /// Files or archives downloaded by URL and pinned by checksum.
    #[serde(default)]
    pub artifact: Vec<Artifact>,
    /// Go programs built from pinned module versions with the host Go toolchain.
    #[serde(default)]
    pub go: Vec<GoInput>,
    /// OCI container images baked into the image (imported into containerd at first boot).
    #[serde(default)]
    pub container_image: Vec<ContainerImage>,
    /// Files taken from the project next to the definition.
    #[serde(default)]
    pub local: Vec<LocalFile>,
    /// Files written with inline content.
    #[serde(default)]
    pub file: Vec<FileSpec>,
    #[serde(default)]
    pub directory: Vec<DirSpec>,
    #[serde(default)]
    pub symlink: Vec<SymlinkSpec>,
    #[serde(default)]
    pub user: Vec<User>,
    #[serde(default)]
    pub group: Vec<Group>,
    pub systemd: Option<Systemd>,
    pub kernel: Option<KernelSection>,
    pub disk: Option<DiskSection>,
    /// Machine configuration defaults baked into the image (firstboot's schema).
    #[schemars(with = "Option<firstboot::config::MachineConfig>")]
    pub machine: Option<toml::Table>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSection {
    /// Image name: lower-case letters, digits and `-`.
    pub name: Option<ImageName>,
    pub version: Option<ImageVersion>,
    /// Debian architecture name; only `amd64` is supported.
    pub arch: Option<Arch>,
    /// SOURCE_DATE_EPOCH: every timestamp in every output is clamped to it.
    pub epoch: Option<u64>,
    /// zstd level of the squashfs root, 1-22 (default 19). Lower builds much faster: the
    /// Go binaries of a Kubernetes node make level 19 take many minutes on two cores.
    pub compression_level: Option<ZstdLevel>,
    /// Outputs `kiln build` writes when `--format` is not given.
    pub outputs: Option<Vec<OutputFormat>>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    Tar,
    Raw,
    Qcow2,
    Iso,
    Pxe,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 5] = [
        OutputFormat::Tar,
        OutputFormat::Raw,
        OutputFormat::Qcow2,
        OutputFormat::Iso,
        OutputFormat::Pxe,
    ];
    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Tar => "tar",
            OutputFormat::Raw => "raw",
            OutputFormat::Qcow2 => "qcow2",
            OutputFormat::Iso => "iso",
            OutputFormat::Pxe => "pxe",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == s)
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DebianSection {
    /// Debian suite, e.g. `bookworm`.
    pub suite: Option<String>,
    /// Archive components; default `["main"]`.
    pub components: Option<Vec<String>>,
    /// Packages to install (their dependency closure is locked). Variants add to the base's list.
    #[serde(default)]
    pub packages: Vec<PackageName>,
    /// Packages never to install, even when something depends on them.
    #[serde(default)]
    pub exclude: Vec<PackageName>,
    /// Also install the Essential and `Priority: required` set, as debootstrap's minbase does.
    pub essential: Option<bool>,
    /// Mirror URL; default: the host's apt configuration.
    pub mirror: Option<String>,
    /// OpenPGP keyring (binary or armored, a path relative to this file, inside the project
    /// directory) whose keys must have signed the suite's Release. Default: the keys of the
    /// `debian-archive-keyring` package the lock pins, else the keys the host's apt trusts
    /// for the mirror.
    pub keyring: Option<String>,
}

/// A file mode, written as `0o755` (TOML octal integer) or `"0755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(transparent)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Str(String),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Int(i) => i,
            Raw::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
                serde::de::Error::custom(format!("mode {s:?} is not an octal number"))
            })?,
        };
        if v > 0o7777 {
            return Err(serde::de::Error::custom(format!(
                "mode {v:o} has bits beyond 0o7777"
            )));
        }
        Ok(Mode(v))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Artifact {
    /// Name used in the lock, manifest and messages.
    pub name: String,
    pub version: Option<String>,
    pub url: HttpUrl,
    /// `sha256:<hex>` or `sha512:<hex>`.
    pub checksum: Digest,
    /// For archives: archive path (file or directory prefix) -> path in the image.
    #[serde(default)]
    pub extract: BTreeMap<ArchivePath, ImagePath>,
    /// For single files: where the file goes in the image.
    pub dest: Option<ImagePath>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LocalFile {
    /// Path relative to the definition file, inside the project directory (as `extends`).
    pub source: String,
    pub dest: ImagePath,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSpec {
    pub path: ImagePath,
    #[serde(default)]
    pub content: String,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DirSpec {
    pub path: ImagePath,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SymlinkSpec {
    pub path: ImagePath,
    pub target: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    pub name: AccountName,
    pub uid: u32,
    /// Primary group id; default: same as uid.
    pub gid: Option<u32>,
    #[serde(default)]
    pub gecos: String,
    pub home: Option<String>,
    pub shell: Option<String>,
    /// Supplementary groups by name.
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Group {
    pub name: AccountName,
    pub gid: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Systemd {
    /// Units to enable (symlinked into the `.wants` of their `WantedBy=` targets).
    #[serde(default)]
    pub enable: Vec<String>,
    /// Units to mask (symlinked to /dev/null).
    #[serde(default)]
    pub mask: Vec<String>,
    pub default_target: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KernelSection {
    /// The Debian package providing /boot/vmlinuz-*; default `linux-image-amd64`.
    pub package: Option<String>,
    /// Extra kernel command line; Kiln always adds the console and slot arguments.
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DiskSection {
    /// Virtual disk size, e.g. `"8GiB"`, `"512MiB"`; default 8 GiB.
    pub size: Option<Size>,
    /// The installer's disk selector (`kiln.install=`) baked into the PXE bundle's
    /// `boot-install.ipxe` and the ISO's "Install to disk" entry: `auto` (default),
    /// `/dev/<disk>`, or conditions `size>=20G`, `model=...`, `serial=...`, `wwid=...`
    /// joined by commas.
    pub install: Option<InstallSelector>,
    /// Whether the ISO carries the installer: the "Install to disk" entry and the payload
    /// it writes (default true). `false` gives a live-only ISO of about half the size; the
    /// PXE bundle keeps its installer either way.
    pub iso_installer: Option<bool>,
}

/// An error that points into a definition file.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: `extends` chain is longer than {MAX_EXTENDS} (a cycle?)")]
    ExtendsTooDeep { path: PathBuf },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The merged, validated definition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Definition {
    /// The file given on the command line.
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub arch: String,
    pub epoch: u64,
    /// zstd level of the squashfs root.
    pub compression_level: u32,
    pub outputs: Vec<OutputFormat>,
    pub debian: Option<Debian>,
    pub artifacts: Vec<Artifact>,
    pub go: Vec<GoInput>,
    pub container_images: Vec<ContainerImage>,
    /// Local files with `source` made absolute.
    pub locals: Vec<LocalFile>,
    pub files: Vec<FileSpec>,
    pub directories: Vec<DirSpec>,
    pub symlinks: Vec<SymlinkSpec>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    pub systemd: Systemd,
    pub kernel_package: Option<String>,
    pub cmdline: String,
    pub disk_size: u64,
    /// `kiln.install=` of the installer entries (default `auto`).
    pub install_selector: String,
    /// The ISO has an "Install to disk" entry and carries the payload.
    pub iso_installer: bool,
    pub machine: toml::Table,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Debian {
    pub suite: String,
    pub components: Vec<String>,
    pub packages: Vec<String>,
    pub exclude: Vec<String>,
    pub essential: bool,
    pub mirror: Option<String>,
    /// The keyring's path (joined to the directory of the file that names it).
    pub keyring: Option<String>,
}

pub const DEFAULT_DISK_SIZE: u64 = 8 << 30;
/// zstd level of the squashfs root unless the definition says otherwise.
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 19;

/// The JSON Schema of the definition format, for editors.
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(DefinitionFile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[image]
name = "base"
version = "1.0"
epoch = 1700000000

[debian]
suite = "bookworm"
packages = ["systemd", "kmod"]

[[file]]
path = "/etc/motd"
content = "base"
mode = 0o644

[machine]
hostname = "kiln"
[machine.kubernetes]
pod-cidr = "10.244.0.0/16"
"#;

    #[test]
    fn install_selector_is_validated_and_inherited() {
        let dir = tempfile::tempdir().expect("tmp");
        let head = "[image]\nname = \"s\"\nversion = \"1\"\nepoch = 0\n";
        let p = write(dir.path(), "a.toml", head);
        assert_eq!(load(&p).expect("default").install_selector, "auto");
        let base = write(
            dir.path(),
            "base.toml",
            &format!("{head}[disk]\ninstall = \"size>=20G,model=Samsung*\"\n"),
        );
        let d = load(&base).expect("selector");
        assert_eq!(d.install_selector, "size>=20G,model=Samsung*");
        // A child setting only the size keeps the base's selector.
        let child = write(
            dir.path(),
            "child.toml",
            "extends = \"base.toml\"\n[image]\nname = \"c\"\n[disk]\nsize = \"16GiB\"\n",
        );
        let d = load(&child).expect("child");
        assert_eq!(
            (d.install_selector.as_str(), d.disk_size, d.iso_installer),
            ("size>=20G,model=Samsung*", 16 << 30, true)
        );
        // A live-only ISO, and a grandchild inheriting that.
        write(
            dir.path(),
            "live.toml",
            "extends = \"child.toml\"\n[image]\nname = \"l\"\n[disk]\niso-installer = false\n",
        );
        let grand = write(
            dir.path(),
            "grand.toml",
            "extends = \"live.toml\"\n[image]\nname = \"g\"\n",
        );
        let d = load(&grand).expect("grandchild");
        assert_eq!((d.iso_installer, d.disk_size), (false, 16 << 30));
        let p = write(
            dir.path(),
            "typo.toml",
            &format!("{head}[disk]\niso-installer = \"no\"\n"),
        );
        let msg = load(&p).expect_err("a string for a bool").to_string();
        assert!(
            msg.contains("typo.toml:6:17: invalid type")
                && msg.ends_with(", in `iso-installer = \"no\"`"),
            "{msg}"
        );
        for bad in ["colour=red", "size>=lots", "model=a b"] {
            let p = write(
                dir.path(),
                "bad.toml",
                &format!("{head}[disk]\ninstall = \"{bad}\"\n"),
            );
            let msg = load(&p).expect_err(bad).to_string();
            assert!(msg.contains("disk.install"), "{msg}");
        }
    }

    #[test]
    fn machine_defaults_are_validated_with_firstboot_schema() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(
            dir.path(),
            "m.toml",
            "[image]\nname = \"ok\"\nversion = \"1\"\nepoch = 0\n[machine]\nhostname = \"not_valid!\"\n",
        );
        let msg = load(&p).expect_err("bad hostname").to_string();
        assert!(
            msg.contains("machine") && msg.contains("not_valid!"),
            "{msg}"
        );
        let p = write(
            dir.path(),
            "n.toml",
            "[image]\nname = \"ok\"\nversion = \"1\"\nepoch = 0\n[machine]\nhostnme = \"x\"\n",
        );
        let msg = load(&p).expect_err("unknown key").to_string();
        assert!(msg.contains("hostnme"), "{msg}");
    }

    #[test]
    fn go_inputs_are_validated_and_merged_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let head = "[image]\nname = \"g\"\nversion = \"1\"\nepoch = 0\n";
        let go = |name: &str, extra: &str| {
            format!(
                "[[go]]\nname = \"{name}\"\nmodule = \"example.com/m\"\nversion = \"v1.0.0\"\n\
                 packages = [\"example.com/m/cmd/tool\"]\n{extra}"
            )
        };
        let p = write(
            dir.path(),
            "a.toml",
            &format!("{head}{}{}", go("a", ""), go("b", "")),
        );
        let msg = load(&p).expect_err("same binary twice").to_string();
        assert!(
            msg.contains("go.b") && msg.contains("/usr/bin/tool is also built by go input a"),
            "{msg}"
        );
        let p = write(
            dir.path(),
            "b.toml",
            &format!("{head}{}{}", go("a", ""), go("b", "dest = \"/opt/bin\"\n")),
        );
        let d = load(&p).expect("different dest");
        assert_eq!(d.go[1].dest(), "/opt/bin");
        let p = write(
            dir.path(),
            "c.toml",
            &format!("{head}{}", go("a", "dest = \"bin\"\n")),
        );
        assert!(load(&p)
            .expect_err("relative dest")
            .to_string()
            .contains("go.a"));
        let p = write(
            dir.path(),
            "d.toml",
            &format!("{head}{}", go("a", "").replace("v1.0.0", "latest")),
        );
        assert!(load(&p)
            .expect_err("not a version")
            .to_string()
            .contains("v1.2.3"));
        // A variant replaces the base's input of the same name.
        write(dir.path(), "base.toml", &format!("{head}{}", go("a", "")));
        let p = write(
            dir.path(),
            "v.toml",
            &format!(
                "extends = \"base.toml\"\n{}",
                go("a", "").replace("v1.0.0", "v2.0.0")
            ),
        );
        let d = load(&p).expect("variant");
        assert_eq!(d.go.len(), 1);
        assert_eq!(d.go[0].version, "v2.0.0");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[image]\nname = \"x\"\nversoin = \"1\"\n";
        let err = parse_file(Path::new("x.toml"), text).expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.starts_with("x.toml:3:1:"), "{msg}");
        assert!(msg.contains("verso"), "{msg}");
    }

    #[test]
    fn malformed_toml_is_located() {
        let err = parse_file(Path::new("bad.toml"), "[image\nname=1").expect_err("bad");
        assert!(err.to_string().starts_with("bad.toml:1:"), "{err}");
    }

    #[test]
    fn modes_accept_octal_ints_and_strings() {
        let f: FileSpec = toml::from_str("path='/a'\nmode='0755'").expect("string");
        assert_eq!(f.mode, Some(Mode(0o755)));
        let f: FileSpec = toml::from_str("path='/a'\nmode=0o4755").expect("int");
        assert_eq!(f.mode, Some(Mode(0o4755)));
        assert!(toml::from_str::<FileSpec>("path='/a'\nmode='0999'").is_err());
        assert!(toml::from_str::<FileSpec>("path='/a'\nmode=0o17777").is_err());
    }

    #[test]
    fn extends_merges_as_a_pure_function() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "base.toml", BASE);
        let child = write(
            dir.path(),
            "child.toml",
            r#"
extends = "base.toml"
[image]
name = "child"
[debian]
packages = ["iproute2", "kmod"]
[[file]]
path = "/etc/motd"
content = "child"
[machine.kubernetes]
service-cidr = "10.96.0.0/12"
"#,
        );
        let d = load(&child).expect("load");
        assert_eq!(d.name, "child");
        assert_eq!(d.version, "1.0");
        let deb = d.debian.expect("debian");
        assert_eq!(deb.packages, ["systemd", "kmod", "iproute2"]);
        assert_eq!(d.files.len(), 1);
        assert_eq!(d.files[0].content, "child");
        let k = d.machine["kubernetes"].as_table().expect("table");
        assert_eq!(k.len(), 2, "nested machine tables merge: {k:?}");
        assert_eq!(d.machine["hostname"].as_str(), Some("kiln"));
    }

    #[test]
    fn a_path_given_by_two_kinds_over_a_base_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "base.toml", BASE);
        let child = write(
            dir.path(),
            "child.toml",
            "extends = \"base.toml\"\n[[symlink]]\npath = \"/etc/motd\"\ntarget = \"issue\"\n",
        );
        let msg = load(&child).expect_err("two kinds").to_string();
        assert!(
            msg.contains("symlink.path: \"/etc/motd\" is given by a [[file]] and a [[symlink]]"),
            "{msg}"
        );
        // The same kind replaces the base's entry.
        let child = write(
            dir.path(),
            "child2.toml",
            "extends = \"base.toml\"\n[[file]]\npath = \"/etc/motd\"\ncontent = \"c\"\n",
        );
        assert_eq!(load(&child).expect("load").files.len(), 1);
    }

    #[test]
    fn every_shipped_definition_loads() {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        let mut n = 0;
        for entry in std::fs::read_dir(&images).expect("images/") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|e| e == "toml") {
                load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 3, "{n} definitions in {}", images.display());
    }

    #[test]
    fn cluster_ranges_that_cannot_work_are_refused() {
        let with = |k: &str| {
            let text = format!(
                "[image]\nname = \"x\"\nversion = \"1\"\nepoch = 0\n[machine.kubernetes]\n{k}\n"
            );
            let dir = tempfile::tempdir().expect("tmp");
            load(&write(dir.path(), "d.toml", &text)).map(|_| ())
        };
        let msg = with("service-cidr = \"10.96.0.0/29\"")
            .expect_err("too small")
            .to_string();
        assert!(
            msg.contains("machine.kubernetes: service-cidr 10.96.0.0/29 has no room"),
            "{msg}"
        );
        with("service-cidr = \"10.96.0.0/28\"").expect("room for .10");
        let msg = with("pod-cidr = \"10.96.128.0/17\"")
            .expect_err("overlap")
            .to_string();
        assert!(
            msg.contains("pod-cidr 10.96.128.0/17 and service-cidr 10.96.0.0/12 overlap"),
            "{msg}"
        );
        with("pod-cidr = \"10.112.0.0/16\"").expect("next to 10.96.0.0/12");
        with("pod-cidr = \"fd00::/64\"").expect("another family");
    }

    #[test]
    fn a_disk_of_size_zero_is_refused_where_it_is_written() {
        let text = "[image]\nname = \"x\"\n[disk]\nsize = \"0GiB\"\n";
        let msg = parse_file(Path::new("x.toml"), text)
            .expect_err("zero")
            .to_string();
        assert!(
            msg.starts_with("x.toml:4:8: \"0GiB\" is a size of zero"),
            "{msg}"
        );
    }

    #[test]
    fn extends_cycle_is_caught() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = write(dir.path(), "a.toml", "extends = \"b.toml\"\n");
        write(dir.path(), "b.toml", "extends = \"a.toml\"\n");
        assert!(matches!(
            load(&a),
            Err(DefinitionError::ExtendsTooDeep { .. })
        ));
    }

    #[test]
    fn errors_in_a_base_name_the_base() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "base.toml", "[image]\nname = 3\n");
        let child = write(dir.path(), "child.toml", "extends = \"base.toml\"\n");
        let msg = load(&child).expect_err("bad base").to_string();
        assert!(msg.contains("base.toml:2:"), "{msg}");
    }

    #[test]
    fn validation_names_the_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = write(
            dir.path(),
            "x.toml",
            "[image]\nname = \"Bad Name\"\nversion = \"1\"\nepoch = 0\n",
        );
        let msg = load(&p).expect_err("bad name").to_string();
        assert!(msg.contains("image.name"), "{msg}");
        let p = write(
            dir.path(),
            "y.toml",
            "[image]\nname = \"ok\"\nversion = \"1\"\nepoch = 0\n[[artifact]]\nname = \"a\"\nurl = \"https://x/a\"\nchecksum = \"sha256:00\"\ndest = \"/a\"\n",
        );
        let msg = load(&p).expect_err("bad digest").to_string();
        assert!(msg.contains("y.toml:8:") && msg.contains("64"), "{msg}");
        let p = write(
            dir.path(),
            "z.toml",
            "[image]\nname = \"ok\"\nversion = \"1\"\nepoch = 0\n[[symlink]]\npath = \"../../etc\"\ntarget = \"x\"\n",
        );
        let msg = load(&p).expect_err("traversal").to_string();
        assert!(msg.contains("symlink.path") && msg.contains(".."), "{msg}");
    }

    #[test]
    fn schema_lists_top_level_tables() {
        let s = serde_json::to_value(schema()).expect("json");
        let props = s["properties"].as_object().expect("props");
        for k in [
            "image", "debian", "artifact", "file", "user", "systemd", "kernel", "machine",
        ] {
            assert!(props.contains_key(k), "schema lacks {k}");
        }
        assert_eq!(s["additionalProperties"], serde_json::Value::Bool(false));
        // Checked values are plain strings and numbers in the schema.
        let defs = &s["$defs"];
        assert_eq!(defs["ImageName"]["type"], "string", "{defs}");
        assert_eq!(defs["ZstdLevel"]["type"], "integer", "{defs}");
    }
}
