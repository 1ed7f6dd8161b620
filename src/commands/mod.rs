//! One file per subcommand (train, eval, predict, analyze, export; the short ones still live in
//! `main.rs`'s `run`).

pub mod analyze;
pub mod bench;
pub mod diff;
pub mod eval;
pub mod export;
pub mod predict;
pub mod recipe;
pub mod torchrun;
pub mod train;
