//! Lowering: one runtime layer per IR node, run on dfdx with the project's kernels. Each layer
//! kind's lowering lives here, in one match arm of `Layer::forward`.

use super::autodiff::{apply, cross_entropy, owned, Act, BackwardFn, Grads, InGrad, Param};
use super::kernels::{self, Window};
use super::model::{
    host_gradients, opt_state_of, Batch, Model, OptSettings, Optim, ParamInfo, StepResult,
};
use super::plan::{conv_shape, pool_window, se_gate, Layer, Plan};
use super::profile::{self, kind_label, span_end, span_start, Profile};
use crate::ir::ops::{ActFn, MergeKind};
use crate::ir::{Graph, NodeId};
use crate::util::rng::Rng;
use crate::validate::ValidGraph;
use dfdx::prelude::*;
use dfdx::tensor::Tape;
use rayon::prelude::*;
use std::sync::Arc;

pub struct Net {
    /// The graph and its layers, shared with the same network on another device.
    pub plan: Arc<Plan>,
    pub params: Vec<Param>,
    pub dev: Cpu,
    dropout_rng: Rng,
    opt: Option<Optim<Cpu>>,
    /// SE_COMPILE_PROFILE=1: time per phase and layer kind.
    profile: Option<Profile>,
}

impl Net {
    /// Builds the runtime network from the plan and initial values of `plan::lower`.
    pub fn new(vg: &ValidGraph, seed: u64) -> Net {
        Net::from_lowered(super::plan::lower(vg, seed))
    }

    /// The CPU network of a lowered plan, with its parameters' initial values.
    pub fn from_lowered(l: super::plan::Lowered) -> Net {
        let dev = Cpu::default();
        let params = l
            .params
            .into_iter()
            .map(|p| Param::new(&dev, p.name, p.values, p.trainable))
            .collect();
        Net {
            plan: Arc::new(l.plan),
            params,
            dev,
            dropout_rng: l.dropout_rng,
            opt: None,
            profile: Profile::from_env(),
        }
    }

    /// A copy with the same parameters and no optimizer state, to place on another device.
    pub fn clone_for_device(&self) -> Net {
        Net {
            plan: self.plan.clone(),
            params: self.params.clone(),
            dev: self.dev.clone(),
            dropout_rng: self.dropout_rng.clone(),
            opt: None,
            profile: Profile::from_env(),
        }
    }

    /// Dropout masks come from this seed, set per step so a resumed run draws the same masks.
    pub fn reseed_dropout(&mut self, seed: u64) {
        self.dropout_rng = Rng::new(seed);
    }

