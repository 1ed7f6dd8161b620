//! Front ends: YAML and the DSL both produce one `ast::Spec`; what its expressions mean
//! (`eval`) and its `train:` section read as a training recipe (`recipe`), for the back ends
//! and the training loop alike.

pub mod ast;
pub mod dsl;
pub mod eval;
pub mod recipe;
pub mod yaml;

use crate::diag::Result;
use crate::source::{SourceFile, Syntax};

pub fn parse(src: &SourceFile) -> Result<ast::Spec> {
    match src.syntax() {
        Syntax::Yaml => yaml::parse(src),
        Syntax::Dsl => dsl::parse(src),
    }
}
