//! Wiring the project's kernels into dfdx's autodiff: each op computes on raw data, returns its
//! output as a dfdx tensor, and records its own backward with `Tape::add_backward_op`. dfdx's
//! tape orders the backward ops and holds the parameters' gradients; the activations' gradients
//! live in a `GradTable` beside it, which hands each op's backward buffers it may overwrite
//! instead of zeroed ones, and frees each gradient as soon as its op has used it.

use dfdx::prelude::*;
use dfdx::tensor::{Gradients, Tape};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub type Flat<T> = Tensor<(usize,), f32, Cpu, T>;

/// An activation: a flat dfdx tensor and its logical shape, batch first (N, H, W, C) or (N, C).
pub struct Act<T> {
    pub t: Flat<T>,
    pub shape: Vec<usize>,
    /// False for the network input: ops skip computing its gradient.
    pub needs_grad: bool,
    /// Which graph node produced it: the same tensor read twice by one op has the same key.
    pub key: usize,
    /// The values of every op's output stay in this host buffer between layers, so no layer
    /// copies them out of dfdx, and a value read by one layer only is handed over as is, so
    /// that layer may overwrite it. `t` is then an empty placeholder that carries the tape.
    /// None for a tensor made outside `apply` (the network input): its values are `t`'s, and
    /// its gradient is dfdx's.
    pub host: Option<Host>,
}

/// An op output's values and, with a tape, where its gradient collects.
#[derive(Clone)]
pub struct Host {
    data: Shared,
    slot: Option<Slot>,
    /// The per-image channel means (N, C) of `data`, when the kernel that made it took them
    /// (`kernels::ImageSums`, for an average global pool reading it).
    means: Option<Shared>,
}

/// An activation's place in its forward pass's gradient table.
#[derive(Clone)]
struct Slot {
    table: GradTable,
    id: usize,
}

/// The gradients of one forward pass's activations, by slot. A gradient is made by the first
/// backward that reaches it (the last reader in the forward), filled by the readers' backwards
/// and taken out, for good, by the backward of the op that made the activation.
#[derive(Clone, Default)]
struct GradTable(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    grads: HashMap<usize, Vec<f32>>,
    /// Gradients already used, kept for reuse as fresh buffers of the same length.
    spare: Vec<Vec<f32>>,
    next: usize,
}

/// At most this many used gradients wait for reuse.
const SPARE: usize = 8;

impl GradTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A backward that panicked leaves nothing half-written that a later one would read.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn slot(&self) -> Slot {
        let mut t = self.lock();
        t.next += 1;
        Slot {
            table: self.clone(),
            id: t.next,
        }
    }
    fn take(&self, id: usize) -> Option<Vec<f32>> {
        self.lock().grads.remove(&id)
    }
    /// A buffer of `len` elements for a gradient not made yet: a used one (its contents left
    /// over, so `fresh`) when one of that length waits, else zeros.
    fn fresh(&self, len: usize) -> InGrad {
        let spare = {
            let mut t = self.lock();
            let i = t.spare.iter().position(|b| b.len() == len);
            i.map(|i| t.spare.swap_remove(i))
        };
        match spare {
            Some(buf) => InGrad {
                buf,
                fresh: true,
                zeroed: false,
            },
            None => InGrad {
                buf: vec![0.0; len],
                fresh: true,
                zeroed: true,
            },
        }
    }
    /// Adds `g` to the gradient in `id`, or makes it that.
    fn add(&self, id: usize, g: Vec<f32>) {
        let mut t = self.lock();
        match t.grads.get_mut(&id) {
            Some(d) => {
                d.par_iter_mut().zip(&g).for_each(|(d, v)| *d += v);
                keep_spare(&mut t, g);
            }
            None => {
                t.grads.insert(id, g);
            }
        }
    }
    fn recycle(&self, g: Vec<f32>) {
        keep_spare(&mut self.lock(), g);
    }
}

fn keep_spare(t: &mut Table, g: Vec<f32>) {
    if t.spare.len() == SPARE {
        // The oldest goes: lengths recur within a stage, and the stages come in turn.
        t.spare.remove(0);
    }
    t.spare.push(g);
}

