//! The CPU network's allocation rules (`lower::cpu`, `lower::autodiff`), replayed on a
//! simulated heap: which buffers each layer kind allocates, which values its backward keeps
//! (shared with the value's other readers, as the network shares `Arc`s), which it takes over
//! in place, and how `autodiff`'s gradient table hands out, reuses and frees the activations'
//! gradients. Each arm below names the op file it mirrors; tests/memory.rs checks the result
//! against the network's own allocations, counted by a global allocator.

use super::heap::{Block, Buf, Heap};
use super::{LayerMem, StepSim};
use crate::ir::ops::{ActFn, MergeKind};
use crate::lower::kernels::{self, Workspace};
use crate::lower::plan::{conv_shape, se_gate, Layer, Plan};
use crate::lower::winograd;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

const F: usize = std::mem::size_of::<f32>();

/// An activation as `autodiff::Act` holds it: its values, shared, and its gradient slot.
#[derive(Clone)]
struct SAct {
    data: Buf,
    len: usize,
    needs_grad: bool,
    key: usize,
    slot: Option<usize>,
}

/// A backward recorded on the tape: what it keeps alive until it runs, and what it needs.
struct TapeOp {
    node: usize,
    out_slot: usize,
    out_len: usize,
    /// Per input: its slot (None: the network input), length, whether its gradient is needed,
    /// and the key of the value (the same value read twice gets a second buffer).
    ins: Vec<(Option<usize>, usize, bool, usize)>,
    params: Vec<usize>,
    _saved: Vec<Buf>,
    _extras: Vec<Block>,
    /// Bytes allocated and freed inside the backward.
    transient: usize,
    /// A GatedAdd with a ReLU: a scratch dz of `out_len` when no other input's gradient is
    /// written (rather than added) by it.
    gated_scratch: bool,
}

struct Sim<'a> {
    plan: &'a Plan,
    heap: Heap,
    train: bool,
    param_lens: &'a [usize],
    tape: Vec<TapeOp>,
    next_slot: usize,
    rows: Vec<LayerMem>,
    /// The largest per-thread scratch of `kernels::COLS` and of Winograd's `SCRATCH`.
    cols: usize,
    wino: usize,
}

/// Simulates one training step (`train`) or one inference batch of the CPU network running
/// `plan` at batch `n`, on a heap that already holds `persistent` bytes.
pub fn simulate(plan: &Plan, param_lens: &[usize], n: usize, train: bool) -> StepSim {
    let heap = Heap::new();
    let mut sim = Sim {
        plan,
        heap: heap.clone(),
        train,
        param_lens,
        tape: vec![],
        next_slot: 0,
        rows: vec![],
        cols: 0,
        wino: 0,
    };
    let in_len: usize = n * plan.graph.input_shape().iter().product::<usize>();
    heap.at("the input batch");
    // The loader's batch; `input_act` makes a dfdx tensor of it, which the first layer
    // copies into a shared value before dropping it.
    let batch = heap.alloc(in_len * F);
    let x = SAct {
        data: heap.shared(in_len * F),
        len: in_len,
        needs_grad: false,
        key: 0,
        slot: None,
    };
    drop(batch);
    let sim = RefCell::new(&mut sim);
    let logits = plan.walk(
        n,
        x,
        |a: &SAct| a.clone(),
        |idx, ins, out_shape, skip| sim.borrow_mut().layer(idx, ins, &out_shape, skip),
    );
    let sim = sim.into_inner();
    // The loss: softmax cross-entropy keeps the probabilities for its backward, and hands
    // them out per row.
    heap.at("the loss");
    let k = *plan.graph.node(plan.logits().0).shape.last().unwrap_or(&1);
    let probs = heap.alloc(n * k * F);
    let rows_out = heap.alloc(n * k * F);
    let loss_slot = sim.slot();
    if train {
        sim.tape.push(TapeOp {
            node: plan.logits().0.index(),
            out_slot: loss_slot,
            out_len: 1,
            ins: vec![(logits.slot, logits.len, logits.needs_grad, logits.key)],
            params: vec![],
            _saved: vec![],
            _extras: vec![probs],
            transient: 0,
            gated_scratch: false,
        });
    } else {
        drop(probs);
    }
    drop(logits);
    let forward_peak = heap.peak();
    let mut param_grads: HashMap<usize, Block> = HashMap::new();
    if train {
        sim.backward(&mut param_grads);
    }
    drop(rows_out);
    let rows = std::mem::take(&mut sim.rows);
    StepSim::end(&heap, Some(forward_peak), sim.cols + sim.wino, rows)
}

