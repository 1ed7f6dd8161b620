//! Conv2d (`Layer::Conv`, with an activation a fusion pass moved into it): the forward on
//! `kernels::conv2d_forward`, the activation as its epilogue; the backward (through the
//! activation, then `kernels::conv2d_backward`) is the closure it records on the tape, below.

use crate::ir::ops::{ActFn, Conv2d};
use crate::lower::autodiff::{apply, Act, BackwardFn, Grads, InGrad};
use crate::lower::cpu::ops::activation::{act_in_place, act_serial};
use crate::lower::cpu::Net;
use crate::lower::kernels;
use crate::lower::plan::conv_shape;
use dfdx::prelude::*;
use dfdx::tensor::Tape;
use rayon::prelude::*;

/// Node `idx`'s convolution of `ins[0]` with kernel `w` and bias `b` (parameter indices),
/// followed by `act`.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Tape<f32, Cpu>>(
    net: &Net,
    idx: usize,
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    op: Conv2d,
    w: usize,
    b: Option<usize>,
    act: Option<ActFn>,
) -> Act<T> {
    let in_shape = ins[0].shape.clone();
    let s = conv_shape(&op, &in_shape, &out_shape);
    let wt = net.params[w].data();
    let bias = b.map(|b| net.params[b].data());
    let mut ps = vec![&net.params[w]];
    if let Some(b) = b {
        ps.push(&net.params[b]);
    }
    let pooled = net.plan.pooled(idx);
    let mut means = None;
    let out = apply(ins, &ps, out_shape, |data, need| {
        let x = data.into_iter().next().expect("one input");
        let bias = bias.as_deref().map(|v| v.as_slice());
        // Without a tape the fused activation runs as the conv's epilogue; with one,
        // its input is kept for its gradient.
        let epilogue = act
            .filter(|_| !need)
            .map(|f| move |r: &mut [f32]| act_serial(f, r));
        let epi = epilogue.as_ref().map(|f| f as kernels::Epilogue);
        // An average pool reads the output: its channel sums are taken in the
        // epilogue too, unless an activation is still to run on the output.
        let sums = (pooled && (act.is_none() || !need))
            .then(|| kernels::ImageSums::new(s.win.ho * s.win.wo, s.cout));
        let mut y = kernels::conv2d_forward(&x, &wt, bias, &s, epi, sums.as_ref());
        means = sums.and_then(|m| m.means(s.win.n));
        let pre = match act {
            Some(f) if need => {
                let z = y.clone();
                act_in_place(f, &mut y);
                Some((f, z))
            }
            _ => None,
        };
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                let dz: Vec<f32>;
                let dy = match &pre {
                    Some((f, z)) => {
                        dz = dy
                            .par_iter()
                            .zip(z.par_iter())
                            .map(|(d, &z)| d * f.grad(z, f.value(z)))
                            .collect();
                        &dz[..]
                    }
                    None => dy,
                };
                let (dw, rest) = g.params.split_first_mut().expect("kernel grad");
                let db = rest.first_mut().map(|d| &mut **d);
                kernels::conv2d_backward(
                    &x,
                    &wt,
                    dy,
                    &s,
                    g.inputs[0].as_mut().map(InGrad::dst),
                    dw,
                    db,
                );
            })
        });
        (y, back)
    });
    out.with_channel_means(means)
}
