//! The CPU network's former path, kept for its users: `Net` and the helpers other modules
//! read now live in `lower::cpu` (the network) and `lower::cpu::ops` (a file per layer kind).

pub use super::cpu::ops::activation::{softmax_backward, softmax_rows};
pub use super::cpu::ops::dropout::dropout_mask;
pub use super::cpu::{input_act, Net};
