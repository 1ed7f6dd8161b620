//! `se-compile check`: parse, expand and validate specs, one line per file.

use super::shared::Ctx;
use se_compile::report;

/// Validate specs: parse, expand and infer every shape.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  se-compile check models/se_resnet50.yaml models/se_resnet50.se\n  (prints `ok: FILE (N layers, P params)` per file; diagnostics go to stderr)"
)]
pub struct CheckArgs {
    /// Spec files (.yaml, .yml, .se) or model names from models/.
    #[arg(required = true)]
    pub specs: Vec<String>,
}

/// Every file is checked; the exit code is the worst of them.
pub fn run(cx: &Ctx, a: CheckArgs) -> Result<(), u8> {
    let mut worst = 0;
    for s in &a.specs {
        match cx.build(s) {
            Ok((src, vg)) => println!(
                "ok: {} ({} layers, {} params)",
                src.name,
                vg.graph().nodes.len(),
                report::thousands(vg.totals().params.total())
            ),
            Err(code) => worst = worst.max(code),
        }
    }
    if worst != 0 {
        return Err(worst);
    }
    Ok(())
}
