//! `se-compile diff A B`: two specs side by side, per stage, block or layer, with each one's
//! SE overhead (the same spec compiled again without its SE layers).

use super::shared::{Ctx, DepthArg, FormatArg};
use se_compile::report::diff::{self, Side};
use se_compile::{SourceFile, ValidGraph};

/// Compare two specs per stage, block or layer: params, MACs and activation memory of both,
/// the delta and percentage, and each one's SE overhead.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  se-compile diff models/se_resnet50.yaml models/se_resnet50_timm.yaml\n  se-compile diff se_resnet50 tests/diff/se_resnet50_r8.yaml --depth block --format markdown\n\nRows are aligned by stage/block/layer path; rows in one spec only are shown as added (+, only in B)\nor removed (-, only in A). The SE overhead compares each spec with itself without SE layers."
)]
pub struct DiffArgs {
    /// Spec A (a file or a model name from models/); deltas and percentages are B against A.
    pub a: String,
    /// Spec B.
    pub b: String,
    /// Rows per stage, per block instance, or per layer.
    #[arg(long, value_enum, default_value = "stage")]
    pub depth: DepthArg,
    #[arg(long, value_enum, default_value = "text")]
    pub format: FormatArg,
}

pub fn run(cx: &Ctx, a: DiffArgs) -> Result<(), u8> {
    let (src_a, vg_a) = cx.build(&a.a)?;
    let (src_b, vg_b) = cx.build(&a.b)?;
    let off_a = se_compile::compile_without_se(&src_a).map_err(|d| d.message);
    let off_b = se_compile::compile_without_se(&src_b).map_err(|d| d.message);
    let d = diff::diff(
        &side(&src_a, &vg_a, &off_a),
        &side(&src_b, &vg_b, &off_b),
        a.depth.into(),
    );
    print!("{}", diff::render(&d, a.format.into()));
    Ok(())
}

fn side<'a>(src: &SourceFile, vg: &'a ValidGraph, off: &'a Result<ValidGraph, String>) -> Side<'a> {
    Side {
        file: src.name.clone(),
        vg,
        without_se: off.as_ref().map_err(Clone::clone),
    }
}
