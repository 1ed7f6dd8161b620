//! One file per subcommand (the newer ones; the rest still live in `main.rs`'s `run`).

pub mod export;
pub mod recipe;
pub mod torchrun;
