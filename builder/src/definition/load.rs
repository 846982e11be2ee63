//! Reading a definition: each file of the `extends` chain parsed strictly (errors with
//! file, line, column and the offending line), `local` sources made relative to the file
//! that names them, then merged (`merge`) and validated (`validate`).

use std::path::{Path, PathBuf};

use super::{merge, validate, Definition, DefinitionError, DefinitionFile, MAX_EXTENDS};

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// Parses one file (no `extends` processing).
pub fn parse_file(path: &Path, text: &str) -> Result<DefinitionFile, DefinitionError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        let mut message = e.message().trim().to_string();
        // Name the object too: the line the error points at, when it is short enough.
        if let Some(src) = e.span().and_then(|_| text.lines().nth(line - 1)) {
            let src = src.trim();
            if !src.is_empty() && src.len() <= 120 {
                message.push_str(&format!(", in `{src}`"));
            }
        }
        DefinitionError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    })
}

/// Loads a definition and its `extends` chain, merges and validates it.
pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
    let mut chain: Vec<(PathBuf, DefinitionFile)> = Vec::new();
    let mut next = Some(path.to_path_buf());
    while let Some(p) = next.take() {
        if chain.len() >= MAX_EXTENDS {
            return Err(DefinitionError::ExtendsTooDeep {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&p).map_err(|source| DefinitionError::Read {
            path: p.clone(),
            source,
        })?;
        let mut file = parse_file(&p, &text)?;
        let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
        for l in &mut file.local {
            l.source = dir.join(&l.source).to_string_lossy().into_owned();
        }
        if let Some(base) = &file.extends {
            next = Some(dir.join(base));
        }
        chain.push((p, file));
    }
    let merged = chain
        .into_iter()
        .rev()
        .map(|(_, f)| f)
        .reduce(merge::merge)
        .unwrap_or_default();
    validate::finish(path, merged)
}