impl Sim<'_> {
    fn slot(&mut self) -> usize {
        self.next_slot += 1;
        self.next_slot
    }

    fn row(&mut self, idx: usize) -> &mut LayerMem {
        if self.rows.last().map(|r| r.node) != Some(idx) {
            self.rows.push(LayerMem {
                node: idx,
                ..Default::default()
            });
        }
        self.rows.last_mut().expect("pushed")
    }

    /// `autodiff::apply`: the op's output, and with a tape its backward, which keeps `saved`
    /// (inputs' values, shared) and `extras` (its own buffers) until it runs.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        idx: usize,
        ins: &[SAct],
        params: Vec<usize>,
        out: Buf,
        out_len: usize,
        saved: Vec<Buf>,
        extras: Vec<Block>,
        transient: usize,
    ) -> SAct {
        let kept: u64 = saved.iter().map(|b| b.bytes()).sum::<u64>()
            + extras.iter().map(Block::bytes).sum::<u64>();
        let train = self.train;
        let row = self.row(idx);
        row.output += out.bytes();
        if !train {
            return SAct {
                data: out,
                len: out_len,
                needs_grad: false,
                key: usize::MAX,
                slot: None,
            };
        }
        row.saved += kept;
        row.grad += (out_len * F) as u64;
        row.workspace_backward = row.workspace_backward.max(transient as u64);
        let slot = self.slot();
        let needs_any = ins.iter().any(|a| a.needs_grad) || !params.is_empty();
        if needs_any {
            self.tape.push(TapeOp {
                node: idx,
                out_slot: slot,
                out_len,
                ins: ins
                    .iter()
                    .map(|a| (a.slot, a.len, a.needs_grad, a.key))
                    .collect(),
                params,
                _saved: saved,
                _extras: extras,
                transient,
                gated_scratch: false,
            });
        }
        SAct {
            data: out,
            len: out_len,
            needs_grad: true,
            key: idx,
            slot: Some(slot),
        }
    }

    /// The output buffer of an op that may take input `i`'s buffer over (`autodiff::owned`):
    /// its own when no other holder has it, else a copy.
    fn owned(&self, ins: &mut [SAct], i: usize) -> Buf {
        let placeholder = self.heap.shared(0);
        let data = std::mem::replace(&mut ins[i].data, placeholder);
        if Rc::strong_count(&data) == 1 {
            data
        } else {
            self.heap.shared(data.bytes() as usize)
        }
    }

    fn conv_workspace(&mut self, idx: usize, s: &kernels::ConvShape, w: Workspace) {
        if winograd::applies(s) {
            self.wino = self.wino.max(w.per_thread);
        } else {
            self.cols = self.cols.max(w.per_thread);
        }
        let row = self.row(idx);
        row.workspace_forward = row.workspace_forward.max(w.transient as u64);
    }

    fn layer(&mut self, idx: usize, ins: Vec<SAct>, out_shape: &[usize], skip: bool) -> SAct {
        let y = self.layer_inner(idx, ins, out_shape, skip);
        if self.train {
            if let Some(r) = self.rows.last_mut().filter(|r| r.node == idx) {
                r.kept_what = kept_what(&self.plan.layers[idx]);
            }
        }
        y
    }

    fn layer_inner(
        &mut self,
        idx: usize,
        mut ins: Vec<SAct>,
        out_shape: &[usize],
        skip: bool,
    ) -> SAct {
        let name = self
            .plan
            .graph
            .node(crate::ir::NodeId(idx as u32))
            .name
            .clone();
        self.heap.at(format!("forward of {name}"));
        let len: usize = out_shape.iter().product();
        let train = self.train;
        let new = |sim: &Self| sim.heap.shared(len * F);
        let layer = self.plan.layers[idx].clone();
        match layer {
            Layer::Input | Layer::Reshape => ins.remove(0),
            // dropout.rs: the identity outside training; a mask of f32 multipliers kept.
            Layer::Dropout(rate) if !train || rate <= 0.0 => ins.remove(0),
            Layer::Dropout(_) => {
                let mask = self.heap.alloc(len * F);
                let out = new(self);
                self.apply(idx, &ins, vec![], out, len, vec![], vec![mask], 0)
            }
            // conv.rs: keeps its input for the kernel gradient; with an activation in its
            // epilogue and a tape, a copy of the pre-activation output too.
            Layer::Conv { op, w, b, act } => {
                let s = conv_shape(&op, &shape_of(self.plan, idx, 0, out_shape[0]), out_shape);
                let out = new(self);
                let ws = kernels::conv2d_workspace(&s, false, false);
                self.heap.transient(ws.transient);
                self.conv_workspace(idx, &s, ws);
                let dx = ins[0].needs_grad;
                let bw = kernels::conv2d_workspace(&s, true, dx);
                self.conv_workspace(
                    idx,
                    &s,
                    Workspace {
                        transient: 0,
                        per_thread: bw.per_thread,
                    },
                );
                let mut extras = vec![];
                let mut transient = bw.transient;
                if act.is_some() && train {
                    extras.push(self.heap.alloc(len * F));
                    // The gradient through the activation, dz.
                    transient += len * F;
                }
                let saved = if train {
                    vec![ins[0].data.clone()]
                } else {
                    vec![]
                };
                let params = std::iter::once(w).chain(b).collect();
                self.apply(idx, &ins, params, out, len, saved, extras, transient)
            }
            // batch_norm.rs: keeps its input; the statistics are per channel (not counted).
            Layer::BatchNorm { gamma, beta, .. } => {
                let out = new(self);
                let saved = if train {
                    vec![ins[0].data.clone()]
                } else {
                    vec![]
                };
                let params = gamma.into_iter().chain(beta).collect();
                self.apply(idx, &ins, params, out, len, saved, vec![], 0)
            }
            Layer::Activation(f) => self.activation(idx, ins, len, f),
            // zero_pad.rs, and a pool's indices of the maxima (pool.rs, global_pool.rs).
            Layer::ZeroPad(_) => {
                let out = new(self);
                self.apply(idx, &ins, vec![], out, len, vec![], vec![], 0)
            }
            Layer::Pool { max, .. } | Layer::GlobalPool { max } => {
                let out = new(self);
                let global = matches!(layer, Layer::GlobalPool { .. });
                let arg = self
                    .heap
                    .alloc(if max && (train || global) { len * 4 } else { 0 });
                let extras = if train { vec![arg] } else { vec![] };
                self.apply(idx, &ins, vec![], out, len, vec![], extras, 0)
            }
            // dense.rs: keeps its input; a non-fused activation runs as its own op after it.
            Layer::Dense { w, b, act } => {
                let out = new(self);
                let saved = if train {
                    vec![ins[0].data.clone()]
                } else {
                    vec![]
                };
                let params = std::iter::once(w).chain(b).collect();
                let y = self.apply(idx, &ins, params, out, len, saved, vec![], 0);
                drop(ins);
                match act {
                    Some(f) if !skip => self.activation(idx, vec![y], len, f),
                    _ => y,
                }
            }
            Layer::Merge { kind, act } => self.merge(idx, ins, out_shape, kind, act),
            // gated_add.rs: keeps x and the gate, and with a ReLU a byte mask.
            Layer::GatedAdd { act } => {
                let out = new(self);
                let relu = act == Some(ActFn::Relu);
                let mask = self.heap.alloc(if relu && train { len } else { 0 });
                let saved = if train {
                    vec![ins[0].data.clone(), ins[1].data.clone()]
                } else {
                    vec![]
                };
                let y = self.apply(idx, &ins, vec![], out, len, saved, vec![mask], 0);
                if let Some(op) = self.tape.last_mut().filter(|o| o.node == idx) {
                    op.gated_scratch = relu;
                }
                y
            }
        }
    }

    /// activation.rs: with a tape, a new output, the input kept (the backward recomputes the
    /// activation); without one, the input's own buffer (softmax: always a new one).
    fn activation(&mut self, idx: usize, mut ins: Vec<SAct>, len: usize, f: ActFn) -> SAct {
        if !self.train && f != ActFn::Softmax {
            let out = self.owned(&mut ins, 0);
            return self.apply(idx, &ins, vec![], out, len, vec![], vec![], 0);
        }
        let out = self.heap.shared(len * F);
        let saved = if self.train {
            vec![ins[0].data.clone()]
        } else {
            vec![]
        };
        self.apply(idx, &ins, vec![], out, len, saved, vec![], 0)
    }

    /// merge.rs.
    fn merge(
        &mut self,
        idx: usize,
        mut ins: Vec<SAct>,
        out_shape: &[usize],
        kind: MergeKind,
        act: Option<ActFn>,
    ) -> SAct {
        let len: usize = out_shape.iter().product();
        let train = self.train;
        let shapes: Vec<Vec<usize>> = (0..ins.len())
            .map(|i| shape_of(self.plan, idx, i, out_shape[0]))
            .collect();
        match kind {
            // The sum in the buffer of an input no one else holds (else a copy of the first);
            // with a ReLU and a tape, a byte mask. No input is kept.
            MergeKind::Add => {
                let mine = ins
                    .iter()
                    .position(|a| Rc::strong_count(&a.data) == 1)
                    .unwrap_or(0);
                let out = self.owned(&mut ins, mine);
                let relu = act == Some(ActFn::Relu);
                let mask = self.heap.alloc(if relu && train { len } else { 0 });
                self.apply(idx, &ins, vec![], out, len, vec![], vec![mask], 0)
            }
            MergeKind::Concatenate => {
                let out = self.heap.shared(len * F);
                self.apply(idx, &ins, vec![], out, len, vec![], vec![], 0)
            }
            // The SE multiply: a new output keeping x and the gate, or in x's buffer.
            MergeKind::Multiply
                if ins.len() == 2 && shapes[0] == out_shape && se_gate(&shapes[1], out_shape) =>
            {
                if train {
                    let out = self.heap.shared(len * F);
                    let saved = vec![ins[0].data.clone(), ins[1].data.clone()];
                    self.apply(idx, &ins, vec![], out, len, saved, vec![], 0)
                } else {
                    let out = self.owned(&mut ins, 0);
                    self.apply(idx, &ins, vec![], out, len, vec![], vec![], 0)
                }
            }
            // A broadcast product: u32 indices per element of each broadcast input, kept with
            // every input.
            MergeKind::Multiply => {
                let idx_bytes: usize = shapes
                    .iter()
                    .filter(|s| s.iter().product::<usize>() != len)
                    .map(|_| len * 4)
                    .sum();
                let index = self.heap.alloc(idx_bytes);
                let out = self.heap.shared(len * F);
                if train {
                    let saved = ins.iter().map(|a| a.data.clone()).collect();
                    self.apply(idx, &ins, vec![], out, len, saved, vec![index], 0)
                } else {
                    drop(index);
                    self.apply(idx, &ins, vec![], out, len, vec![], vec![], 0)
                }
            }
        }
    }

    /// The tape in reverse (`autodiff::apply`'s recorded closures and its `GradTable`): each
    /// backward takes its output's gradient, gets its inputs' gradients (a reused spare buffer
    /// of the same length, else a new one), adds them to the table, and recycles its own.
    fn backward(&mut self, param_grads: &mut HashMap<usize, Block>) {
        const SPARE: usize = 8;
        let heap = self.heap.clone();
        let mut table: HashMap<usize, Block> = HashMap::new();
        let mut spare: Vec<Block> = vec![];
        let recycle = |spare: &mut Vec<Block>, b: Block| {
            if spare.len() == SPARE {
                spare.remove(0);
            }
            spare.push(b);
        };
        let fresh = |spare: &mut Vec<Block>, len: usize| match spare
            .iter()
            .position(|b| b.bytes() == (len * F) as u64)
        {
            Some(i) => spare.swap_remove(i),
            None => heap.alloc(len * F),
        };
        while let Some(op) = self.tape.pop() {
            let name = &self.plan.graph.node(crate::ir::NodeId(op.node as u32)).name;
            heap.at(format!("backward of {name}"));
            let dy = table
                .remove(&op.out_slot)
                .unwrap_or_else(|| heap.alloc(op.out_len * F));
            let mut grads: Vec<(usize, Block)> = vec![];
            let mut holder = false;
            for (i, &(slot, len, need, key)) in op.ins.iter().enumerate() {
                if !need {
                    continue;
                }
                let dup = op.ins[..i].iter().any(|&(_, _, n, k)| n && k == key);
                let Some(id) = slot else { continue };
                let buf = match table.remove(&id) {
                    Some(b) if !dup => b,
                    other => {
                        if let Some(b) = other {
                            table.insert(id, b);
                        }
                        holder |= i >= 2;
                        fresh(&mut spare, len)
                    }
                };
                grads.push((id, buf));
            }
            for &p in &op.params {
                param_grads
                    .entry(p)
                    .or_insert_with(|| heap.alloc(self.param_lens[p] * F));
            }
            let scratch = if op.gated_scratch && !holder {
                op.out_len * F
            } else {
                0
            };
            heap.transient(op.transient + scratch);
            for (id, buf) in grads {
                match table.contains_key(&id) {
                    true => recycle(&mut spare, buf),
                    false => {
                        table.insert(id, buf);
                    }
                }
            }
            recycle(&mut spare, dy);
            drop(op);
        }
    }
}