impl<T: Tape<f32, Cpu>> Act<T> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// A second handle on the same data with an empty tape, for a tensor read by several layers;
    /// dfdx merges the tapes again where the branches meet.
    pub fn branch(&self) -> Act<T> {
        Act {
            t: self.t.retaped(),
            shape: self.shape.clone(),
            needs_grad: self.needs_grad,
            key: self.key,
            host: self.host.clone(),
        }
    }

    /// The same activation carrying `means`, its per-image channel means (N, C), when given.
    pub fn with_channel_means(mut self, means: Option<Vec<f32>>) -> Act<T> {
        if let (Some(h), Some(m)) = (self.host.as_mut(), means) {
            h.means = Some(Arc::new(m));
        }
        self
    }

    /// The per-image channel means that came with the values, if the kernel that made them
    /// took them.
    pub fn channel_means(&self) -> Option<Shared> {
        self.host.as_ref().and_then(|h| h.means.clone())
    }

    /// The same values under another shape: the channel means go unless the shape is kept.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Act<T> {
        if shape != self.shape {
            if let Some(h) = self.host.as_mut() {
                h.means = None;
            }
        }
        self.shape = shape;
        self
    }

    /// The values, copied.
    pub fn values(&self) -> Vec<f32> {
        match &self.host {
            Some(h) => h.data.to_vec(),
            None => self.t.as_vec(),
        }
    }

    /// The values as a dfdx tensor with this activation's tape, for dfdx's own ops (the loss).
    /// The gradient dfdx computes for it goes to the activation's slot.
    pub fn into_tensor(self) -> Flat<T> {
        let Some(h) = self.host else {
            return self.t;
        };
        let (t, mut tape) = self.t.split_tape();
        let v = owned(h.data);
        let n = v.len();
        let out = t.device().tensor_from_vec(v, (n,));
        if let Some(slot) = h.slot {
            let g = out.ghost();
            tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
                let buf = std::mem::take(&mut **grads.get_or_alloc_mut(&g)?);
                slot.table.add(slot.id, buf);
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

/// A weight tensor with a cached copy of its values for the kernels.
#[derive(Clone)]
pub struct Param {
    pub name: String,
    pub t: Tensor<(usize,), f32, Cpu>,
    pub trainable: bool,
    cache: Arc<Vec<f32>>,
}

impl Param {
    pub fn new(dev: &Cpu, name: String, values: Vec<f32>, trainable: bool) -> Param {
        let cache = Arc::new(values.clone());
        let n = values.len();
        Param {
            name,
            t: dev.tensor_from_vec(values, (n,)),
            trainable,
            cache,
        }
    }
    pub fn data(&self) -> Arc<Vec<f32>> {
        self.cache.clone()
    }
    pub fn len(&self) -> usize {
        self.cache.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
    /// Re-reads the tensor after an optimizer step or a load.
    pub fn refresh(&mut self) {
        let mut v = vec![0.0f32; self.t.shape().0];
        self.t.copy_into(&mut v);
        self.cache = Arc::new(v);
    }
    pub fn set(&mut self, values: Vec<f32>) {
        let n = values.len();
        self.cache = Arc::new(values.clone());
        self.t = self.t.device().tensor_from_vec(values, (n,));
    }
}

/// One input's gradient buffer in a backward.
pub struct InGrad {
    buf: Vec<f32>,
    /// Nothing has been added to it yet.
    fresh: bool,
    /// Its elements are zeros.
    zeroed: bool,
}

impl InGrad {
    fn given(buf: Vec<f32>) -> InGrad {
        InGrad {
            buf,
            fresh: false,
            zeroed: false,
        }
    }
    /// The gradient, to add into.
    pub fn acc(&mut self) -> &mut [f32] {
        if self.fresh && !self.zeroed {
            super::kernels::zero(&mut self.buf);
        }
        self.fresh = false;
        &mut self.buf
    }
    /// The buffer and whether to add into it (true) or to write every element (false: it
    /// holds left-over values).
    pub fn dst(&mut self) -> (&mut [f32], bool) {
        let add = !self.fresh;
        self.fresh = false;
        (&mut self.buf, add)
    }
}

/// Gradient buffers handed to a backward function: one per input (None when not needed) and
/// one per parameter. Kernels accumulate into the parameters' buffers.
pub struct Grads<'a> {
    pub inputs: Vec<Option<InGrad>>,
    pub params: Vec<&'a mut [f32]>,
}

impl Grads<'_> {
    /// Input `i`'s gradient to add into, when it is needed.
    pub fn acc(&mut self, i: usize) -> Option<&mut [f32]> {
        self.inputs[i].as_mut().map(InGrad::acc)
    }
    /// Input `i`'s gradient buffer and whether to add into it (see `InGrad::dst`).
    pub fn dst(&mut self, i: usize) -> Option<(&mut [f32], bool)> {
        self.inputs[i].as_mut().map(InGrad::dst)
    }
}

pub type BackwardFn = Box<dyn FnOnce(&[f32], &mut Grads)>;

/// An op's input values: shared with the value's other readers until the last one, so a
/// reader that only reads (a pool, a conv) never copies them.
pub type Shared = Arc<Vec<f32>>;

/// The values as an owned buffer: the buffer itself when no other reader holds it, else a copy.
pub fn owned(v: Shared) -> Vec<f32> {
    Arc::try_unwrap(v).unwrap_or_else(|v| (*v).clone())
}

/// Applies an op. `forward` gets the input data and whether a backward will be needed, and
/// returns the output data and the backward function.
pub fn apply<T: Tape<f32, Cpu>>(
    ins: Vec<Act<T>>,
    params: &[&Param],
    out_shape: Vec<usize>,
    forward: impl FnOnce(Vec<Shared>, bool) -> (Vec<f32>, Option<BackwardFn>),
) -> Act<T> {
    let dev = ins[0].t.device().clone();
    let needs: Vec<bool> = ins.iter().map(|a| a.needs_grad).collect();
    let keys: Vec<usize> = ins.iter().map(|a| a.key).collect();
    let lens: Vec<usize> = ins.iter().map(|a| a.numel()).collect();
    let mut tape = T::default();
    let mut table: Option<GradTable> = None;
    // Where each input's gradient goes: its slot, or (None) dfdx's map, for a tensor made
    // outside `apply`.
    let mut slots: Vec<Option<usize>> = vec![];
    let mut ghosts = vec![];
    let mut data = vec![];
    for a in ins {
        let (t, tp) = a.t.split_tape();
        tape = tape.merge(tp);
        match a.host {
            // A host value is shared with its other readers; an op that writes in place takes
            // the buffer with `owned` (the last reader gets it without a copy).
            Some(h) => {
                data.push(h.data);
                slots.push(h.slot.map(|s| {
                    table.get_or_insert(s.table);
                    s.id
                }));
            }
            None => {
                // `copy_into` is a memcpy; `as_vec` walks the tensor element by element.
                let mut v = vec![0.0f32; t.shape().0];
                t.copy_into(&mut v);
                data.push(Arc::new(v));
                slots.push(None);
            }
        }
        ghosts.push(t.ghost());
    }
    let (out, backward) = forward(data, T::OWNS_TAPE);
    debug_assert_eq!(out.len(), out_shape.iter().product::<usize>());
    let placeholder = dev.tensor_from_vec(Vec::new(), (0,));
    if !T::OWNS_TAPE {
        // Inference: the output stays on the host for the next layer.
        return Act {
            t: placeholder.put_tape(tape),
            shape: out_shape,
            needs_grad: false,
            key: usize::MAX,
            host: Some(Host {
                data: Arc::new(out),
                slot: None,
                means: None,
            }),
        };
    }
    // SE_COMPILE_PROFILE=1: time the backward under the layer kind that recorded it.
    let backward: Option<BackwardFn> = match (backward, super::profile::current_label()) {
        (Some(b), Some(label)) => Some(Box::new(move |dy: &[f32], g: &mut Grads| {
            let t = std::time::Instant::now();
            b(dy, g);
            super::profile::record_backward(&label, t.elapsed().as_secs_f64());
        })),
        (b, _) => b,
    };
    // Training: the values stay on the host for the readers too, so no reader copies them out
    // of dfdx, and the gradient collects in the pass's table.
    let n = out.len();
    let slot = table.unwrap_or_default().slot();
    let out_slot = slot.clone();
    if let Some(backward) = backward {
        let param_g: Vec<_> = params.iter().map(|p| p.t.ghost()).collect();
        let needs_any = needs.iter().any(|x| *x) || !param_g.is_empty();
        if needs_any {
            tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
                let table = &out_slot.table;
                // No reader sent a gradient (an output nothing used): zeros.
                let dy = table.take(out_slot.id).unwrap_or_else(|| vec![0.0; n]);
                // Each input's gradient so far, or a fresh buffer; an input given twice gets a
                // fresh buffer for its second place, added afterwards.
                let mut inputs: Vec<Option<InGrad>> = vec![];
                let mut dups = vec![false; slots.len()];
                for (i, slot) in slots.iter().enumerate() {
                    if !needs[i] {
                        inputs.push(None);
                        continue;
                    }
                    dups[i] = (0..i).any(|j| needs[j] && keys[j] == keys[i]);
                    inputs.push(Some(match slot {
                        _ if dups[i] => table.fresh(lens[i]),
                        Some(id) => match table.take(*id) {
                            Some(b) => InGrad::given(b),
                            None => table.fresh(lens[i]),
                        },
                        None => InGrad::given(std::mem::take(
                            &mut **grads.get_or_alloc_mut(&ghosts[i])?,
                        )),
                    }));
                }
                let mut pbufs: Vec<Vec<f32>> = vec![];
                for g in &param_g {
                    pbufs.push(std::mem::take(&mut **grads.get_or_alloc_mut(g)?));
                }
                let mut g = Grads {
                    inputs,
                    params: pbufs.iter_mut().map(|b| b.as_mut_slice()).collect(),
                };
                backward(&dy, &mut g);
                let Grads { inputs, params } = g;
                drop(params);
                for (i, ig) in inputs.into_iter().enumerate() {
                    let Some(mut ig) = ig else { continue };
                    // A backward that left a fresh buffer untouched added nothing.
                    ig.acc();
                    match slots[i] {
                        Some(id) => table.add(id, ig.buf),
                        None => {
                            let dst = grads.get_or_alloc_mut(&ghosts[i])?;
                            if dups[i] {
                                dst.iter_mut().zip(ig.buf).for_each(|(d, v)| *d += v);
                            } else {
                                **dst = ig.buf;
                            }
                        }
                    }
                }
                for (g, buf) in param_g.iter().zip(pbufs) {
                    **grads.get_or_alloc_mut(g)? = buf;
                }
                table.recycle(dy);
                Ok(())
            });
        }
    }
    Act {
        t: placeholder.put_tape(tape),
        shape: out_shape,
        needs_grad: true,
        key: usize::MAX,
        host: Some(Host {
            data: Arc::new(out),
            slot: Some(slot),
            means: None,
        }),
    }
}

