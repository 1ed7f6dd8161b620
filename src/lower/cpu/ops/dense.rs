//! Dense (`Layer::Dense`): the forward on `kernels::matmul` over the last axis, then its
//! activation (`activation::forward`, unless a fusion pass took it); the backward (the
//! kernel's, bias's and input's gradients, `kernels::matmul`) is the closure it records on the
//! tape, below.

use crate::ir::ops::ActFn;
use crate::lower::autodiff::{apply, Act, BackwardFn, Grads};
use crate::lower::cpu::ops::activation;
use crate::lower::cpu::Net;
use crate::lower::kernels;
use dfdx::prelude::*;
use dfdx::tensor::Tape;

/// `ins[0]` times kernel `w` plus bias `b` (parameter indices), then `act` unless `skip_act`.
pub fn forward<T: Tape<f32, Cpu>>(
    net: &Net,
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    w: usize,
    b: Option<usize>,
    act: Option<ActFn>,
    skip_act: bool,
) -> Act<T> {
    let in_shape = ins[0].shape.clone();
    let cin = *in_shape.last().expect("rank >= 1");
    let units = *out_shape.last().expect("rank >= 1");
    let rows = in_shape.iter().product::<usize>() / cin;
    let wt = net.params[w].data();
    let bias = b.map(|b| net.params[b].data());
    let mut ps = vec![&net.params[w]];
    if let Some(b) = b {
        ps.push(&net.params[b]);
    }
    let y = apply(ins, &ps, out_shape.clone(), move |data, need| {
        let x = data.into_iter().next().expect("one input");
        let mut y = vec![0.0f32; rows * units];
        kernels::matmul(
            rows,
            units,
            cin,
            &mut y,
            (units, 1),
            false,
            &x,
            (cin, 1),
            &wt,
            (units, 1),
        );
        if let Some(b) = &bias {
            kernels::add_row_bias(&mut y, b);
        }
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                let (dw, rest) = g.params.split_first_mut().expect("kernel grad");
                kernels::matmul(
                    cin,
                    units,
                    rows,
                    dw,
                    (units, 1),
                    true,
                    &x,
                    (1, cin),
                    dy,
                    (units, 1),
                );
                if let Some(db) = rest.first_mut() {
                    kernels::column_sums(dy, units, db);
                }
                if let Some(dx) = g.acc(0) {
                    kernels::matmul(
                        rows,
                        cin,
                        units,
                        dx,
                        (cin, 1),
                        true,
                        dy,
                        (units, 1),
                        &wt,
                        (1, units),
                    );
                }
            })
        });
        (y, back)
    });
    match act {
        Some(f) if !skip_act => activation::forward(vec![y], out_shape, f),
        _ => y,
    }
}
