//! The kernel network: the same layers, parameter names, layouts and values as the CPU
//! network, run on raw device buffers with the project's own kernels and matmuls (see
//! `backend`), and its own tape: the training forward keeps each layer's inputs and what its
//! backward needs, and the backward walks the layers in reverse, accumulating one gradient
//! buffer per node. It is `--device cuda`: a kernel or two per operation, where dfdx's
//! own ops would gather and scatter-add per window; dfdx's public API gives no access to a
//! tensor's device buffer, so such kernels cannot work on dfdx's tensors.

pub mod backend;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cudnn;
pub mod host;
pub mod launch;

use super::autodiff::{cross_entropy_grad, softmax_cross_entropy};
use super::kernels::ConvShape;
use super::layers::{dropout_mask, Net};
use super::model::{Batch, Model, OptSettings, ParamInfo, StepResult};
use super::plan::Plan;
use super::plan::{conv_shape, global_window, pool_window, rows_of, se_gate, Layer};
use super::profile::{self, kind_label, Profile};
use crate::ir::ops::{ActFn, MergeKind};
use crate::ir::{Graph, NodeId};
use crate::spec::recipe::Optimizer;
use crate::util::rng::Rng;
use backend::{split_k, Backend, BnParams, ConvDir, Gemm, Geom, Update};
use std::rc::Rc;
use std::sync::Arc;

struct Param<Buf> {
    name: String,
    len: usize,
    trainable: bool,
    buf: Buf,
}

/// A value between layers: its buffer (shared by every reader) and shape, batch first.
struct Val<Buf> {
    buf: Rc<Buf>,
    shape: Vec<usize>,
}

impl<Buf> Clone for Val<Buf> {
    fn clone(&self) -> Self {
        Val {
            buf: self.buf.clone(),
            shape: self.shape.clone(),
        }
    }
}

/// What a layer's backward needs besides its inputs and output.
enum Saved<Buf> {
    None,
    /// A convolution's im2col matrix (the input itself for a direct 1×1 conv).
    Cols(Rc<Buf>),
    /// A convolution whose forward ran in the device's library: nothing is kept but its
    /// filter in the library's (Cout, kh, kw, C/G) order. The backward takes the input from
    /// the record, and makes its im2col matrix afresh where it runs as gemm.
    Lib(Buf),
    /// A pool's im2col matrix is not needed: its winning taps are.
    Arg(Buf),
    Bn {
        mean: Buf,
        inv_std: Buf,
    },
    /// A Dense layer's output before its activation.
    PreAct(Buf),
    Mask(Buf),
}

/// The optimizer's step and the moments of each parameter (empty when not trainable); SGD
/// keeps its velocity in `m`.
struct Moments<Buf> {
    step: i32,
    m: Vec<Buf>,
    v: Vec<Buf>,
}

impl<Buf> Default for Moments<Buf> {
    fn default() -> Self {
        Moments {
            step: 0,
            m: vec![],
            v: vec![],
        }
    }
}

/// A value as a record keeps it: its shape always, its buffer only where the layer's
/// backward reads it (`backward_reads`), so that a value no later layer reads is freed.
struct Kept<Buf> {
    buf: Option<Rc<Buf>>,
    shape: Vec<usize>,
}

impl<Buf> Kept<Buf> {
    fn new(v: Val<Buf>, keep: bool) -> Self {
        Kept {
            buf: keep.then_some(v.buf),
            shape: v.shape,
        }
    }
    /// The buffer; `backward_reads` says it is kept wherever the backward asks for it.
    fn buf(&self) -> &Rc<Buf> {
        self.buf
            .as_ref()
            .expect("backward_reads keeps every value this backward reads")
    }
}

/// Which of a layer's values its backward reads: one flag per input, and one for the output.
/// A record keeps only these buffers (and shapes), so that a value is freed as soon as no
/// later layer and no kept record reads it: the input of a ReLU (a BatchNorm's or an Add's
/// output) goes right after the forward, as PyTorch's autograd lets it go. `cols`: the
/// convolution kept its im2col matrix (then its input is not read again). The memory model
/// (`memory::kernelnet`) keeps the same.
pub fn backward_reads(layer: &Layer, n_ins: usize, cols: bool) -> (Vec<bool>, bool) {
    let first = |b: bool| (0..n_ins).map(|i| i == 0 && b).collect::<Vec<_>>();
    let (ins, out) = match layer {
        Layer::Input
        | Layer::Reshape
        | Layer::Dropout(_)
        | Layer::ZeroPad(_)
        | Layer::Pool { .. }
        | Layer::GlobalPool { .. } => (first(false), false),
        Layer::Conv { .. } => (first(!cols), false),
        Layer::BatchNorm { .. } => (first(true), false),
        Layer::Activation(f) => (first(!f.grad_from_output()), true),
        Layer::Dense { act, .. } => (first(true), act.is_some()),
        Layer::Merge { kind, .. } => match kind {
            MergeKind::Add | MergeKind::Concatenate => (first(false), false),
            MergeKind::Multiply => (vec![true; n_ins], false),
        },
        // x and the gate; the Add's operands pass dy on.
        Layer::GatedAdd { .. } => ((0..n_ins).map(|i| i < 2).collect(), false),
    };
    // A fused activation's gradient reads the layer's (activated) output.
    (ins, out || layer.epilogue().is_some())
}

/// Whether the kernel network runs its own plan passes (`Plan::for_kernel_network`: the
/// default, `SE_COMPILE_FUSE` unset or `1`) or the spec's plan as it is (`SE_COMPILE_FUSE=0`),
/// so that a GPU run can measure what the passes gain (scripts/gpu-speed.sh). The network
/// (`device::Opened::place`) and `memory --engine cuda` read it alike.
pub fn runs_its_passes() -> Result<bool, String> {
    match std::env::var("SE_COMPILE_FUSE").as_deref() {
        Err(_) | Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(other) => Err(format!(
            "SE_COMPILE_FUSE={other}: use 1 (the default: activations in the kernels before them, SE tails as one op) or 0 (the spec's layers one by one, to measure what that gains)"
        )),
    }
}

