//! `se-compile memory`: what a spec needs to train and to run, per layer and in total, and the
//! largest batch that fits a memory size (`lower::memory`'s predictions, `report::memory`'s
//! table).

use super::shared::{fail, Ctx, DepthArg, FormatArg, EXIT_USAGE};
use se_compile::lower::memory::{Engine, Planner, Precision};
use se_compile::report::memory::{render, Options};
use se_compile::spec::recipe::Optimizer;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Bf16,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    /// se-compile's CPU network.
    Cpu,
    /// se-compile's GPU kernel network (`--device cuda`, `SE_COMPILE_CONV=auto`).
    Cuda,
    /// The exported model.py under PyTorch's autograd, on the CPU (train.py's step).
    Pytorch,
}

/// Predict the memory a training step and an inference batch need, per layer and in total.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  se-compile memory models/se_resnet50.yaml --input 64 --batch 8\n  se-compile memory se_resnet50 --fit 16GiB --depth stage\n  se-compile memory models/se_resnet_mini.yaml --format json"
)]
pub struct MemoryArgs {
    /// A spec file or a model name from models/.
    pub spec: String,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Override the input height and width.
    #[arg(long)]
    pub input: Option<usize>,
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerArg,
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
    #[arg(long, value_enum, default_value = "cpu")]
    pub engine: EngineArg,
    /// A memory size (e.g. 80GiB, 512MiB, 16GB): the largest training batch that fits it.
    #[arg(long, value_name = "SIZE")]
    pub fit: Option<String>,
    #[arg(long, value_enum, default_value = "layer")]
    pub depth: DepthArg,
    #[arg(long, value_enum, default_value = "text")]
    pub format: FormatArg,
    /// Also list every parameter tensor: its values, the copies the engine holds, its
    /// gradient and its optimizer moments.
    #[arg(long)]
    pub params: bool,
}

/// "80GiB" → 80·2³⁰ bytes; GB, MB, KB are powers of ten, a bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => {
            return Err(format!(
                "--fit {s}: unknown unit `{u}`; use e.g. 80GiB, 512MiB or 16GB"
            ))
        }
    };
    match num.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok((v * scale) as u64),
        _ => Err(format!("--fit {s}: not a positive size; use e.g. 80GiB")),
    }
}

pub fn run(cx: &Ctx, a: MemoryArgs) -> Result<(), u8> {
    let engine = match a.engine {
        EngineArg::Cpu => Engine::Cpu,
        EngineArg::Pytorch => Engine::Pytorch,
        EngineArg::Cuda => Engine::Cuda,
    };
    let precision = match a.precision {
        PrecisionArg::Fp32 => Precision::Fp32,
        PrecisionArg::Bf16 => Precision::Bf16,
    };
    if a.batch == 0 {
        eprintln!("error: --batch 0: a batch holds at least one image");
        return Err(EXIT_USAGE);
    }
    let budget = match a.fit.as_deref().map(parse_size).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(EXIT_USAGE);
        }
    };
    let (_, _, vg) = cx.build_full(&a.spec, a.input.map(|i| (i, i)))?;
    let optimizer = match a.optimizer {
        OptimizerArg::Adam => Optimizer::Adam,
        OptimizerArg::Sgd => Optimizer::Sgd,
    };
    // The kernel network reads SE_COMPILE_CONV as it would run: auto (the default) or gemm.
    if engine == Engine::Cuda {
        use se_compile::lower::kernelnet::backend::Policy;
        match Policy::from_env() {
            Ok(None | Some(Policy::Auto)) => {}
            Ok(Some(Policy::All)) => {
                eprintln!("error: SE_COMPILE_CONV=cudnn: memory models the kernel network under auto (the default) and gemm; unset it or set one of those");
                return Err(EXIT_USAGE);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Err(EXIT_USAGE);
            }
        }
        if let Err(e) = se_compile::lower::kernelnet::runs_its_passes() {
            eprintln!("error: {e}");
            return Err(EXIT_USAGE);
        }
    }
    let planner = Planner::new(&vg);
    let p = match planner.predict_in(a.batch, optimizer, engine, precision) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(EXIT_USAGE);
        }
    };
    let s = vg.graph().input_shape();
    if s.len() != 3 {
        return Err(fail(format!(
            "{}: memory needs an image input (H, W, C), this spec's is {s:?}",
            a.spec
        )));
    }
    let opts = Options {
        depth: a.depth.into(),
        format: a.format.into(),
        fit: budget.map(|b| (b, planner.max_batch_in(optimizer, engine, precision, b))),
        optimizer: match optimizer {
            Optimizer::Adam => "Adam".into(),
            Optimizer::Sgd => "SGD".into(),
        },
        input: [s[0], s[1], s[2]],
        params: a.params,
    };
    print!("{}", render(&vg, &p, &opts));
    Ok(())
}
