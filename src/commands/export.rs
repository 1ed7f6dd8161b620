//! `se-compile export` and `se-compile import-weights`.

use crate::{load_weights, Ctx, EXIT_INVALID, EXIT_USAGE};
use se_compile::export::{self, onnx, pytorch, Weights};
use se_compile::lower::device::DeviceSpec;
use se_compile::lower::plan;
use se_compile::train::checkpoint::write_atomic;
use se_compile::train::config::TrainConfig;
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

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MapArg {
    Auto,
    Timm,
    Keras,
}

#[derive(clap::Args)]
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

fn fail(msg: impl std::fmt::Display) -> u8 {
    eprintln!("error: {msg}");
    EXIT_INVALID
}

/// The directory a new file or folder at `path` goes into must exist.
fn check_parent(path: &Path) -> Result<(), u8> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => return Ok(()),
    };
    if !parent.is_dir() {
        return Err(fail(format!(
            "{}: the directory {} does not exist; create it first or choose another -o",
            path.display(),
            parent.display()
        )));
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), u8> {
    write_atomic(path, bytes).map_err(|e| fail(format!("{}: cannot write: {e}", path.display())))
}

pub fn run_export(cx: &Ctx, a: ExportArgs) -> Result<(), u8> {
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

pub fn run_import(cx: &Ctx, spec: &str, from: &str, map: MapArg, output: &str) -> Result<(), u8> {
    let out = PathBuf::from(output);
    check_parent(&out)?;
    let (src, _, vg) = cx.build_full(spec, None)?;
    let from_path = Path::new(from);
    if !from_path.is_file() {
        eprintln!("error: {from}: no such file");
        return Err(EXIT_USAGE);
    }
    let bytes = std::fs::read(from_path).map_err(|e| fail(format!("{from}: cannot read: {e}")))?;
    let map = match map {
        MapArg::Auto => export::import::Mapping::Auto,
        MapArg::Timm => export::import::Mapping::Timm,
        MapArg::Keras => export::import::Mapping::Keras,
    };
    let lowered = plan::lower(&vg, 0);
    let imported =
        export::import::import(&vg, &src, &lowered.params, &bytes, from, map).map_err(fail)?;
    let names = lowered.params.into_iter().map(|p| p.name);
    let meta = [
        ("model".to_string(), vg.graph().model.clone()),
        ("imported_from".to_string(), from.to_string()),
        ("mapping".to_string(), imported.mapping.to_string()),
    ]
    .into_iter()
    .collect();
    se_compile::train::checkpoint::save_params(&out, names.zip(imported.values), &[], meta)
        .map_err(fail)?;
    eprintln!(
        "wrote {} ({} tensors from {from}, {} mapping)",
        out.display(),
        imported.count,
        imported.mapping
    );
    Ok(())
}
