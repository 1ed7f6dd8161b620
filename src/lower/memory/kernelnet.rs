//! The kernel network's allocation rules (`lower::kernelnet`, `--device cuda`), replayed on a
//! simulated heap: every layer's record (its inputs, its output and what it saved: an im2col
//! matrix, the library's filter, a pool's taps, a mask) stays until its backward, so each
//! value lives until the backward of its last reader; the backward makes every parameter's
//! gradient at once, then each value's gradient when its first reader's backward reaches it.
//! Convolutions take the library (cuDNN) where `lib` says the network's policy sends them
//! (`SE_COMPILE_CONV=auto`: the forward of multi-tap convolutions with symmetric padding); the
//! library's own workspace is not modelled. tests/memory.rs checks the model against the same
//! network run with host loops (`cpu-kernelnet`, no library), counted by a global allocator.

use super::heap::{Buf, Heap};
use super::{LayerMem, StepSim};
use crate::ir::ops::MergeKind;
use crate::ir::NodeId;
use crate::lower::kernelnet::backend::split_k;
use crate::lower::kernelnet::{self, Epilogue};
use crate::lower::kernels::ConvShape;
use crate::lower::plan::{conv_shape, pool_window, rows_of, Layer, Plan};
use std::rc::Rc;

const F: usize = std::mem::size_of::<f32>();

/// Whether the convolution's forward runs in the library under `SE_COMPILE_CONV=auto`: the
/// policy's rule and the padding test the network itself applies (`backend::Policy`).
pub fn auto_lib(s: &ConvShape) -> bool {
    use crate::lower::kernelnet::backend::{ConvDir, Geom, Policy};
    let g = Geom::of(&s.win, s.groups);
    g.equal_padding() && Policy::Auto.wants(&g, ConvDir::Forward)
}

/// What a layer's record keeps besides its inputs and output (`kernelnet::Saved`), and
/// `pre`: the value before its fused activation.
fn kept_what(l: &Layer, lib: bool, pre: bool) -> &'static str {
    match l {
        Layer::Conv { .. } if pre && lib => {
            "inputs and output, the value before the fused activation; the filter in cuDNN's order (im2col is made again in the backward)"
        }
        Layer::Conv { .. } if pre => {
            "inputs and output, the value before the fused activation, and the im2col matrix (the input for a 1x1)"
        }
        Layer::BatchNorm { .. } if pre => {
            "inputs and output, the value before the fused activation, and the batch statistics"
        }
        _ if pre => "inputs and output, and the value before the fused activation",
        Layer::Conv { .. } if lib => {
            "inputs and output; the filter in cuDNN's order (im2col is made again in the backward)"
        }
        Layer::Conv { .. } => "inputs and output, and the im2col matrix (the input for a 1x1)",
        Layer::BatchNorm { .. } => "inputs and output, and the batch statistics",
        Layer::Pool { .. } | Layer::GlobalPool { max: true } => {
            "inputs and output, and the winning taps"
        }
        Layer::Dense { act: Some(_), .. } => "inputs and output, and the pre-activation",
        Layer::Dropout(_) => "inputs and output, and the mask",
        Layer::Input
        | Layer::Reshape
        | Layer::Activation(_)
        | Layer::ZeroPad(_)
        | Layer::GlobalPool { .. }
        | Layer::Dense { .. }
        | Layer::Merge { .. }
        | Layer::GatedAdd { .. } => "inputs and output (the record)",
    }
}

/// A value, as `kernelnet::Val` shares it.
#[derive(Clone)]
struct V {
    buf: Buf,
    shape: Vec<usize>,
}

/// What the forward keeps of a layer for its backward.
struct Rec {
    ins: Vec<V>,
    out: V,
    /// Saved::Cols (shared with the input for a direct conv), Lib, Arg, PreAct, Mask.
    _saved: Option<Buf>,
    /// `Record::pre_act`: the value before a fused activation that ran as a pass.
    _pre: Option<Buf>,
    lib: bool,
}