/// The plan the kernel network runs `net` on (`runs_its_passes`).
pub fn placed(net: &Net) -> Result<Net, String> {
    Ok(if runs_its_passes()? {
        net.for_kernel_network()
    } else {
        net.clone_for_device()
    })
}

/// How the kernel network runs a layer's fused activation (`Layer::epilogue`). One rule for
/// the network and for the memory model (`memory::kernelnet`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Epilogue {
    /// No fused activation.
    None,
    /// Applied by the layer's own last kernel as it writes its output: a convolution's bias,
    /// BatchNorm's affine pass, an Add's last operand, an SE tail's one pass. Nothing is
    /// written twice, and the backward takes the activation's derivative from the output.
    InKernel(ActFn),
    /// A pass of its own after the layer, into a new buffer. `keep_pre`: the record keeps the
    /// value before the activation, which the derivative of an activation that cannot be read
    /// off its output (swish, GELU, ...) needs in training.
    Pass { f: ActFn, keep_pre: bool },
}

/// `layer`'s fused activation as the kernel network runs it, in training (`train`) or not.
pub fn epilogue(layer: &Layer, train: bool) -> Epilogue {
    let Some(f) = layer.epilogue() else {
        return Epilogue::None;
    };
    let keep_pre = train && !f.grad_from_output();
    let in_kernel = match layer {
        Layer::Conv { b, .. } => b.is_some(),
        Layer::BatchNorm { .. } | Layer::GatedAdd { .. } => true,
        Layer::Merge { kind, .. } => *kind == MergeKind::Add,
        _ => false,
    };
    if in_kernel && !keep_pre {
        Epilogue::InKernel(f)
    } else {
        Epilogue::Pass { f, keep_pre }
    }
}

/// Whether `layer`'s own backward takes the derivative of its fused activation, read off its
/// output, inside its passes (BatchNorm's column sums and dx pass), so that no pass of its own
/// makes that gradient first and no buffer holds it. One rule for the network and the memory
/// model.
pub fn backward_takes_epilogue(layer: &Layer) -> bool {
    matches!(layer, Layer::BatchNorm { .. })
        && matches!(epilogue(layer, true), Epilogue::InKernel(_))
}

/// The kernel network's rule for a convolution's bias: where a convolution with a bias and no
/// fused activation is read by one BatchNorm alone, the convolution leaves its bias pass out and
/// the BatchNorm takes the bias in (`BnParams::conv_bias`). In training the bias cancels out of
/// the normalised output and only moves the moving mean, so a whole pass over the convolution's
/// output goes; the bias still gets its gradient. Per node: for such a BatchNorm, the bias
/// parameter it takes in; for such a convolution, true.
pub fn conv_bias_into_bn(plan: &Plan) -> (Vec<Option<usize>>, Vec<bool>) {
    let n = plan.layers.len();
    let (mut taken_in, mut left_out) = (vec![None; n], vec![false; n]);
    let readers = plan.readers();
    for (i, l) in plan.layers.iter().enumerate() {
        let Layer::Conv {
            b: Some(b),
            act: None,
            ..
        } = l
        else {
            continue;
        };
        let [r] = readers[i][..] else { continue };
        let reads_it_first = plan.inputs(r).first() == Some(&NodeId(i as u32));
        if matches!(plan.layers[r.index()], Layer::BatchNorm { .. }) && reads_it_first {
            taken_in[r.index()] = Some(*b);
            left_out[i] = true;
        }
    }
    (taken_in, left_out)
}

struct Record<Buf> {
    ins: Vec<Kept<Buf>>,
    out: Kept<Buf>,
    saved: Saved<Buf>,
    /// A layer whose fused activation ran as a pass of its own and cannot take its derivative
    /// from its output (`Epilogue::Pass { keep_pre: true }`): the layer's output before the
    /// activation, which the backward takes the activation's gradient at before the layer's
    /// own.
    pre_act: Option<Rc<Buf>>,
}

/// Zero padding as a 1×1 window whose taps start `p` before the image: its im2col matrix is
/// the padded tensor.
fn pad_geom(p: [[usize; 2]; 2], ins: &[usize], outs: &[usize]) -> Geom {
    let w = crate::lower::kernels::Window::between(
        ins,
        outs,
        [1, 1],
        [1, 1],
        [1, 1],
        [p[0][0], p[1][0]],
    );
    Geom::of(&w, 1)
}

pub struct KernelNet<B: Backend> {
    pub be: B,
    device_name: String,
    plan: Arc<Plan>,
    /// `conv_bias_into_bn` of the plan.
    bias_taken_in: Vec<Option<usize>>,
    bias_left_out: Vec<bool>,
    params: Vec<Param<B::Buf>>,
    dropout_rng: Rng,
    opt: Option<Moments<B::Buf>>,
    profile: Option<Profile>,
}

impl<B: Backend> KernelNet<B> {
    /// The same network as `net`, with its current parameter values, on `net`'s plan: fused or
    /// not, it runs every layer, a fused activation as an epilogue after its layer (see
    /// `Record::pre_act`). Fails for a Multiply whose broadcast is neither equal shapes nor
    /// the SE gate.
    pub fn from_net(net: &Net, be: B, device_name: String) -> Result<KernelNet<B>, String> {
        let g = &net.plan.graph;
        for (i, l) in net.plan.layers.iter().enumerate() {
            if let Layer::Merge {
                kind: MergeKind::Multiply,
                ..
            } = l
            {
                let node = g.node(NodeId(i as u32));
                // Node shapes leave out the batch axis; the gate test wants it.
                let batched = |s: &[usize]| -> Vec<usize> {
                    std::iter::once(1).chain(s.iter().copied()).collect()
                };
                let out = batched(&node.shape);
                let shapes: Vec<Vec<usize>> = node
                    .inputs
                    .iter()
                    .map(|&j| batched(&g.node(j).shape))
                    .collect();
                let ok = shapes.iter().all(|s| *s == out)
                    || (shapes.len() == 2
                        && ((shapes[0] == out && se_gate(&shapes[1], &out))
                            || (shapes[1] == out && se_gate(&shapes[0], &out))));
                if !ok {
                    return Err(format!(
                        "layer `{}`: the kernel network multiplies equal shapes or an SE gate (N, 1, 1, C) with (N, H, W, C) only; train this model with --device cpu",
                        node.name
                    ));
                }
            }
        }
        let params = net
            .params
            .iter()
            .map(|p| Param {
                name: p.name.clone(),
                len: p.len(),
                trainable: p.trainable,
                buf: be.upload(&p.data()),
            })
            .collect();
        let (bias_taken_in, bias_left_out) = conv_bias_into_bn(&net.plan);
        Ok(KernelNet {
            be,
            device_name,
            plan: net.plan.clone(),
            bias_taken_in,
            bias_left_out,
            params,
            dropout_rng: Rng::new(0),
            opt: None,
            profile: Profile::from_env(),
        })
    }

