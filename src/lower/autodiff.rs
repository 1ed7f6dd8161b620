//! Wiring the project's kernels into dfdx's autodiff: each op computes on raw data, returns its
//! output as a dfdx tensor, and records its own backward with `Tape::add_backward_op`. Gradient
//! buffers are taken out of dfdx's `Gradients`, filled, and put back, so nothing is copied.

use dfdx::prelude::*;
use dfdx::tensor::{Gradients, Tape};
use std::sync::Arc;

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
    /// that layer may overwrite it. `t` is a placeholder: empty without a tape (inference), and
    /// zeros of the same length with one (training), whose id carries the gradient.
    pub host: Option<Arc<Vec<f32>>>,
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

    /// The values, copied.
    pub fn values(&self) -> Vec<f32> {
        match &self.host {
            Some(h) => h.to_vec(),
            None => self.t.as_vec(),
        }
    }

    /// The values as a dfdx tensor with this activation's tape. With a tape the values go into
    /// the placeholder itself, which keeps its id, so the gradient reaches the op that made it.
    pub fn into_tensor(self) -> Flat<T> {
        match self.host {
            Some(h) if T::OWNS_TAPE => {
                let mut t = self.t;
                t.copy_from(&h);
                t
            }
            Some(h) => {
                let (t, tape) = self.t.split_tape();
                let v = Arc::try_unwrap(h).unwrap_or_else(|h| (*h).clone());
                let n = v.len();
                t.device().tensor_from_vec(v, (n,)).put_tape(tape)
            }
            None => self.t,
        }
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

/// Gradient buffers handed to a backward function: one per input (None when not needed) and
/// one per parameter. Kernels accumulate into them.
pub struct Grads<'a> {
    pub inputs: Vec<Option<&'a mut [f32]>>,
    pub params: Vec<&'a mut [f32]>,
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
    let mut ghosts = vec![];
    let mut data = vec![];
    for a in ins {
        let (t, tp) = a.t.split_tape();
        tape = tape.merge(tp);
        match a.host {
            // A host value is shared with its other readers; an op that writes in place takes
            // the buffer with `owned` (the last reader gets it without a copy).
            Some(h) => data.push(h),
            None => {
                // `copy_into` is a memcpy; `as_vec` walks the tensor element by element.
                let mut v = vec![0.0f32; t.shape().0];
                t.copy_into(&mut v);
                data.push(Arc::new(v));
            }
        }
        ghosts.push(t.ghost());
    }
    let (out, backward) = forward(data, T::OWNS_TAPE);
    if !T::OWNS_TAPE {
        // Inference: the output stays on the host for the next layer.
        return Act {
            t: dev.tensor_from_vec(Vec::new(), (0,)).put_tape(tape),
            shape: out_shape,
            needs_grad: false,
            key: usize::MAX,
            host: Some(Arc::new(out)),
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
    debug_assert_eq!(out.len(), out_shape.iter().product::<usize>());
    // Training: the values stay on the host for the readers too, so no reader copies them out
    // of dfdx. The dfdx tensor is a zeroed placeholder of the same length: its id carries the
    // gradient, and dfdx sizes the gradient buffer by it (`into_tensor` fills it at the loss).
    let n = out.len();
    let host = Arc::new(out);
    let out: Flat<NoneTape> = dev.zeros_like(&(n,));
    if let Some(backward) = backward {
        let out_g = out.ghost();
        let param_g: Vec<_> = params.iter().map(|p| p.t.ghost()).collect();
        let needs_any = needs.iter().any(|x| *x) || !param_g.is_empty();
        if needs_any {
            tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
                let dy: Vec<f32> = std::mem::take(&mut **grads.get_or_alloc_mut(&out_g)?);
                // Take each gradient buffer out of the map; an input given twice gets a fresh
                // buffer that is added back afterwards.
                let mut taken: Vec<(usize, Vec<f32>, bool)> = vec![];
                for (i, g) in ghosts.iter().enumerate() {
                    if !needs[i] {
                        continue;
                    }
                    let dup = (0..i).any(|j| needs[j] && keys[j] == keys[i]);
                    let buf: Vec<f32> = if dup {
                        vec![0.0; lens[i]]
                    } else {
                        std::mem::take(&mut **grads.get_or_alloc_mut(g)?)
                    };
                    taken.push((i, buf, dup));
                }
                let mut pbufs: Vec<Vec<f32>> = vec![];
                for g in &param_g {
                    pbufs.push(std::mem::take(&mut **grads.get_or_alloc_mut(g)?));
                }
                {
                    let mut inputs: Vec<Option<&mut [f32]>> =
                        (0..ghosts.len()).map(|_| None).collect();
                    for (i, buf, _) in taken.iter_mut() {
                        inputs[*i] = Some(buf.as_mut_slice());
                    }
                    let mut g = Grads {
                        inputs,
                        params: pbufs.iter_mut().map(|b| b.as_mut_slice()).collect(),
                    };
                    backward(&dy, &mut g);
                }
                for (i, buf, dup) in taken {
                    let dst = grads.get_or_alloc_mut(&ghosts[i])?;
                    if dup {
                        dst.iter_mut().zip(buf).for_each(|(d, v)| *d += v);
                    } else {
                        **dst = buf;
                    }
                }
                for (g, buf) in param_g.iter().zip(pbufs) {
                    **grads.get_or_alloc_mut(g)? = buf;
                }
                **grads.get_or_alloc_mut(&out_g)? = dy;
                Ok(())
            });
        }
    }
    Act {
        t: out.put_tape(tape),
        shape: out_shape,
        needs_grad: true,
        key: usize::MAX,
        host: Some(host),
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
                if let Some(dx) = g.inputs[0].as_deref_mut() {
                    cross_entropy_grad(&probs, k, &labels, eps, dy[0] / n as f32, dx);
                }
            })
        });
        (vec![(loss / n as f64) as f32], back)
    });
    (out.into_tensor().sum(), probs_out)
}
