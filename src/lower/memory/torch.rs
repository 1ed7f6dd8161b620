//! The exported `model.py` under PyTorch's autograd, replayed on a simulated heap: one
//! training step as `train.py` runs it (forward, loss, `zero_grad(set_to_none=True)`, backward)
//! and one inference batch under `no_grad`. What each op keeps for its backward is autograd's
//! rule for the ATen op the export writes for the layer (`export::pytorch`): a convolution and
//! a Linear keep their input, a BatchNorm its input, `relu` and `sigmoid` their result, a max
//! pool its input and int64 indices, an elementwise product both factors; an Add, a pad and a
//! mean keep nothing. A value lives while a later layer still reads it or a backward keeps it;
//! views (flatten, reshape) share their input's storage. tests/memory.rs checks the result
//! against `torch.profiler`'s allocation events.
//!
//! In bf16 (`autocast(dtype=torch.bfloat16)` around the forward and the loss, as timm's
//! `--amp-dtype bfloat16` runs it) a convolution and a Linear cast their float32 operands to
//! bfloat16 copies and return bfloat16; every other op keeps its input's type (a sum of both
//! types is float32), so everything after the first convolution is 2 bytes an element. The
//! casts of the weights are cached while autocast is on and kept by the backward (the
//! inference batch keeps them to its end); the loss runs in float32 on a float32 copy of the
//! logits. In the backward each weight's bfloat16 gradient is cast to the float32 `.grad`.

use super::heap::{Block, Buf, Heap};
use super::{LayerMem, Precision, StepSim};
use crate::ir::ops::{ActFn, MergeKind, Op, PoolKind};
use crate::ir::{Graph, NodeId};
use std::collections::HashMap;
use std::rc::Rc;

const F: usize = std::mem::size_of::<f32>();

/// What autograd keeps of one layer until its backward runs.
struct Saved {
    node: usize,
    _values: Vec<Buf>,
    _own: Vec<Block>,
}

/// Which of its values a layer's ATen op keeps for the backward.
enum Keeps {
    Nothing,
    Input,
    Output,
}

/// The activation's rule: autograd keeps the result of those whose derivative is written in
/// it, else the input.
fn act_keeps(f: ActFn) -> Keeps {
    match f {
        ActFn::Linear => Keeps::Nothing,
        ActFn::Relu | ActFn::Sigmoid | ActFn::Tanh | ActFn::Softmax | ActFn::Elu => Keeps::Output,
        ActFn::Relu6 | ActFn::HardSigmoid | ActFn::Swish | ActFn::Gelu | ActFn::Mish => {
            Keeps::Input
        }
    }
}

/// What autograd keeps of each layer (the arms of `simulate`).
fn kept_what(op: &Op) -> &'static str {
    match op {
        Op::Input(_) | Op::Flatten(_) | Op::Reshape(_) => "nothing (a view)",
        Op::Conv2d(_) => "its input (and the weight)",
        Op::BatchNorm(_) => "its input and the batch statistics",
        Op::Activation(a) => match act_keeps(a.function) {
            Keeps::Output => "its result",
            Keeps::Input => "its input",
            Keeps::Nothing => "nothing",
        },
        Op::ZeroPadding2d(_) => "nothing",
        Op::Pool2d(p) if p.kind == PoolKind::Max => "its input and the int64 indices",
        Op::Pool2d(_) => "its input",
        Op::GlobalPool(p) if p.kind == PoolKind::Max => "its input and its result",
        Op::GlobalPool(_) => "nothing (a mean)",
        Op::Dense(_) => "its input (and the activation's operand)",
        Op::Dropout(_) => "the mask (bool)",
        Op::Merge(m) if m.kind == MergeKind::Multiply => "both factors",
        Op::Merge(_) => "nothing",
    }
}

