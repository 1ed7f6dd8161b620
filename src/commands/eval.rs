//! `se-compile eval`: loss, accuracy and the confusion matrix of saved weights.

use super::shared::{bundled_data, device_of, load_for_inference, Ctx, EXIT_INVALID};
use se_compile::train::data::{Dataset, Split};
use se_compile::ValidGraph;
use std::path::PathBuf;

/// Loss, accuracy and confusion matrix of saved weights on DIR/test (or DIR/train).
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  se-compile eval models/se_resnet_mini.yaml --weights runs/se_resnet_mini/best.safetensors --data data/fashion-mnist-mini"
)]
pub struct EvalArgs {
    pub spec: String,
    #[arg(long)]
    pub weights: String,
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Keep decoded images in memory when the whole decoded dataset fits this many MB
    /// (0: always stream from disk). Default: a quarter of the available memory, at most 4096.
    #[arg(long, value_name = "MB")]
    pub cache_mb: Option<u64>,
}

/// The data `eval` (and `analyze`) read: `--data DIR`, or the bundled subset, listed at the
/// spec's input size with no validation hold-out. An unreadable folder is an invalid input.
pub(crate) fn eval_data(vg: &ValidGraph, data: Option<String>) -> Result<(PathBuf, Dataset), u8> {
    let data_dir = data.map(PathBuf::from).unwrap_or_else(bundled_data);
    let shape = vg.graph().input_shape();
    let ds =
        Dataset::load_any(&data_dir.display().to_string(), None, shape, 0.0, 0).map_err(|e| {
            eprintln!("error: {e}");
            EXIT_INVALID
        })?;
    for w in &ds.warnings {
        eprintln!("warning: {w}");
    }
    Ok((data_dir, ds))
}

/// The split `eval` scores, with its folder name: DIR/test, or DIR/train without one.
pub(crate) fn eval_split(ds: &Dataset) -> (&'static str, &Split) {
    if ds.val.is_empty() {
        ("train", &ds.train)
    } else {
        ("test", &ds.val)
    }
}

pub fn run(cx: &Ctx, a: EvalArgs) -> Result<(), u8> {
    let EvalArgs {
        spec,
        weights,
        data,
        batch_size,
        device,
        cache_mb,
    } = a;
    let dev = device_of(&device)?;
    let (_, _, vg) = cx.build_full(&spec, None)?;
    let mut net = load_for_inference(&vg, &weights, dev)?;
    let (_, mut ds) = eval_data(&vg, data)?;
    // On stderr: eval's standard output stays the result (its first line the score).
    eprintln!(
        "{}",
        ds.cache(cache_mb.unwrap_or_else(se_compile::train::data::default_cache_mb))
    );
    let (_, split) = eval_split(&ds);
    let k = ds.classes.len();
    let (loss, acc, conf) =
        se_compile::train::run::evaluate(net.as_mut(), &ds, split, batch_size, k);
    println!(
        "{} images, {} classes: loss {:.4}, accuracy {:.4}",
        split.len(),
        k,
        loss,
        acc
    );
    println!("confusion matrix (rows: true class, columns: predicted):");
    let w = ds.classes.iter().map(|c| c.len()).max().unwrap_or(4).max(5);
    print!("{:>w$}", "");
    for j in 0..k {
        print!(" {:>5}", j);
    }
    println!();
    for (i, row) in conf.iter().enumerate() {
        print!("{:>w$}", ds.classes[i]);
        for v in row {
            print!(" {:>5}", v);
        }
        println!();
    }
    Ok(())
}
