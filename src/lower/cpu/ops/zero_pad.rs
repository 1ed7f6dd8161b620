//! ZeroPadding2D (`Layer::ZeroPad`): the forward copies each image row into a zeroed, larger
//! buffer; the backward (the gradient's interior rows) is the closure it records on the tape.

use crate::lower::autodiff::{apply, Act, BackwardFn, Grads};
use dfdx::prelude::*;
use dfdx::tensor::Tape;

/// `ins[0]` (N, H, W, C) padded by `p` ([[top, bottom], [left, right]]) to `out_shape`.
pub fn forward<T: Tape<f32, Cpu>>(
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    p: [[usize; 2]; 2],
) -> Act<T> {
    let s = &ins[0].shape;
    let [n, h, w, c] = [s[0], s[1], s[2], s[3]];
    let (ho, wo) = (out_shape[1], out_shape[2]);
    let (top, left) = (p[0][0], p[1][0]);
    apply(ins, &[], out_shape, move |data, need| {
        let x = &data[0];
        let mut y = vec![0.0f32; n * ho * wo * c];
        for b in 0..n {
            for r in 0..h {
                let src = ((b * h + r) * w) * c;
                let dst = ((b * ho + r + top) * wo + left) * c;
                y[dst..dst + w * c].copy_from_slice(&x[src..src + w * c]);
            }
        }
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                if let Some(dx) = g.acc(0) {
                    for b in 0..n {
                        for r in 0..h {
                            let src = ((b * h + r) * w) * c;
                            let dst = ((b * ho + r + top) * wo + left) * c;
                            dx[src..src + w * c]
                                .iter_mut()
                                .zip(&dy[dst..dst + w * c])
                                .for_each(|(d, v)| *d += v);
                        }
                    }
                }
            })
        });
        (y, back)
    })
}
