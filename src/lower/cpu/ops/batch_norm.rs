//! BatchNorm (`Layer::BatchNorm`, with an activation a fusion pass moved into it): the forward
//! (batch or moving statistics, `kernels::bn_apply`, the activation as its epilogue) updates
//! the moving statistics in training; the backward (`kernels::bn_backward` in training, an
//! affine map per channel in inference) is the closure it records on the tape, below.

use crate::ir::ops::ActFn;
use crate::lower::autodiff::{apply, Act, BackwardFn, Grads};
use crate::lower::cpu::ops::activation::act_serial;
use crate::lower::cpu::Net;
use crate::lower::kernels;
use crate::lower::plan::Layer;
use dfdx::prelude::*;
use dfdx::tensor::Tape;

/// Node `idx`, `layer` (a `Layer::BatchNorm`), on `ins[0]`; `train` selects batch statistics.
pub fn forward<T: Tape<f32, Cpu>>(
    net: &mut Net,
    idx: usize,
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    train: bool,
    layer: &Layer,
) -> Act<T> {
    let Layer::BatchNorm {
        gamma,
        beta,
        mean,
        var,
        eps,
        momentum,
        act,
    } = *layer
    else {
        unreachable!("batch_norm::forward lowers a BatchNorm layer");
    };
    let in_shape = ins[0].shape.clone();
    let c = *in_shape.last().expect("rank >= 1");
    let ones = || std::sync::Arc::new(vec![1.0f32; c]);
    let zeros = || std::sync::Arc::new(vec![0.0f32; c]);
    let g_data = gamma.map(|i| net.params[i].data()).unwrap_or_else(ones);
    let b_data = beta.map(|i| net.params[i].data()).unwrap_or_else(zeros);
    let mut ps = vec![];
    if let Some(i) = gamma {
        ps.push(&net.params[i]);
    }
    if let Some(i) = beta {
        ps.push(&net.params[i]);
    }
    let (has_g, has_b) = (gamma.is_some(), beta.is_some());
    let running = (net.params[mean].data(), net.params[var].data());
    let mut batch_stats: Option<(Vec<f32>, Vec<f32>)> = None;
    // An average pool reads the output: the chunks' channel sums are taken too.
    let n = in_shape[0];
    let sums = net
        .plan
        .pooled(idx)
        .then(|| kernels::ImageSums::new(in_shape.iter().product::<usize>() / (n * c).max(1), c));
    let mut means = None;
    let out = apply(ins, &ps, out_shape, |data, need| {
        let x = data.into_iter().next().expect("one input");
        let (m, v) = if train {
            kernels::batch_moments(&x, c)
        } else {
            (running.0.to_vec(), running.1.to_vec())
        };
        let inv_std: Vec<f32> = v.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let (scale, shift) = kernels::bn_affine(&m, &inv_std, &g_data, &b_data);
        let epilogue = act.map(|f| move |r: &mut [f32]| act_serial(f, r));
        let epi = epilogue.as_ref().map(|f| f as kernels::Epilogue);
        let y = kernels::bn_apply(&x, c, (&scale, &shift), epi, sums.as_ref());
        means = sums.and_then(|m| m.means(n));
        if train {
            batch_stats = Some((m.clone(), v));
        }
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                let mut dgamma = vec![0.0f32; c];
                let mut dbeta = vec![0.0f32; c];
                // The gradient at the BatchNorm's output z = x * scale + shift (the
                // forward's own expression), through a fused activation.
                let z = |j: usize, x: f32| x * scale[j] + shift[j];
                let other = |z: f32, g: f32| {
                    let f = act.expect("a fused activation");
                    g * f.grad(z, f.value(z))
                };
                if train {
                    let dx = g.dst(0);
                    let xs = &x[..];
                    let (dg, db) = (&mut dgamma[..], &mut dbeta[..]);
                    let stats = (&m[..], &inv_std[..]);
                    let affine = (&scale[..], &shift[..]);
                    // One call per activation, so that each dz is inlined.
                    match act {
                        None => {
                            kernels::bn_backward(xs, dy, c, stats, affine, dx, dg, db, |_, g| g)
                        }
                        Some(ActFn::Relu) => {
                            let relu = |z: f32, g: f32| if z > 0.0 { g } else { 0.0 };
                            kernels::bn_backward(xs, dy, c, stats, affine, dx, dg, db, relu)
                        }
                        Some(_) => {
                            kernels::bn_backward(xs, dy, c, stats, affine, dx, dg, db, other)
                        }
                    }
                } else {
                    // Moving statistics are constants: the op is an affine map per channel.
                    let dz = |j: usize, x: f32, g: f32| match act {
                        None => g,
                        Some(_) => other(z(j, x), g),
                    };
                    let mut dx = g.acc(0);
                    for (row, (xr, gr)) in x.chunks(c).zip(dy.chunks(c)).enumerate() {
                        for j in 0..c {
                            let gz = dz(j, xr[j], gr[j]);
                            dgamma[j] += gz * (xr[j] - m[j]) * inv_std[j];
                            dbeta[j] += gz;
                            if let Some(dx) = dx.as_deref_mut() {
                                dx[row * c + j] += gz * g_data[j] * inv_std[j];
                            }
                        }
                    }
                }
                let mut k = 0;
                if has_g {
                    g.params[k]
                        .iter_mut()
                        .zip(&dgamma)
                        .for_each(|(d, v)| *d += v);
                    k += 1;
                }
                if has_b {
                    g.params[k]
                        .iter_mut()
                        .zip(&dbeta)
                        .for_each(|(d, v)| *d += v);
                }
            })
        });
        (y, back)
    });
    if let Some((m, v)) = batch_stats {
        // Keras: moving = moving * momentum + batch * (1 - momentum); the variance
        // uses the unbiased estimate, as TensorFlow's fused kernel and PyTorch do.
        let rows = (out.numel() / c) as f32;
        let unbias = if rows > 1.0 { rows / (rows - 1.0) } else { 1.0 };
        let nm: Vec<f32> = running
            .0
            .iter()
            .zip(&m)
            .map(|(r, b)| r * momentum + b * (1.0 - momentum))
            .collect();
        let nv: Vec<f32> = running
            .1
            .iter()
            .zip(&v)
            .map(|(r, b)| r * momentum + b * unbias * (1.0 - momentum))
            .collect();
        net.params[mean].set(nm);
        net.params[var].set(nv);
    }
    out.with_channel_means(means)
}
