//! Max and average pooling over a window (`Layer::Pool`): the forward on
//! `kernels::pool_forward`; the backward (`kernels::pool_backward`) is the closure it records
//! on the tape.

use crate::ir::ops::Pool2d;
use crate::lower::autodiff::{apply, Act, BackwardFn, Grads};
use crate::lower::kernels;
use crate::lower::plan::pool_window;
use dfdx::prelude::*;
use dfdx::tensor::Tape;

/// `ins[0]` (N, H, W, C) pooled over `op`'s window, its maximum or (`max` false) its mean.
pub fn forward<T: Tape<f32, Cpu>>(
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    op: Pool2d,
    max: bool,
) -> Act<T> {
    let win = pool_window(&op, &ins[0].shape, &out_shape);
    apply(ins, &[], out_shape, move |data, need| {
        let (y, arg) = kernels::pool_forward(&data[0], &win, max, need);
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                if let Some(dx) = g.acc(0) {
                    kernels::pool_backward(dy, &win, max, &arg, dx);
                }
            })
        });
        (y, back)
    })
}
