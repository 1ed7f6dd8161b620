//! `se-compile memory`: what a spec needs to train and to run, per layer and in total, for
//! each engine, predicted from the engines' own allocation rules (not measured): every shape
//! is known before anything runs, and so is the order in which an engine allocates and frees.
//! A step is replayed on a simulated heap (`heap`), so the peak is the most that is live at
//! once, not the sum of all tensors. tests/memory.rs checks the predictions against what the
//! engines really allocate.

pub mod cpu;
pub mod heap;
pub mod kernelnet;
pub mod torch;

use crate::lower::plan::{self, Plan};
use crate::spec::recipe::Optimizer;
use crate::validate::ValidGraph;

/// What one layer (plan node) costs in a step, in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerMem {
    pub node: usize,
    /// Its output (0 when it reuses an input's buffer).
    pub output: u64,
    /// What its backward keeps until it runs: inputs' values (shared with other readers, so
    /// rows may name the same tensor) and its own buffers (masks, indices, copies).
    pub saved: u64,
    /// The gradient of its output, in the backward.
    pub grad: u64,
    /// Buffers allocated and freed inside its forward and its backward (im2col, Winograd).
    pub workspace_forward: u64,
    pub workspace_backward: u64,
    /// What the backward keeps, in words, and what it recomputes instead.
    pub kept_what: &'static str,
}

/// One simulated step: the peak above what was live before it, and what ran at the peak.
pub struct StepSim {
    pub peak: u64,
    pub peak_at: String,
    /// The peak up to the end of the forward pass.
    pub forward_peak: u64,
    /// The largest scratch one thread keeps between calls.
    pub per_thread: usize,
    pub rows: Vec<LayerMem>,
}

impl StepSim {
    /// The simulation's result once `heap` has replayed the step; `forward_peak` is the peak
    /// at the end of the forward pass (None: the whole step was a forward).
    fn end(
        heap: &heap::Heap,
        forward_peak: Option<u64>,
        per_thread: usize,
        rows: Vec<LayerMem>,
    ) -> StepSim {
        StepSim {
            peak: heap.peak(),
            peak_at: heap.peak_at(),
            forward_peak: forward_peak.unwrap_or_else(|| heap.peak()),
            per_thread,
            rows,
        }
    }
}

/// The precision of a training step: float32 throughout, or bf16 autocast (bfloat16
/// activations and weight copies, float32 parameters, gradients and optimizer state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// se-compile's CPU network (`lower::cpu`).
    Cpu,
    /// The exported model.py under PyTorch's autograd, on the CPU, as train.py runs it.
    Pytorch,
    /// se-compile's kernel network on a GPU (`--device cuda`, `SE_COMPILE_CONV=auto`).
    Cuda,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Cpu => "cpu",
            Engine::Pytorch => "pytorch",
            Engine::Cuda => "cuda",
        }
    }
}

/// One parameter tensor: its values and what the engine keeps for it, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamMem {
    pub name: String,
    pub values: u64,
    /// The values as the engine holds them (the CPU network: two copies).
    pub held: u64,
    pub grad: u64,
    pub moments: u64,
}

/// A prediction for one engine, optimizer and batch.
pub struct Prediction {
    pub engine: Engine,
    pub precision: Precision,
    pub batch: usize,
    /// The parameters as the engine holds them (the CPU network keeps a dfdx tensor and a
    /// host copy of each).
    pub param_bytes: u64,
    /// The parameters' values once, float32.
    pub param_values_bytes: u64,
    /// Optimizer moments.
    pub optimizer_bytes: u64,
    /// The parameters' gradients, alive from the backward to the optimizer step.
    pub param_grad_bytes: u64,
    /// Of those, what persists between steps (PyTorch keeps `.grad` until the next
    /// `zero_grad`); 0 where the step frees them.
    pub kept_grad_bytes: u64,
    /// Scratch the engine's threads keep between steps.
    pub thread_scratch_bytes: u64,
    /// Of that, the matrix library's own (gemm's L2-sized packing buffer per thread), which
    /// every engine on the host shares once made.
    pub library_scratch_bytes: u64,
    /// The peak of a training step above what persists between steps, and where it is.
    pub train_step_bytes: u64,
    pub train_peak_at: String,
    /// The same for one inference batch (the network lowered for inference).
    pub infer_step_bytes: u64,
    pub infer_peak_at: String,
    /// Parameters of the network lowered for inference, as the engine holds them.
    pub infer_param_bytes: u64,
    pub rows_train: Vec<LayerMem>,
    pub rows_infer: Vec<LayerMem>,
    /// Every parameter tensor, in the plan's order.
    pub params: Vec<ParamMem>,
}