    pub fn param_counts(&self) -> (usize, usize) {
        let t = self
            .params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.len())
            .sum();
        let n = self
            .params
            .iter()
            .filter(|p| !p.trainable)
            .map(|p| p.len())
            .sum();
        (t, n)
    }

    pub fn input_shape(&self) -> &[usize] {
        self.plan.graph.input_shape()
    }

    /// Runs the network on a batch (N, H, W, C). `train` selects batch statistics and dropout.
    /// Returns logits: a final softmax is left out (see `Plan::logits`).
    pub fn forward<T: Tape<f32, Cpu>>(&mut self, x: Act<T>, train: bool) -> Act<T> {
        self.forward_seen(x, train, |_, _| {})
    }

    /// `forward`, handing each layer's output to `seen` (node index, value) as it is made.
    fn forward_seen<T: Tape<f32, Cpu>>(
        &mut self,
        x: Act<T>,
        train: bool,
        mut seen: impl FnMut(usize, &Act<T>),
    ) -> Act<T> {
        let plan = self.plan.clone();
        let batch = x.shape[0];
        let y = plan.walk(
            batch,
            Act { key: 0, ..x },
            Act::branch,
            |idx, ins, out_shape, skip_act| {
                // Profiling: the label also names the backward ops this layer records.
                let t = span_start(&self.profile, || {});
                let label = t.map(|_| kind_label(&plan.layers[idx]));
                if label.is_some() {
                    profile::set_label(label.clone());
                }
                let mut out = self.layer_forward(idx, ins, out_shape, train, skip_act);
                span_end(
                    &mut self.profile,
                    t,
                    || {},
                    || format!("  forward: {}", label.unwrap_or_default()),
                );
                out.key = idx;
                seen(idx, &out);
                out
            },
        );
        profile::set_label(None);
        y
    }

    /// Runs a batch (N, H, W, C) in inference mode (moving BN statistics, no dropout, no
    /// tape) and returns a copy of the output of each of `nodes`, flat (N × the node's shape),
    /// in the order asked. Only the layers up to the logits node run (see `Plan::walk`): a node
    /// after it (a final softmax layer) gives an empty vector, and the logits node itself its
    /// value before a fused softmax. `se-compile analyze` reads SE gates with it.
    pub fn probe(&mut self, x: Vec<f32>, shape: Vec<usize>, nodes: &[NodeId]) -> Vec<Vec<f32>> {
        let mut out = vec![vec![]; nodes.len()];
        for (o, n) in out.iter_mut().zip(nodes) {
            if n.index() == 0 {
                o.clone_from(&x);
            }
        }
        let inp = input_act::<NoneTape>(&self.dev, x, shape);
        self.forward_seen(inp, false, |idx, a| {
            for (o, n) in out.iter_mut().zip(nodes) {
                if n.index() == idx {
                    *o = a.values();
                }
            }
        });
        out
    }

    fn layer_forward<T: Tape<f32, Cpu>>(
        &mut self,
        idx: usize,
        mut ins: Vec<Act<T>>,
        out_shape: Vec<usize>,
        train: bool,
        skip_act: bool,
    ) -> Act<T> {
        let layer = self.plan.layers[idx].clone();
        let in_shape = ins[0].shape.clone();
        let img = |s: &[usize]| -> [usize; 4] { [s[0], s[1], s[2], s[3]] };
        match layer {
            Layer::Input => ins.remove(0),
            Layer::Conv { op, w, b, act } => {
                let s = conv_shape(&op, &in_shape, &out_shape);
                let wt = self.params[w].data();
                let bias = b.map(|b| self.params[b].data());
                let mut ps = vec![&self.params[w]];
                if let Some(b) = b {
                    ps.push(&self.params[b]);
                }
                let pooled = self.plan.pooled(idx);
                let mut means = None;
                let out = apply(ins, &ps, out_shape, |data, need| {
                    let x = data.into_iter().next().expect("one input");
                    let bias = bias.as_deref().map(|v| v.as_slice());
                    // Without a tape the fused activation runs as the conv's epilogue; with one,
                    // its input is kept for its gradient.
                    let epilogue = act
                        .filter(|_| !need)
                        .map(|f| move |r: &mut [f32]| act_serial(f, r));
                    let epi = epilogue.as_ref().map(|f| f as kernels::Epilogue);
                    // An average pool reads the output: its channel sums are taken in the
                    // epilogue too, unless an activation is still to run on the output.
                    let sums = (pooled && (act.is_none() || !need))
                        .then(|| kernels::ImageSums::new(s.win.ho * s.win.wo, s.cout));
                    let mut y = kernels::conv2d_forward(&x, &wt, bias, &s, epi, sums.as_ref());
                    means = sums.and_then(|m| m.means(s.win.n));
                    let pre = match act {
                        Some(f) if need => {
                            let z = y.clone();
                            act_in_place(f, &mut y);
                            Some((f, z))
                        }
                        _ => None,
                    };
                    let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
                        Box::new(move |dy: &[f32], g: &mut Grads| {
                            let dz: Vec<f32>;
                            let dy = match &pre {
                                Some((f, z)) => {
                                    dz = dy
                                        .par_iter()
                                        .zip(z.par_iter())
                                        .map(|(d, &z)| d * f.grad(z, f.value(z)))
                                        .collect();
                                    &dz[..]
                                }
                                None => dy,
                            };
                            let (dw, rest) = g.params.split_first_mut().expect("kernel grad");
                            let db = rest.first_mut().map(|d| &mut **d);
                            kernels::conv2d_backward(
                                &x,
                                &wt,
                                dy,
                                &s,
                                g.inputs[0].as_mut().map(InGrad::dst),
                                dw,
                                db,
                            );
                        })
                    });
                    (y, back)
                });
                out.with_channel_means(means)
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
                let c = *in_shape.last().expect("rank >= 1");
                let ones = || std::sync::Arc::new(vec![1.0f32; c]);
                let zeros = || std::sync::Arc::new(vec![0.0f32; c]);
                let g_data = gamma.map(|i| self.params[i].data()).unwrap_or_else(ones);
                let b_data = beta.map(|i| self.params[i].data()).unwrap_or_else(zeros);
                let mut ps = vec![];
                if let Some(i) = gamma {
                    ps.push(&self.params[i]);
                }
                if let Some(i) = beta {
                    ps.push(&self.params[i]);
                }
                let (has_g, has_b) = (gamma.is_some(), beta.is_some());
                let running = (self.params[mean].data(), self.params[var].data());
                let mut batch_stats: Option<(Vec<f32>, Vec<f32>)> = None;
                // An average pool reads the output: the chunks' channel sums are taken too.
                let n = in_shape[0];
                let sums = self.plan.pooled(idx).then(|| {
                    kernels::ImageSums::new(in_shape.iter().product::<usize>() / (n * c).max(1), c)
                });
                let mut means = None;
                let out = apply(ins, &ps, out_shape, |data, need| {
                    let x = data.into_iter().next().expect("one input");
                    let (m, v) = if train {
                        kernels::batch_moments(&x, c)
                    } else {
                        (running.0.to_vec(), running.1.to_vec())
                    };
                    let inv_std: Vec<f32> = v.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
                    let (scale, shift) = kernels::bn_affine(&m, &inv_std, &g_data, &b_data);
                    let epilogue = act.map(|f| move |r: &mut [f32]| act_serial(f, r));
                    let epi = epilogue.as_ref().map(|f| f as kernels::Epilogue);
                    let y = kernels::bn_apply(&x, c, (&scale, &shift), epi, sums.as_ref());
                    means = sums.and_then(|m| m.means(n));
                    if train {
                        batch_stats = Some((m.clone(), v));
                    }
                    let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
                        Box::new(move |dy: &[f32], g: &mut Grads| {
                            let mut dgamma = vec![0.0f32; c];
                            let mut dbeta = vec![0.0f32; c];
                            // The gradient at the BatchNorm's output z = x * scale + shift (the
                            // forward's own expression), through a fused activation.
                            let z = |j: usize, x: f32| x * scale[j] + shift[j];
                            let other = |z: f32, g: f32| {
                                let f = act.expect("a fused activation");
                                g * f.grad(z, f.value(z))
                            };
                            if train {
                                let dx = g.dst(0);
                                let xs = &x[..];
                                let (dg, db) = (&mut dgamma[..], &mut dbeta[..]);
                                let stats = (&m[..], &inv_std[..]);
                                let affine = (&scale[..], &shift[..]);
                                // One call per activation, so that each dz is inlined.
                                match act {
                                    None => kernels::bn_backward(
                                        xs,
                                        dy,
                                        c,
                                        stats,
                                        affine,
                                        dx,
                                        dg,
                                        db,
                                        |_, g| g,
                                    ),
                                    Some(ActFn::Relu) => {
                                        let relu = |z: f32, g: f32| if z > 0.0 { g } else { 0.0 };
                                        kernels::bn_backward(
                                            xs, dy, c, stats, affine, dx, dg, db, relu,
                                        )
                                    }
                                    Some(_) => kernels::bn_backward(
                                        xs, dy, c, stats, affine, dx, dg, db, other,
                                    ),
                                }
                            } else {
                                // Moving statistics are constants: the op is an affine map per channel.
                                let dz = |j: usize, x: f32, g: f32| match act {
                                    None => g,
                                    Some(_) => other(z(j, x), g),
                                };
                                let mut dx = g.acc(0);
                                for (row, (xr, gr)) in x.chunks(c).zip(dy.chunks(c)).enumerate() {
                                    for j in 0..c {
                                        let gz = dz(j, xr[j], gr[j]);
                                        dgamma[j] += gz * (xr[j] - m[j]) * inv_std[j];
                                        dbeta[j] += gz;
                                        if let Some(dx) = dx.as_deref_mut() {
                                            dx[row * c + j] += gz * g_data[j] * inv_std[j];
                                        }
                                    }
                                }
                            }
                            let mut k = 0;
                            if has_g {
                                g.params[k]
                                    .iter_mut()
                                    .zip(&dgamma)
                                    .for_each(|(d, v)| *d += v);
                                k += 1;
                            }
                            if has_b {
                                g.params[k]
                                    .iter_mut()
                                    .zip(&dbeta)
                                    .for_each(|(d, v)| *d += v);
                            }
                        })
                    });
                    (y, back)
                });
                if let Some((m, v)) = batch_stats {
                    // Keras: moving = moving * momentum + batch * (1 - momentum); the variance
                    // uses the unbiased estimate, as TensorFlow's fused kernel and PyTorch do.
                    let rows = (out.numel() / c) as f32;
                    let unbias = if rows > 1.0 { rows / (rows - 1.0) } else { 1.0 };
                    let nm: Vec<f32> = running
                        .0
                        .iter()
                        .zip(&m)
                        .map(|(r, b)| r * momentum + b * (1.0 - momentum))
                        .collect();
                    let nv: Vec<f32> = running
                        .1
                        .iter()
                        .zip(&v)
                        .map(|(r, b)| r * momentum + b * unbias * (1.0 - momentum))
                        .collect();
                    self.params[mean].set(nm);
                    self.params[var].set(nv);
                }
                out.with_channel_means(means)
            }
            Layer::Activation(f) => activation(ins, out_shape, f),
            Layer::ZeroPad(p) => {
                let [n, h, w, c] = img(&in_shape);
                let (ho, wo) = (out_shape[1], out_shape[2]);
                let (top, left) = (p[0][0], p[1][0]);
                apply(ins, &[], out_shape, move |data, need| {
                    let x = &data[0];
                    let mut y = vec![0.0f32; n * ho * wo * c];
                    for b in 0..n {
                        for r in 0..h {
                            let src = ((b * h + r) * w) * c;
                            let dst = ((b * ho + r + top) * wo + left) * c;
                            y[dst..dst + w * c].copy_from_slice(&x[src..src + w * c]);
                        }
                    }
                    let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
                        Box::new(move |dy: &[f32], g: &mut Grads| {
                            if let Some(dx) = g.acc(0) {
                                for b in 0..n {
                                    for r in 0..h {
                                        let src = ((b * h + r) * w) * c;
                                        let dst = ((b * ho + r + top) * wo + left) * c;
                                        dx[src..src + w * c]
                                            .iter_mut()
                                            .zip(&dy[dst..dst + w * c])
                                            .for_each(|(d, v)| *d += v);
                                    }
                                }
                            }
                        })
                    });
                    (y, back)
                })
            }
            Layer::Pool { max, op } => {
                let win = pool_window(&op, &in_shape, &out_shape);
                pool(ins, out_shape, win, max)
            }
            Layer::GlobalPool { max } => global_pool(ins, out_shape, max),
            Layer::Dense { w, b, act } => {
                let cin = *in_shape.last().expect("rank >= 1");
                let units = *out_shape.last().expect("rank >= 1");
                let rows = in_shape.iter().product::<usize>() / cin;
                let wt = self.params[w].data();
                let bias = b.map(|b| self.params[b].data());
                let mut ps = vec![&self.params[w]];
                if let Some(b) = b {
                    ps.push(&self.params[b]);
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
                    Some(f) if !skip_act => activation(vec![y], out_shape, f),
                    _ => y,
                }
            }
            Layer::Dropout(rate) => {
                if !train || rate <= 0.0 {
                    return ins.remove(0);
                }
                let mut rng = self.dropout_rng.fork(idx as u64);
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
            Layer::Reshape => ins.remove(0).reshaped(out_shape),
            Layer::Merge { kind, act } => merge(ins, out_shape, kind, act),
            Layer::GatedAdd { act } => gated_add(ins, out_shape, act),
        }
    }
}

