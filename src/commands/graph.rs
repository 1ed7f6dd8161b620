//! `se-compile graph`: a Graphviz DOT graph of the validated layers.

use super::shared::{write_out, Ctx};
use se_compile::report::dot::dot;

/// Write a Graphviz DOT graph with the output shape on every edge.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  se-compile graph models/se_block.yaml -o se_block.dot && dot -Tpng se_block.dot -o se_block.png"
)]
pub struct GraphArgs {
    pub spec: String,
    /// Output file (`-` for stdout).
    #[arg(short, long, default_value = "-")]
    pub output: String,
}

pub fn run(cx: &Ctx, a: GraphArgs) -> Result<(), u8> {
    let (_, vg) = cx.build(&a.spec)?;
    write_out(&a.output, &dot(&vg))
}
