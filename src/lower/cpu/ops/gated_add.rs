//! The fused SE tail (`Layer::GatedAdd`, made by `Net::with_fused_se_tails`): the forward,
//! act(x · gate + Σ others) in one pass; the backward is the closure it records on the tape,
//! below (its gate part `merge::se_gate_backward`).

use crate::ir::ops::ActFn;
use crate::lower::autodiff::{apply, Act, BackwardFn, Grads, InGrad};
use crate::lower::cpu::ops::merge::se_gate_backward;
use crate::lower::kernels;
use dfdx::prelude::*;
use dfdx::tensor::Tape;
use rayon::prelude::*;

/// The SE tail, act(x · gate + Σ others) with the gate (N, 1, 1, C) broadcast over each
/// image's rows, in one pass per image that writes a new buffer (and, with a ReLU and a
/// backward, a byte mask of the positive outputs); the backward makes one pass per image over
/// the output gradient, the mask and x, for the gradients of x, the gate and the others.
pub fn forward<T: Tape<f32, Cpu>>(
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    act: Option<ActFn>,
) -> Act<T> {
    debug_assert!(
        act.is_none() || act == Some(ActFn::Relu),
        "only a ReLU is fused"
    );
    let relu = act == Some(ActFn::Relu);
    let total: usize = out_shape.iter().product();
    let (n, c) = (out_shape[0], *out_shape.last().expect("rank >= 1"));
    let per = total / n.max(1);
    apply(ins, &[], out_shape, move |mut data, need| {
        let others = data.split_off(2);
        let gate = data.pop().expect("x and gate");
        let x = data.pop().expect("x and gate");
        let mut mask = vec![0u8; if relu && need { total } else { 0 }];
        let mut masks: Vec<&mut [u8]> = if mask.is_empty() {
            (0..n).map(|_| &mut [][..]).collect()
        } else {
            mask.chunks_mut(per).collect()
        };
        let mut y: Vec<f32> = Vec::with_capacity(total);
        y.spare_capacity_mut()[..total]
            .par_chunks_mut(per)
            .zip(masks.par_iter_mut())
            .enumerate()
            .for_each(|(b, (yo, mo))| {
                let gr = &gate[b * c..(b + 1) * c];
                fn at(v: &[f32], o: usize, c: usize) -> &[f32] {
                    &v[o..o + c]
                }
                for (r, yr) in yo.chunks_mut(c).enumerate() {
                    let o0 = b * per + r * c;
                    let xr = at(&x, o0, c);
                    let xg = xr.iter().zip(gr).map(|(x, g)| x * g);
                    match others.first() {
                        Some(o) => {
                            for (y, (v, o)) in yr.iter_mut().zip(xg.zip(at(o, o0, c))) {
                                y.write(v + o);
                            }
                        }
                        None => {
                            for (y, v) in yr.iter_mut().zip(xg) {
                                y.write(v);
                            }
                        }
                    }
                    // SAFETY: every element of the row was written just above.
                    let yr = unsafe { kernels::assume_init(yr) };
                    for o in others.iter().skip(1) {
                        yr.iter_mut().zip(at(o, o0, c)).for_each(|(y, v)| *y += v);
                    }
                    if relu {
                        yr.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                    if !mo.is_empty() {
                        mo[r * c..(r + 1) * c]
                            .iter_mut()
                            .zip(yr.iter())
                            .for_each(|(m, v)| *m = (*v > 0.0) as u8);
                    }
                }
            });
        // SAFETY: the images' blocks cover all `total` elements, and each row was written.
        unsafe { y.set_len(total) };
        drop(masks);
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                // Two passes, each of the shape that runs fastest on its own: the gradient at
                // the sum, dz = dy masked by the ReLU, in chunks across both cores, stored
                // into each other input's gradient (the first of them, when written rather
                // than added to, holds dz for the second pass); then per image, dx = dz · gate
                // and d(gate) += Σ x · dz. One pass fewer over the memory than the multiply's
                // and the Add's backwards, which stored dz twice.
                const CHUNK: usize = 1 << 14;
                let (xg, rest) = g.inputs.split_at_mut(2);
                let (first, second) = xg.split_at_mut(1);
                let mut others: Vec<(&mut [f32], bool)> =
                    rest.iter_mut().flatten().map(InGrad::dst).collect();
                /// Chunk `i` of dy, masked.
                fn masked<'a>(
                    mask: &'a [u8],
                    i: usize,
                    gy: &'a [f32],
                ) -> impl Iterator<Item = f32> + 'a {
                    let m = &mask[i * CHUNK..i * CHUNK + gy.len()];
                    gy.iter()
                        .zip(m)
                        .map(|(v, m)| if *m != 0 { *v } else { 0.0 })
                }
                let holder = others.iter().position(|(_, add)| !add);
                let mut scratch = vec![];
                let dz: &[f32] = if !relu {
                    dy
                } else {
                    if holder.is_none() {
                        // SAFETY: each chunk is written in full below.
                        scratch = unsafe {
                            kernels::par_filled(total, CHUNK, |i, d| {
                                let gy = &dy[i * CHUNK..i * CHUNK + d.len()];
                                d.iter_mut().zip(masked(&mask, i, gy)).for_each(|(d, v)| {
                                    d.write(v);
                                });
                            })
                        };
                    }
                    &scratch
                };
                // The other inputs' gradients: dz, written or added, chunk by chunk.
                let mut chunks: Vec<Vec<(&mut [f32], bool)>> =
                    dy.chunks(CHUNK).map(|_| vec![]).collect();
                for (d, add) in others.iter_mut() {
                    for (o, d) in chunks.iter_mut().zip(d.chunks_mut(CHUNK)) {
                        o.push((d, *add));
                    }
                }
                chunks
                    .into_par_iter()
                    .zip(dy.par_chunks(CHUNK))
                    .enumerate()
                    .for_each(|(i, (outs, gy))| {
                        for (d, add) in outs {
                            if relu {
                                kernels::store(d, add, masked(&mask, i, gy));
                            } else {
                                kernels::store(d, add, gy.iter().copied());
                            }
                        }
                    });
                let dz: &[f32] = match holder {
                    Some(h) if relu => &others[h].0[..],
                    _ => dz,
                };
                se_gate_backward(
                    dz,
                    &x,
                    &gate,
                    c,
                    first[0].as_mut().map(InGrad::dst),
                    second[0].as_mut().map(InGrad::acc),
                );
            })
        });
        (y, back)
    })
}
