//! What the training loop, `eval`, `predict` and `bench` see of a lowered network, whatever
//! device it runs on: batches in as host vectors, loss and class probabilities out, parameters
//! and optimizer state by name for checkpoints. The CPU network (`cpu::Net`, the project's own
//! kernels) and the kernel network (`kernelnet::KernelNet`, on a GPU or, for checks, with host
//! loops) both implement it.

use super::profile::Profile;
use crate::ir::Graph;
use crate::spec::recipe::{Optimizer, TrainConfig};
use dfdx::prelude::*;
use dfdx::tensor::{Gradients, Storage};

/// Loss and per-image class probabilities of one batch.
pub struct StepResult {
    pub loss: f32,
    pub probs: Vec<Vec<f32>>,
}

/// A batch in host memory: images (N, H, W, C) and their class indices.
pub struct Batch<'a> {
    pub x: Vec<f32>,
    pub shape: Vec<usize>,
    pub labels: &'a [usize],
}

/// The optimizer of one step (the learning rate changes with the schedule).
#[derive(Clone, Copy, Debug)]
pub struct OptSettings {
    pub kind: Optimizer,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Label smoothing of the training loss (0: plain one-hot targets).
    pub label_smoothing: f32,
}

impl OptSettings {
    pub fn new(cfg: &TrainConfig, lr: f64) -> OptSettings {
        OptSettings {
            kind: cfg.optimizer,
            lr,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            label_smoothing: cfg.label_smoothing as f32,
        }
    }
}

/// A parameter's name, size and kind, without its values (those stay on the device).
pub struct ParamInfo {
    pub name: String,
    pub len: usize,
    pub trainable: bool,
}

pub trait Model {
    fn graph(&self) -> &Graph;
    /// "cpu" or "cuda:0", for messages.
    fn device_name(&self) -> String;
    /// Loss and probabilities in inference mode (moving BN statistics, no dropout).
    fn infer(&mut self, batch: Batch) -> StepResult;
    /// Forward in training mode and the loss; when the loss is finite, backward and one
    /// optimizer step. Dropout masks come from `dropout_seed`.
    fn train_step(&mut self, batch: Batch, opt: &OptSettings, dropout_seed: u64) -> StepResult;
    /// Like `train_step` but without the update: the gradient of every parameter, in `params`
    /// order (empty for non-trainable ones). For checking one device against another.
    fn gradients(&mut self, batch: Batch, dropout_seed: u64) -> (StepResult, Vec<Vec<f32>>);
    fn param_info(&self) -> Vec<ParamInfo>;
    /// Every parameter's values, copied to the host, in `param_info` order.
    fn param_values(&self) -> Vec<Vec<f32>>;
    /// Replaces parameter `i`; the length is checked by the caller.
    fn set_param(&mut self, i: usize, values: Vec<f32>);
    /// Adam's step count and the first and second moments per parameter (empty when not
    /// trainable or before the first step).
    fn opt_state(&self) -> (i32, Vec<Vec<f32>>, Vec<Vec<f32>>);
    fn set_opt_state(&mut self, step: i32, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>);
    /// Waits for queued device work, so timings measure it.
    fn synchronize(&self);
    /// The device allocator's high-water marks, (in use, reserved) in bytes, where the device
    /// keeps them (the GPU's memory pool); None elsewhere.
    fn memory_peak(&self) -> Option<(u64, u64)> {
        None
    }
    /// Time per phase and layer kind, when the network was built with profiling on.
    fn profile_report(&self) -> Option<String> {
        self.profile().map(Profile::report)
    }
    /// Forgets the times so far (the warm-up step compiles kernels and fills caches).
    fn profile_reset(&mut self) {
        if let Some(p) = self.profile_mut() {
            *p = Profile::default();
        }
    }
    /// The network's profile, when it was built with profiling on.
    fn profile(&self) -> Option<&Profile> {
        None
    }
    fn profile_mut(&mut self) -> Option<&mut Profile> {
        None
    }

    /// The number of classes the loss sees.
    fn classes(&self) -> usize {
        let g = self.graph();
        *g.node(g.output).shape.last().unwrap_or(&1)
    }
    fn input_shape(&self) -> Vec<usize> {
        self.graph().input_shape().to_vec()
    }
}

