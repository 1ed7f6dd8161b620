//! The CPU network: one runtime layer per plan node, run on dfdx with the project's kernels
//! (`Net`: construction, the walk over the plan, the `Model` impl). Each layer kind's forward,
//! and its backward recorded on dfdx's tape, lives in a file of its own under `ops/`;
//! `Net::layer_forward` dispatches to them.

pub mod ops;

use crate::ir::Graph;
use crate::ir::NodeId;
use crate::lower::autodiff::{cross_entropy, Act, Param};
use crate::lower::model::{
    host_gradients, opt_state_of, Batch, Model, OptSettings, Optim, ParamInfo, StepResult,
};
use crate::lower::plan::{Layer, Plan};
use crate::lower::profile::{self, kind_label, span_end, span_start, Profile};
use crate::util::rng::Rng;
use crate::validate::ValidGraph;
use dfdx::prelude::*;
use dfdx::tensor::Tape;
use ops::activation::softmax_rows;
use ops::{
    activation, batch_norm, conv, dense, dropout, gated_add, global_pool, merge, pool, reshape,
    zero_pad,
};
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
        Net::from_lowered(crate::lower::plan::lower(vg, seed))
    }

    /// The CPU network of a lowered plan, with its parameters' initial values.
    pub fn from_lowered(l: crate::lower::plan::Lowered) -> Net {
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

    /// A copy whose plan is `plan` (a pass over this one's), same parameters.
    fn with_plan(&self, plan: Plan) -> Net {
        let mut net = self.clone_for_device();
        net.plan = Arc::new(plan);
        net
    }

    /// `Plan::folded_for_inference` on this network and its current parameter values.
    pub fn folded_for_inference(&self) -> (Net, usize) {
        let mut params: Vec<super::plan::ParamInit> = self
            .params
            .iter()
            .map(|p| super::plan::ParamInit {
                name: p.name.clone(),
                values: p.data().to_vec(),
                trainable: p.trainable,
            })
            .collect();
        let (plan, n) = self.plan.folded_for_inference(&mut params);
        let mut net = self.with_plan(plan);
        net.params = params
            .into_iter()
            .map(|p| Param::new(&net.dev, p.name, p.values, p.trainable))
            .collect();
        (net, n)
    }

    /// `Plan::with_fused_activations`: activations in convolutions' epilogues (inference).
    pub fn with_fused_activations(&self) -> (Net, usize) {
        let (plan, n) = self.plan.with_fused_activations();
        (self.with_plan(plan), n)
    }

    /// `Plan::with_fused_bn_and_add_activations`.
    pub fn with_fused_bn_and_add_activations(&self) -> (Net, usize) {
        let (plan, n) = self.plan.with_fused_bn_and_add_activations();
        (self.with_plan(plan), n)
    }

    /// `Plan::for_cpu_network`: the network as the CPU device runs it.
    pub fn for_cpu_network(&self) -> Net {
        self.with_plan(self.plan.for_cpu_network())
    }

    /// `Plan::for_kernel_network`: the network as the kernel network runs it.
    pub fn for_kernel_network(&self) -> Net {
        self.with_plan(self.plan.for_kernel_network())
    }

    /// `Plan::with_fused_se_tails`.
    pub fn with_fused_se_tails(&self) -> (Net, usize) {
        let (plan, n) = self.plan.with_fused_se_tails();
        (self.with_plan(plan), n)
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

    /// Node `idx`'s layer: the forward (and, with a tape, backward) of its kind in `ops/`.
    fn layer_forward<T: Tape<f32, Cpu>>(
        &mut self,
        idx: usize,
        mut ins: Vec<Act<T>>,
        out_shape: Vec<usize>,
        train: bool,
        skip_act: bool,
    ) -> Act<T> {
        let layer = self.plan.layers[idx].clone();
        match layer {
            Layer::Input => ins.remove(0),
            Layer::Conv { op, w, b, act } => {
                conv::forward(self, idx, ins, out_shape, op, w, b, act)
            }
            Layer::BatchNorm { .. } => {
                batch_norm::forward(self, idx, ins, out_shape, train, &layer)
            }
            Layer::Activation(f) => activation::forward(ins, out_shape, f),
            Layer::ZeroPad(p) => zero_pad::forward(ins, out_shape, p),
            Layer::Pool { max, op } => pool::forward(ins, out_shape, op, max),
            Layer::GlobalPool { max } => global_pool::forward(ins, out_shape, max),
            Layer::Dense { w, b, act } => dense::forward(self, ins, out_shape, w, b, act, skip_act),
            Layer::Dropout(rate) => dropout::forward(self, idx, ins, out_shape, train, rate),
            Layer::Reshape => reshape::forward(ins, out_shape),
            Layer::Merge { kind, act } => merge::forward(ins, out_shape, kind, act),
            Layer::GatedAdd { act } => gated_add::forward(ins, out_shape, act),
        }
    }
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
