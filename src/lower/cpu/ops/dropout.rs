//! Dropout (`Layer::Dropout`, inverted, training only): the forward multiplies by a mask drawn
//! from the network's dropout stream; the backward (the same mask) is the closure it records
//! on the tape.

use crate::lower::autodiff::{apply, Act, BackwardFn, Grads};
use crate::lower::cpu::Net;
use crate::util::rng::Rng;
use dfdx::prelude::*;
use dfdx::tensor::Tape;

/// Node `idx`'s dropout of `ins[0]` at `rate`; the identity outside training.
pub fn forward<T: Tape<f32, Cpu>>(
    net: &mut Net,
    idx: usize,
    mut ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    train: bool,
    rate: f32,
) -> Act<T> {
    if !train || rate <= 0.0 {
        return ins.remove(0);
    }
    let mut rng = net.dropout_rng.fork(idx as u64);
    let keep = 1.0 - rate;
    apply(ins, &[], out_shape, move |data, need| {
        let mask = dropout_mask(&mut rng, data[0].len(), keep);
        let y = data[0].iter().zip(&mask).map(|(x, m)| x * m).collect();
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                if let Some(dx) = g.acc(0) {
                    dx.iter_mut()
                        .zip(dy.iter().zip(&mask))
                        .for_each(|(d, (v, m))| *d += v * m);
                }
            })
        });
        (y, back)
    })
}

/// Inverted dropout's multipliers: 1/keep with probability `keep`, else 0. Every network
/// draws them on the host from the same stream, so all devices drop the same units.
pub fn dropout_mask(rng: &mut Rng, n: usize, keep: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            if rng.uniform() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect()
}
