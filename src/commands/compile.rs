//! `se-compile compile`: the validated IR graph as JSON.

use super::shared::{pretty_json, write_out, Ctx};
use se_compile::report::ir_json::ir_json;

/// Write the validated IR graph as JSON.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  se-compile compile models/se_resnet50.yaml -o graph.json")]
pub struct CompileArgs {
    pub spec: String,
    /// Output file (`-` for stdout).
    #[arg(short, long, default_value = "-")]
    pub output: String,
}

pub fn run(cx: &Ctx, a: CompileArgs) -> Result<(), u8> {
    let (src, vg) = cx.build(&a.spec)?;
    write_out(&a.output, &pretty_json(&ir_json(&vg, &src)))
}