/// After which layer each value's last Python reference goes, as `export::pytorch` writes
/// the forward: a value read only by the next line is `x`, held until a later line assigns
/// `x` again; a value read anywhere else gets a name (`identity`, `bn1`, `act4`), which holds
/// it until the block's `forward` (or the model's) returns.
fn python_lifetimes(g: &Graph) -> Vec<usize> {
    let block = |id: NodeId| g.node(id).scope.block.as_ref().map(|b| b.0.clone());
    let mut end_of: HashMap<Option<String>, usize> = HashMap::new();
    for id in g.ids() {
        end_of.insert(block(id), id.index());
    }
    let mut until: Vec<usize> = (0..g.nodes.len()).collect();
    let mut named = vec![false; g.nodes.len()];
    for id in g.ids() {
        let ins = &g.node(id).inputs;
        for &i in ins {
            // A merge's operands are named too (`mul1 + bn1`).
            if id.index() != i.index() + 1 || ins.len() > 1 {
                named[i.index()] = true;
            }
            until[i.index()] = until[i.index()].max(id.index());
        }
    }
    // A block's (or a stage's) output returns to the model's `forward`, which names it
    // (`stage1_out`) when more than one layer reads it, and holds it until it returns.
    let consumers = g.consumers();
    let stage = |id: NodeId| g.node(id).scope.stage.as_ref().map(|s| s.0.clone());
    for id in g.ids() {
        let v = id.index();
        let next = (v + 1 < g.nodes.len()).then(|| NodeId(v as u32 + 1));
        let unit_end = block(id).is_some()
            && next.is_none_or(|n| match stage(id) {
                Some(s) => stage(n) != Some(s),
                None => block(n) != block(id),
            });
        if unit_end && consumers[v].len() > 1 {
            until[v] = until[v].max(end_of.get(&None).copied().unwrap_or(usize::MAX));
        }
    }
    // The value each function's `x` holds.
    let mut x: HashMap<Option<String>, usize> = HashMap::new();
    for id in g.ids() {
        let v = id.index();
        let b = block(id);
        if named[v] {
            until[v] = until[v].max(end_of[&b]);
        } else if let Some(prev) = x.insert(b.clone(), v) {
            until[prev] = until[prev].max(v);
        }
    }
    for (b, v) in x {
        until[v] = until[v].max(end_of[&b]);
    }
    // The caller holds the input batch and takes the output.
    until[0] = usize::MAX;
    until[g.output.index()] = usize::MAX;
    until
}

/// Whether autocast sends an op to bfloat16: the ops of its lower-precision list that
/// `export::pytorch` writes (convolutions and Linear).
fn autocast_lowers(op: &Op) -> bool {
    match op {
        Op::Conv2d(_) | Op::Dense(_) => true,
        Op::Input(_)
        | Op::BatchNorm(_)
        | Op::Activation(_)
        | Op::ZeroPadding2d(_)
        | Op::Pool2d(_)
        | Op::GlobalPool(_)
        | Op::Dropout(_)
        | Op::Flatten(_)
        | Op::Reshape(_)
        | Op::Merge(_) => false,
    }
}

