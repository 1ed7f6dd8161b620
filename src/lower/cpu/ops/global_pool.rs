//! Global average and max pooling (`Layer::GlobalPool`): the forward on
//! `kernels::global_pool_forward` (or the channel means its input came with); the backward
//! (`kernels::global_pool_backward`) is the closure it records on the tape.

use crate::lower::autodiff::{apply, owned, Act, BackwardFn, Grads};
use crate::lower::kernels;
use dfdx::prelude::*;
use dfdx::tensor::Tape;

/// Global average or max pooling. An average pool whose input came with its channel means
/// (taken by the kernel that made it, `kernels::ImageSums`) makes no pass over the input.
pub fn forward<T: Tape<f32, Cpu>>(ins: Vec<Act<T>>, out_shape: Vec<usize>, max: bool) -> Act<T> {
    let (n, c) = (out_shape[0], *out_shape.last().expect("rank >= 2"));
    let means = ins[0].channel_means().filter(|m| !max && m.len() == n * c);
    apply(ins, &[], out_shape, move |data, need| {
        let (y, arg) = match means {
            Some(m) => (owned(m), vec![]),
            None => kernels::global_pool_forward(&data[0], n, c, max),
        };
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                if let Some(dx) = g.acc(0) {
                    kernels::global_pool_backward(dy, c, max, &arg, dx);
                }
            })
        });
        (y, back)
    })
}
