//! The passes over a plan, which a back end chooses among: BatchNorm folding for inference, and
//! the fusions the CPU network makes (activations into the layer before them, SE tails as one
//! op). Each returns a new plan (and, for folding, new parameter values); every network runs
//! every plan. The CPU network's `Net` wraps them (`Net::folded_for_inference`, …).
//!
//! BatchNorm folding for inference: a BatchNorm in inference mode is a per-channel affine map,
//! y = s (x − mean) + beta with s = gamma / sqrt(var + eps), so after a convolution it can be
//! moved into the convolution's kernel and bias: W' = W s (per output channel), b' = s (b −
//! mean) + beta. The folded network runs one pass less over every BN's output. It is for
//! inference only (eval, predict, bench's inference half): training needs the batch statistics,
//! so the training network is never folded.

use super::{se_gate, Layer, ParamInit, Plan};
use crate::ir::ops::{ActFn, Conv2d, MergeKind};
use crate::ir::{Graph, NodeId};

impl Plan {
    /// The plan for inference with every BatchNorm folded into the convolution before it,
    /// where that convolution's output is read by the BatchNorm alone; `params` (the network's,
    /// in order) get the folded kernels and biases. Returns the plan and the number of
    /// BatchNorms folded. The folded BatchNorm's node stays in the graph as an identity
    /// (`Layer::Reshape` with the same shape), so node indices and names are unchanged.
    pub fn folded_for_inference(&self, params: &mut Vec<ParamInit>) -> (Plan, usize) {
        debug_assert!(!self.rewired(), "fold before `with_fused_se_tails`");
        let plan = self;
        let g = &plan.graph;
        let readers = g.consumers();
        let mut layers = plan.layers.clone();
        let mut folded = 0;
        for id in g.ids() {
            let Layer::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
                act: None,
                ..
            } = layers[id.index()].clone()
            else {
                continue;
            };
            let src = g.node(id).inputs[0];
            let Some((op, w, b)) = lone_conv(&layers, &readers, src, g.output) else {
                continue;
            };
            let cout = op.filters;
            let param = |i: usize| params[i].values.clone();
            let (mean, var) = (param(mean), param(var));
            let gamma = gamma.map(param);
            let beta = beta.map(param);
            let scale: Vec<f32> = (0..cout)
                .map(|c| gamma.as_ref().map_or(1.0, |g| g[c]) / (var[c] + eps).sqrt())
                .collect();
            // HWIO: the output channel is the fastest axis.
            let kernel: Vec<f32> = param(w)
                .iter()
                .enumerate()
                .map(|(i, v)| v * scale[i % cout])
                .collect();
            let old_bias = b.map(param);
            let bias: Vec<f32> = (0..cout)
                .map(|c| {
                    let b0 = old_bias.as_ref().map_or(0.0, |b| b[c]);
                    scale[c] * (b0 - mean[c]) + beta.as_ref().map_or(0.0, |b| b[c])
                })
                .collect();
            let set = |p: &mut ParamInit, values: Vec<f32>| {
                p.values = values;
                p.trainable = false;
            };
            set(&mut params[w], kernel);
            let b = match b {
                Some(b) => {
                    set(&mut params[b], bias);
                    b
                }
                None => {
                    params.push(ParamInit {
                        name: format!("{}/bias", g.node(src).name),
                        values: bias,
                        trainable: false,
                    });
                    params.len() - 1
                }
            };
            let mut op = op;
            op.use_bias = true;
            layers[src.index()] = Layer::Conv {
                op,
                w,
                b: Some(b),
                act: None,
            };
            // Same shape in and out: the folded BatchNorm passes its input through.
            layers[id.index()] = Layer::Reshape;
            folded += 1;
        }
        (Plan::new(g.clone(), layers), folded)
    }

    /// A copy whose elementwise activations that directly follow a convolution (through
    /// folded BatchNorms or reshapes, each read once) run in the convolution's epilogue, on its
    /// output while it is in cache, instead of as a pass of their own. Returns the copy and the
    /// number fused. The CPU network's pass; the kernel network runs its result too.
    pub fn with_fused_activations(&self) -> (Plan, usize) {
        self.fusing_activations(|layers, readers, g, id, stop, f| {
            // Back through single-reader reshapes (folded BatchNorms are reshapes) to a conv.
            let mut src = g.node(id).inputs[0];
            while matches!(layers[src.index()], Layer::Reshape)
                && readers[src.index()].len() == 1
                && src.index() > 0
            {
                src = g.node(src).inputs[0];
            }
            let Some((op, w, b)) = lone_conv(layers, readers, src, stop) else {
                return false;
            };
            layers[src.index()] = Layer::Conv {
                op,
                w,
                b,
                act: Some(f),
            };
            true
        })
    }

    /// A copy whose elementwise activations run inside the layer before them where that layer's
    /// output is read by them alone:
    /// - after a BatchNorm, any elementwise activation: the forward applies it to each chunk of
    ///   the normalised output while it is in cache, and the backward recomputes the
    ///   BatchNorm's output from its input to take the activation's gradient;
    /// - after an Add, a ReLU: rectified in the pass that adds the last input, with a byte mask
    ///   of the positive outputs for the backward.
    ///
    /// The activation's own forward pass, backward pass and gradient buffer go. Training and
    /// inference alike; the parameters are the same. Returns the copy and the number fused.
    /// The CPU network's pass; the kernel network runs its result too.
    pub fn with_fused_bn_and_add_activations(&self) -> (Plan, usize) {
        self.fusing_activations(|layers, readers, g, id, stop, f| {
            let src = g.node(id).inputs[0];
            if readers[src.index()].len() != 1 || src == stop {
                return false;
            }
            match &mut layers[src.index()] {
                Layer::BatchNorm {
                    act: act @ None, ..
                } => *act = Some(f),
                Layer::Merge {
                    kind: MergeKind::Add,
                    act: act @ None,
                } if f == ActFn::Relu => *act = Some(f),
                _ => return false,
            }
            true
        })
    }

    /// A copy in which `fuse(layers, readers, graph, activation, stop, f)` moves each
    /// elementwise activation (not softmax, linear or the logits) into the layer before it
    /// where it can, returning whether it did; the activation's node becomes an identity.
    fn fusing_activations(
        &self,
        mut fuse: impl FnMut(&mut [Layer], &[Vec<NodeId>], &Graph, NodeId, NodeId, ActFn) -> bool,
    ) -> (Plan, usize) {
        debug_assert!(!self.rewired(), "fuse before `with_fused_se_tails`");
        let g = &self.graph;
        let readers = g.consumers();
        let mut layers = self.layers.clone();
        let (stop, _) = self.logits();
        let mut fused = 0;
        for id in g.ids() {
            let Layer::Activation(f) = layers[id.index()] else {
                continue;
            };
            if f == ActFn::Softmax || f == ActFn::Linear || id == stop {
                continue;
            }
            if fuse(&mut layers, &readers, g, id, stop, f) {
                layers[id.index()] = Layer::Reshape;
                fused += 1;
            }
        }
        (Plan::new(g.clone(), layers), fused)
    }

    /// The passes the CPU network runs its plan through (`device::Opened::place`), in their
    /// order: activations into the BatchNorms and Adds before them, then each SE tail as one
    /// op. `lower::memory` models the same plan.
    pub fn for_cpu_network(&self) -> Plan {
        self.with_fused_bn_and_add_activations()
            .0
            .with_fused_se_tails()
            .0
    }

    /// The passes the kernel network (`--device cuda`) runs its plan through, in their order:
    /// activations into the convolutions before them (through folded BatchNorms: inference),
    /// then into the BatchNorms and Adds before them, then each SE tail as one op. It applies
    /// each activation in the kernel that writes its input where it can
    /// (`kernelnet::epilogue`). `lower::memory` models the same plan.
    pub fn for_kernel_network(&self) -> Plan {
        self.with_fused_activations()
            .0
            .with_fused_bn_and_add_activations()
            .0
            .with_fused_se_tails()
            .0
    }

    /// A copy whose SE tails run as one op each: an Add (with or without a fused ReLU) reading
    /// an SE multiply x · gate (N, H, W, C) × (N, 1, 1, C) that nothing else reads becomes a
    /// `Layer::GatedAdd` reading x, the gate and the Add's other inputs, and the multiply is
    /// absorbed (not run). The product is never stored, and its gradient is never made:
    /// forward and backward each make one pass where the multiply and the Add made two.
    /// Training and inference alike. Returns the copy and the number fused. The CPU network's pass; the
    /// kernel network runs its result too. It rewires the plan (`Plan::wired`), so it comes after the
    /// other fusions, which read the graph's wiring.
    pub fn with_fused_se_tails(&self) -> (Plan, usize) {
        let plan = self;
        let g = &plan.graph;
        let readers = plan.readers();
        let (stop, _) = plan.logits();
        let mut layers = plan.layers.clone();
        let mut inputs: Vec<Vec<NodeId>> = g.ids().map(|id| plan.inputs(id).to_vec()).collect();
        // Node shapes leave out the batch axis; `se_gate` wants one.
        let batched = |id: NodeId| -> Vec<usize> {
            std::iter::once(1)
                .chain(g.node(id).shape.iter().copied())
                .collect()
        };
        // (x, gate) of an SE multiply that only `add` reads, once.
        let se_multiply = |layers: &[Layer], inputs: &[Vec<NodeId>], m: NodeId, add: NodeId| {
            let lone = readers[m.index()] == [add] && m != stop;
            let ins = &inputs[m.index()];
            if !lone || ins.len() != 2 {
                return None;
            }
            if !matches!(
                layers[m.index()],
                Layer::Merge {
                    kind: MergeKind::Multiply,
                    act: None
                }
            ) {
                return None;
            }
            let out = batched(m);
            let (a, b) = (ins[0], ins[1]);
            if batched(a) == out && se_gate(&batched(b), &out) {
                Some((a, b))
            } else if batched(b) == out && se_gate(&batched(a), &out) {
                Some((b, a))
            } else {
                None
            }
        };
        let mut fused = 0;
        for id in g.ids() {
            let Layer::Merge {
                kind: MergeKind::Add,
                act,
            } = layers[id.index()]
            else {
                continue;
            };
            if !matches!(act, None | Some(ActFn::Relu)) {
                continue;
            }
            let ins = inputs[id.index()].clone();
            let found = ins.iter().enumerate().find_map(|(k, &m)| {
                se_multiply(&layers, &inputs, m, id).map(|(x, gate)| (k, m, x, gate))
            });
            let Some((k, m, x, gate)) = found else {
                continue;
            };
            let mut wired = vec![x, gate];
            wired.extend(
                ins.iter()
                    .enumerate()
                    .filter(|&(j, _)| j != k)
                    .map(|(_, &i)| i),
            );
            inputs[id.index()] = wired;
            inputs[m.index()] = vec![];
            layers[id.index()] = Layer::GatedAdd { act };
            fused += 1;
        }
        (Plan::wired(g.clone(), layers, inputs), fused)
    }
}

/// The convolution at `src` (kernel and bias indices), if it has no fused activation and its
/// output is read by one layer only and is not `end` (the loss's input or the graph output).
fn lone_conv(
    layers: &[Layer],
    readers: &[Vec<NodeId>],
    src: NodeId,
    end: NodeId,
) -> Option<(Conv2d, usize, Option<usize>)> {
    match &layers[src.index()] {
        Layer::Conv {
            op,
            w,
            b,
            act: None,
        } if readers[src.index()].len() == 1 && src != end => Some((op.clone(), *w, *b)),
        _ => None,
    }
}
