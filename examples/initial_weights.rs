//! Writes a spec's seeded initial weights (the values `se-compile train` starts from: `plan::lower`
//! with the recipe's seed) as a checkpoint, so that `se-compile analyze`, `eval`
//! or `export` can look at the untrained network:
//!
//!     cargo run --release --example initial_weights -- models/se_resnet_mini.yaml untrained.safetensors
//!
//! `scripts/regen-docs.sh` uses it for the untrained excitation analysis of the Analysis chapter.
use se_compile::diag::{render, Style};
use se_compile::lower::plan;
use se_compile::spec::recipe::TrainConfig;
use se_compile::train::checkpoint;
use std::collections::HashMap;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [spec_path, out] = args.as_slice() else {
        eprintln!("usage: initial_weights SPEC OUT.safetensors");
        std::process::exit(2);
    };
    let src = se_compile::load(spec_path).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let fail = |d: se_compile::Diagnostic| -> ! {
        eprint!("{}", render(&d, &src, Style::Plain));
        std::process::exit(1);
    };
    let spec = se_compile::spec::parse(&src).unwrap_or_else(|d| fail(d));
    let graph = se_compile::compile(&src).unwrap_or_else(|d| fail(d));
    let seed = TrainConfig::from_spec(&spec)
        .unwrap_or_else(|d| fail(d))
        .seed;
    let params = plan::lower(&graph, seed).params.into_iter();
    let named = params.map(|p| (p.name, p.values));
    if let Err(e) = checkpoint::save_params(Path::new(out), named, &[], HashMap::new()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!("{out}: the initial weights of {spec_path} (seed {seed})");
}