/// A layer's record: the shapes of its values, and their buffers where its backward reads
/// them (`kernelnet::backward_reads`, the network's own rule); the rest stand as empty.
fn record(
    heap: &Heap,
    layer: &Layer,
    ins: &[V],
    out: &V,
    saved: Option<Buf>,
    pre: Option<Buf>,
    lib: bool,
) -> Rec {
    let cols = matches!(layer, Layer::Conv { .. }) && !lib && saved.is_some();
    let (keep_ins, keep_out) = crate::lower::kernelnet::backward_reads(layer, ins.len(), cols);
    let kept = |v: &V, k: bool| V {
        buf: if k { v.buf.clone() } else { heap.shared(0) },
        shape: v.shape.clone(),
    };
    Rec {
        ins: ins.iter().zip(keep_ins).map(|(v, k)| kept(v, k)).collect(),
        out: kept(out, keep_out),
        _saved: saved,
        _pre: pre,
        lib,
    }
}

/// Simulates a training step (`train`) or an inference batch at batch `n` of the kernel
/// network running `plan`, whose convolutions take the library where `lib` holds.
pub fn simulate(
    plan: &Plan,
    param_lens: &[usize],
    trainable: &[bool],
    n: usize,
    train: bool,
    lib: &dyn Fn(&ConvShape) -> bool,
) -> StepSim {
    let heap = Heap::new();
    let nodes = plan.graph.nodes.len();
    let mut records: Vec<Option<Rec>> = (0..nodes).map(|_| None).collect();
    let mut rows: Vec<LayerMem> = vec![];
    let in_shape: Vec<usize> = std::iter::once(n)
        .chain(plan.graph.input_shape().iter().copied())
        .collect();
    heap.at("the input batch");
    let x = V {
        buf: heap.shared(in_shape.iter().product::<usize>() * F),
        shape: in_shape,
    };
    let logits = plan.walk(n, x, V::clone, |idx, ins, out_shape, skip| {
        let name = &plan.graph.node(NodeId(idx as u32)).name;
        heap.at(format!("forward of {name}"));
        let (rows_out, cout) = rows_of(&out_shape);
        let total = rows_out * cout;
        let new = |len: usize| heap.shared(len * F);
        let x = &ins[0];
        let mut is_lib = false;
        let mut work = 0;
        let (out, saved): (Buf, Option<Buf>) = match plan.layers[idx].clone() {
            Layer::Input | Layer::Reshape => (x.buf.clone(), None),
            Layer::Dropout(rate) if !train || rate <= 0.0 => (x.buf.clone(), None),
            Layer::Dropout(_) => {
                let mask = new(total);
                (new(total), Some(mask))
            }
            Layer::Conv { op, w, .. } => {
                let s = conv_shape(&op, &x.shape, &out_shape);
                if lib(&s) {
                    is_lib = true;
                    let wk = new(param_lens[w]);
                    (new(total), Some(wk))
                } else {
                    let cols = if s.direct() {
                        x.buf.clone()
                    } else {
                        new(rows_out * s.win.kh * s.win.kw * s.win.c)
                    };
                    (new(total), Some(cols))
                }
            }
            Layer::Pool { max, op } => {
                let w = pool_window(&op, &x.shape, &out_shape);
                let cols = new(rows_out * w.kh * w.kw * w.c);
                work = cols.bytes();
                let y = new(total);
                let arg = new(if max { total } else { 0 });
                drop(cols);
                (y, Some(arg))
            }
            Layer::GlobalPool { max } => {
                let y = new(total);
                (y, max.then(|| new(total)))
            }
            Layer::Dense { act, .. } => {
                let z = new(total);
                match act {
                    Some(f) if !skip && f != crate::ir::ops::ActFn::Linear => (new(total), Some(z)),
                    _ => (z, None),
                }
            }
            Layer::Merge {
                kind: MergeKind::Multiply,
                ..
            } if ins.len() > 2 && ins[0].shape == ins[1].shape => {
                // Each further factor makes a new product.
                let mut y = new(total);
                for _ in 2..ins.len() {
                    y = new(total);
                }
                (y, None)
            }
            Layer::BatchNorm { .. }
            | Layer::Activation(_)
            | Layer::ZeroPad(_)
            | Layer::Merge { .. }
            | Layer::GatedAdd { .. } => (new(total), None),
        };
        // A fused activation in the layer's own kernel writes nothing more; as a pass of its
        // own it writes a new buffer, and the record keeps the one before it where the
        // activation's derivative needs it.
        let (out, pre) = match kernelnet::epilogue(&plan.layers[idx], train) {
            Epilogue::Pass { keep_pre, .. } => {
                let y = new(total);
                (y, keep_pre.then_some(out))
            }
            Epilogue::None | Epilogue::InKernel(_) => (out, None),
        };
        let v = V {
            buf: out,
            shape: out_shape.clone(),
        };
        let view = Rc::ptr_eq(&v.buf, &x.buf);
        let bytes = |b: &Option<Buf>| b.as_ref().map_or(0, |b| b.bytes());
        rows.push(LayerMem {
            node: idx,
            output: if view { 0 } else { v.buf.bytes() },
            saved: if train {
                bytes(&saved) + bytes(&pre)
            } else {
                0
            },
            grad: if train { (total * F) as u64 } else { 0 },
            workspace_forward: work,
            workspace_backward: 0,
            kept_what: if train {
                kept_what(&plan.layers[idx], is_lib, pre.is_some())
            } else {
                ""
            },
        });
        if train {
            records[idx] = Some(record(
                &heap,
                &plan.layers[idx],
                &ins,
                &v,
                saved,
                pre,
                is_lib,
            ));
        }
        v
    });
    // The loss on the host: the logits downloaded, their gradient uploaded.
    heap.at("the loss");
    let (stop, _) = plan.logits();
    let k_len = logits.buf.bytes() as usize / F;
    let host = heap.alloc(2 * k_len * F);
    drop(logits);
    if !train {
        drop(host);
        return StepSim::end(&heap, None, 0, rows);
    }
    let forward_peak = heap.peak();
    let _pgrads: Vec<_> = param_lens
        .iter()
        .zip(trainable)
        .map(|(&l, &t)| heap.alloc(if t { l * F } else { 0 }))
        .collect();
    let mut grads: Vec<Option<Buf>> = (0..nodes).map(|_| None).collect();
    grads[stop.index()] = Some(heap.shared(k_len * F));
    drop(host);
    for idx in (1..=stop.index()).rev() {
        let (Some(dy), Some(rec)) = (grads[idx].take(), records[idx].take()) else {
            continue;
        };
        let name = &plan.graph.node(NodeId(idx as u32)).name;
        heap.at(format!("backward of {name}"));
        let inputs: Vec<usize> = plan
            .inputs(NodeId(idx as u32))
            .iter()
            .map(|i| i.index())
            .collect();
        let (rows_out, cout) = rows_of(&rec.out.shape);
        let xlen = |i: usize| rec.ins[i].shape.iter().product::<usize>();
        // `add_grad`: a new buffer for a value without a gradient yet (never the input).
        let add = |grads: &mut Vec<Option<Buf>>, i: usize, len: usize| {
            if i != 0 && grads[i].is_none() {
                grads[i] = Some(heap.shared(len * F));
            }
        };
        // `accumulate`: takes `g` over, or adds it and lets it go.
        let acc = |grads: &mut Vec<Option<Buf>>, i: usize, g: Buf| {
            if i != 0 && grads[i].is_none() {
                grads[i] = Some(g);
            }
        };
        let layer = plan.layers[idx].clone();
        // The fused activation's gradient, into a new buffer, unless the layer's backward
        // takes it in its own passes.
        let dy = match layer.epilogue() {
            Some(_) if !kernelnet::backward_takes_epilogue(&layer) => {
                let d = heap.shared(dy.bytes() as usize);
                drop(dy);
                d
            }
            Some(_) | None => dy,
        };
        // `pass_through`: copies of dy for the operands from `from` on but the last, which
        // takes dy over.
        let pass_on = |grads: &mut Vec<Option<Buf>>, from: usize| {
            if let Some((&last, rest)) = inputs[from.min(inputs.len())..].split_last() {
                for (i, &j) in rest.iter().enumerate() {
                    add(grads, j, xlen(from + i));
                }
                acc(grads, last, dy.clone());
            }
        };
        match layer {
            Layer::Input => {}
            Layer::Conv { op, .. } => {
                let s = conv_shape(&op, &rec.ins[0].shape, &rec.out.shape);
                // Under auto the library runs the forward only: the gradients take gemm, the
                // im2col matrix made afresh.
                let cols = (rec.lib && !s.direct())
                    .then(|| heap.shared(rows_out * s.win.kh * s.win.kw * s.win.c * F));
                let kd = s.win.kh * s.win.kw * s.win.c / s.groups;
                let parts = split_k(rows_out);
                if s.groups == 1 && parts > 1 {
                    let part = heap.alloc(parts * kd * cout * F);
                    heap.transient(kd * cout * F);
                    drop(part);
                }
                drop(cols);
                if inputs[0] != 0 {
                    if s.direct() {
                        add(&mut grads, inputs[0], xlen(0));
                    } else {
                        let dcols = heap.alloc(rows_out * kd * s.groups * F);
                        add(&mut grads, inputs[0], xlen(0));
                        drop(dcols);
                    }
                }
            }
            Layer::Pool { .. } => {
                if inputs[0] != 0 {
                    let w = match &layer {
                        Layer::Pool { op, .. } => {
                            pool_window(op, &rec.ins[0].shape, &rec.out.shape)
                        }
                        _ => unreachable!("a pool"),
                    };
                    let dcols = heap.alloc(rows_out * w.kh * w.kw * w.c * F);
                    add(&mut grads, inputs[0], xlen(0));
                    drop(dcols);
                }
            }
            Layer::GlobalPool { max: true } => {
                if inputs[0] != 0 {
                    let d = heap.shared(xlen(0) * F);
                    acc(&mut grads, inputs[0], d);
                }
            }
            Layer::Dense { .. } => {
                let dz = rec._saved.as_ref().map(|_| heap.alloc(rows_out * cout * F));
                add(&mut grads, inputs[0], xlen(0));
                drop(dz);
            }
            Layer::Dropout(_) | Layer::Reshape if rec._saved.is_none() => {
                acc(&mut grads, inputs[0], dy.clone());
            }
            Layer::Merge {
                kind: MergeKind::Multiply,
                ..
            }
            | Layer::GatedAdd { .. }
                if rec.ins.len() >= 2 && rec.ins[0].shape != rec.ins[1].shape =>
            {
                // The SE multiply: x's gradient, and the gate's per-image sums.
                let (x, g) = if rec.ins[0].shape == rec.out.shape {
                    (0, 1)
                } else {
                    (1, 0)
                };
                add(&mut grads, inputs[x], xlen(x));
                let dg = heap.shared(xlen(g) * F);
                acc(&mut grads, inputs[g], dg);
                // An SE tail's other operands: dy passed on.
                pass_on(&mut grads, 2);
            }
            Layer::Merge {
                kind: MergeKind::Add,
                ..
            } => pass_on(&mut grads, 0),
            Layer::BatchNorm { .. }
            | Layer::Activation(_)
            | Layer::ZeroPad(_)
            | Layer::GlobalPool { max: false }
            | Layer::Dropout(_)
            | Layer::Reshape
            | Layer::Merge { .. }
            | Layer::GatedAdd { .. } => {
                for (i, &j) in inputs.iter().enumerate() {
                    add(&mut grads, j, xlen(i));
                }
            }
        }
        drop(dy);
        drop(rec);
    }
    StepSim::end(&heap, Some(forward_peak), 0, rows)
}