/// Softmax cross-entropy of logits (N, K) against class indices, summed over the rows, with
/// the probabilities. With label smoothing `eps` the target is (1 - eps) one_hot + eps / K
/// (Keras' and PyTorch's definition), so a row's loss is ln z - sum_j t_j (x_j - max).
pub fn softmax_cross_entropy(x: &[f32], k: usize, labels: &[usize], eps: f32) -> (f64, Vec<f32>) {
    let mut probs = vec![0.0f32; x.len()];
    let mut loss = 0.0f64;
    for (i, &label) in labels.iter().enumerate().take(x.len() / k.max(1)) {
        let row = &x[i * k..(i + 1) * k];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f64 = row.iter().map(|v| ((v - m) as f64).exp()).sum();
        for j in 0..k {
            probs[i * k + j] = (((row[j] - m) as f64).exp() / z) as f32;
        }
        let hit = (row[label.min(k - 1)] - m) as f64;
        loss += if eps == 0.0 {
            z.ln() - hit
        } else {
            let mean: f64 = row.iter().map(|v| (v - m) as f64).sum::<f64>() / k as f64;
            z.ln() - (1.0 - eps as f64) * hit - eps as f64 * mean
        };
    }
    (loss, probs)
}

/// dx += scale · (probs - target): the cross-entropy's gradient on the logits, with the target
/// of `softmax_cross_entropy` (label smoothing `eps`).
pub fn cross_entropy_grad(
    probs: &[f32],
    k: usize,
    labels: &[usize],
    eps: f32,
    scale: f32,
    dx: &mut [f32],
) {
    let off = eps / k as f32;
    for (i, &label) in labels.iter().enumerate().take(probs.len() / k.max(1)) {
        for j in 0..k {
            let t = if j == label { 1.0 - eps + off } else { off };
            dx[i * k + j] += scale * (probs[i * k + j] - t);
        }
    }
}

/// Mean softmax cross-entropy of logits (N, K) against class indices (label smoothing `eps`);
/// a scalar with the tape.
pub fn cross_entropy<T: Tape<f32, Cpu>>(
    logits: Act<T>,
    labels: &[usize],
    eps: f32,
) -> (Tensor<(), f32, Cpu, T>, Vec<Vec<f32>>) {
    let (n, k) = (logits.shape[0], logits.shape[1]);
    let labels = labels.to_vec();
    let mut probs_out = vec![];
    let out = apply(vec![logits], &[], vec![1], |data, train| {
        let (loss, probs) = softmax_cross_entropy(&data[0], k, &labels, eps);
        probs_out = probs.chunks(k).map(|r| r.to_vec()).collect();
        let back: Option<BackwardFn> = train.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                if let Some(dx) = g.acc(0) {
                    cross_entropy_grad(&probs, k, &labels, eps, dy[0] / n as f32, dx);
                }
            })
        });
        (vec![(loss / n as f64) as f32], back)
    });
    (out.into_tensor().sum(), probs_out)
}
