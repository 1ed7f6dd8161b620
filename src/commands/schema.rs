//! `se-compile schema`: the JSON Schema of the YAML spec, for editors.

use super::shared::{pretty_json, write_out};
use se_compile::schema::schema;

/// Print a JSON Schema of the YAML spec (for editors: yaml-language-server).
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  se-compile schema > se-compile.schema.json\n  and put `# yaml-language-server: $schema=./se-compile.schema.json` at the top of a spec"
)]
pub struct SchemaArgs {
    /// Output file (`-` for stdout).
    #[arg(short, long, default_value = "-")]
    pub output: String,
}

pub fn run(a: SchemaArgs) -> Result<(), u8> {
    write_out(&a.output, &pretty_json(&schema()))
}
