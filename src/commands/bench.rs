//! `se-compile bench`: training and inference speed (images/s) on random data, one process per
//! measurement if wanted (`--phase`), as bench/compare.sh runs it next to PyTorch and Keras.

use super::shared::{device_of, lowered_for_inference, on_device, Ctx};
use se_compile::lower::device::DeviceSpec;
use se_compile::lower::layers::Net;
use se_compile::lower::model::Model;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Both,
    Train,
    Infer,
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
    println!(
        "{} at {}x{}x{}, batch {}, {} steps, {on}",
        vg.graph().model,
        s[0],
        s[1],
        s[2],
        a.batch_size,
        a.steps,
    );
    let r = se_compile::train::run::bench(
        train.as_mut().map(|m| &mut **m as &mut dyn Model),
        infer.as_mut().map(|m| &mut **m as &mut dyn Model),
        a.batch_size.max(1),
        a.steps.max(1),
        1e-4,
    );
    if let Some((img_s, ms)) = r.train {
        println!("train:     {img_s:.1} images/s ({ms:.1} ms/step)");
    }
    if let Some((img_s, ms)) = r.infer {
        println!("inference: {img_s:.1} images/s ({ms:.1} ms/batch)");
    }
    let peak = train
        .as_ref()
        .or(infer.as_ref())
        .and_then(|m| m.memory_peak());
    if let Some((used, reserved)) = peak {
        let gb = |b: u64| b as f64 / 1e9;
        println!(
            "device memory peak: {:.2} GB in use, {:.2} GB reserved (the GPU's memory pool, whole run; cuDNN's algorithm search allocates outside it)",
            gb(used),
            gb(reserved)
        );
    }
    if let Some(p) = train.as_ref().and_then(|m| m.profile_report()) {
        println!(
            "training, time per phase and layer kind, over all bench steps (SE_COMPILE_PROFILE=1):\n{p}"
        );
    }
    if let Some(p) = infer.as_ref().and_then(|m| m.profile_report()) {
        println!("inference (lowered for inference), time per phase and layer kind:\n{p}");
    }
    Ok(())
}
