//! `se-compile summary`: the Keras-style table with MACs and memory.

use super::shared::{Ctx, DepthArg, FormatArg};
use se_compile::report::summary::{self, Options};

/// Print the Keras-style summary table with MACs and memory.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  se-compile summary models/se_resnet50.yaml\n  se-compile summary se_resnet50 --depth block --show-source\n  se-compile summary models/se_block.yaml --format json > se_block.json"
)]
pub struct SummaryArgs {
    /// A spec file or a model name from models/ (e.g. `se_resnet50`).
    pub spec: String,
    /// Rows per layer, per block instance, or per stage; totals are the same at every depth.
    #[arg(long, value_enum, default_value = "layer")]
    pub depth: DepthArg,
    #[arg(long, value_enum, default_value = "text")]
    pub format: FormatArg,
    /// Add a column with the spec line each row comes from.
    #[arg(long)]
    pub show_source: bool,
}

pub fn run(cx: &Ctx, a: SummaryArgs) -> Result<(), u8> {
    let (src, vg) = cx.build(&a.spec)?;
    let opts = Options {
        depth: a.depth.into(),
        format: a.format.into(),
        show_source: a.show_source,
    };
    print!("{}", summary::render(&vg, &src, &opts));
    Ok(())
}