/// The SE tail, act(x · gate + Σ others) with the gate (N, 1, 1, C) broadcast over each
/// image's rows, in one pass per image that writes a new buffer (and, with a ReLU and a
/// backward, a byte mask of the positive outputs); the backward makes one pass per image over
/// the output gradient, the mask and x, for the gradients of x, the gate and the others.
fn gated_add<T: Tape<f32, Cpu>>(
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

/// The backward of the SE multiply y = x · gate, gate (N, 1, 1, C) broadcast over each image's
/// rows of C, from dy: d(x) = dy · gate, written or added (`InGrad::dst`), and d(gate) +=
/// Σ x · dy over the image's rows. Images in parallel, one pass over dy and x each.
fn se_gate_backward(
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

/// Global average or max pooling. An average pool whose input came with its channel means
/// (taken by the kernel that made it, `kernels::ImageSums`) makes no pass over the input.
fn global_pool<T: Tape<f32, Cpu>>(ins: Vec<Act<T>>, out_shape: Vec<usize>, max: bool) -> Act<T> {
    let (n, c) = (out_shape[0], *out_shape.last().expect("rank >= 2"));
    let means = ins[0].channel_means().filter(|m| !max && m.len() == n * c);
    apply(ins, &[], out_shape, move |data, need| {
        let (y, arg) = match means {
            Some(m) => (owned(m), vec![]),
            None => kernels::global_pool_forward(&data[0], n, c, max),
        };
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                if let Some(dx) = g.acc(0) {
                    kernels::global_pool_backward(dy, c, max, &arg, dx);
                }
            })
        });
        (y, back)
    })
}

