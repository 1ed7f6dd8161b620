//! `se-compile bench`: training and inference speed (images/s) on random data, one process per
//! measurement if wanted (`--phase`), as bench/compare.sh runs it next to PyTorch and Keras.

use super::shared::{device_of, lowered_for_inference, on_device, Ctx};
use se_compile::lower::device::DeviceSpec;
use se_compile::lower::layers::Net;
use se_compile::lower::model::Model;
use se_compile::report::summary::timm_round;
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Both,
    Train,
    Infer,
}

/// How `bench` prints its result.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    /// Lines for a person.
    Text,
    /// One JSON object with timm `benchmark.py`'s field names (as its `--results-format json`).
    Json,
    /// A header and one row with timm `benchmark.py`'s field names (as its results CSVs).
    Csv,
}

/// Train and inference speed (images/s) on random data.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  se-compile bench models/se_resnet50.yaml --input 64 --batch-size 8 --steps 5"
)]
pub struct BenchArgs {
    pub spec: String,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Override the input height and width (e.g. 64 for a 64x64 SE-ResNet-50).
    #[arg(long)]
    pub input: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// What to time: Adam training steps, inference batches, or both.
    #[arg(long, value_enum, default_value = "both")]
    pub phase: Phase,
    /// `json` and `csv` name the fields as timm's `benchmark.py` does (`infer_samples_per_sec`,
    /// `train_step_time`, `param_count` in millions, ...), so results line up with timm's
    /// results CSVs; the context lines then go to standard error.
    #[arg(long, value_enum, default_value = "text")]
    pub format: BenchFormat,
}

pub fn run(cx: &Ctx, a: BenchArgs) -> Result<(), u8> {
    let dev = device_of(&a.device)?;
    let (_, _, vg) = cx.build_full(&a.spec, a.input.map(|i| (i, i)))?;
    let net = Net::new(&vg, 1);
    // Only the networks the phase times are placed on the device. Inference runs as eval and
    // predict do (BatchNorms folded, activations fused on the CPU).
    let mut infer = match a.phase {
        Phase::Train => None,
        _ => Some(on_device(lowered_for_inference(&net, dev), dev)?),
    };
    let mut train = match a.phase {
        Phase::Infer => None,
        _ => Some(on_device(net, dev)?),
    };
    let s = vg.graph().input_shape();
    let on = match dev {
        DeviceSpec::Cpu => format!("cpu, {} threads", rayon::current_num_threads()),
        // Both networks are on the same device; every phase places at least one.
        _ => train
            .as_ref()
            .or(infer.as_ref())
            .map(|m| m.device_name())
            .unwrap_or_default(),
    };
    // In json and csv, standard output holds the result alone; the context goes to stderr.
    let text = a.format == BenchFormat::Text;
    let say = |line: String| {
        if text {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    say(format!(
        "{} at {}x{}x{}, batch {}, {} steps, {on}",
        vg.graph().model,
        s[0],
        s[1],
        s[2],
        a.batch_size,
        a.steps,
    ));
    let batch = a.batch_size.max(1);
    let r = se_compile::train::run::bench(
        train.as_mut().map(|m| &mut **m as &mut dyn Model),
        infer.as_mut().map(|m| &mut **m as &mut dyn Model),
        batch,
        a.steps.max(1),
        1e-4,
    );
    if let Some((img_s, ms)) = r.train {
        say(format!("train:     {img_s:.1} images/s ({ms:.1} ms/step)"));
    }
    if let Some((img_s, ms)) = r.infer {
        say(format!("inference: {img_s:.1} images/s ({ms:.1} ms/batch)"));
    }
    let peak = train
        .as_ref()
        .or(infer.as_ref())
        .and_then(|m| m.memory_peak());
    if let Some((used, reserved)) = peak {
        let gb = |b: u64| b as f64 / 1e9;
        say(format!(
            "device memory peak: {:.2} GB in use, {:.2} GB reserved (the GPU's memory pool, whole run; cuDNN's algorithm search allocates outside it)",
            gb(used),
            gb(reserved)
        ));
    }
    if let Some(p) = train.as_ref().and_then(|m| m.profile_report()) {
        say(format!(
            "training, time per phase and layer kind, over all bench steps (SE_COMPILE_PROFILE=1):\n{p}"
        ));
    }
    if let Some(p) = infer.as_ref().and_then(|m| m.profile_report()) {
        say(format!(
            "inference (lowered for inference), time per phase and layer kind:\n{p}"
        ));
    }
    if !text {
        let totals = vg.totals();
        let fields = timm_fields(
            &vg.graph().model,
            batch,
            s[1],
            r.infer,
            r.train,
            totals.macs,
            totals.params.trainable,
        );
        match a.format {
            BenchFormat::Csv => print!("{}", csv(&fields)),
            _ => print!("{}", json(&fields)),
        }
    }
    Ok(())
}

/// The result as timm's `benchmark.py` builds it (`benchmark()`, timm `aa4b5850`), in its order:
/// `model`; per phase `{infer,train}_samples_per_sec` (`round(samples / elapsed, 2)`),
/// `_step_time` (ms per step, `round(.., 3)`), `_batch_size`, `_img_size` (the input width);
/// `infer_gmacs` (MACs at batch 1 in G, `round(.., 2)`: timm gives it when fvcore or deepspeed is
/// installed); last `param_count` (`sum(p.numel() for p in model.parameters())` in millions,
/// `round(.., 2)`: the trainable parameters, as BatchNorm's moving statistics are buffers there).
fn timm_fields(
    model: &str,
    batch: usize,
    width: usize,
    infer: Option<(f64, f64)>,
    train: Option<(f64, f64)>,
    macs: u64,
    params: u64,
) -> Vec<(String, Value)> {
    let mut f: Vec<(String, Value)> = vec![("model".into(), json!(model))];
    for (prefix, r) in [("infer", infer), ("train", train)] {
        let Some((img_s, ms)) = r else { continue };
        f.push((
            format!("{prefix}_samples_per_sec"),
            json!(timm_round(img_s, 2)),
        ));
        f.push((format!("{prefix}_step_time"), json!(timm_round(ms, 3))));
        f.push((format!("{prefix}_batch_size"), json!(batch)));
        f.push((format!("{prefix}_img_size"), json!(width)));
        if prefix == "infer" {
            f.push((
                "infer_gmacs".into(),
                json!(timm_round(macs as f64 / 1e9, 2)),
            ));
        }
    }
    f.push((
        "param_count".into(),
        json!(timm_round(params as f64 / 1e6, 2)),
    ));
    f
}

/// One JSON object in the fields' order, indented by 4 as timm's `json.dump(.., indent=4)`.
fn json(fields: &[(String, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("    {}: {v}", Value::from(k.as_str())))
        .collect();
    format!("{{\n{}\n}}\n", body.join(",\n"))
}

/// A header and one row, as Python's `csv.DictWriter` writes them (a field with a comma, quote
/// or line break is quoted, its quotes doubled).
fn csv(fields: &[(String, Value)]) -> String {
    let cell = |s: String| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let head: Vec<String> = fields.iter().map(|(k, _)| cell(k.clone())).collect();
    let row: Vec<String> = fields
        .iter()
        .map(|(_, v)| match v {
            Value::String(s) => cell(s.clone()),
            v => v.to_string(),
        })
        .collect();
    format!("{}\n{}\n", head.join(","), row.join(","))
}