/// What persists between steps, for `Prediction::of`.
struct Persistent {
    param_bytes: u64,
    param_values_bytes: u64,
    optimizer_bytes: u64,
    param_grad_bytes: u64,
    kept_grad_bytes: u64,
    thread_scratch_bytes: u64,
    library_scratch_bytes: u64,
    infer_param_bytes: u64,
    /// Copies of each value the engine holds, and moment buffers per trainable parameter.
    copies: u64,
    moments: u64,
}

impl Prediction {
    fn of(
        engine: Engine,
        batch: usize,
        p: Persistent,
        train: StepSim,
        infer: StepSim,
        names: &[(String, usize, bool)],
    ) -> Self {
        let f = std::mem::size_of::<f32>() as u64;
        let params = names
            .iter()
            .map(|(name, len, trainable)| {
                let v = *len as u64 * f;
                let t = if *trainable { v } else { 0 };
                ParamMem {
                    name: name.clone(),
                    values: v,
                    held: p.copies * v,
                    grad: t,
                    moments: p.moments * t,
                }
            })
            .collect();
        Prediction {
            params,
            engine,
            precision: Precision::Fp32,
            batch,
            param_bytes: p.param_bytes,
            param_values_bytes: p.param_values_bytes,
            optimizer_bytes: p.optimizer_bytes,
            param_grad_bytes: p.param_grad_bytes,
            kept_grad_bytes: p.kept_grad_bytes,
            thread_scratch_bytes: p.thread_scratch_bytes,
            library_scratch_bytes: p.library_scratch_bytes,
            train_step_bytes: train.peak,
            train_peak_at: train.peak_at,
            infer_step_bytes: infer.peak,
            infer_peak_at: infer.peak_at,
            infer_param_bytes: p.infer_param_bytes,
            rows_train: train.rows,
            rows_infer: infer.rows,
        }
    }

    /// The whole training step: what persists (parameters, moments, thread scratch) plus the
    /// step's own peak.
    pub fn peak_train_bytes(&self) -> u64 {
        self.param_bytes
            + self.optimizer_bytes
            + self.kept_grad_bytes
            + self.thread_scratch_bytes
            + self.train_step_bytes
    }
    pub fn peak_infer_bytes(&self) -> u64 {
        self.infer_param_bytes + self.thread_scratch_bytes + self.infer_step_bytes
    }
}

/// The CPU network's scratch kept between steps: each of rayon's threads keeps the largest
/// `per_thread` block buffer it has used, and every thread that calls the matrix library
/// (rayon's and the calling one) keeps gemm's packing buffer, sized to the L2 cache.
fn cpu_thread_scratch(per_thread: usize) -> u64 {
    per_thread as u64 * rayon::current_num_threads() as u64 + gemm_scratch()
}

fn gemm_scratch() -> u64 {
    (l2_bytes() * (rayon::current_num_threads() + 1)) as u64
}

/// The L2 cache's size, read from Linux's sysfs as gemm-common's `CACHE_INFO` reads it; 0
/// where it cannot be read (the prediction then leaves gemm's buffers out).
fn l2_bytes() -> usize {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        if read(p.join("level")).trim() != "2" || read(p.join("type")).trim() == "Instruction" {
            continue;
        }
        let size = read(p.join("size"));
        let size = size.trim();
        let (digits, unit) = size.split_at(
            size.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(size.len()),
        );
        let scale = match unit {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            _ => return 0,
        };
        return digits.parse::<usize>().map_or(0, |d| d * scale);
    }
    0
}

/// A spec lowered once for the predictions at every batch size: the plans each engine runs
/// and the parameters' lengths.
pub struct Planner {
    /// Each parameter's name, length and whether it trains, in the plan's order.
    names: Vec<(String, usize, bool)>,
    lens: Vec<usize>,
    trainable: usize,
    cpu_train: Plan,
    cpu_infer: Plan,
    cpu_infer_lens: Vec<usize>,
    /// The kernel network's plans: the spec's own, and folded for inference, each through
    /// its passes; and both without them (`SE_COMPILE_FUSE=0`, `kernelnet::runs_its_passes`).
    kn_train: Plan,
    kn_infer: Plan,
    kn_plain: (Plan, Plan),
    kn_infer_lens: Vec<usize>,
    flags: Vec<bool>,
    kn_infer_flags: Vec<bool>,
    /// The spec's graph and each layer's trainable parameters (PyTorch's model.py).
    graph: crate::ir::Graph,
    node_params: std::collections::HashMap<usize, usize>,
}

