//! Activation (`Layer::Activation`): elementwise functions and softmax over the last axis; the
//! backward (recomputed from the input) is the closure `forward` records on the tape. Also the
//! elementwise loops that the layers with a fused activation run as their epilogue.

use crate::ir::ops::ActFn;
use crate::lower::autodiff::{apply, owned, Act, BackwardFn, Grads};
use crate::lower::kernels;
use dfdx::prelude::*;
use dfdx::tensor::Tape;
use rayon::prelude::*;

/// Elementwise activations, and softmax over the last axis.
pub fn forward<T: Tape<f32, Cpu>>(ins: Vec<Act<T>>, out_shape: Vec<usize>, f: ActFn) -> Act<T> {
    let last = *out_shape.last().expect("rank >= 1");
    apply(ins, &[], out_shape, move |data, need| {
        let x = data.into_iter().next().expect("one input");
        if !need && f != ActFn::Softmax {
            // No backward: the input's own buffer becomes the output.
            let mut y = owned(x);
            act_in_place(f, &mut y);
            return (y, None);
        }
        let y: Vec<f32> = match f {
            ActFn::Softmax => softmax_rows(&x, last),
            _ => {
                let mut y = (*x).clone();
                act_in_place(f, &mut y);
                y
            }
        };
        // The backward recomputes the output from the input instead of keeping a copy of it.
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                let Some((dx, add)) = g.dst(0) else {
                    return;
                };
                if f == ActFn::Softmax {
                    softmax_backward(&softmax_rows(&x, last), dy, last, dx, add);
                    return;
                }
                const CHUNK: usize = 1 << 14;
                dx.par_chunks_mut(CHUNK)
                    .zip(dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
                    .for_each(|(d, (gy, xs))| {
                        let it = gy.iter().zip(xs);
                        if f == ActFn::Relu {
                            // The common case as a select the compiler vectorises.
                            let v = it.map(|(g, x)| if *x > 0.0 { *g } else { 0.0 });
                            kernels::store(d, add, v);
                        } else {
                            let v = it.map(|(g, &x)| g * f.grad(x, f.value(x)));
                            kernels::store(d, add, v);
                        }
                    });
            })
        });
        (y, back)
    })
}

/// dx (+)= the gradient of a row-wise softmax with output y: y · (dy - Σ y·dy) per row.
pub fn softmax_backward(y: &[f32], dy: &[f32], last: usize, dx: &mut [f32], accumulate: bool) {
    for ((dr, yr), gr) in dx.chunks_mut(last).zip(y.chunks(last)).zip(dy.chunks(last)) {
        let s: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for j in 0..last {
            let v = yr[j] * (gr[j] - s);
            dr[j] = if accumulate { dr[j] + v } else { v };
        }
    }
}

pub fn softmax_rows(x: &[f32], last: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    for (yr, xr) in y.chunks_mut(last).zip(x.chunks(last)) {
        let m = xr.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0.0;
        for (o, v) in yr.iter_mut().zip(xr) {
            *o = (v - m).exp();
            z += *o;
        }
        yr.iter_mut().for_each(|o| *o /= z);
    }
    y
}

/// Applies an elementwise activation to `v` in place, chunks in parallel; the common ones
/// get a loop of their own so that it vectorises.
pub fn act_in_place(f: ActFn, v: &mut [f32]) {
    v.par_chunks_mut(1 << 14).for_each(|c| act_serial(f, c));
}

/// `act_in_place` on the calling thread (a kernel's epilogue, one row at a time).
pub fn act_serial(f: ActFn, c: &mut [f32]) {
    match f {
        ActFn::Linear => {}
        ActFn::Relu => c.iter_mut().for_each(|x| *x = x.max(0.0)),
        ActFn::Relu6 => c.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        _ => c.iter_mut().for_each(|x| *x = f.value(*x)),
    }
}