/// Reading and writing dfdx's raw device buffers (optimizer moments), which dfdx's public API
/// offers only per device type.
pub trait DeviceBuffers: Device<f32> + Synchronize {
    fn read_buffer(&self, v: &<Self as Storage<f32>>::Vec) -> Vec<f32>;
    fn write_buffer(&self, v: &mut <Self as Storage<f32>>::Vec, src: &[f32]);
}

impl DeviceBuffers for Cpu {
    fn read_buffer(&self, v: &<Self as Storage<f32>>::Vec) -> Vec<f32> {
        v.to_vec()
    }
    fn write_buffer(&self, v: &mut <Self as Storage<f32>>::Vec, src: &[f32]) {
        v.copy_from_slice(src);
    }
}

/// Every parameter's gradient on the host, in order (empty for non-trainable ones).
pub fn host_gradients<'a, D: Device<f32> + 'a>(
    params: impl Iterator<Item = (&'a Tensor<(usize,), f32, D>, bool)>,
    grads: &mut Gradients<f32, D>,
) -> Vec<Vec<f32>> {
    params
        .map(|(t, trainable)| {
            if !trainable {
                return vec![];
            }
            // A parameter the loss does not reach gets a zero gradient.
            grads.get_or_alloc_mut(t).expect("gradient allocation");
            grads.get(t).as_vec()
        })
        .collect()
}

/// `Model::opt_state` of an optimizer made on the first step.
pub fn opt_state_of<D: DeviceBuffers>(
    opt: &Option<Optim<D>>,
    dev: &D,
) -> (i32, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    match opt {
        Some(o) => o.state(dev),
        None => (0, vec![], vec![]),
    }
}

/// Adam or SGD-momentum state for flat parameters on device `D`, updated with dfdx's kernels.
pub struct Optim<D: Storage<f32>> {
    pub step: i32,
    pub m: Vec<<D as Storage<f32>>::Vec>,
    pub v: Vec<<D as Storage<f32>>::Vec>,
}

impl<D: DeviceBuffers> Optim<D> {
    /// Moments for the trainable parameters of `params`; made on the first step.
    pub fn new(dev: &D, params: &[ParamInfo]) -> Optim<D> {
        let alloc = |p: &ParamInfo| {
            <D as Storage<f32>>::try_alloc_len(dev, if p.trainable { p.len } else { 0 })
                .expect("device allocation for optimizer state")
        };
        Optim {
            step: 0,
            m: params.iter().map(alloc).collect(),
            v: params.iter().map(alloc).collect(),
        }
    }

    /// One step over `params` (tensor, trainable), in the order the state was made for.
    pub fn update<'a>(
        &mut self,
        params: impl Iterator<Item = (&'a mut Tensor<(usize,), f32, D>, bool)>,
        grads: &mut Gradients<f32, D>,
        s: &OptSettings,
    ) where
        D: 'a,
    {
        use dfdx::optim::{Momentum, WeightDecay};
        self.step += 1;
        let wd = (s.weight_decay > 0.0).then_some(WeightDecay::L2(s.weight_decay));
        for (i, (p, trainable)) in params.enumerate() {
            if !trainable {
                continue;
            }
            let g = grads.get_or_alloc_mut(p).expect("gradient allocation");
            match s.kind {
                Optimizer::Adam => dfdx::optim::AdamConfig {
                    lr: s.lr,
                    weight_decay: wd,
                    ..Default::default()
                }
                .try_update(self.step, p, &mut self.m[i], &mut self.v[i], g)
                .expect("Adam kernel"),
                Optimizer::Sgd => dfdx::optim::SgdConfig {
                    lr: s.lr,
                    momentum: Some(Momentum::Classic(s.momentum)),
                    weight_decay: wd,
                }
                .try_update(p, &mut self.m[i], g)
                .expect("SGD kernel"),
            }
        }
    }

    pub fn state(&self, dev: &D) -> (i32, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let host = |v: &<D as Storage<f32>>::Vec| dev.read_buffer(v);
        (
            self.step,
            self.m.iter().map(host).collect(),
            self.v.iter().map(host).collect(),
        )
    }

    /// Sizes are checked by the caller against the parameters.
    pub fn set_state(&mut self, dev: &D, step: i32, m: Vec<Vec<f32>>, v: Vec<Vec<f32>>) {
        self.step = step;
        for (dst, src) in self.m.iter_mut().zip(&m).chain(self.v.iter_mut().zip(&v)) {
            if <D as Storage<f32>>::len(dev, dst) == src.len() && !src.is_empty() {
                dev.write_buffer(dst, src);
            }
        }
    }
}
