//! The network as a composition of dfdx's own tensor ops, so it runs on any dfdx device: CUDA
//! (cuBLAS matmuls, dfdx's kernels) as well as the CPU. Activations are channels-last 2-D
//! tensors (rows = N·H·W, columns = C), so a 1×1 convolution is one matmul and every other
//! convolution is a gather of input rows (im2col by an index tensor) followed by one matmul.
//! dfdx's autodiff gives every backward. The layer list, parameter names, layouts and values are
//! those of `layers::Net`, so both networks load the same checkpoints and can be compared.

use super::kernels::{ConvShape, Window};
use super::layers::{conv_shape, dropout_mask, pool_window, rows_of, se_gate, Layer, Net};
use super::model::{
    host_gradients, opt_state_of, Batch, DeviceBuffers, Model, OptSettings, Optim, ParamInfo,
    StepResult,
};
use super::plan::Plan;
use super::profile::{kind_label, span_end, span_start, Profile};
use crate::ir::ops::{ActFn, MergeKind};
use crate::ir::Graph;
use crate::util::rng::Rng;
use dfdx::prelude::*;
use dfdx::tensor::{Gradients, Tape};
use std::collections::HashMap;
use std::sync::Arc;

type T2<D, T> = Tensor<(usize, usize), f32, D, T>;
type Index<D> = Tensor<(usize,), usize, D>;

/// An activation: (rows, last axis) and its logical shape, batch first.
struct DAct<D: Device<f32>, T> {
    t: T2<D, T>,
    shape: Vec<usize>,
}

pub struct DevParam<D: Device<f32>> {
    pub name: String,
    pub t: Tensor<(usize,), f32, D>,
    pub trainable: bool,
}

pub struct CompositeNet<D: DeviceBuffers> {
    pub dev: D,
    device_name: String,
    plan: Arc<Plan>,
    pub params: Vec<DevParam<D>>,
    dropout_rng: Rng,
    opt: Option<Optim<D>>,
    /// Gather indices per (node, batch size): built on the host once, kept on the device.
    /// (node, batch, operand) → gather index.
    indices: HashMap<(usize, usize, usize), Index<D>>,
    /// 1 / (number of inputs in the window) per output row of an average pool.
    divisors: HashMap<(usize, usize), Tensor<(usize,), f32, D>>,
    /// With SE_COMPILE_PROFILE=1: seconds and calls per (phase, layer kind), measured with a
    /// device synchronization around each layer (which itself slows the run a little).
    profile: Option<Profile>,
    ones: HashMap<usize, T2<D, NoneTape>>,
}

/// For every output position and kernel tap, the input row it reads, or `pad_row` in the
/// padding. With groups the input is viewed as (N·H·W·G, C/G) and the order is group first, so
/// that the gathered columns are G contiguous im2col matrices.
fn window_rows(w: &Window, groups: usize) -> Vec<usize> {
    let pad_row = w.n * w.h * w.w * groups;
    let mut idx = Vec::with_capacity(groups * w.out_rows() * w.kh * w.kw);
    for g in 0..groups {
        for b in 0..w.n {
            for oy in 0..w.ho {
                for ox in 0..w.wo {
                    for ky in 0..w.kh {
                        for kx in 0..w.kw {
                            idx.push(match w.src(oy, ox, ky, kx) {
                                Some((iy, ix)) => ((b * w.h + iy) * w.w + ix) * groups + g,
                                None => pad_row,
                            });
                        }
                    }
                }
            }
        }
    }
    idx
}

/// Element i of the broadcast result reads element `index[i]` of an input of shape `s`.
fn broadcast_index(s: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let mut strides = vec![0usize; rank];
    let mut acc = 1;
    for ax in (0..rank).rev() {
        strides[ax] = if s[ax] == 1 && out[ax] != 1 { 0 } else { acc };
        acc *= s[ax];
    }
    let total: usize = out.iter().product();
    (0..total)
        .map(|mut i| {
            let mut src = 0;
            for ax in (0..rank).rev() {
                src += (i % out[ax]) * strides[ax];
                i /= out[ax];
            }
            src
        })
        .collect()
}

