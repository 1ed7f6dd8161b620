//! `se-compile predict`: the top-k classes of images, decoded in batches.

use super::shared::{class_names, device_of, load_for_inference, Ctx, EXIT_INVALID};

/// Top-k classes with probabilities for images.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  se-compile predict models/se_resnet_mini.yaml --weights runs/se_resnet_mini/best.safetensors data/fashion-mnist-mini/test/7_sneaker/*.png"
)]
pub struct PredictArgs {
    pub spec: String,
    #[arg(long)]
    pub weights: String,
    #[arg(required = true)]
    pub images: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// text (top-k lines), or json: every image's full output at full precision.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub format: String,
    /// Override the input height and width (as `export --input`).
    #[arg(long)]
    pub input: Option<usize>,
    /// Images decoded and run per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

pub fn run(cx: &Ctx, a: PredictArgs) -> Result<(), u8> {
    let PredictArgs {
        spec,
        weights,
        images,
        top_k,
        device,
        format,
        input,
        batch_size,
    } = a;
    let dev = device_of(&device)?;
    let (_, _, vg) = cx.build_full(&spec, input.map(|i| (i, i)))?;
    let mut json_rows = vec![];
    let mut net = load_for_inference(&vg, &weights, dev)?;
    let classes = class_names(&weights);
    let shape = vg.graph().input_shape().clone();
    let mut worst = 0;
    // Decoded and run in batches, on the training loader's worker thread.
    let ds = se_compile::train::data::Dataset::of_files(
        images.iter().map(std::path::PathBuf::from).collect(),
        shape[0],
        shape[1],
        shape[2],
    );
    let idx: Vec<usize> = (0..images.len()).collect();
    let chunks: Vec<&[usize]> = idx.chunks(batch_size.max(1)).collect();
    let _ = se_compile::train::data::prefetch(
        chunks.len(),
        |k| ds.batch(&ds.train, chunks[k], None),
        |_, b| {
            for (i, e) in &b.failed {
                eprintln!("error: {}: cannot decode: {e}", images[*i]);
                worst = EXIT_INVALID;
            }
            if b.is_empty() {
                return Ok(());
            }
            let r = net.infer(se_compile::lower::model::Batch {
                shape: vec![b.len(), shape[0], shape[1], shape[2]],
                x: b.x,
                labels: &b.labels,
            });
            for (&i, probs) in b.index.iter().zip(&r.probs) {
                let img = &images[i];
                let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                let top: Vec<String> = ranked
                    .iter()
                    .take(top_k.max(1))
                    .map(|(i, p)| {
                        let name = classes.get(*i).cloned().unwrap_or_else(|| i.to_string());
                        format!("{name} {p:.4}")
                    })
                    .collect();
                if format == "json" {
                    json_rows.push(serde_json::json!({
                        "image": img,
                        "top": ranked.iter().take(top_k.max(1)).map(|(i, p)| serde_json::json!({
                            "class": classes.get(*i).cloned().unwrap_or_else(|| i.to_string()),
                            "index": i,
                            "probability": p,
                        })).collect::<Vec<_>>(),
                        "probabilities": probs,
                    }));
                } else {
                    println!("{img}: {}", top.join(", "));
                }
            }
            Ok(())
        },
    );
    if format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_rows).expect("plain JSON")
        );
    }
    if worst != 0 {
        return Err(worst);
    }
    Ok(())
}
