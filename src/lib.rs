//! se-compile: declarative SE-network specs (YAML or DSL) → a validated layer graph → back ends.
// Diagnostics are large by design (message, spans, help) and only travel on the error path.
#![allow(clippy::result_large_err)]

pub mod diag;
pub mod expand;
pub mod export;
pub mod ir;
pub mod lsp;
pub mod report;
pub mod schema;
pub mod source;
pub mod spec;
pub mod util;
pub mod validate;
pub mod zoo;

pub use diag::Diagnostic;
pub use source::SourceFile;
pub use validate::ValidGraph;

/// Spec text → validated graph: parse, expand, validate.
pub fn compile(src: &SourceFile) -> Result<ValidGraph, Diagnostic> {
    compile_full(src, None).map(|(_, vg)| vg)
}

/// Like `compile`, also returning the AST (for the `train:` section), optionally with the
/// input's height and width replaced (`bench --input 64`).
pub fn compile_full(
    src: &SourceFile,
    input_hw: Option<(usize, usize)>,
) -> Result<(spec::ast::Spec, ValidGraph), Diagnostic> {
    let mut spec = spec::parse(src)?;
    if let (Some((h, w)), true) = (input_hw, spec.input.len() == 3) {
        for (e, v) in spec.input.iter_mut().zip([h, w]) {
            e.kind = spec::ast::ExprKind::Int(v as i64);
        }
    }
    let graph = expand::expand(&spec)?;
    Ok((spec, validate::validate(graph)?))
}

/// The spec compiled a second time with every SE layer left out (as `se: off` everywhere):
/// the baseline of `diff`'s SE overhead.
pub fn compile_without_se(src: &SourceFile) -> Result<ValidGraph, Diagnostic> {
    let spec = spec::parse(src)?;
    validate::validate(expand::expand_with(&spec, true)?)
}

/// Why a spec file could not be read; each renders as one line.
#[derive(Debug)]
pub enum FileError {
    /// The path does not exist or is not a file (a usage error).
    NotFound(String),
    IsDir(String),
    Unreadable(String, String),
    Empty(String),
    Binary(String),
    NotUtf8(String, usize),
    /// Larger than `MAX_SPEC_BYTES`: the size in bytes.
    TooLarge(String, u64),
}

pub use spec::{too_large, MAX_SPEC_BYTES};

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            FileError::NotFound(p) => write!(f, "{p}: no such file, and no model of that name in models/ (try `se-compile summary se_resnet50`)"),
            FileError::IsDir(p) => write!(f, "{p}: is a directory; give a spec file (.yaml, .yml or .se)"),
            FileError::Unreadable(p, e) => write!(f, "{p}: cannot be read: {e}"),
            FileError::Empty(p) => write!(f, "{p}: the file is empty; a spec needs at least `input` and `layers`"),
            FileError::Binary(p) => write!(f, "{p}: looks like a binary file (it holds NUL bytes), not a spec"),
            FileError::NotUtf8(p, at) => write!(f, "{p}: is not valid UTF-8 (first bad byte at offset {at}); save it as UTF-8"),
            FileError::TooLarge(p, n) => write!(f, "{p}: is {} for a spec; write repeats as `stage` or block templates", spec::over_the_limit(*n)),
        }
    }
}

impl FileError {
    /// Missing paths and directories are usage errors (exit 2); bad contents are invalid specs (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, FileError::NotFound(_) | FileError::IsDir(_))
    }
}

/// Reads a spec from a path, or from the built-in zoo by model name (`se_resnet50`).
pub fn load(path: &str) -> Result<SourceFile, FileError> {
    let p = std::path::Path::new(path);
    if p.is_dir() {
        return Err(FileError::IsDir(path.into()));
    }
    if !p.exists() {
        return zoo::find(path)
            .map(|(name, text)| SourceFile::new(name, text))
            .ok_or_else(|| FileError::NotFound(path.into()));
    }
    let unreadable = |e: std::io::Error| FileError::Unreadable(path.into(), e.to_string());
    // Read at most one byte past the limit, so a huge file (or a device) is never read whole.
    let mut bytes = vec![];
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(p).map_err(unreadable)?,
            MAX_SPEC_BYTES + 1,
        ),
        &mut bytes,
    )
    .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        let size =
            std::fs::metadata(p).map_or(bytes.len() as u64, |m| m.len().max(bytes.len() as u64));
        return Err(FileError::TooLarge(path.into(), size));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(FileError::Empty(path.into()));
    }
    if bytes.contains(&0) {
        return Err(FileError::Binary(path.into()));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| FileError::NotUtf8(path.into(), e.utf8_error().valid_up_to()))?;
    Ok(SourceFile::new(path, text))
}
pub mod fuzzing;
pub mod lower;
pub mod train;