impl<D: DeviceBuffers> CompositeNet<D> {
    /// The same network as `net`, with its current parameter values, on `dev`.
    pub fn from_net(net: &Net, dev: D, device_name: String) -> CompositeNet<D> {
        let params = net
            .params
            .iter()
            .map(|p| DevParam {
                name: p.name.clone(),
                t: dev.tensor_from_vec(p.data().to_vec(), (p.len(),)),
                trainable: p.trainable,
            })
            .collect();
        CompositeNet {
            dev,
            device_name,
            plan: net.plan.clone(),
            params,
            dropout_rng: Rng::new(0),
            opt: None,
            indices: HashMap::new(),
            divisors: HashMap::new(),
            profile: Profile::from_env(),
            ones: HashMap::new(),
        }
    }

    fn index(&mut self, key: (usize, usize, usize), make: impl FnOnce() -> Vec<usize>) -> Index<D> {
        let dev = self.dev.clone();
        self.indices
            .entry(key)
            .or_insert_with(|| {
                let v = make();
                let n = v.len();
                dev.tensor_from_vec(v, (n,))
            })
            .clone()
    }

    fn param<T: Tape<f32, D>>(&self, i: usize) -> Tensor<(usize,), f32, D, T> {
        self.params[i].t.retaped::<T>()
    }

    /// `x` with one extra row of `fill` appended: the row padding taps read.
    fn with_pad_row<T: Tape<f32, D> + Merge<NoneTape>>(&self, x: T2<D, T>, fill: f32) -> T2<D, T> {
        let c = x.shape().1;
        let row: T2<D, NoneTape> = self.dev.tensor_from_vec(vec![fill; c], (1, c));
        (x, row).concat_along(Axis::<0>)
    }

    /// Gathers window taps: (out rows · taps, C) from `x` padded with `fill`.
    fn gather_windows<T: Tape<f32, D> + Merge<NoneTape>>(
        &mut self,
        node: usize,
        x: T2<D, T>,
        win: &Window,
        groups: usize,
        fill: f32,
    ) -> T2<D, T> {
        let idx = self.index((node, win.n, 0), || window_rows(win, groups));
        self.with_pad_row(x, fill).gather(idx)
    }