    fn fresh(&self, shape: Vec<usize>, buf: B::Buf) -> Val<B::Buf> {
        Val {
            buf: Rc::new(buf),
            shape,
        }
    }

    /// Runs the layers up to the logits; with `records`, keeps what the backward needs.
    fn forward(
        &mut self,
        x: Val<B::Buf>,
        train: bool,
        mut records: Option<&mut Vec<Option<Record<B::Buf>>>>,
    ) -> Val<B::Buf> {
        let plan = self.plan.clone();
        let batch = x.shape[0];
        // Whether the backward will run: what an epilogue keeps depends on it.
        let recording = records.is_some();
        plan.walk(batch, x, Val::clone, |idx, ins, out_shape, skip| {
            let t = self.span_start();
            let epi = epilogue(&plan.layers[idx], recording);
            let in_kernel = match epi {
                Epilogue::InKernel(f) => f,
                Epilogue::None | Epilogue::Pass { .. } => ActFn::Linear,
            };
            let (mut out, saved) = self.layer_forward(idx, &ins, out_shape, train, skip, in_kernel);
            let pre_act = match epi {
                Epilogue::Pass { f, keep_pre } => {
                    let y = self.be.act(&out.buf, f.code());
                    let z = std::mem::replace(&mut out.buf, Rc::new(y));
                    keep_pre.then_some(z)
                }
                Epilogue::None | Epilogue::InKernel(_) => None,
            };
            self.span_end(t, || {
                format!("  forward: {}", kind_label(&plan.layers[idx]))
            });
            if let Some(r) = records.as_deref_mut() {
                let cols = matches!(saved, Saved::Cols(_));
                let (keep_ins, keep_out) = backward_reads(&plan.layers[idx], ins.len(), cols);
                r[idx] = Some(Record {
                    ins: ins
                        .into_iter()
                        .zip(keep_ins)
                        .map(|(v, k)| Kept::new(v, k))
                        .collect(),
                    out: Kept::new(out.clone(), keep_out),
                    saved,
                    pre_act,
                });
            }
            out
        })
    }

    /// Conv weight `w` in the convolution library's order: Keras' (kh, kw, C/G, Cout) is a
    /// (taps, Cout) matrix, the library wants its transpose.
    fn lib_filter(&self, w: usize, s: &ConvShape) -> B::Buf {
        let be = &self.be;
        let src = &self.params[w].buf;
        let n = be.len(src);
        let mut out = be.alloc(n);
        be.transpose(src, n / s.cout, s.cout, &mut out, false);
        out
    }

    fn conv_gemm(&self, s: &ConvShape, rows: usize) -> Gemm {
        // Group g reads its columns of the im2col matrix and its output columns of the Keras
        // kernel (kh, kw, C/G, Cout): a strided batch of one matmul per group.
        let (g, kd) = (s.groups, s.win.kh * s.win.kw * s.win.c / s.groups);
        let (cout, cog) = (s.cout, s.cout / s.groups);
        Gemm {
            m: rows,
            n: cog,
            k: kd,
            ta: false,
            tb: false,
            lda: kd * g,
            ldb: cout,
            ldc: cout,
            alpha: 1.0,
            beta: 0.0,
            batch: g,
            sa: kd,
            sb: cog,
            sc: cog,
        }
    }