fn pool<T: Tape<f32, Cpu>>(
    ins: Vec<Act<T>>,
    out_shape: Vec<usize>,
    win: Window,
    max: bool,
) -> Act<T> {
    apply(ins, &[], out_shape, move |data, need| {
        let (y, arg) = kernels::pool_forward(&data[0], &win, max, need);
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                if let Some(dx) = g.acc(0) {
                    kernels::pool_backward(dy, &win, max, &arg, dx);
                }
            })
        });
        (y, back)
    })
}

/// Elementwise activations, and softmax over the last axis.
pub fn activation<T: Tape<f32, Cpu>>(ins: Vec<Act<T>>, out_shape: Vec<usize>, f: ActFn) -> Act<T> {
    let last = *out_shape.last().expect("rank >= 1");
    apply(ins, &[], out_shape, move |data, need| {
        let x = data.into_iter().next().expect("one input");
        if !need && f != ActFn::Softmax {
            // No backward: the input's own buffer becomes the output.
            let mut y = owned(x);
            act_in_place(f, &mut y);
            return (y, None);
        }
        let y: Vec<f32> = match f {
            ActFn::Softmax => softmax_rows(&x, last),
            _ => {
                let mut y = (*x).clone();
                act_in_place(f, &mut y);
                y
            }
        };
        // The backward recomputes the output from the input instead of keeping a copy of it.
        let back: Option<BackwardFn> = need.then(|| -> BackwardFn {
            Box::new(move |dy: &[f32], g: &mut Grads| {
                let Some((dx, add)) = g.dst(0) else {
                    return;
                };
                if f == ActFn::Softmax {
                    softmax_backward(&softmax_rows(&x, last), dy, last, dx, add);
                    return;
                }
                const CHUNK: usize = 1 << 14;
                dx.par_chunks_mut(CHUNK)
                    .zip(dy.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
                    .for_each(|(d, (gy, xs))| {
                        let it = gy.iter().zip(xs);
                        if f == ActFn::Relu {
                            // The common case as a select the compiler vectorises.
                            let v = it.map(|(g, x)| if *x > 0.0 { *g } else { 0.0 });
                            kernels::store(d, add, v);
                        } else {
                            let v = it.map(|(g, &x)| g * f.grad(x, f.value(x)));
                            kernels::store(d, add, v);
                        }
                    });
            })
        });
        (y, back)
    })
}

/// dx (+)= the gradient of a row-wise softmax with output y: y · (dy - Σ y·dy) per row.
pub fn softmax_backward(y: &[f32], dy: &[f32], last: usize, dx: &mut [f32], accumulate: bool) {
    for ((dr, yr), gr) in dx.chunks_mut(last).zip(y.chunks(last)).zip(dy.chunks(last)) {
        let s: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
        for j in 0..last {
            let v = yr[j] * (gr[j] - s);
            dr[j] = if accumulate { dr[j] + v } else { v };
        }
    }
}

pub fn softmax_rows(x: &[f32], last: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    for (yr, xr) in y.chunks_mut(last).zip(x.chunks(last)) {
        let m = xr.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0.0;
        for (o, v) in yr.iter_mut().zip(xr) {
            *o = (v - m).exp();
            z += *o;
        }
        yr.iter_mut().for_each(|o| *o /= z);
    }
    y
}

/// Applies an elementwise activation to `v` in place, chunks in parallel; the common ones
/// get a loop of their own so that it vectorises.
pub fn act_in_place(f: ActFn, v: &mut [f32]) {
    v.par_chunks_mut(1 << 14).for_each(|c| act_serial(f, c));
}

/// `act_in_place` on the calling thread (a kernel's epilogue, one row at a time).
pub fn act_serial(f: ActFn, c: &mut [f32]) {
    match f {
        ActFn::Linear => {}
        ActFn::Relu => c.iter_mut().for_each(|x| *x = x.max(0.0)),
        ActFn::Relu6 => c.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        _ => c.iter_mut().for_each(|x| *x = f.value(*x)),
    }
}

/// Add, Multiply (size-1 axes broadcast, e.g. the SE gate) and channel Concatenate.
/// `act`: a ReLU fused into an Add (the only fused merge): applied to each chunk of the sum
/// as it is made, with a byte mask of the positive outputs kept for the backward.
fn merge<T: Tape<f32, Cpu>>(
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

/// Wraps a batch (N, H, W, C) as the network input; its gradient is never computed.
pub fn input_act<T: Tape<f32, Cpu>>(dev: &Cpu, data: Vec<f32>, shape: Vec<usize>) -> Act<T> {
    let n = data.len();
    let t: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(data, (n,));
    Act {
        t: t.retaped::<T>(),
        shape,
        needs_grad: false,
        key: 0,
        host: None,
    }
}

impl Net {
    /// The spec's output for a batch (N, H, W, C) in inference mode, flat: logits with a
    /// final softmax applied, as the spec has it (the exports are checked against this).
    pub fn outputs(&mut self, x: Vec<f32>, shape: Vec<usize>) -> Vec<f32> {
        let inp = input_act::<NoneTape>(&self.dev, x, shape);
        let y = self.forward(inp, false);
        let last = *y.shape.last().expect("rank >= 1");
        let v = y.values();
        let (stop, skipped) = self.plan.logits();
        let g = &self.plan.graph;
        if skipped || stop != g.output {
            softmax_rows(&v, last)
        } else {
            v
        }
    }

    fn loss_with_tape(
        &mut self,
        b: Batch,
        dropout_seed: u64,
        label_smoothing: f32,
    ) -> (Tensor<(), f32, Cpu, OwnedTape<f32, Cpu>>, StepResult) {
        self.reseed_dropout(dropout_seed);
        let inp = input_act::<OwnedTape<f32, Cpu>>(&self.dev, b.x, b.shape);
        let (loss, probs) = cross_entropy(self.forward(inp, true), b.labels, label_smoothing);
        let l = loss.array();
        (loss, StepResult { loss: l, probs })
    }
}

impl Net {
    /// Starts timing a phase when profiling (`SE_COMPILE_PROFILE=1`).
    fn phase_start(&self) -> Option<std::time::Instant> {
        span_start(&self.profile, || {})
    }

    fn phase_end(&mut self, what: &str, t: Option<std::time::Instant>) {
        span_end(&mut self.profile, t, || {}, || what.into());
    }
}

fn param_info(params: &[Param]) -> Vec<ParamInfo> {
    params
        .iter()
        .map(|p| ParamInfo {
            name: p.name.clone(),
            len: p.len(),
            trainable: p.trainable,
        })
        .collect()
}

impl Model for Net {
    fn graph(&self) -> &Graph {
        &self.plan.graph
    }
    fn device_name(&self) -> String {
        "cpu".into()
    }
    fn infer(&mut self, b: Batch) -> StepResult {
        let t = self.phase_start();
        let inp = input_act::<NoneTape>(&self.dev, b.x, b.shape);
        let (loss, probs) = cross_entropy(self.forward(inp, false), b.labels, 0.0);
        self.phase_end("inference", t);
        StepResult {
            loss: loss.array(),
            probs,
        }
    }
    fn train_step(&mut self, b: Batch, opt: &OptSettings, dropout_seed: u64) -> StepResult {
        let t = self.phase_start();
        let (loss, res) = self.loss_with_tape(b, dropout_seed, opt.label_smoothing);
        self.phase_end("forward + loss", t);
        if res.loss.is_finite() {
            let t = self.phase_start();
            let mut grads = loss.backward();
            self.phase_end("backward", t);
            if let Some(p) = self.profile.as_mut() {
                profile::drain_backward(p);
            }
            let t = self.phase_start();
            let optim = self
                .opt
                .get_or_insert_with(|| Optim::new(&self.dev, &param_info(&self.params)));
            optim.update(
                self.params.iter_mut().map(|p| (&mut p.t, p.trainable)),
                &mut grads,
                opt,
            );
            self.params.iter_mut().for_each(Param::refresh);
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
    fn gradients(&mut self, b: Batch, dropout_seed: u64) -> (StepResult, Vec<Vec<f32>>) {
        let (loss, res) = self.loss_with_tape(b, dropout_seed, 0.0);
        let mut grads = loss.backward();
        let g = host_gradients(self.params.iter().map(|p| (&p.t, p.trainable)), &mut grads);
        (res, g)
    }
    fn param_info(&self) -> Vec<ParamInfo> {
        param_info(&self.params)
    }
    fn param_values(&self) -> Vec<Vec<f32>> {
        self.params.iter().map(|p| p.data().to_vec()).collect()
    }
    fn set_param(&mut self, i: usize, values: Vec<f32>) {
        self.params[i].set(values);
    }
    fn opt_state(&self) -> (i32, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        opt_state_of(&self.opt, &self.dev)
    }
    fn set_opt_state(&mut self, step: i32, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) {
        self.opt
            .get_or_insert_with(|| Optim::new(&self.dev, &param_info(&self.params)))
            .set_state(&self.dev, step, m, v);
    }
    fn synchronize(&self) {}
}