    fn forward<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &mut self,
        x: DAct<D, T>,
        train: bool,
    ) -> DAct<D, T> {
        let plan = self.plan.clone();
        let batch = x.shape[0];
        plan.walk(
            batch,
            x,
            |a: &DAct<D, T>| DAct {
                t: a.t.retaped(),
                shape: a.shape.clone(),
            },
            |idx, ins, out_shape, skip_act| {
                let t = self.phase_start();
                let y = self.layer_forward(idx, ins, out_shape, train, skip_act);
                span_end(
                    &mut self.profile,
                    t,
                    || self.dev.synchronize(),
                    || format!("  forward: {}", kind_label(&plan.layers[idx])),
                );
                y
            },
        )
    }

    fn layer_forward<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &mut self,
        idx: usize,
        mut ins: Vec<DAct<D, T>>,
        out_shape: Vec<usize>,
        train: bool,
        skip_act: bool,
    ) -> DAct<D, T> {
        let layer = self.plan.layers[idx].clone();
        let in_shape = ins[0].shape.clone();
        let (rows_out, cout) = rows_of(&out_shape);
        let t = match layer {
            Layer::Input => return ins.remove(0),
            Layer::Conv { op, w, b, act } => {
                let s: ConvShape = conv_shape(&op, &in_shape, &out_shape);
                let x = ins.remove(0).t;
                let win = s.win;
                let kk = win.kh * win.kw;
                let wt = self.param::<T>(w);
                let y = if s.groups == 1 {
                    let cols = if s.direct() {
                        x
                    } else {
                        self.gather_windows(idx, x, &win, 1, 0.0)
                            .reshape_like(&(rows_out, kk * win.c))
                    };
                    cols.matmul(wt.reshape_like(&(kk * win.c, cout)))
                } else {
                    let g = s.groups;
                    let (cg, cog) = (win.c / g, cout / g);
                    let xg = x.reshape_like(&(win.n * win.h * win.w * g, cg));
                    let cols = self.gather_windows(idx, xg, &win, g, 0.0).reshape_like(&(
                        g,
                        rows_out,
                        kk * cg,
                    ));
                    // Keras' kernel (kh, kw, C/G, Cout) holds group g's filters in columns
                    // g·Cout/G..; matmul wants them as (G, kh·kw·C/G, Cout/G).
                    let wg = wt
                        .reshape_like(&(kk * cg, g, cog))
                        .permute::<(usize, usize, usize), Axes3<1, 0, 2>>()
                        .reshape_like(&(g, kk * cg, cog));
                    cols.matmul(wg)
                        .permute::<(usize, usize, usize), Axes3<1, 0, 2>>()
                        .reshape_like(&(rows_out, cout))
                };
                let y = match b {
                    Some(b) => {
                        let bias = self.param::<T>(b).reshape_like(&(1, cout));
                        y + self.rows_broadcast(bias, rows_out)
                    }
                    None => y,
                };
                match act {
                    Some(f) => activation(y, f),
                    None => y,
                }
            }
            Layer::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
                momentum,
                act,
            } => {
                let x = ins.remove(0).t;
                let (rows, c) = *x.shape();
                // y = x * scale + shift per channel, scale = gamma / sqrt(var + eps) and
                // shift = beta - mean * scale: two full passes over x besides the statistics.
                let (m, v) = if train {
                    let inv_n = 1.0 / rows as f32;
                    let m = self.column_sums(x.retaped::<T>()) * inv_n;
                    let ex2 = self.column_sums(x.retaped::<T>().square()) * inv_n;
                    // E[x²] - mean², clamped: rounding can make it slightly negative.
                    let v = (ex2 - m.retaped::<T>().square()).relu();
                    // The moving variance takes the unbiased estimate, as in `layers::Net`.
                    let unbias = if rows > 1 {
                        rows as f32 / (rows as f32 - 1.0)
                    } else {
                        1.0
                    };
                    self.params[mean].t.axpy(
                        momentum,
                        &m.retaped::<NoneTape>().reshape_like(&(c,)),
                        1.0 - momentum,
                    );
                    self.params[var].t.axpy(
                        momentum,
                        &v.retaped::<NoneTape>().reshape_like(&(c,)),
                        unbias * (1.0 - momentum),
                    );
                    (m, v)
                } else {
                    let m = self.params[mean].t.clone().reshape_like(&(1, c));
                    let v = self.params[var].t.clone().reshape_like(&(1, c));
                    (m.retaped::<T>(), v.retaped::<T>())
                };
                let inv_std = (v + eps).sqrt().recip();
                let scale = match gamma {
                    Some(gm) => self.param::<T>(gm).reshape_like(&(1, c)) * inv_std,
                    None => inv_std,
                };
                let shift = m.negate() * scale.retaped::<T>();
                let shift = match beta {
                    Some(bt) => shift + self.param::<T>(bt).reshape_like(&(1, c)),
                    None => shift,
                };
                let scale = self.rows_broadcast(scale, rows);
                let shift = self.rows_broadcast(shift, rows);
                let y = x * scale + shift;
                match act {
                    Some(f) => activation(y, f),
                    None => y,
                }
            }
            Layer::Activation(f) => activation(ins.remove(0).t, f),
            Layer::ZeroPad(p) => {
                let [n, h, w] = [in_shape[0], in_shape[1], in_shape[2]];
                let (ho, wo) = (out_shape[1], out_shape[2]);
                let (top, left) = (p[0][0], p[1][0]);
                let idx_t = self.index((idx, n, 0), || {
                    let pad_row = n * h * w;
                    let mut v = Vec::with_capacity(n * ho * wo);
                    for b in 0..n {
                        for y in 0..ho {
                            for x in 0..wo {
                                let inside = y >= top && y < top + h && x >= left && x < left + w;
                                v.push(if inside {
                                    (b * h + y - top) * w + x - left
                                } else {
                                    pad_row
                                });
                            }
                        }
                    }
                    v
                });
                self.with_pad_row(ins.remove(0).t, 0.0).gather(idx_t)
            }
            Layer::Pool { max, op } => {
                let win = pool_window(&op, &in_shape, &out_shape);
                self.pool(idx, ins.remove(0).t, &win, max)
            }
            Layer::GlobalPool { max } => {
                let (n, c) = (in_shape[0], *in_shape.last().expect("rank 4"));
                let hw = in_shape[1] * in_shape[2];
                let x3 = ins.remove(0).t.reshape_like(&(n, hw, c));
                if max {
                    x3.max::<(usize, usize), Axis<1>>()
                } else {
                    x3.mean::<(usize, usize), Axis<1>>()
                }
            }
            Layer::Dense { w, b, act } => {
                let x = ins.remove(0).t;
                let cin = x.shape().1;
                let y = x.matmul(self.param::<T>(w).reshape_like(&(cin, cout)));
                let y = match b {
                    Some(b) => {
                        let bias = self.param::<T>(b).reshape_like(&(1, cout));
                        y + self.rows_broadcast(bias, rows_out)
                    }
                    None => y,
                };
                match act {
                    Some(f) if !skip_act => activation(y, f),
                    _ => y,
                }
            }
            Layer::Dropout(rate) => {
                let x = ins.remove(0).t;
                if !train || rate <= 0.0 {
                    x
                } else {
                    // The same masks as `layers::Net`: drawn on the host from the same stream.
                    let mut rng = self.dropout_rng.fork(idx as u64);
                    let keep = 1.0 - rate;
                    let (r, c) = *x.shape();
                    let mask = dropout_mask(&mut rng, r * c, keep);
                    x * self.dev.tensor_from_vec(mask, (r, c))
                }
            }
            Layer::Reshape => ins.remove(0).t.reshape_like(&(rows_out, cout)),
            Layer::Merge { kind, act } => {
                let y = self.merge(idx, ins, &out_shape, kind);
                match act {
                    Some(f) => activation(y, f),
                    None => y,
                }
            }
            // The SE tail of a rewired plan: the multiply, then the Add of the others.
            Layer::GatedAdd { act } => {
                let others = ins.split_off(2);
                let y = self.merge(idx, ins, &out_shape, MergeKind::Multiply);
                let y = others.into_iter().fold(y, |acc, a| acc + a.t);
                match act {
                    Some(f) => activation(y, f),
                    None => y,
                }
            }
        };
        DAct {
            t,
            shape: out_shape,
        }
    }

    fn pool<T: Tape<f32, D> + Merge<NoneTape>>(
        &mut self,
        node: usize,
        x: T2<D, T>,
        win: &Window,
        max: bool,
    ) -> T2<D, T> {
        let (rows, kk, c) = (win.out_rows(), win.kh * win.kw, win.c);
        let fill = if max { f32::NEG_INFINITY } else { 0.0 };
        let taps = self
            .gather_windows(node, x, win, 1, fill)
            .reshape_like(&(rows, kk, c));
        if max {
            return taps.max::<(usize, usize), Axis<1>>();
        }
        let dev = self.dev.clone();
        let w = *win;
        // Keras' average excludes the padding: divide by the taps inside the input.
        let div = self
            .divisors
            .entry((node, win.n))
            .or_insert_with(|| {
                let mut v = Vec::with_capacity(rows);
                for _ in 0..w.n {
                    for oy in 0..w.ho {
                        for ox in 0..w.wo {
                            let mut k = 0;
                            for ky in 0..w.kh {
                                for kx in 0..w.kw {
                                    k += usize::from(w.src(oy, ox, ky, kx).is_some());
                                }
                            }
                            v.push(1.0 / k.max(1) as f32);
                        }
                    }
                }
                dev.tensor_from_vec(v, (rows,))
            })
            .clone();
        taps.sum::<(usize, usize), Axis<1>>() * div.broadcast_like::<_, Axis<1>>(&(rows, c))
    }

    fn merge<T: Tape<f32, D> + Merge<T> + Merge<NoneTape>>(
        &mut self,
        node: usize,
        ins: Vec<DAct<D, T>>,
        out_shape: &[usize],
        kind: MergeKind,
    ) -> T2<D, T> {
        let (rows, last) = rows_of(out_shape);
        let mut ins = ins.into_iter();
        let first = ins.next().expect("merge has inputs");
        match kind {
            MergeKind::Add => ins.fold(first.t, |acc, a| acc + a.t),
            MergeKind::Concatenate => {
                ins.fold(first.t, |acc, a| (acc, a.t).concat_along(Axis::<1>))
            }
            MergeKind::Multiply => {
                let (n, c) = (out_shape[0], last);
                let per = rows / n.max(1);
                let rest: Vec<DAct<D, T>> = ins.collect();
                if rest.len() == 1 && first.shape == out_shape && se_gate(&rest[0].shape, out_shape)
                {
                    // The SE case, x (N·H·W, C) times a gate (N, C) broadcast over H·W.
                    let gate = rest.into_iter().next().expect("two inputs").t;
                    let gate = if T::OWNS_TAPE {
                        // ones (N, H·W, 1) · gate (N, 1, C): its backward is a batched matmul,
                        // not dfdx's atomic reduction over H·W.
                        let ones: Tensor<(usize, usize, usize), f32, D> =
                            self.dev.ones_like(&(n, per, 1));
                        ones.retaped::<T>().matmul(gate.reshape_like(&(n, 1, c)))
                    } else {
                        gate.reshape_like(&(n, c))
                            .broadcast_like::<_, Axis<1>>(&(n, per, c))
                    };
                    let y = first.t.reshape_like(&(n, per, c)) * gate;
                    return y.reshape_like(&(rows, last));
                }
                // Any other broadcast: operands smaller than the output are gathered up to it.
                let mut full = |k: usize, a: DAct<D, T>| -> T2<D, T> {
                    if a.shape == out_shape {
                        return a.t;
                    }
                    let numel: usize = a.shape.iter().product();
                    let idx = self.index((node, n, k + 1), || broadcast_index(&a.shape, out_shape));
                    a.t.reshape_like(&(numel, 1))
                        .gather(idx)
                        .reshape_like(&(rows, last))
                };
                let mut acc = full(0, first);
                for (k, a) in rest.into_iter().enumerate() {
                    let b = full(k + 1, a);
                    acc = acc * b;
                }
                acc
            }
        }
    }

    fn host_input<T: Tape<f32, D>>(&self, b: &Batch) -> DAct<D, T> {
        let (rows, last) = rows_of(&b.shape);
        DAct {
            t: self
                .dev
                .tensor_from_vec(b.x.clone(), (rows, last))
                .retaped::<T>(),
            shape: b.shape.clone(),
        }
    }

    /// The target rows: one-hot, or (1 - eps) one_hot + eps / K with label smoothing.
    fn one_hot(&self, labels: &[usize], k: usize, eps: f32) -> T2<D, NoneTape> {
        let mut v = vec![eps / k as f32; labels.len() * k];
        for (i, &l) in labels.iter().enumerate() {
            if l < k {
                v[i * k + l] += 1.0 - eps;
            }
        }
        self.dev.tensor_from_vec(v, (labels.len(), k))
    }

    /// Training-mode forward and loss, with the tape, and the probabilities.
    fn loss_with_tape(
        &mut self,
        batch: &Batch,
        dropout_seed: u64,
        label_smoothing: f32,
    ) -> (Tensor<(), f32, D, OwnedTape<f32, D>>, StepResult) {
        self.dropout_rng = Rng::new(dropout_seed);
        let x = self.host_input::<OwnedTape<f32, D>>(batch);
        let logits = self.forward(x, true).t;
        let k = logits.shape().1;
        let probs = probabilities(&logits.retaped::<NoneTape>());
        let loss =
            cross_entropy_with_logits_loss(logits, self.one_hot(batch.labels, k, label_smoothing));
        let l = loss.retaped::<NoneTape>().as_vec()[0];
        (loss, StepResult { loss: l, probs })
    }

    /// (1, R) of ones, kept per R.
    fn ones_row(&mut self, r: usize) -> T2<D, NoneTape> {
        let dev = self.dev.clone();
        self.ones
            .entry(r)
            .or_insert_with(|| dev.ones_like(&(1, r)))
            .clone()
    }

    /// Sums over rows, (R, C) → (1, C), as a matmul with a row of ones: cuBLAS, where dfdx's
    /// reduction over a strided axis funnels R·C atomic adds into C addresses.
    fn column_sums<T: Tape<f32, D> + Merge<T>>(&mut self, x: T2<D, T>) -> T2<D, T> {
        let r = x.shape().0;
        self.ones_row(r).retaped::<T>().matmul(x)
    }

    /// (1, C) repeated over R rows. With a tape, as the product ones (R, 1) · v, so that the
    /// backward is a matmul too (see `column_sums`); without one, dfdx's free broadcast.
    fn rows_broadcast<T: Tape<f32, D> + Merge<T>>(&mut self, v: T2<D, T>, r: usize) -> T2<D, T> {
        let c = v.shape().1;
        if !T::OWNS_TAPE {
            return v.reshape_like(&(c,)).broadcast_like::<_, Axis<0>>(&(r, c));
        }
        self.ones_row(r)
            .retaped::<T>()
            .permute::<(usize, usize), Axes2<1, 0>>()
            .matmul(v)
    }

    fn phase_start(&self) -> Option<std::time::Instant> {
        span_start(&self.profile, || self.dev.synchronize())
    }

    fn phase_end(&mut self, what: &str, t: Option<std::time::Instant>) {
        span_end(
            &mut self.profile,
            t,
            || self.dev.synchronize(),
            || what.into(),
        );
    }
}

