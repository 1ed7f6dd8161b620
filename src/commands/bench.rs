//! `se-compile bench`: training and inference speed (images/s) on random data, one process per
//! measurement if wanted (`--phase`), as bench/compare.sh runs it next to PyTorch and Keras.

use crate::{device_of, lowered_for_inference, on_device, Ctx};
use se_compile::lower::device::DeviceSpec;
use se_compile::lower::layers::Net;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Both,
    Train,
    Infer,
}

#[derive(clap::Args)]
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
    // Inference runs as eval and predict do (BatchNorms folded, activations fused on the CPU).
    let mut infer = on_device(lowered_for_inference(&net, dev), dev)?;
    let mut net = on_device(net, dev)?;
    let s = vg.graph().input_shape();
    let on = match dev {
        DeviceSpec::Cpu => format!("cpu, {} threads", rayon::current_num_threads()),
        _ => net.device_name(),
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
    let (train, inference) = (a.phase != Phase::Infer, a.phase != Phase::Train);
    let r = se_compile::train::run::bench(
        train.then_some(net.as_mut()),
        inference.then_some(infer.as_mut()),
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
    if let (true, Some(p)) = (train, net.profile_report()) {
        println!(
            "training, time per phase and layer kind, over all bench steps (SE_COMPILE_PROFILE=1):\n{p}"
        );
    }
    if let (true, Some(p)) = (inference, infer.profile_report()) {
        println!("inference (lowered for inference), time per phase and layer kind:\n{p}");
    }
    Ok(())
}
