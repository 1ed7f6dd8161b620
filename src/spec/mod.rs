//! Front ends: YAML and the DSL both produce one `ast::Spec`; what its expressions mean
//! (`eval`) and its `train:` section read as a training recipe (`recipe`), for the back ends
//! and the training loop alike.

pub mod ast;
pub mod dsl;
pub mod eval;
pub mod recipe;
pub mod yaml;

use crate::diag::{Diagnostic, Result};
use crate::source::{SourceFile, Span, Syntax};

/// The largest spec se-compile reads: 16 MiB. A flat spec at the layer limit, one layer of
/// about 50 bytes a line, takes about 5 MiB.
pub const MAX_SPEC_BYTES: u64 = 16 << 20;

/// "X MiB, above se-compile's limit of 16 MiB": a spec of `len` bytes, for the errors of a
/// file (`crate::FileError::TooLarge`) and of a text (`too_large`).
pub fn over_the_limit(len: u64) -> String {
    format!(
        "{:.1} MiB, above se-compile's limit of {} MiB",
        len as f64 / (1 << 20) as f64,
        MAX_SPEC_BYTES >> 20
    )
}

/// The error for a spec text over `MAX_SPEC_BYTES` (a buffer of the language server's; a file
/// is refused before it is read, `crate::load`).
pub fn too_large(len: u64) -> Diagnostic {
    Diagnostic::new(
        "limit::file-size",
        format!("the spec is {}", over_the_limit(len)),
    )
    .help("a flat spec at the layer limit, 50 bytes a line, takes about 5 MiB; write repeats as `stage` or block templates")
}

pub fn parse(src: &SourceFile) -> Result<ast::Spec> {
    if src.text.len() as u64 > MAX_SPEC_BYTES {
        return Err(too_large(src.text.len() as u64));
    }
    match src.syntax() {
        Syntax::Yaml => yaml::parse(src),
        Syntax::Dsl => {
            check_nesting(
                &src.text,
                0,
                "name the inner part as a block template and use it",
            )?;
            dsl::parse(src)
        }
    }
}

/// The deepest nesting of brackets (`{`, `(`, `[`) the DSL and the expressions in YAML strings
/// may have. The parser and the passes after it recurse once per level, so a deeper text
/// could exhaust the stack; real specs nest well under 20.
pub const MAX_BRACKET_NESTING: usize = 64;

/// Refuses text whose brackets nest deeper than `MAX_BRACKET_NESTING` (outside comments and
/// strings), at the first bracket past the limit; `base` is the text's offset in its file, and
/// `fix` the error's advice.
pub fn check_nesting(text: &str, base: usize, fix: &str) -> Result<()> {
    let mut depth = 0usize;
    let mut in_comment = false;
    let mut in_string = false;
    for (i, c) in text.char_indices() {
        match c {
            '\n' => {
                in_comment = false;
                in_string = false;
            }
            _ if in_comment => {}
            '"' => in_string = !in_string,
            _ if in_string => {}
            '#' => in_comment = true,
            '{' | '(' | '[' => {
                depth += 1;
                if depth > MAX_BRACKET_NESTING {
                    return Err(Diagnostic::new(
                        "limit::nesting",
                        format!("brackets nest deeper than {MAX_BRACKET_NESTING} levels"),
                    )
                    .at(Span::new(base + i, base + i + 1), format!("level {depth}"))
                    .help(format!(
                        "se-compile reads at most {MAX_BRACKET_NESTING} levels of `{{`, `(` and `[`; {fix}"
                    )));
                }
            }
            '}' | ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}