fn param_info<D: Device<f32>>(params: &[DevParam<D>]) -> Vec<ParamInfo> {
    params
        .iter()
        .map(|p| ParamInfo {
            name: p.name.clone(),
            len: p.t.shape().0,
            trainable: p.trainable,
        })
        .collect()
}

fn probabilities<D: Device<f32>>(logits: &T2<D, NoneTape>) -> Vec<Vec<f32>> {
    let k = logits.shape().1;
    logits
        .clone()
        .softmax::<Axis<1>>()
        .as_vec()
        .chunks(k.max(1))
        .map(|r| r.to_vec())
        .collect()
}

fn activation<D: Device<f32>, T: Tape<f32, D> + Merge<T>>(x: T2<D, T>, f: ActFn) -> T2<D, T> {
    match f {
        ActFn::Linear => x,
        ActFn::Relu => x.relu(),
        ActFn::Relu6 => x.clamp(0.0, 6.0),
        ActFn::Sigmoid => x.sigmoid(),
        ActFn::HardSigmoid => (x * 0.2 + 0.5).clamp(0.0, 1.0),
        ActFn::Tanh => x.tanh(),
        ActFn::Swish => {
            let s = x.retaped::<T>().sigmoid();
            x * s
        }
        ActFn::Gelu => x.fast_gelu(),
        // elu(x) = relu(x) + exp(min(x, 0)) - 1, and min(x, 0) = -relu(-x).
        ActFn::Elu => {
            let neg = x.retaped::<T>().negate().relu().negate().exp() - 1.0;
            x.relu() + neg
        }
        ActFn::Softmax => x.softmax::<Axis<1>>(),
    }
}