    fn layer_forward(
        &mut self,
        idx: usize,
        ins: &[Val<B::Buf>],
        out_shape: Vec<usize>,
        train: bool,
        skip_act: bool,
        act: ActFn,
    ) -> (Val<B::Buf>, Saved<B::Buf>) {
        let layer = self.plan.layers[idx].clone();
        let be = &self.be;
        let x = &ins[0];
        let (rows_out, cout) = rows_of(&out_shape);
        let total = rows_out * cout;
        let (y, saved) = match layer {
            Layer::Input => return (x.clone(), Saved::None),
            Layer::Conv { op, w, b, .. } => {
                let s = conv_shape(&op, &x.shape, &out_shape);
                let geom = Geom::of(&s.win, s.groups);
                let lib = be.conv_lib();
                if let Some(lib) = lib.filter(|l| l.supports(&geom, s.cout, ConvDir::Forward)) {
                    let wk = self.lib_filter(w, &s);
                    let mut y = be.alloc(total);
                    lib.forward(&geom, s.cout, &x.buf, &wk, &mut y);
                    if let Some(b) = b.filter(|_| !self.bias_left_out[idx]) {
                        be.add_bias(&mut y, &self.params[b].buf, act);
                    }
                    return (self.fresh(out_shape, y), Saved::Lib(wk));
                }
                let cols = if s.direct() {
                    x.buf.clone()
                } else {
                    Rc::new(be.im2col(&x.buf, &Geom::of(&s.win, s.groups), 0.0))
                };
                let mut y = be.alloc(total);
                be.gemm(
                    &self.conv_gemm(&s, rows_out),
                    &cols,
                    &self.params[w].buf,
                    &mut y,
                );
                if let Some(b) = b.filter(|_| !self.bias_left_out[idx]) {
                    be.add_bias(&mut y, &self.params[b].buf, act);
                }
                (y, Saved::Cols(cols))
            }
            Layer::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
                momentum,
                ..
            } => {
                let (rows, c) = rows_of(&x.shape);
                // The moving statistics are parameters too: take them out to update them.
                let mut mm = std::mem::replace(&mut self.params[mean].buf, be.zeros(0));
                let mut mv = std::mem::replace(&mut self.params[var].buf, be.zeros(0));
                let p = BnParams {
                    gamma: gamma.map(|i| &self.params[i].buf),
                    beta: beta.map(|i| &self.params[i].buf),
                    eps,
                    momentum,
                    conv_bias: self.bias_taken_in[idx].map(|i| &self.params[i].buf),
                };
                let sums = train.then(|| be.col_sums2(&x.buf, &x.buf, None, rows, c));
                let [m, inv_std, scale, shift] = be.bn_coeffs(
                    sums.as_ref().map(|(a, b)| (a, b, rows)),
                    &p,
                    &mut mm,
                    &mut mv,
                    c,
                );
                self.params[mean].buf = mm;
                self.params[var].buf = mv;
                let mut y = be.alloc(total);
                be.chan_affine(&x.buf, &scale, &shift, c, &mut y, act);
                (y, Saved::Bn { mean: m, inv_std })
            }
            Layer::Activation(ActFn::Softmax) => (be.softmax(&x.buf, cout), Saved::None),
            Layer::Activation(f) => (be.act(&x.buf, f.code()), Saved::None),
            Layer::ZeroPad(p) => {
                let g = pad_geom(p, &x.shape, &out_shape);
                (be.im2col(&x.buf, &g, 0.0), Saved::None)
            }
            Layer::Pool { max, op } => {
                let g = Geom::of(&pool_window(&op, &x.shape, &out_shape), 1);
                let fill = if max { f32::NEG_INFINITY } else { 0.0 };
                let cols = be.im2col(&x.buf, &g, fill);
                let (y, arg) = be.taps_reduce(&cols, &g, max);
                (y, Saved::Arg(arg))
            }
            Layer::GlobalPool { max } => {
                let (n, c) = (x.shape[0], *x.shape.last().expect("rank 4"));
                let hw = x.shape[1] * x.shape[2];
                if max {
                    // The whole image is one window: the input is its own im2col matrix.
                    let g = Geom::of(&global_window(&x.shape), 1);
                    let (y, arg) = be.taps_reduce(&x.buf, &g, true);
                    (y, Saved::Arg(arg))
                } else {
                    let y = be.col_sums(&x.buf, None, n, hw, c, 1.0 / hw as f32);
                    (y, Saved::None)
                }
            }
            Layer::Dense { w, b, act } => {
                let cin = *x.shape.last().expect("rank >= 1");
                let mut z = be.alloc(total);
                be.gemm(
                    &Gemm::plain(rows_out, cout, cin),
                    &x.buf,
                    &self.params[w].buf,
                    &mut z,
                );
                if let Some(b) = b {
                    be.add_bias(&mut z, &self.params[b].buf, ActFn::Linear);
                }
                match act {
                    Some(f) if !skip_act && f != ActFn::Linear => {
                        let y = if f == ActFn::Softmax {
                            be.softmax(&z, cout)
                        } else {
                            be.act(&z, f.code())
                        };
                        (y, Saved::PreAct(z))
                    }
                    _ => (z, Saved::None),
                }
            }
            Layer::Dropout(rate) => {
                if !train || rate <= 0.0 {
                    return (x.clone(), Saved::None);
                }
                // The same masks as the CPU network: drawn on the host from the same stream.
                let mut rng = self.dropout_rng.fork(idx as u64);
                let keep = 1.0 - rate;
                let mask = dropout_mask(&mut rng, total, keep);
                let mask = be.upload(&mask);
                let mut y = be.alloc(total);
                be.mul(&x.buf, &mask, &mut y, false);
                (y, Saved::Mask(mask))
            }
            Layer::Reshape => {
                return (
                    Val {
                        buf: x.buf.clone(),
                        shape: out_shape,
                    },
                    Saved::None,
                )
            }
            Layer::Merge { kind, .. } => {
                (self.merge_forward(ins, &out_shape, kind, act), Saved::None)
            }
            Layer::GatedAdd { .. } => {
                // [x, gate, others...]: act(x · gate + others).
                let (n, c) = (out_shape[0], cout);
                let mut y = be.alloc(total);
                if let [x, g, r] = ins {
                    be.gated_add(&x.buf, &g.buf, &r.buf, n, c, &mut y, act);
                } else {
                    be.gate_mul(&ins[0].buf, &ins[1].buf, n, c, &mut y, false);
                    self.add_all(&mut y, &ins[2..], act);
                }
                (y, Saved::None)
            }
        };
        (self.fresh(out_shape, y), saved)
    }

    /// `act`: an Add's fused activation (`ActFn::Linear` for none), applied as the last
    /// operand is added; the other kinds have none (`epilogue`).
    fn merge_forward(
        &self,
        ins: &[Val<B::Buf>],
        out_shape: &[usize],
        kind: MergeKind,
        act: ActFn,
    ) -> B::Buf {
        let be = &self.be;
        let (rows, last) = rows_of(out_shape);
        // Every kind writes all of y (Add copies its first operand in, then adds the others).
        let n = rows * last;
        let mut y = be.alloc(n);
        match kind {
            MergeKind::Add => {
                be.col_copy(&ins[0].buf, n, 0, &mut y, n, 0, n, 1, false);
                self.add_all(&mut y, &ins[1..], act);
            }
            MergeKind::Concatenate => {
                debug_assert_eq!(
                    act,
                    ActFn::Linear,
                    "epilogue: only an Add's is in its kernel"
                );
                let mut off = 0;
                for a in ins {
                    let w = *a.shape.last().expect("rank >= 1");
                    be.col_copy(&a.buf, w, 0, &mut y, last, off, w, rows, false);
                    off += w;
                }
            }
            MergeKind::Multiply => {
                debug_assert_eq!(
                    act,
                    ActFn::Linear,
                    "epilogue: only an Add's is in its kernel"
                );
                if ins.len() == 2 && ins[0].shape != ins[1].shape {
                    let (x, g) = if ins[0].shape == out_shape {
                        (&ins[0], &ins[1])
                    } else {
                        (&ins[1], &ins[0])
                    };
                    be.gate_mul(&x.buf, &g.buf, out_shape[0], last, &mut y, false);
                } else {
                    be.mul(&ins[0].buf, &ins[1].buf, &mut y, false);
                    for a in &ins[2..] {
                        let mut next = be.alloc(n);
                        be.mul(&y, &a.buf, &mut next, false);
                        y = next;
                    }
                }
            }
        }
        y
    }

    /// Adds each of `ins` (one or more: a merge has two or more inputs, an SE tail one or more
    /// besides x and the gate) into `y`, the last through `act`, an Add's fused activation
    /// (`ActFn::Linear` for none).
    fn add_all(&self, y: &mut B::Buf, ins: &[Val<B::Buf>], act: ActFn) {
        let (last, mid) = ins.split_last().expect("one or more operands to add");
        mid.iter().for_each(|a| self.be.axpy(&a.buf, 1.0, y));
        self.be.add_act(&last.buf, y, act);
    }

    fn input(&self, b: &Batch) -> Val<B::Buf> {
        self.fresh(b.shape.clone(), self.be.upload(&b.x))
    }

    /// Forward in training mode, the loss, and the gradient of every parameter (in `params`
    /// order; empty for non-trainable ones).
    fn loss_and_grads(
        &mut self,
        b: &Batch,
        dropout_seed: u64,
        label_smoothing: f32,
    ) -> (StepResult, Vec<B::Buf>) {
        self.dropout_rng = Rng::new(dropout_seed);
        let n_nodes = self.plan.graph.nodes.len();
        let mut records: Vec<Option<Record<B::Buf>>> = (0..n_nodes).map(|_| None).collect();
        let phase = self.span_start();
        let x = self.input(b);
        let logits = self.forward(x, true, Some(&mut records));
        let (res, dlogits) = cross_entropy(
            &self.be.download(&logits.buf),
            logits.shape[1],
            b.labels,
            label_smoothing,
        );
        drop(logits);
        self.span_end(phase, || "train forward + loss".into());
        let mut pgrads: Vec<B::Buf> = self
            .params
            .iter()
            .map(|p| self.be.zeros(if p.trainable { p.len } else { 0 }))
            .collect();
        let mut grads: Vec<Option<B::Buf>> = (0..n_nodes).map(|_| None).collect();
        let (stop, _) = self.plan.logits();
        grads[stop.index()] = Some(self.be.upload(&dlogits));
        let phase = self.span_start();
        for idx in (1..=stop.index()).rev() {
            let (Some(dy), Some(rec)) = (grads[idx].take(), records[idx].take()) else {
                continue;
            };
            let t = self.span_start();
            self.layer_backward(idx, dy, rec, &mut grads, &mut pgrads);
            let plan = self.plan.clone();
            self.span_end(t, || {
                format!("  backward: {}", kind_label(&plan.layers[idx]))
            });
        }
        self.span_end(phase, || "train backward".into());
        (res, pgrads)
    }

    /// Adds `g` into node `i`'s gradient, taking it over when there is none yet.
    fn accumulate(&self, grads: &mut [Option<B::Buf>], i: usize, g: B::Buf) {
        match &mut grads[i] {
            Some(acc) => self.be.axpy(&g, 1.0, acc),
            slot @ None => *slot = Some(g),
        }
    }

    /// Writes a contribution to node `i`'s gradient: `write(out, accumulate)` fills a fresh
    /// buffer when the node has no gradient yet (no zeroing pass first), or adds into the one
    /// it has. Nothing for the network input.
    fn add_grad(
        &self,
        grads: &mut [Option<B::Buf>],
        i: usize,
        len: usize,
        write: impl FnOnce(&mut B::Buf, bool),
    ) {
        if i == 0 {
            return;
        }
        match &mut grads[i] {
            Some(g) => write(g, true),
            slot @ None => {
                let mut b = self.be.alloc(len);
                write(&mut b, false);
                *slot = Some(b);
            }
        }
    }

    fn layer_backward(
        &mut self,
        idx: usize,
        dy: B::Buf,
        rec: Record<B::Buf>,
        grads: &mut [Option<B::Buf>],
        pgrads: &mut [B::Buf],
    ) {
        let layer = self.plan.layers[idx].clone();
        // The plan's wiring: a fused SE tail reads x and the gate, not the multiply.
        let inputs: Vec<usize> = self
            .plan
            .inputs(NodeId(idx as u32))
            .iter()
            .map(|i| i.index())
            .collect();
        let be = &self.be;
        // A fused activation's gradient first: dy becomes the gradient of the layer's own
        // output.
        let through = layer
            .epilogue()
            .filter(|_| backward_takes_epilogue(&layer))
            .map(|f| (&**rec.out.buf(), f));
        let dy = match layer.epilogue() {
            Some(f) if through.is_none() => {
                let (y, pre) = (rec.out.buf(), &rec.pre_act);
                // Without the value before the activation, its derivative is read off the
                // output (`epilogue` keeps it for the activations that need it).
                debug_assert!(pre.is_some() || f.grad_from_output(), "{f:?}");
                let mut d = be.alloc(be.len(&dy));
                be.act_back(pre.as_deref().unwrap_or(y), y, &dy, f.code(), &mut d, false);
                // The gradient after the activation is not read again.
                drop(dy);
                d
            }
            Some(_) | None => dy,
        };
        let x = &rec.ins[0];
        let xi = inputs[0];
        let xlen: usize = x.shape.iter().product();
        let (rows_out, cout) = rows_of(&rec.out.shape);
        match layer {
            Layer::Input => {}
            Layer::Conv { op, w, b, .. } => {
                let s = conv_shape(&op, &x.shape, &rec.out.shape);
                let g = Geom::of(&s.win, s.groups);
                let (cols, wk) = match rec.saved {
                    Saved::Cols(cols) => (Some(cols), None),
                    Saved::Lib(wk) => (None, Some(wk)),
                    _ => unreachable!("conv saves its columns or its library's filter"),
                };
                // The library's gradients, where it ran the forward and takes them too.
                let lib = wk.as_ref().and_then(|wk| be.conv_lib().map(|l| (l, wk)));
                let lib_filter = lib.filter(|(l, _)| l.supports(&g, cout, ConvDir::Filter));
                let lib_data = lib.filter(|(l, _)| l.supports(&g, cout, ConvDir::Data));
                if let Some(b) = b {
                    let db = be.col_sums(&dy, None, 1, rows_out, cout, 1.0);
                    be.axpy(&db, 1.0, &mut pgrads[b]);
                }
                if let (Some((lib, wk)), Some(_)) = (lib_filter, lib_data) {
                    let mut dwk = be.alloc(be.len(wk));
                    lib.backward_filter(&g, cout, x.buf(), &dy, &mut dwk);
                    be.transpose(&dwk, cout, be.len(wk) / cout, &mut pgrads[w], true);
                    drop(dwk);
                    if xi != 0 {
                        self.add_grad(grads, xi, xlen, |dx, acc| {
                            lib.backward_data(&g, cout, &dy, wk, dx, acc)
                        });
                    }
                    return;
                }
                drop(wk);
                // Gemm: the im2col matrix kept by the forward, or made afresh.
                let cols = cols.unwrap_or_else(|| {
                    if s.direct() {
                        x.buf().clone()
                    } else {
                        Rc::new(be.im2col(x.buf(), &g, 0.0))
                    }
                });
                let f = self.conv_gemm(&s, rows_out);
                // dW += colsᵀ · dy, per group.
                let dw = Gemm {
                    m: f.k,
                    n: f.n,
                    k: rows_out,
                    ta: true,
                    lda: f.lda,
                    ldb: f.ldc,
                    ldc: f.ldb,
                    beta: 1.0,
                    sa: f.sa,
                    sb: f.sc,
                    sc: f.sb,
                    ..f
                };
                let parts = split_k(rows_out);
                if s.groups == 1 && parts > 1 {
                    let (m, n, chunk) = (dw.m, dw.n, rows_out / parts);
                    let mut part = be.alloc(parts * m * n);
                    let g = Gemm {
                        k: chunk,
                        ldc: n,
                        beta: 0.0,
                        batch: parts,
                        sa: chunk * dw.lda,
                        sb: chunk * dw.ldb,
                        sc: m * n,
                        ..dw
                    };
                    be.gemm(&g, &cols, &dy, &mut part);
                    let sum = be.col_sums(&part, None, 1, parts, m * n, 1.0);
                    be.axpy(&sum, 1.0, &mut pgrads[w]);
                } else {
                    be.gemm(&dw, &cols, &dy, &mut pgrads[w]);
                }
                drop(cols);
                if xi == 0 {
                    return;
                }
                // dcols = dy · Wᵀ, per group.
                let dc = Gemm {
                    m: rows_out,
                    n: f.k,
                    k: f.n,
                    tb: true,
                    lda: f.ldc,
                    ldb: f.ldb,
                    ldc: f.lda,
                    sa: f.sc,
                    sb: f.sb,
                    sc: f.sa,
                    ..f
                };
                let wt = &self.params[w].buf;
                if s.direct() {
                    self.add_grad(grads, xi, xlen, |dx, acc| {
                        let beta = if acc { 1.0 } else { 0.0 };
                        be.gemm(&Gemm { beta, ..dc }, &dy, wt, dx)
                    });
                } else {
                    let mut dcols = be.alloc(rows_out * f.lda);
                    be.gemm(&dc, &dy, wt, &mut dcols);
                    let g = Geom::of(&s.win, s.groups);
                    self.add_grad(grads, xi, xlen, |dx, acc| be.col2im(&dcols, &g, dx, acc));
                }
            }
            Layer::BatchNorm { gamma, beta, .. } => {
                let Saved::Bn { mean, inv_std } = rec.saved else {
                    unreachable!("bn saves statistics")
                };
                let (rows, c) = rows_of(&x.shape);
                let (sdy, sdyx) = be.col_sums2(&dy, x.buf(), through, rows, c);
                let (mut dg, mut db) = (None, None);
                for (i, slot) in pgrads.iter_mut().enumerate() {
                    if Some(i) == gamma {
                        dg = Some(slot);
                    } else if Some(i) == beta {
                        db = Some(slot);
                    }
                }
                let gm = gamma.map(|i| &self.params[i].buf);
                let [s, t, d] = be.bn_back_coeffs(&sdy, &sdyx, &mean, &inv_std, gm, dg, db, rows);
                self.add_grad(grads, xi, xlen, |dx, acc| {
                    be.bn_back_apply(&dy, through, [&s, &t, &d], x.buf(), c, dx, acc)
                });
            }
            Layer::Activation(f) => {
                self.add_grad(grads, xi, xlen, |dx, acc| {
                    let y = rec.out.buf();
                    if f == ActFn::Softmax {
                        be.softmax_back(y, &dy, cout, dx, acc);
                    } else if f.grad_from_output() {
                        // The derivative read off the output alone (its input was let go).
                        be.act_back(y, y, &dy, f.code(), dx, acc);
                    } else {
                        be.act_back(x.buf(), y, &dy, f.code(), dx, acc);
                    }
                });
            }
            Layer::ZeroPad(p) => {
                let g = pad_geom(p, &x.shape, &rec.out.shape);
                self.add_grad(grads, xi, xlen, |dx, acc| be.col2im(&dy, &g, dx, acc));
            }
            Layer::Pool { max, op } => {
                let Saved::Arg(arg) = rec.saved else {
                    unreachable!("pool saves its taps")
                };
                let g = Geom::of(&pool_window(&op, &x.shape, &rec.out.shape), 1);
                if xi != 0 {
                    let dcols = be.taps_expand(&dy, &arg, &g, max);
                    self.add_grad(grads, xi, xlen, |dx, acc| be.col2im(&dcols, &g, dx, acc));
                }
            }
            Layer::GlobalPool { max } => {
                let (n, c) = (x.shape[0], *x.shape.last().expect("rank 4"));
                let hw = x.shape[1] * x.shape[2];
                if xi == 0 {
                    return;
                }
                if max {
                    let Saved::Arg(arg) = rec.saved else {
                        unreachable!("max pool saves its taps")
                    };
                    let g = Geom::of(&global_window(&x.shape), 1);
                    let d = be.taps_expand(&dy, &arg, &g, true);
                    self.accumulate(grads, xi, d);
                } else {
                    let scale = 1.0 / hw as f32;
                    self.add_grad(grads, xi, xlen, |dx, acc| {
                        be.bcast_rows(&dy, n, c, scale, dx, acc)
                    });
                }
            }
            Layer::Dense { w, b, act } => {
                let cin = *x.shape.last().expect("rank >= 1");
                let dz = match rec.saved {
                    Saved::PreAct(z) => {
                        let f = act.expect("an activation was applied");
                        let mut dz = be.alloc(rows_out * cout);
                        if f == ActFn::Softmax {
                            be.softmax_back(rec.out.buf(), &dy, cout, &mut dz, false);
                        } else {
                            be.act_back(&z, rec.out.buf(), &dy, f.code(), &mut dz, false);
                        }
                        dz
                    }
                    _ => dy,
                };
                if let Some(b) = b {
                    let db = be.col_sums(&dz, None, 1, rows_out, cout, 1.0);
                    be.axpy(&db, 1.0, &mut pgrads[b]);
                }
                let dw = Gemm {
                    ta: true,
                    lda: cin,
                    ldb: cout,
                    ldc: cout,
                    beta: 1.0,
                    ..Gemm::plain(cin, cout, rows_out)
                };
                be.gemm(&dw, x.buf(), &dz, &mut pgrads[w]);
                let wt = &self.params[w].buf;
                self.add_grad(grads, xi, xlen, |dx, acc| {
                    let g = Gemm {
                        tb: true,
                        lda: cout,
                        ldb: cout,
                        ldc: cin,
                        beta: if acc { 1.0 } else { 0.0 },
                        ..Gemm::plain(rows_out, cin, cout)
                    };
                    be.gemm(&g, &dz, wt, dx)
                });
            }
            Layer::Dropout(_) => match rec.saved {
                Saved::Mask(mask) => {
                    self.add_grad(grads, xi, xlen, |dx, acc| be.mul(&dy, &mask, dx, acc));
                }
                _ => {
                    if xi != 0 {
                        self.accumulate(grads, xi, dy);
                    }
                }
            },
            Layer::Reshape => {
                if xi != 0 {
                    self.accumulate(grads, xi, dy);
                }
            }
            Layer::Merge { kind, .. } => self.merge_backward(&rec, &inputs, dy, kind, grads),
            Layer::GatedAdd { .. } => {
                // y = x · gate + others: the SE multiply's gradients for x and the gate, and
                // the Add's (dy itself) for the others.
                self.gate_backward(&rec, [0, 1], &inputs, &dy, grads);
                self.pass_through(dy, &inputs[2..], rows_out * cout, grads);
            }
        }
    }

    /// The SE multiply y = x · gate (x (N, H, W, C), gate (N, 1, 1, C)), whose operands are
    /// `rec.ins[at[0]]` and `rec.ins[at[1]]`: dx = dy · gate, dgate = Σ over positions of dy · x.
    fn gate_backward(
        &self,
        rec: &Record<B::Buf>,
        at: [usize; 2],
        inputs: &[usize],
        dy: &B::Buf,
        grads: &mut [Option<B::Buf>],
    ) {
        let be = &self.be;
        let (rows, last) = rows_of(&rec.out.shape);
        let n = rec.out.shape[0];
        let (x, g) = (&rec.ins[at[0]], &rec.ins[at[1]]);
        self.add_grad(grads, inputs[at[0]], rows * last, |dx, acc| {
            be.gate_mul(dy, g.buf(), n, last, dx, acc)
        });
        if inputs[at[1]] != 0 {
            let dg = be.col_sums(dy, Some(x.buf()), n, rows / n.max(1), last, 1.0);
            self.accumulate(grads, inputs[at[1]], dg);
        }
    }

    /// An Add's gradient: dy itself into each of `inputs`, added, copied, or (the last
    /// input's) taken over without a copy.
    fn pass_through(
        &self,
        dy: B::Buf,
        inputs: &[usize],
        total: usize,
        grads: &mut [Option<B::Buf>],
    ) {
        let be = &self.be;
        let Some((&last, rest)) = inputs.split_last() else {
            return;
        };
        for &i in rest {
            // A one-row column copy of the whole tensor.
            self.add_grad(grads, i, total, |dx, acc| {
                be.col_copy(&dy, total, 0, dx, total, 0, total, 1, acc)
            });
        }
        if last != 0 {
            self.accumulate(grads, last, dy);
        }
    }

    fn merge_backward(
        &self,
        rec: &Record<B::Buf>,
        inputs: &[usize],
        dy: B::Buf,
        kind: MergeKind,
        grads: &mut [Option<B::Buf>],
    ) {
        let be = &self.be;
        let (rows, last) = rows_of(&rec.out.shape);
        let total = rows * last;
        match kind {
            MergeKind::Add => self.pass_through(dy, inputs, total, grads),
            MergeKind::Concatenate => {
                let mut off = 0;
                for (a, &i) in rec.ins.iter().zip(inputs) {
                    let w = *a.shape.last().expect("rank >= 1");
                    self.add_grad(grads, i, rows * w, |dx, acc| {
                        be.col_copy(&dy, last, off, dx, w, 0, w, rows, acc)
                    });
                    off += w;
                }
            }
            MergeKind::Multiply => {
                let ins = &rec.ins;
                if ins.len() == 2 && ins[0].shape != ins[1].shape {
                    let full = usize::from(ins[0].shape != rec.out.shape);
                    self.gate_backward(rec, [full, 1 - full], inputs, &dy, grads);
                    return;
                }
                for (k, &i) in inputs.iter().enumerate() {
                    if i == 0 {
                        continue;
                    }
                    // dy times every other operand (dy itself for a lone operand).
                    let mut prod: Option<B::Buf> = None;
                    for (_, a) in ins.iter().enumerate().filter(|(j, _)| *j != k) {
                        let mut next = be.alloc(total);
                        be.mul(prod.as_ref().unwrap_or(&dy), a.buf(), &mut next, false);
                        prod = Some(next);
                    }
                    let prod = prod.unwrap_or_else(|| {
                        let mut c = be.alloc(total);
                        be.col_copy(&dy, total, 0, &mut c, total, 0, total, 1, false);
                        c
                    });
                    self.accumulate(grads, i, prod);
                }
            }
        }
    }

    fn span_start(&self) -> Option<std::time::Instant> {
        profile::span_start(&self.profile, || self.be.synchronize())
    }

    fn span_end(&mut self, t: Option<std::time::Instant>, what: impl FnOnce() -> String) {
        profile::span_end(&mut self.profile, t, || self.be.synchronize(), what);
    }

    fn param_info(&self) -> Vec<ParamInfo> {
        self.params
            .iter()
            .map(|p| ParamInfo {
                name: p.name.clone(),
                len: p.len,
                trainable: p.trainable,
            })
            .collect()
    }

    fn moments(&mut self) -> &mut Moments<B::Buf> {
        let be = &self.be;
        let params = &self.params;
        self.opt.get_or_insert_with(|| {
            let make = || {
                params
                    .iter()
                    .map(|p| be.zeros(if p.trainable { p.len } else { 0 }))
                    .collect()
            };
            Moments {
                step: 0,
                m: make(),
                v: make(),
            }
        })
    }
}

