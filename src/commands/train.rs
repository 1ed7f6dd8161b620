//! `se-compile train`: the recipe from the spec and the flags, then se-compile's own training loop
//! or, with `--engine torchrun`, PyTorch DDP (`torchrun.rs`).

use super::recipe::RecipeFlags;
use super::shared::{
    bundled_data, device_of, fresh_run_dir, on_device, Ctx, EXIT_INVALID, EXIT_USAGE,
};
use super::torchrun;
use se_compile::diag::render;
use se_compile::lower::device::DeviceSpec;
use se_compile::lower::layers::Net;

/// Train from image folders (Keras flow_from_directory layout), as the seed's model.fit.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  se-compile train models/se_resnet_mini.yaml            (bundled Fashion-MNIST subset)\n  se-compile train models/se_resnet_mini.yaml --data /data/fmnist --epochs 15 --out runs/full\n  se-compile train models/se_resnet_mini.yaml --resume runs/full --epochs 20\n\nRUN_DIR receives history.csv, history.json, accuracy.png, loss.png, last.safetensors,\nbest.safetensors, the spec, config.json and tb/ (TensorBoard event files: tensorboard --logdir\nRUN_DIR/tb). Every key of the spec's `train:` section can be overridden here."
)]
pub struct TrainArgs {
    pub spec: String,
    /// DIR with train/<class>/ and test/<class>/ (default: the bundled data/fashion-mnist-mini),
    /// or WebDataset shards: a folder of .tar files or a pattern such as
    /// 'shards/train-{000000..000099}.tar' (KEY.png or KEY.jpg plus KEY.cls in each sample).
    #[arg(long)]
    pub data: Option<String>,
    /// Validation shards (folder or pattern) when --data is shards. Without it, val_split of
    /// the shard list is held out.
    #[arg(long, value_name = "SHARDS")]
    pub val_data: Option<String>,
    #[command(flatten)]
    pub recipe: RecipeFlags,
    #[command(flatten)]
    pub launch: torchrun::LaunchFlags,
    /// Run directory (default: runs/<model>, or runs/<model>-N if that exists).
    #[arg(long)]
    pub out: Option<String>,
    /// Continue the run in RUN_DIR from its last epoch, optimizer state included.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<String>,
    /// cpu, or cuda[:N] in a build with `--features cuda` (the project's own CUDA kernels,
    /// cuBLAS and cuDNN; see docs, "GPU").
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Keep decoded images in memory when the whole decoded dataset fits this many MB
    /// (0: always stream from disk). Default: a quarter of the available memory, at most 4096.
    #[arg(long, value_name = "MB")]
    pub cache_mb: Option<u64>,
    /// Write no TensorBoard event files (RUN_DIR/tb/: scalars per step and epoch, weight
    /// histograms and SE excitations per epoch).
    #[arg(long)]
    pub no_tensorboard: bool,
}

pub fn run(cx: &Ctx, a: TrainArgs) -> Result<(), u8> {
    let TrainArgs {
        spec,
        data,
        val_data,
        recipe,
        launch,
        out,
        resume,
        device,
        cache_mb,
        no_tensorboard,
    } = a;
    let dev = device_of(&device)?;
    let (src, spec_ast, vg) = cx.build_full(&spec, None)?;
    let mut cfg = se_compile::spec::recipe::TrainConfig::from_spec(&spec_ast).map_err(|d| {
        eprint!("{}", render(&d, &src, cx.style));
        EXIT_INVALID
    })?;
    recipe.apply(&mut cfg);
    let out_dir = match (&resume, &out) {
        (Some(r), _) => std::path::PathBuf::from(r),
        (None, Some(o)) => {
            let p = std::path::PathBuf::from(o);
            if p.join("last.safetensors").exists() {
                eprintln!("error: {o} already holds a run; continue it with --resume {o}, or choose another --out");
                return Err(EXIT_USAGE);
            }
            p
        }
        (None, None) => fresh_run_dir(&vg.graph().model),
    };
    if launch.engine == torchrun::Engine::Torchrun {
        if device != "cpu" {
            eprintln!("error: --device is se-compile's engine; with --engine torchrun, train.py uses CUDA when torch sees a GPU");
            return Err(EXIT_USAGE);
        }
        return torchrun::run(torchrun::TorchRun {
            vg: &vg,
            src: &src,
            cfg: &cfg,
            data: data
                .map(std::path::PathBuf::from)
                .unwrap_or_else(bundled_data),
            val_data,
            out: out_dir,
            resume: resume.is_some(),
            tensorboard: !no_tensorboard,
            flags: &launch,
        });
    }
    // The device first: an unavailable GPU is reported before the data is read.
    let mut net = on_device(Net::new(&vg, cfg.seed), dev)?;
    if dev != DeviceSpec::Cpu {
        println!("Training on {}", net.device_name());
    }
    let data_dir = data
        .map(std::path::PathBuf::from)
        .unwrap_or_else(bundled_data);
    let shape = vg.graph().input_shape().clone();
    let mut ds = se_compile::train::data::Dataset::load_any(
        &data_dir.display().to_string(),
        val_data.as_deref(),
        &shape,
        cfg.val_split,
        cfg.seed,
    )
    .map_err(|e| {
        eprintln!("error: {e}");
        EXIT_INVALID
    })?;
    let model_classes = vg
        .graph()
        .node(vg.graph().output)
        .shape
        .last()
        .copied()
        .unwrap_or(0);
    if ds.classes.len() != model_classes {
        eprintln!(
            "error: {} has {} classes but the model's output has {} units; set `classes: {}` in the spec",
            data_dir.display(), ds.classes.len(), model_classes, ds.classes.len()
        );
        return Err(EXIT_INVALID);
    }
    for (p, why) in &ds.skipped {
        eprintln!("warning: skipped unreadable image {}: {why}", p.display());
    }
    for w in &ds.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "Found {} training and {} validation images in {} classes ({}), skipped {} unreadable",
        ds.train.len(),
        ds.val.len(),
        ds.classes.len(),
        data_dir.display(),
        ds.skipped.len()
    );
    println!(
        "{}",
        ds.cache(cache_mb.unwrap_or_else(se_compile::train::data::default_cache_mb))
    );
    let opts = se_compile::train::run::TrainOptions {
        spec_path: src.name.clone(),
        spec_text: src.text.clone(),
        data: data_dir,
        out: out_dir.clone(),
        resume: resume.is_some(),
        progress: se_compile::train::run::stderr_is_terminal(),
        tensorboard: !no_tensorboard,
        // A CPU copy of the network computes the excitations, whatever the device.
        excitation_net: (!no_tensorboard).then(|| Net::new(&vg, cfg.seed)),
    };
    let hist = se_compile::train::run::train(net.as_mut(), &ds, &cfg, opts).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_INVALID
    })?;
    if let Some(last) = hist.last() {
        println!(
            "run saved in {} (val_accuracy {:.4} after epoch {})",
            out_dir.display(),
            last.val_accuracy,
            last.epoch
        );
    }
    Ok(())
}
