//! The CPU network's layer kinds, a file each (as dfdx's `tensor_ops/<op>/`): each `forward`
//! lowers one `plan::Layer` kind on the project's kernels and records its backward on dfdx's
//! tape as a closure (`autodiff::apply`), so a kind's forward and backward sit together.
//! `Net::layer_forward` dispatches to them.

pub mod activation;
pub mod batch_norm;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod gated_add;
pub mod global_pool;
pub mod merge;
pub mod pool;
pub mod reshape;
pub mod zero_pad;
