//! Add, Multiply and Concatenate (`Layer::Merge`; an Add may carry a fused ReLU): each
//! forward, and its backward as the closure it records on the tape, in one arm of `forward`'s
//! match; the SE multiply's backward, `se_gate_backward`, is shared with `gated_add`.

use crate::ir::ops::{ActFn, MergeKind};
use crate::lower::autodiff::{apply, owned, Act, BackwardFn, Grads, InGrad};
use crate::lower::kernels;
use crate::lower::plan::se_gate;
use dfdx::prelude::*;
use dfdx::tensor::Tape;
use rayon::prelude::*;
use std::sync::Arc;

/// Add, Multiply (size-1 axes broadcast, e.g. the SE gate) and channel Concatenate.
/// `act`: a ReLU fused into an Add (the only fused merge): applied to each chunk of the sum
/// as it is made, with a byte mask of the positive outputs kept for the backward.
pub fn forward<T: Tape<f32, Cpu>>(
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    kind: MergeKind,
    act: Option<ActFn>,
) -> Act<T> {
    let shapes: Vec<Vec<usize>> = ins.iter().map(|a| a.shape.clone()).collect();
    let total: usize = out_shape.iter().product();
    let last = *out_shape.last().expect("rank >= 1");
    apply(ins, &[], out_shape.clone(), move |data, need| match kind {
        MergeKind::Add => {
            // The backward needs no input values: an input no other reader holds (else the
            // first) becomes the sum, in its own buffer.
            let mut data = data;
            let mine = data
                .iter()
                .position(|d| Arc::strong_count(d) == 1)
                .unwrap_or(0);
            let mut y = owned(data.remove(mine));
            const CHUNK: usize = 1 << 14;
            let relu = act == Some(ActFn::Relu);
            debug_assert!(act.is_none() || relu, "only a ReLU is fused into an Add");
            let mut mask = vec![0u8; if relu && need { y.len() } else { 0 }];
            // With the ReLU, the last input is added in the pass that rectifies.
            let split = if relu {
                data.len().saturating_sub(1)
            } else {
                data.len()
            };
            for d in &data[..split] {
                y.par_chunks_mut(CHUNK)
                    .zip(d.par_chunks(CHUNK))
                    .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
            }
            if relu {
                // The last input's chunk, added, rectified and masked in one pass.
                let d = data.get(split).map(|d| &d[..]);
                let fin = |(i, a): (usize, &mut [f32]), m: &mut [u8]| {
                    if let Some(d) = d {
                        a.iter_mut().zip(&d[i * CHUNK..]).for_each(|(a, b)| *a += b);
                    }
                    a.iter_mut().for_each(|v| *v = v.max(0.0));
                    m.iter_mut()
                        .zip(a.iter())
                        .for_each(|(m, v)| *m = (*v > 0.0) as u8);
                };
                if need {
                    y.par_chunks_mut(CHUNK)
                        .enumerate()
                        .zip(mask.par_chunks_mut(CHUNK))
                        .for_each(|(a, m)| fin(a, m));
                } else {
                    y.par_chunks_mut(CHUNK)
                        .enumerate()
                        .for_each(|a| fin(a, &mut []));
                }
            }
            let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
                Box::new(move |dy: &[f32], g: &mut Grads| {
                    // Each input's gradient is dy (masked by the ReLU), written into a fresh
                    // buffer or added. One pass over dy: a chunk of dy and of the mask is
                    // read from memory once and stored, while in cache, into every input's
                    // gradient.
                    let mut outs: Vec<Vec<(&mut [f32], bool)>> =
                        dy.chunks(CHUNK).map(|_| Vec::new()).collect();
                    for (dx, add) in g.inputs.iter_mut().flatten().map(InGrad::dst) {
                        for (o, d) in outs.iter_mut().zip(dx.chunks_mut(CHUNK)) {
                            o.push((d, add));
                        }
                    }
                    outs.into_par_iter()
                        .zip(dy.par_chunks(CHUNK))
                        .enumerate()
                        .for_each(|(i, (outs, gy))| {
                            for (d, add) in outs {
                                if !relu {
                                    kernels::store(d, add, gy.iter().copied());
                                    continue;
                                }
                                let m = &mask[i * CHUNK..i * CHUNK + gy.len()];
                                let v = gy
                                    .iter()
                                    .zip(m)
                                    .map(|(v, m)| if *m != 0 { *v } else { 0.0 });
                                kernels::store(d, add, v);
                            }
                        });
                })
            });
            (y, back)
        }
        MergeKind::Concatenate => {
            let widths: Vec<usize> = shapes
                .iter()
                .map(|s| *s.last().expect("rank >= 1"))
                .collect();
            let rows = total / last;
            let mut y = vec![0.0f32; total];
            let mut off = 0;
            for (d, &wdt) in data.iter().zip(&widths) {
                for r in 0..rows {
                    y[r * last + off..r * last + off + wdt]
                        .copy_from_slice(&d[r * wdt..(r + 1) * wdt]);
                }
                off += wdt;
            }
            let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
                Box::new(move |dy: &[f32], g: &mut Grads| {
                    let mut off = 0;
                    for (dx, &wdt) in g.inputs.iter_mut().zip(&widths) {
                        if let Some(dx) = dx.as_mut().map(InGrad::acc) {
                            for r in 0..rows {
                                dx[r * wdt..(r + 1) * wdt]
                                    .iter_mut()
                                    .zip(&dy[r * last + off..r * last + off + wdt])
                                    .for_each(|(d, v)| *d += v);
                            }
                        }
                        off += wdt;
                    }
                })
            });
            (y, back)
        }
        MergeKind::Multiply
            if data.len() == 2 && shapes[0] == out_shape && se_gate(&shapes[1], &out_shape) =>
        {
            // The SE case: x (N, H, W, C) times a gate (N, 1, 1, C), one row of C per image.
            let (n, c) = (out_shape[0], last);
            let per = total / n;
            // Without a backward the product is formed in the feature map's own buffer; with
            // one (which reads the feature map) it is written, in one pass, into a new one.
            let mut data = data;
            let y = if need {
                let (x, gate) = (&data[0], &data[1]);
                // SAFETY: every row of every image is written.
                unsafe {
                    kernels::par_filled(total, per, |b, yo| {
                        let gr = &gate[b * c..(b + 1) * c];
                        for (yr, xr) in yo.chunks_mut(c).zip(x[b * per..].chunks(c)) {
                            for j in 0..c {
                                yr[j].write(xr[j] * gr[j]);
                            }
                        }
                    })
                }
            } else {
                let mut y = owned(std::mem::take(&mut data[0]));
                let gate = &data[1];
                y.par_chunks_mut(per).enumerate().for_each(|(b, yo)| {
                    let gr = &gate[b * c..(b + 1) * c];
                    for yr in yo.chunks_mut(c) {
                        for j in 0..c {
                            yr[j] *= gr[j];
                        }
                    }
                });
                y
            };
            let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
                let mut data = data;
                let gate = data.pop().expect("two inputs");
                let x = data.pop().expect("two inputs");
                Box::new(move |dy: &[f32], g: &mut Grads| {
                    let (first, rest) = g.inputs.split_at_mut(1);
                    let dx = first[0].as_mut().map(InGrad::dst);
                    let dg = rest[0].as_mut().map(InGrad::acc);
                    se_gate_backward(dy, &x, &gate, c, dx, dg);
                })
            });
            (y, back)
        }
        MergeKind::Multiply => {
            // Element i of the output reads element idx[k][i] of input k (broadcast strides).
            let index = |s: &[usize]| -> Vec<u32> {
                let rank = out_shape.len();
                let mut strides = vec![0usize; rank];
                let mut acc = 1;
                for ax in (0..rank).rev() {
                    strides[ax] = if s[ax] == 1 && out_shape[ax] != 1 {
                        0
                    } else {
                        acc
                    };
                    acc *= s[ax];
                }
                (0..total)
                    .map(|mut i| {
                        let mut src = 0;
                        for ax in (0..rank).rev() {
                            src += (i % out_shape[ax]) * strides[ax];
                            i /= out_shape[ax];
                        }
                        src as u32
                    })
                    .collect()
            };
            let idx: Vec<Option<Vec<u32>>> = shapes
                .iter()
                .map(|s| {
                    if s.iter().product::<usize>() == total {
                        None
                    } else {
                        Some(index(s))
                    }
                })
                .collect();
            let at = |k: usize, i: usize| idx[k].as_ref().map_or(i, |v| v[i] as usize);
            let y: Vec<f32> = (0..total)
                .map(|i| (0..data.len()).map(|k| data[k][at(k, i)]).product())
                .collect();
            let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
                Box::new(move |dy: &[f32], g: &mut Grads| {
                    let at = |k: usize, i: usize| idx[k].as_ref().map_or(i, |v| v[i] as usize);
                    for k in 0..data.len() {
                        if let Some(dx) = g.acc(k) {
                            for i in 0..total {
                                let others: f32 = (0..data.len())
                                    .filter(|&j| j != k)
                                    .map(|j| data[j][at(j, i)])
                                    .product();
                                dx[at(k, i)] += dy[i] * others;
                            }
                        }
                    }
                })
            });
            (y, back)
        }
    })
}