/// Mean softmax cross-entropy of logits (N, K) on the host (K is small): the loss, the
/// probabilities, and the gradient of the loss with respect to the logits.
fn cross_entropy(logits: &[f32], k: usize, labels: &[usize], eps: f32) -> (StepResult, Vec<f32>) {
    let n = logits.len() / k.max(1);
    let (loss, probs) = softmax_cross_entropy(logits, k, labels, eps);
    let mut d = vec![0.0f32; n * k];
    cross_entropy_grad(&probs, k, labels, eps, 1.0 / n as f32, &mut d);
    let res = StepResult {
        loss: (loss / n.max(1) as f64) as f32,
        probs: probs.chunks(k.max(1)).map(|r| r.to_vec()).collect(),
    };
    (res, d)
}

impl<B: Backend> Model for KernelNet<B> {
    fn graph(&self) -> &Graph {
        &self.plan.graph
    }
    fn device_name(&self) -> String {
        self.device_name.clone()
    }
    fn infer(&mut self, batch: Batch) -> StepResult {
        let t = self.span_start();
        let x = self.input(&batch);
        let logits = self.forward(x, false, None);
        let res = cross_entropy(
            &self.be.download(&logits.buf),
            logits.shape[1],
            batch.labels,
            0.0,
        )
        .0;
        self.span_end(t, || "inference forward".into());
        res
    }
    fn train_step(&mut self, batch: Batch, opt: &OptSettings, dropout_seed: u64) -> StepResult {
        let (res, pgrads) = self.loss_and_grads(&batch, dropout_seed, opt.label_smoothing);
        if !res.loss.is_finite() {
            return res;
        }
        let t = self.span_start();
        let Moments { step, mut m, mut v } = std::mem::take(self.moments());
        let step = step + 1;
        let wd = opt.weight_decay as f32;
        let u = match opt.kind {
            Optimizer::Adam => Update::Adam {
                step,
                lr: opt.lr as f32,
                b1: 0.9,
                b2: 0.999,
                eps: 1e-8,
                wd,
            },
            Optimizer::Sgd => Update::Sgd {
                lr: opt.lr as f32,
                momentum: opt.momentum as f32,
                wd,
            },
        };
        for (i, p) in self.params.iter_mut().enumerate() {
            if p.trainable {
                self.be
                    .update(&u, &mut p.buf, &pgrads[i], &mut m[i], &mut v[i]);
            }
        }
        self.opt = Some(Moments { step, m, v });
        self.span_end(t, || "optimizer".into());
        res
    }
    fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }
    fn profile_mut(&mut self) -> Option<&mut Profile> {
        self.profile.as_mut()
    }
    fn gradients(&mut self, batch: Batch, dropout_seed: u64) -> (StepResult, Vec<Vec<f32>>) {
        let (res, pgrads) = self.loss_and_grads(&batch, dropout_seed, 0.0);
        let g = pgrads.iter().map(|b| self.be.download(b)).collect();
        (res, g)
    }
    fn param_info(&self) -> Vec<ParamInfo> {
        KernelNet::param_info(self)
    }
    fn param_values(&self) -> Vec<Vec<f32>> {
        self.params
            .iter()
            .map(|p| self.be.download(&p.buf))
            .collect()
    }
    fn set_param(&mut self, i: usize, values: Vec<f32>) {
        self.params[i].buf = self.be.upload(&values);
    }
    fn opt_state(&self) -> (i32, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        match &self.opt {
            Some(Moments { step, m, v }) => (
                *step,
                m.iter().map(|b| self.be.download(b)).collect(),
                v.iter().map(|b| self.be.download(b)).collect(),
            ),
            None => (0, vec![], vec![]),
        }
    }
    fn set_opt_state(&mut self, step: i32, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) {
        let lens: Vec<usize> = self
            .params
            .iter()
            .map(|p| if p.trainable { p.len } else { 0 })
            .collect();
        let be = &self.be;
        let st = self.opt.get_or_insert_with(Moments::default);
        let pick = |src: &[Vec<f32>], i: usize| -> Vec<f32> {
            match src.get(i) {
                Some(s) if s.len() == lens[i] => s.clone(),
                _ => vec![0.0; lens[i]],
            }
        };
        st.step = step;
        st.m = (0..lens.len()).map(|i| be.upload(&pick(&m, i))).collect();
        st.v = (0..lens.len()).map(|i| be.upload(&pick(&v, i))).collect();
    }
    fn synchronize(&self) {
        self.be.synchronize();
    }
    fn memory_peak(&self) -> Option<(u64, u64)> {
        self.be.memory_peak()
    }
}