impl Planner {
    pub fn new(vg: &ValidGraph) -> Planner {
        let lowered = plan::lower(vg, 1);
        let lens: Vec<usize> = lowered.params.iter().map(|p| p.values.len()).collect();
        let trainable: usize = lowered
            .params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.values.len())
            .sum();
        let flags: Vec<bool> = lowered.params.iter().map(|p| p.trainable).collect();
        let names = lowered
            .params
            .iter()
            .map(|p| (p.name.clone(), p.values.len(), p.trainable))
            .collect();
        // The CPU network places its passes on the plan (`device::Opened::place`) and runs
        // inference on the plan `commands::shared::lowered_for_inference` makes.
        let cpu_train = lowered.plan.for_cpu_network();
        let mut infer_params = lowered.params;
        let (folded, _) = lowered.plan.folded_for_inference(&mut infer_params);
        let cpu_infer = folded.with_fused_activations().0.for_cpu_network();
        let kn_infer_flags = infer_params.iter().map(|p| p.trainable).collect();
        let node_params = vg
            .graph()
            .ids()
            .map(|id| (id.index(), vg.stats(id).params.trainable as usize))
            .filter(|(_, p)| *p > 0)
            .collect();
        // The kernel network places its own passes (`Plan::for_kernel_network`).
        let (kn_train, kn_infer) = (
            lowered.plan.for_kernel_network(),
            folded.for_kernel_network(),
        );
        Planner {
            names,
            kn_train,
            kn_infer,
            kn_plain: (lowered.plan, folded),
            kn_infer_lens: infer_params.iter().map(|p| p.values.len()).collect(),
            flags,
            kn_infer_flags,
            graph: vg.graph().clone(),
            node_params,
            lens,
            trainable,
            cpu_train,
            cpu_infer,
            cpu_infer_lens: infer_params.iter().map(|p| p.values.len()).collect(),
        }
    }

    /// Predicts `engine`'s memory at batch `batch` with `optimizer`, in float32.
    pub fn predict(&self, batch: usize, optimizer: Optimizer, engine: Engine) -> Prediction {
        self.predict_in(batch, optimizer, engine, Precision::Fp32)
            .expect("every engine trains in float32")
    }

    /// Predicts `engine`'s memory at batch `batch` with `optimizer` in `precision`; an
    /// engine that cannot run in that precision gives an error saying so.
    pub fn predict_in(
        &self,
        batch: usize,
        optimizer: Optimizer,
        engine: Engine,
        precision: Precision,
    ) -> Result<Prediction, String> {
        if precision == Precision::Bf16 && engine != Engine::Pytorch {
            return Err(format!(
                "--precision bf16: the {} engine trains in float32 only (bf16 on the GPU is the work of the GPU speed issue); bf16 is modelled for --engine pytorch (autocast)",
                engine.name()
            ));
        }
        let mut p = self.predict_engine(batch, optimizer, engine, precision);
        p.precision = precision;
        Ok(p)
    }

    fn predict_engine(
        &self,
        batch: usize,
        optimizer: Optimizer,
        engine: Engine,
        precision: Precision,
    ) -> Prediction {
        let f = std::mem::size_of::<f32>() as u64;
        let values = self.lens.iter().sum::<usize>() as u64 * f;
        match engine {
            Engine::Cpu => {
                let train = cpu::simulate(&self.cpu_train, &self.lens, batch, true);
                let infer = cpu::simulate(&self.cpu_infer, &self.cpu_infer_lens, batch, false);
                // `model::Optim` makes two moment buffers per trainable parameter, for SGD too.
                let moments = match optimizer {
                    Optimizer::Adam | Optimizer::Sgd => 2,
                };
                let infer_values = self.cpu_infer_lens.iter().sum::<usize>() as u64 * f;
                let scratch = cpu_thread_scratch(train.per_thread.max(infer.per_thread));
                let p = Persistent {
                    param_bytes: 2 * values,
                    param_values_bytes: values,
                    optimizer_bytes: moments * self.trainable as u64 * f,
                    param_grad_bytes: self.trainable as u64 * f,
                    kept_grad_bytes: 0,
                    thread_scratch_bytes: scratch,
                    library_scratch_bytes: gemm_scratch(),
                    infer_param_bytes: 2 * infer_values,
                    copies: 2,
                    moments,
                };
                Prediction::of(engine, batch, p, train, infer, &self.names)
            }
            // As the network reads it: SE_COMPILE_CONV=gemm sends no convolution to the library.
            Engine::Cuda => match crate::lower::kernelnet::backend::Policy::from_env() {
                Ok(None) => self.kernelnet(batch, optimizer, &|_| false),
                // `memory` refuses cudnn and values it does not know.
                Ok(Some(_)) | Err(_) => self.kernelnet(batch, optimizer, &kernelnet::auto_lib),
            },
            Engine::Pytorch => {
                let train = torch::simulate(&self.graph, &self.node_params, batch, true, precision);
                let infer =
                    torch::simulate(&self.graph, &self.node_params, batch, false, precision);
                let trainable = self.trainable as u64 * f;
                // torch.optim.Adam keeps exp_avg and exp_avg_sq, SGD with momentum one buffer.
                let moments = match optimizer {
                    Optimizer::Adam => 2,
                    Optimizer::Sgd => 1,
                };
                let p = Persistent {
                    param_bytes: values,
                    param_values_bytes: values,
                    optimizer_bytes: moments * trainable,
                    param_grad_bytes: trainable,
                    kept_grad_bytes: trainable,
                    thread_scratch_bytes: 0,
                    library_scratch_bytes: 0,
                    infer_param_bytes: values,
                    copies: 1,
                    moments,
                };
                Prediction::of(engine, batch, p, train, infer, &self.names)
            }
        }
    }

    /// The kernel network's prediction with the convolutions `lib` sends to the library:
    /// `--device cuda`'s policy (`kernelnet::auto_lib`), or none, as the network runs with host
    /// loops (`cpu-kernelnet`, the check without a GPU).
    pub fn kernelnet(
        &self,
        batch: usize,
        _optimizer: Optimizer,
        lib: &dyn Fn(&crate::lower::kernels::ConvShape) -> bool,
    ) -> Prediction {
        let f = std::mem::size_of::<f32>() as u64;
        let values = self.lens.iter().sum::<usize>() as u64 * f;
        // The plans the network runs (`runs_its_passes`; `memory` refuses a bad setting).
        let (kn_train, kn_infer) = match crate::lower::kernelnet::runs_its_passes() {
            Ok(false) => (&self.kn_plain.0, &self.kn_plain.1),
            Ok(true) | Err(_) => (&self.kn_train, &self.kn_infer),
        };
        let train = kernelnet::simulate(kn_train, &self.lens, &self.flags, batch, true, lib);
        let infer = kernelnet::simulate(
            kn_infer,
            &self.kn_infer_lens,
            &self.kn_infer_flags,
            batch,
            false,
            lib,
        );
        let trainable = self.trainable as u64 * f;
        // Two moment buffers per trainable parameter, for SGD too (`Moments`).
        let p = Persistent {
            param_bytes: values,
            param_values_bytes: values,
            optimizer_bytes: 2 * trainable,
            param_grad_bytes: trainable,
            kept_grad_bytes: 0,
            thread_scratch_bytes: 0,
            library_scratch_bytes: 0,
            infer_param_bytes: self.kn_infer_lens.iter().sum::<usize>() as u64 * f,
            copies: 1,
            moments: 2,
        };
        Prediction::of(Engine::Cuda, batch, p, train, infer, &self.names)
    }

    /// The largest batch whose predicted training peak fits in `budget` bytes, if batch 1
    /// fits. Every term grows with the batch, so the search is a bisection over predictions.
    pub fn max_batch(&self, optimizer: Optimizer, engine: Engine, budget: u64) -> Option<usize> {
        self.max_batch_in(optimizer, engine, Precision::Fp32, budget)
    }

    /// `max_batch` in `precision` (an engine that cannot run in it fits nothing).
    pub fn max_batch_in(
        &self,
        optimizer: Optimizer,
        engine: Engine,
        precision: Precision,
        budget: u64,
    ) -> Option<usize> {
        let fits = |b: usize| {
            self.predict_in(b, optimizer, engine, precision)
                .is_ok_and(|p| p.peak_train_bytes() <= budget)
        };
        if !fits(1) {
            return None;
        }
        let (mut lo, mut hi) = (1, 2);
        while fits(hi) {
            lo = hi;
            hi *= 2;
            if hi > 1 << 24 {
                return Some(lo);
            }
        }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }
}
