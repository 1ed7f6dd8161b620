//! The network that runs on CUDA (`composite::CompositeNet`, dfdx ops only) checked on the CPU
//! against the project's own kernels: every layer kind's loss, probabilities and gradients, and
//! a short training run step by step. The GPU repeats the same checks (scripts/gpu-check.sh).

use se_compile::lower::device;
use se_compile::lower::layers::Net;
use se_compile::lower::model::{Batch, Model, OptSettings};
use se_compile::lower::parity;
use se_compile::lower::rng::Rng;
use se_compile::train::config::TrainConfig;

#[test]
fn composite_matches_the_cpu_kernels_for_every_layer_kind() {
    let rows = parity::run_all(&mut |net: &Net| Box::new(device::composite_cpu(net)));
    assert_eq!(rows.len(), parity::CASES.len());
    let table = parity::table(&rows, "cpu-composite", 1e-4);
    for r in &rows {
        assert!(r.passes(1e-4), "{}\n{table}", r.name);
        assert!(r.params > 0, "{}: no gradients compared", r.name);
    }
}

#[test]
fn parity_detects_a_different_network() {
    // Same spec, other seed: other weights. The check must report it.
    let spec = parity::case_spec("- conv2d: {filters: 6, kernel: 3, padding: same}");
    let src = se_compile::SourceFile::new("p.yaml", &spec);
    let vg = se_compile::compile(&src).expect("compiles");
    let mut reference = Net::new(&vg, 3);
    let mut other = device::composite_cpu(&Net::new(&vg, 4));
    let row = parity::compare("seeds differ", &mut reference, &mut other, 3);
    assert!(!row.passes(1e-4));
}

#[test]
fn composite_training_follows_the_cpu_loss_curve() {
    let src = se_compile::load("models/se_resnet_mini.yaml").expect("zoo model");
    let vg = se_compile::compile(&src).expect("compiles");
    let mut cpu = Net::new(&vg, 5);
    let mut comp = device::composite_cpu(&cpu);
    let cfg = TrainConfig::default();
    let opt = OptSettings::new(&cfg, 1e-3);
    let mut rng = Rng::new(8);
    let (n, per) = (6, 28 * 28);
    let mut losses = vec![];
    for step in 0..6 {
        let x: Vec<f32> = (0..n * per).map(|_| rng.uniform()).collect();
        let y: Vec<usize> = (0..n).map(|_| rng.below(10)).collect();
        let batch = |x: &Vec<f32>| Batch {
            x: x.clone(),
            shape: vec![n, 28, 28, 1],
            labels: &y,
        };
        let a = cpu.train_step(batch(&x), &opt, step);
        let b = comp.train_step(batch(&x), &opt, step);
        // Step 1 is a pure forward on identical weights. Later steps drift apart: Adam turns
        // rounding-level gradients of scale-invariant weights (before BatchNorm) into full steps.
        let tol = if step == 0 { 1e-5 } else { 0.02 * a.loss.abs() };
        assert!(
            (a.loss - b.loss).abs() <= tol,
            "step {step}: cpu {} vs composite {}",
            a.loss,
            b.loss
        );
        losses.push(a.loss);
    }
    // The steps did train: the optimizer state moved on both, identically.
    let (sa, ma, _) = cpu.opt_state();
    let (sb, mb, _) = comp.opt_state();
    assert_eq!((sa, sb), (6, 6));
    let (mut d2, mut n2) = (0.0f64, 0.0f64);
    for (p, q) in ma.iter().flatten().zip(mb.iter().flatten()) {
        d2 += ((p - q) as f64).powi(2);
        n2 += (*p as f64).powi(2);
    }
    let rel = (d2 / n2).sqrt();
    // The moments average gradients over the steps, which drift apart with the weights.
    assert!(
        n2 > 0.0 && rel < 0.1,
        "first moments differ by {rel:.3} (relative L2)"
    );
    assert!(losses.iter().all(|l| l.is_finite()));
}

#[test]
fn device_flags_parse() {
    use device::DeviceSpec::*;
    assert_eq!(device::parse("cpu").unwrap(), Cpu);
    assert_eq!(device::parse("cuda").unwrap(), Cuda(0));
    assert_eq!(device::parse("cuda:1").unwrap(), Cuda(1));
    assert_eq!(device::parse("cpu-composite").unwrap(), CpuComposite);
    for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
        let e = device::parse(bad).unwrap_err().to_string();
        assert!(e.contains("use cpu, cuda or cuda:N"), "{bad}: {e}");
    }
}
