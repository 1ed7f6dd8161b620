//! Lowering a validated graph: one layer per node, and every parameter's name and initial
//! value, in the order all networks, checkpoints and exports keep them.

use super::{Layer, Plan};
use crate::ir::ops::{Op, PoolKind};
use crate::util::rng::Rng;
use crate::validate::ValidGraph;

/// A parameter as lowering makes it: Keras-style name (`node/kernel`), values, and whether
/// the optimizer updates it (moving statistics are not).
#[derive(Clone, Debug)]
pub struct ParamInit {
    pub name: String,
    pub values: Vec<f32>,
    pub trainable: bool,
}

/// The plan, its parameters, and the random stream dropout masks are drawn from.
pub struct Lowered {
    pub plan: Plan,
    pub params: Vec<ParamInit>,
    pub dropout_rng: Rng,
}

/// The parameters being created, in order, and the initialiser's random stream.
struct Init {
    rng: Rng,
    params: Vec<ParamInit>,
}

impl Init {
    fn add(&mut self, name: String, values: Vec<f32>, trainable: bool) -> usize {
        self.params.push(ParamInit {
            name,
            values,
            trainable,
        });
        self.params.len() - 1
    }

    /// A He-normal kernel of `fan_in` × `units` and, when `bias`, a zero bias of `units`.
    fn kernel_and_bias(
        &mut self,
        node: &str,
        fan_in: usize,
        units: usize,
        bias: bool,
    ) -> (usize, Option<usize>) {
        let std = (2.0 / fan_in.max(1) as f32).sqrt();
        let kernel = (0..fan_in * units)
            .map(|_| self.rng.normal() * std)
            .collect();
        let w = self.add(format!("{node}/kernel"), kernel, true);
        let b = bias.then(|| self.add(format!("{node}/bias"), vec![0.0; units], true));
        (w, b)
    }
}

/// The plan of `vg` and its parameters' initial values: weights He-normal (fan in) from the
/// seed's stream, biases 0, BN gamma 1, beta 0, moving mean 0, moving variance 1.
pub fn lower(vg: &ValidGraph, seed: u64) -> Lowered {
    let g = vg.graph().clone();
    let mut init = Init {
        rng: Rng::new(seed),
        params: vec![],
    };
    let mut layers = vec![];
    for id in g.ids() {
        let node = g.node(id);
        let cin = node
            .inputs
            .first()
            .map(|&i| *g.node(i).shape.last().unwrap_or(&1))
            .unwrap_or(0);
        let n = &node.name;
        let layer = match &node.op {
            Op::Input(_) => Layer::Input,
            Op::Conv2d(c) => {
                let fan_in = c.kernel[0] * c.kernel[1] * (cin / c.groups);
                let (w, b) = init.kernel_and_bias(n, fan_in, c.filters, c.use_bias);
                Layer::Conv {
                    op: c.clone(),
                    w,
                    b,
                    act: None,
                }
            }
            Op::BatchNorm(b) => {
                let gamma = b
                    .scale
                    .then(|| init.add(format!("{n}/gamma"), vec![1.0; cin], true));
                let beta = b
                    .center
                    .then(|| init.add(format!("{n}/beta"), vec![0.0; cin], true));
                let mean = init.add(format!("{n}/moving_mean"), vec![0.0; cin], false);
                let var = init.add(format!("{n}/moving_variance"), vec![1.0; cin], false);
                Layer::BatchNorm {
                    gamma,
                    beta,
                    mean,
                    var,
                    eps: b.epsilon as f32,
                    momentum: b.momentum as f32,
                    act: None,
                }
            }
            Op::Activation(a) => Layer::Activation(a.function),
            Op::ZeroPadding2d(z) => Layer::ZeroPad(z.padding),
            Op::Pool2d(p) => Layer::Pool {
                max: p.kind == PoolKind::Max,
                op: p.clone(),
            },
            Op::GlobalPool(p) => Layer::GlobalPool {
                max: p.kind == PoolKind::Max,
            },
            Op::Dense(d) => {
                let (w, b) = init.kernel_and_bias(n, cin, d.units, d.use_bias);
                Layer::Dense {
                    w,
                    b,
                    act: d.activation,
                }
            }
            Op::Dropout(d) => Layer::Dropout(d.rate as f32),
            Op::Flatten(_) | Op::Reshape(_) => Layer::Reshape,
            Op::Merge(m) => Layer::Merge {
                kind: m.kind,
                act: None,
            },
        };
        layers.push(layer);
    }
    Lowered {
        plan: Plan::new(g, layers),
        params: init.params,
        dropout_rng: init.rng.fork(7),
    }
}