/// What each layer kind's backward keeps in the CPU network (the arms of `Sim::layer`).
fn kept_what(l: &Layer) -> &'static str {
    match l {
        Layer::Input | Layer::Reshape => "nothing (the same buffer under another shape)",
        Layer::Conv { act: None, .. } => "its input, for the kernel gradient",
        Layer::Conv { .. } => "its input, and its output before the fused activation",
        Layer::BatchNorm { .. } => {
            "its input and the batch statistics; a fused activation's input is recomputed"
        }
        Layer::Activation(_) => "its input; the output is recomputed from it",
        Layer::ZeroPad(_) => "nothing",
        Layer::Pool { max: true, .. } | Layer::GlobalPool { max: true } => {
            "the index of each maximum (u32)"
        }
        Layer::Pool { .. } | Layer::GlobalPool { .. } => "nothing",
        Layer::Dense { .. } => "its input",
        Layer::Dropout(_) => "the mask of multipliers (f32)",
        Layer::Merge {
            kind: MergeKind::Add,
            ..
        } => "with a ReLU, a byte mask; the sum takes over an input's buffer",
        Layer::Merge {
            kind: MergeKind::Concatenate,
            ..
        } => "nothing",
        Layer::Merge { .. } => "its inputs (an SE gate: x and the gate)",
        Layer::GatedAdd { .. } => "x and the gate; with a ReLU, a byte mask",
    }
}

/// Input `i`'s batch shape of node `idx`, as the plan wires it.
fn shape_of(plan: &Plan, idx: usize, i: usize, n: usize) -> Vec<usize> {
    let src = plan.inputs(crate::ir::NodeId(idx as u32))[i];
    std::iter::once(n)
        .chain(plan.graph.node(src).shape.iter().copied())
        .collect()
}
