//! One file per subcommand: its arguments, help text and handler. What several of them share
//! (exit codes, spec loading with diagnostics, devices, checkpoints, outputs) is `shared`.

pub mod analyze;
pub mod bench;
pub mod check;
pub mod compile;
pub mod diff;
pub mod eval;
pub mod export;
pub mod graph;
pub mod import_weights;
pub mod lsp;
pub mod memory;
pub mod parity;
pub mod predict;
pub mod recipe;
pub mod schema;
pub mod shard;
pub mod shared;
pub mod summary;
pub mod torchrun;
pub mod train;
pub mod view;