impl<D: DeviceBuffers> Model for CompositeNet<D> {
    fn graph(&self) -> &Graph {
        &self.plan.graph
    }
    fn device_name(&self) -> String {
        self.device_name.clone()
    }
    fn infer(&mut self, batch: Batch) -> StepResult {
        let t = self.phase_start();
        let x = self.host_input::<NoneTape>(&batch);
        let logits = self.forward(x, false).t;
        self.phase_end("inference forward", t);
        let k = logits.shape().1;
        let probs = probabilities(&logits);
        let loss =
            cross_entropy_with_logits_loss(logits, self.one_hot(batch.labels, k, 0.0)).as_vec()[0];
        StepResult { loss, probs }
    }
    fn train_step(&mut self, batch: Batch, opt: &OptSettings, dropout_seed: u64) -> StepResult {
        let t = self.phase_start();
        let (loss, res) = self.loss_with_tape(&batch, dropout_seed, opt.label_smoothing);
        self.phase_end("train forward + loss", t);
        if res.loss.is_finite() {
            let t = self.phase_start();
            let mut grads: Gradients<f32, D> = loss.backward();
            self.phase_end("train backward", t);
            let t = self.phase_start();
            let optim = self
                .opt
                .get_or_insert_with(|| Optim::new(&self.dev, &param_info(&self.params)));
            optim.update(
                self.params.iter_mut().map(|p| (&mut p.t, p.trainable)),
                &mut grads,
                opt,
            );
            drop(grads);
            self.phase_end("optimizer", t);
        }
        res
    }
    fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }
    fn profile_mut(&mut self) -> Option<&mut Profile> {
        self.profile.as_mut()
    }
    fn gradients(&mut self, batch: Batch, dropout_seed: u64) -> (StepResult, Vec<Vec<f32>>) {
        let (loss, res) = self.loss_with_tape(&batch, dropout_seed, 0.0);
        let mut grads: Gradients<f32, D> = loss.backward();
        let g = host_gradients(self.params.iter().map(|p| (&p.t, p.trainable)), &mut grads);
        (res, g)
    }
    fn param_info(&self) -> Vec<ParamInfo> {
        param_info(&self.params)
    }
    fn param_values(&self) -> Vec<Vec<f32>> {
        self.params.iter().map(|p| p.t.as_vec()).collect()
    }
    fn set_param(&mut self, i: usize, values: Vec<f32>) {
        let n = values.len();
        self.params[i].t = self.dev.tensor_from_vec(values, (n,));
    }
    fn opt_state(&self) -> (i32, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        opt_state_of(&self.opt, &self.dev)
    }
    fn set_opt_state(&mut self, step: i32, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) {
        self.opt
            .get_or_insert_with(|| Optim::new(&self.dev, &param_info(&self.params)))
            .set_state(&self.dev, step, m, v);
    }
    fn synchronize(&self) {
        self.dev.synchronize();
    }
}