/// The backward of the SE multiply y = x · gate, gate (N, 1, 1, C) broadcast over each image's
/// rows of C, from dy: d(x) = dy · gate, written or added (`InGrad::dst`), and d(gate) +=
/// Σ x · dy over the image's rows. Images in parallel, one pass over dy and x each.
pub(super) fn se_gate_backward(
    dy: &[f32],
    x: &[f32],
    gate: &[f32],
    c: usize,
    dx: Option<(&mut [f32], bool)>,
    dgate: Option<&mut [f32]>,
) {
    let n = gate.len() / c.max(1);
    let per = dy.len() / n.max(1);
    let dxs: Vec<Option<(&mut [f32], bool)>> = match dx {
        Some((dx, add)) => dx.chunks_mut(per).map(|d| Some((d, add))).collect(),
        None => (0..n).map(|_| None).collect(),
    };
    let dgs: Vec<Option<&mut [f32]>> = match dgate {
        Some(dg) => dg.chunks_mut(c).map(Some).collect(),
        None => (0..n).map(|_| None).collect(),
    };
    dxs.into_par_iter()
        .zip(dgs)
        .enumerate()
        .for_each(|(b, (mut dxo, mut dgr))| {
            let gr = &gate[b * c..(b + 1) * c];
            let xo = &x[b * per..(b + 1) * per];
            for (r, gy) in dy[b * per..(b + 1) * per].chunks(c).enumerate() {
                if let Some((d, add)) = dxo.as_mut() {
                    let v = gy.iter().zip(gr).map(|(g, s)| g * s);
                    kernels::store(&mut d[r * c..(r + 1) * c], *add, v);
                }
                if let Some(d) = dgr.as_mut() {
                    let xz = xo[r * c..(r + 1) * c].iter().zip(gy);
                    d.iter_mut().zip(xz).for_each(|(d, (x, g))| *d += x * g);
                }
            }
        });
}
