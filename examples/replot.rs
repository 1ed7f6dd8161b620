//! Redraws a run's `accuracy.png` and `loss.png` from its `history.json` with the current
//! plotting code (`src/train/plot.rs`), as `se-compile train` draws them after each epoch:
//!
//!     cargo run --release --example replot -- RUN_DIR
//!
//! `scripts/regen-docs.sh` uses it for the full Fashion-MNIST run in `docs/src/fashion-mnist-full/`,
//! a 66-minute run whose history is kept while its pictures follow the code.
use se_compile::train::run::{plot_history, EpochRecord};
use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: replot RUN_DIR   (redraws RUN_DIR/accuracy.png and loss.png from RUN_DIR/history.json)");
        std::process::exit(2);
    };
    let path = dir.join("history.json");
    let history: Vec<EpochRecord> = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            std::process::exit(1);
        }
    };
    if let Err(e) = plot_history(&dir, &history) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!(
        "{}: accuracy.png and loss.png redrawn from {} epochs",
        dir.display(),
        history.len()
    );
}