/// Simulates a training step (`train`) or an inference batch of the exported model at batch
/// `n`, in float32 or under bf16 autocast. `param_lens` are the parameters of each layer
/// (weight, bias, gamma, beta), by node.
pub fn simulate(
    g: &Graph,
    param_lens: &HashMap<usize, usize>,
    n: usize,
    train: bool,
    precision: Precision,
) -> StepSim {
    let heap = Heap::new();
    let bf16 = precision == Precision::Bf16;
    // Bytes per element of each layer's output.
    let mut esize = vec![F; g.nodes.len()];
    for id in g.ids() {
        let node = g.node(id);
        esize[id.index()] = if bf16 && autocast_lowers(&node.op) {
            2
        } else {
            node.inputs
                .iter()
                .map(|i| esize[i.index()])
                .max()
                .unwrap_or(F)
        };
    }
    let elems = |id: NodeId| n * g.node(id).shape.iter().product::<usize>();
    let bytes = |id: NodeId| elems(id) * esize[id.index()];
    // The previous step's gradients, until `zero_grad(set_to_none=True)` after the loss.
    let grads_total: usize = param_lens.values().sum::<usize>() * F;
    let previous = train.then(|| heap.alloc(grads_total));
    heap.reset_peak();
    let until = python_lifetimes(g);
    let mut vals: Vec<Option<Buf>> = vec![None; g.nodes.len()];
    let mut saved: Vec<Saved> = vec![];
    let mut rows: Vec<LayerMem> = vec![];
    // Autocast's cached weight casts of an inference batch, until it ends.
    let mut cache: Vec<Block> = vec![];
    // With a final softmax, train.py trains on the logits before it (`softmax_output`).
    let last = match &g.node(g.output).op {
        Op::Activation(a) if a.function == ActFn::Softmax => g.node(g.output).inputs[0],
        _ => g.output,
    };
    for id in g.ids() {
        if id.index() > last.index() {
            break;
        }
        let node = g.node(id);
        heap.at(format!("forward of {}", node.name));
        let out_elems = elems(id);
        let out_bytes = bytes(id);
        let ins: Vec<Buf> = node
            .inputs
            .iter()
            .map(|i| vals[i.index()].clone().expect("topological order"))
            .collect();
        let new = || heap.shared(out_bytes);
        let keep = |k: Keeps, input: &Buf, out: &Buf| -> Vec<Buf> {
            match k {
                Keeps::Nothing => vec![],
                Keeps::Input => vec![input.clone()],
                Keeps::Output => vec![out.clone()],
            }
        };
        // Under autocast a convolution or a Linear reads bfloat16 copies: of a float32 input
        // (the backward keeps the copy) and of its weights (cached until autocast ends; the
        // backward keeps them too).
        let lowers = bf16 && autocast_lowers(&node.op);
        let x0 = match node.inputs.first() {
            Some(&i) if lowers && esize[i.index()] == F => heap.shared(elems(i) * 2),
            _ => ins.first().cloned().unwrap_or_else(|| heap.shared(0)),
        };
        let weights: Vec<Block> = match param_lens.get(&id.index()) {
            Some(&p) if lowers => vec![heap.alloc(p * 2)],
            _ => vec![],
        };
        // The layer's output, what its backward keeps of the values, and its own buffers.
        let (out, values, mut own): (Buf, Vec<Buf>, Vec<Block>) = match &node.op {
            Op::Input(_) => (new(), vec![], vec![]),
            Op::Conv2d(_) => (new(), vec![x0.clone()], vec![]),
            Op::BatchNorm(_) => (new(), vec![ins[0].clone()], vec![]),
            Op::Dense(d) => {
                let lin = new();
                match d.activation.filter(|f| *f != ActFn::Linear) {
                    // The activation runs as its own op on the Linear's output; a final
                    // softmax is left to the loss.
                    Some(f) if !(id == g.output && f == ActFn::Softmax) => {
                        let y = new();
                        let mut v = vec![x0.clone()];
                        v.extend(keep(act_keeps(f), &lin, &y));
                        (y, v, vec![])
                    }
                    _ => (lin, vec![x0.clone()], vec![]),
                }
            }
            Op::Activation(a) => {
                let out = new();
                let v = keep(act_keeps(a.function), &ins[0], &out);
                (out, v, vec![])
            }
            Op::ZeroPadding2d(_) => (new(), vec![], vec![]),
            Op::Pool2d(p) => {
                let idx = heap.alloc(if train && p.kind == PoolKind::Max {
                    out_elems * 8
                } else {
                    0
                });
                (new(), vec![ins[0].clone()], vec![idx])
            }
            Op::GlobalPool(p) => {
                let out = new();
                let v = match p.kind {
                    PoolKind::Max => vec![ins[0].clone(), out.clone()],
                    PoolKind::Avg => vec![],
                };
                (out, v, vec![])
            }
            Op::Dropout(d) if train && d.rate > 0.0 => {
                let mask = heap.alloc(out_elems);
                (new(), vec![], vec![mask])
            }
            Op::Dropout(_) | Op::Flatten(_) | Op::Reshape(_) => (ins[0].clone(), vec![], vec![]),
            Op::Merge(m) => match m.kind {
                MergeKind::Add | MergeKind::Concatenate => (new(), vec![], vec![]),
                MergeKind::Multiply => (new(), ins.clone(), vec![]),
            },
        };
        drop(x0);
        if train {
            own.extend(weights);
        } else {
            cache.extend(weights);
        }
        let kept: u64 = values.iter().map(|b| b.bytes()).sum::<u64>()
            + own.iter().map(Block::bytes).sum::<u64>();
        let view = ins.first().is_some_and(|i| Rc::ptr_eq(i, &out));
        rows.push(LayerMem {
            node: id.index(),
            output: if view { 0 } else { out.bytes() },
            saved: if train { kept } else { 0 },
            grad: if train { out_bytes as u64 } else { 0 },
            kept_what: if train { kept_what(&node.op) } else { "" },
            ..Default::default()
        });
        if train {
            saved.push(Saved {
                node: id.index(),
                _values: values,
                _own: own,
            });
        }
        drop(ins);
        vals[id.index()] = Some(out);
        for (v, &u) in until.iter().enumerate() {
            if u == id.index() && v != id.index() {
                vals[v] = None;
            }
        }
    }
    // The loss: log-softmax of the logits (of a float32 copy of bfloat16 ones), kept for the
    // backward.
    heap.at("the loss");
    let k = g.node(last).shape.iter().product::<usize>();
    let upcast = heap.alloc(if esize[last.index()] == F {
        0
    } else {
        n * k * F
    });
    let logp = heap.alloc(n * k * F);
    let logits = vals[last.index()].take();
    // Autocast ends: its cache of weight casts goes.
    drop(cache);
    if !train {
        drop((upcast, logp, logits, vals));
        return StepSim::end(&heap, None, 0, rows);
    }
    let forward_peak = heap.peak();
    drop(previous);
    // The backward, layer by layer from the last: an input's gradient is a new tensor, added
    // in place into the one already there; an Add and a view pass theirs on as it is. Then the
    // layer's own gradient and what it kept go, and its parameters' gradients stay.
    let mut grad: HashMap<usize, Buf> = HashMap::new();
    grad.insert(last.index(), heap.shared(bytes(last)));
    drop((upcast, logp, logits));
    let mut param_grads: Vec<Block> = vec![];
    while let Some(s) = saved.pop() {
        let id = NodeId(s.node as u32);
        let node = g.node(id);
        heap.at(format!("backward of {}", node.name));
        if let Some(&p) = param_lens.get(&s.node) {
            // Under autocast the weights' gradient is bfloat16, then cast to the float32 `.grad`.
            let low = heap.alloc(if bf16 && autocast_lowers(&node.op) {
                p * 2
            } else {
                0
            });
            param_grads.push(heap.alloc(p * F));
            drop(low);
        }
        // An Add, a view and an inactive dropout pass the incoming gradient on as it is.
        let passes = match &node.op {
            Op::Flatten(_) | Op::Reshape(_) => true,
            Op::Dropout(d) => d.rate <= 0.0,
            Op::Merge(m) => m.kind == MergeKind::Add,
            _ => false,
        };
        let dy = grad.remove(&s.node);
        for i in node.inputs.iter().filter(|i| i.index() != 0) {
            let b = match (&dy, passes) {
                (Some(d), true) => d.clone(),
                _ => heap.shared(bytes(*i)),
            };
            grad.entry(i.index()).or_insert(b);
        }
        drop(dy);
        drop(s);
    }
    drop(grad);
    drop(vals);
    StepSim {
        peak: heap.peak() - grads_total as u64,
        peak_at: heap.peak_at(),
        forward_peak: forward_peak - grads_total as u64,
        per_thread: 0,
        rows,
    }
}
