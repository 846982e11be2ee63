//! `kiln completions` and `kiln man`: shell completion scripts and manual pages, both made
//! from the same clap description as `--help`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "kiln", out);
}

/// Writes `kiln.1` and a page per subcommand (`kiln-build.1`, `kiln-secrets-gen.1`, …) into
/// `dir`, each through a temp file and a rename. Returns the pages written, in order.
pub fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    page(&cmd, dir, &mut written)?;
    Ok(written)
}

/// A page for `cmd` and its subcommands. Once built, clap names a subcommand by its full
/// name (`kiln-secrets-gen`, usage `kiln secrets gen`): the page's title and file name.
fn page(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("kiln {}", cmd.get_version().unwrap_or_default()));
    let bytes = render(&man, cmd)
        .with_context(|| format!("rendering the manual page of {}", cmd.get_name()))?;
    let path = dir.join(man.get_filename());
    crate::cache::write_atomic_bytes(&path, &bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, dir, written)?;
    }
    Ok(())
}

/// clap_mangen's sections, with the long help's closing text (examples, exit codes) as
/// sections of their own, its lines kept as written.
fn render(man: &clap_mangen::Man, cmd: &clap::Command) -> std::io::Result<Vec<u8>> {
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut w)?;
    }
    if let Some(text) = cmd.get_after_long_help() {
        w.extend_from_slice(verbatim_sections(&text.to_string()).as_bytes());
    }
    man.render_version_section(&mut w)?;
    Ok(w)
}

/// Text of the form `Heading:` then indented lines, as roff sections (`.SH HEADING`) whose
/// lines are set as written (`.nf`).
fn verbatim_sections(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let heading = line.strip_suffix(':').filter(|h| !h.starts_with(' '));
        if let Some(h) = heading {
            out.push_str(&format!(".SH \"{}\"\n.nf\n", h.to_uppercase()));
            continue;
        }
        let escaped = line.replace('\\', "\\e").replace('-', "\\-");
        if escaped.starts_with(['.', '\'']) {
            out.push_str("\\&");
        }
        out.push_str(&escaped);
        out.push('\n');
    }
    if !out.is_empty() {
        out.push_str(".fi\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page_and_examples() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pages = write_pages(dir.path()).expect("pages");
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        for want in ["kiln.1", "kiln-build.1", "kiln-run.1", "kiln-secrets-gen.1"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let mut cmd = Cli::command().disable_help_subcommand(true);
        cmd.build();
        for sub in cmd.get_subcommands() {
            let leaves: Vec<&clap::Command> = if sub.has_subcommands() {
                sub.get_subcommands().collect()
            } else {
                vec![sub]
            };
            for leaf in leaves {
                let help = leaf
                    .get_after_long_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(
                    help.starts_with("Examples:\n  kiln "),
                    "{} has no examples",
                    leaf.get_name()
                );
            }
        }
        let top = std::fs::read_to_string(dir.path().join("kiln.1")).expect("page");
        assert!(top.contains(".SH \"EXIT CODES\"\n.nf\n"), "{top}");
        assert!(top.contains("3  kiln lock \\-\\-check"), "{top}");
        let build = std::fs::read_to_string(dir.path().join("kiln-build.1")).expect("page");
        assert!(build.contains("kiln\\-build"), "titled by its full name");
        assert!(build.contains("\\-\\-offline"), "lists the options");
    }

    #[test]
    fn closing_text_is_set_as_written() {
        let roff = verbatim_sections("Examples:\n  kiln build --out o\n.hidden \\x\n");
        assert_eq!(
            roff,
            ".SH \"EXAMPLES\"\n.nf\n  kiln build \\-\\-out o\n\\&.hidden \\ex\n.fi\n"
        );
    }
}
