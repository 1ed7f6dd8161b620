//! `se-compile export`: ONNX, or a PyTorch package (model.py, weights, train.py).

use super::shared::{check_parent, fail, load_weights, Ctx, EXIT_INVALID, EXIT_USAGE};
use se_compile::export::{onnx, pytorch, Weights};
use se_compile::lower::device::DeviceSpec;
use se_compile::lower::plan;
use se_compile::spec::recipe::TrainConfig;
use se_compile::util::atomic::write_atomic;
use se_compile::{SourceFile, ValidGraph};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Onnx,
    Pytorch,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    Nhwc,
    Nchw,
}

/// Export the model: ONNX (one .onnx file) or PyTorch (model.py + weights.safetensors, and train.py for torchrun).
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  se-compile export se_resnet50 --format onnx -o se_resnet50.onnx\n  se-compile export models/se_resnet_mini.yaml --format onnx --weights runs/se_resnet_mini/best.safetensors -o mini.onnx --batch 1\n  se-compile export models/se_resnet_mini.yaml --format pytorch --weights runs/se_resnet_mini/best.safetensors -o mini_torch\n\nWithout --weights the network's seeded initial values (the recipe's seed) are exported.\nONNX input is NHWC float pixels / 255, as se-compile feeds them (--input-layout nchw for NCHW)."
)]
pub struct ExportArgs {
    pub spec: String,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The .onnx file, or the directory for --format pytorch.
    #[arg(short, long)]
    pub output: String,
    /// A se-compile checkpoint (`best.safetensors` of a run).
    #[arg(long)]
    pub weights: Option<String>,
    /// ONNX batch size: N, or `dynamic` (a symbolic `batch` axis).
    #[arg(long, default_value = "dynamic")]
    pub batch: String,
    /// ONNX input (and image output) layout.
    #[arg(long, value_enum, default_value = "nhwc")]
    pub input_layout: LayoutArg,
    /// Override the input height and width (e.g. 64 for a 64x64 SE-ResNet-50).
    #[arg(long)]
    pub input: Option<usize>,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), u8> {
    write_atomic(path, bytes).map_err(|e| fail(format!("{}: cannot write: {e}", path.display())))
}

pub fn run(cx: &Ctx, a: ExportArgs) -> Result<(), u8> {
    let batch = match a.batch.as_str() {
        "dynamic" => onnx::Batch::Dynamic,
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => onnx::Batch::Fixed(n),
            _ => {
                eprintln!("error: --batch takes a positive integer or `dynamic`, not `{n}`");
                return Err(EXIT_USAGE);
            }
        },
    };
    let out = PathBuf::from(&a.output);
    check_parent(&out)?;
    let (src, spec, vg) = cx.build_full(&a.spec, a.input.map(|i| (i, i)))?;
    let t0 = std::time::Instant::now();
    let w = match &a.weights {
        Some(w) => Weights::from_model(load_weights(&vg, w, DeviceSpec::Cpu)?.as_ref()),
        None => {
            // The values `train` starts from: the recipe's seed.
            let seed = TrainConfig::from_spec(&spec).map(|c| c.seed).unwrap_or(0);
            Weights::from_params(&plan::lower(&vg, seed).params)
        }
    };
    match a.format {
        ExportFormat::Onnx => {
            let opts = onnx::Options {
                batch,
                input_layout: match a.input_layout {
                    LayoutArg::Nhwc => onnx::Layout::Spec,
                    LayoutArg::Nchw => onnx::Layout::Nchw,
                },
            };
            let model = onnx::export(&vg, &src, &w, &opts).map_err(fail)?;
            let bytes = onnx::to_bytes(&model);
            write(&out, &bytes)?;
            eprintln!(
                "wrote {} ({} nodes, {} bytes, {:.2} s)",
                out.display(),
                model.graph.node.len(),
                bytes.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        ExportFormat::Pytorch => {
            let cfg = TrainConfig::from_spec(&spec).map_err(|d| {
                eprint!("{}", se_compile::diag::render(&d, &src, cx.style));
                EXIT_INVALID
            })?;
            let files = write_pytorch_dir(&vg, &src, &w, &cfg, &out)?;
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            eprintln!(
                "wrote {} ({}; {:.2} s)",
                out.display(),
                names.join(", "),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Writes the PyTorch export (`model.py`, the weights, names.json, train.py, recipe.json, the
/// spec) into `dir`, which may exist; returns the files. Also what `train --engine torchrun` runs.
pub fn write_pytorch_dir(
    vg: &ValidGraph,
    src: &SourceFile,
    w: &Weights,
    cfg: &TrainConfig,
    dir: &Path,
) -> Result<Vec<(String, Vec<u8>)>, u8> {
    let mut files = pytorch::export(vg, src, w).map_err(fail)?;
    files.extend(pytorch::training_files(vg, src, cfg));
    if dir.exists() && !dir.is_dir() {
        return Err(fail(format!(
            "{}: exists and is not a directory; --format pytorch writes a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("{}: cannot create: {e}", dir.display())))?;
    for (name, bytes) in &files {
        write(&dir.join(name), bytes)?;
    }
    Ok(files)
}
