//! The network that runs on CUDA (`kernelnet::KernelNet`) checked on the CPU against the
//! project's own kernels, with host loops and with its CUDA kernels compiled as C: every layer
//! kind's loss, probabilities and gradients, and a short training run step by step. The GPU
//! repeats the same checks (scripts/gpu-check.sh).

use se_compile::lower::device;
use se_compile::lower::kernelnet::{host::Host, KernelNet};
use se_compile::lower::layers::Net;
use se_compile::lower::model::{Batch, Model, OptSettings};
use se_compile::lower::parity;
use se_compile::spec::recipe::TrainConfig;
use se_compile::util::rng::Rng;

/// The CPU network as a device places it (activations fused into BatchNorms and Adds, SE
/// tails fused into one op, SE pools taken from the kernel before them), against the plain CPU
/// network.
#[test]
fn the_fused_cpu_network_matches_the_plain_one_for_every_layer_kind() {
    let placed = |net: &Net| {
        device::Opened::Cpu
            .place(net.clone_for_device())
            .expect("cpu")
    };
    let fused = |net: &Net| {
        let (net, _) = net.with_fused_bn_and_add_activations();
        net.with_fused_se_tails().0
    };
    let rows = parity::run_all(&mut |net: &Net| placed(net));
    let table = parity::table(&rows, "cpu (placed)", 1e-4);
    for r in &rows {
        assert!(r.passes(1e-4), "{}\n{table}", r.name);
    }
    let spec = parity::case_spec(
        &parity::cases()
            .iter()
            .find(|c| c.0.starts_with("SE tail"))
            .expect("cases")
            .1,
    );
    let vg = se_compile::compile(&se_compile::SourceFile::new("p.yaml", &spec)).expect("compiles");
    assert_eq!(
        fused(&Net::new(&vg, 3))
            .plan
            .layers
            .iter()
            .filter(|l| matches!(l, se_compile::lower::plan::Layer::GatedAdd { .. }))
            .count(),
        1
    );
}

#[test]
fn parity_detects_a_different_network() {
    // Same spec, other seed: other weights. The check must report it.
    let spec = parity::case_spec("- conv2d: {filters: 6, kernel: 3, padding: same}");
    let src = se_compile::SourceFile::new("p.yaml", &spec);
    let vg = se_compile::compile(&src).expect("compiles");
    let mut reference = Net::new(&vg, 3);
    let mut other = KernelNet::from_net(&Net::new(&vg, 4), Host, "other seed".into()).unwrap();
    let row = parity::compare("seeds differ", &mut reference, &mut other, 3);
    assert!(!row.passes(1e-4));
}

/// Six Adam steps of `se_resnet_mini` on the CPU kernels and on `make`'s network from the same
/// weights: the loss of each step and the first moments at the end agree.
fn training_follows_the_cpu_loss_curve(make: &dyn Fn(&Net) -> Box<dyn Model>) {
    let src = se_compile::load("models/se_resnet_mini.yaml").expect("zoo model");
    let vg = se_compile::compile(&src).expect("compiles");
    let mut cpu = Net::new(&vg, 5);
    let mut other = make(&cpu);
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
        let b = other.train_step(batch(&x), &opt, step);
        // Step 1 is a pure forward on identical weights. Later steps drift apart: Adam turns
        // rounding-level gradients of scale-invariant weights (before BatchNorm) into full steps.
        let tol = if step == 0 { 1e-5 } else { 0.02 * a.loss.abs() };
        assert!(
            (a.loss - b.loss).abs() <= tol,
            "step {step}: cpu {} vs {} {}",
            a.loss,
            other.device_name(),
            b.loss
        );
        losses.push(a.loss);
    }
    // The steps did train: the optimizer state moved on both, identically.
    let (sa, ma, _) = cpu.opt_state();
    let (sb, mb, _) = other.opt_state();
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
    assert_eq!(device::parse("cuda:12").unwrap(), Cuda(12));
    // The kernel network with host loops: a check for `parity`, not offered in --help.
    assert_eq!(device::parse("cpu-kernelnet").unwrap(), KernelNetHost);
    for bad in [
        "cpu-composite",
        "cuda-kernelnet",
        "gpu",
        "cuda:",
        "cuda:x",
        "CUDA",
        "cuda-kernelnet:",
        "cuda-kernelnetx",
        "cudax",
    ] {
        let e = device::parse(bad).unwrap_err().to_string();
        assert!(e.contains("use cpu, cuda or cuda:N"), "{bad}: {e}");
    }
}

mod emulated_gpu;
use se_compile::lower::kernelnet::host::RefConvLib;

fn kernelnet_passes_parity(make: &mut dyn FnMut(&Net) -> Box<dyn Model>, name: &str) {
    let rows = parity::run_all(make);
    assert_eq!(rows.len(), parity::cases().len());
    let table = parity::table(&rows, name, 1e-4);
    // Shown with --nocapture: the figures behind the pass.
    println!("{table}");
    for r in &rows {
        assert!(r.passes(1e-4), "{}\n{table}", r.name);
        assert!(r.params > 0, "{}: no gradients compared", r.name);
    }
}

#[test]
fn kernel_network_wiring_matches_the_cpu_kernels_for_every_layer_kind() {
    kernelnet_passes_parity(
        &mut |net: &Net| Box::new(KernelNet::from_net(net, Host, "cpu-kernelnet".into()).unwrap()),
        "cpu-kernelnet",
    );
}

#[test]
fn cuda_kernels_emulated_match_the_cpu_kernels_for_every_layer_kind() {
    kernelnet_passes_parity(
        &mut |net: &Net| {
            Box::new(KernelNet::from_net(net, emulated_gpu::build(), "emulated".into()).unwrap())
        },
        "emulated cuda kernels",
    );
}

/// The network's convolution-library path, with a reference library in cuDNN's place: in
/// `all`, every convolution and gradient it has; otherwise (cuDNN's default policy) the
/// forward of multi-tap convolutions, their gradients by gemm on a fresh im2col matrix.
#[test]
fn cuda_kernels_emulated_with_a_convolution_library_match_the_cpu_kernels() {
    for all in [false, true] {
        kernelnet_passes_parity(
            &mut |net: &Net| {
                let be = emulated_gpu::build_with(Some(RefConvLib { all }));
                Box::new(KernelNet::from_net(net, be, "emulated".into()).unwrap())
            },
            if all {
                "emulated, conv library for all"
            } else {
                "emulated, conv library forward"
            },
        );
    }
}

/// The kernel network's own passes (`Plan::for_kernel_network`: activations in convolutions,
/// BatchNorms and Adds; SE tails as one op), with host loops and with its CUDA kernels compiled
/// as C, against the plain CPU network; the cases run every way the kernel network applies a
/// fused activation (`kernelnet::epilogue`): in the kernel of a convolution's bias, of
/// BatchNorm, of an Add and of an SE tail, and as a pass of its own with and without the value
/// before it kept.
#[test]
fn kernel_network_runs_its_fused_plans() {
    use se_compile::lower::kernelnet::{epilogue, Epilogue};
    use se_compile::lower::plan::Layer;
    use std::collections::BTreeSet;
    let mut seen = BTreeSet::new();
    for emulated in [false, true] {
        let rows = parity::run_all(&mut |net: &Net| {
            let f = net.for_kernel_network();
            for l in &f.plan.layers {
                let kind = match (l, epilogue(l, true)) {
                    (_, Epilogue::None) => continue,
                    (Layer::Conv { .. }, Epilogue::InKernel(_)) => "conv bias",
                    (Layer::BatchNorm { .. }, Epilogue::InKernel(_)) => "batch norm",
                    (Layer::Merge { .. }, Epilogue::InKernel(_)) => "add",
                    (Layer::GatedAdd { .. }, Epilogue::InKernel(_)) => "SE tail",
                    (_, Epilogue::InKernel(_)) => "other",
                    (_, Epilogue::Pass { keep_pre: true, .. }) => "pass, kept",
                    (
                        _,
                        Epilogue::Pass {
                            keep_pre: false, ..
                        },
                    ) => "pass",
                };
                seen.insert(kind);
            }
            if emulated {
                Box::new(KernelNet::from_net(&f, emulated_gpu::build(), "emulated".into()).unwrap())
            } else {
                Box::new(KernelNet::from_net(&f, Host, "host".into()).unwrap())
            }
        });
        let table = parity::table(&rows, "kernel network, its fused plan", 1e-4);
        for r in &rows {
            assert!(r.passes(1e-4), "{}\n{table}", r.name);
        }
    }
    let want = [
        "add",
        "batch norm",
        "conv bias",
        "pass",
        "pass, kept",
        "SE tail",
    ];
    assert_eq!(seen, want.into_iter().collect::<BTreeSet<_>>());
}

/// Inference as `eval` and `predict` run it on the GPU: BatchNorms folded into their
/// convolutions (`lowered_for_inference`), then the kernel network's passes, so that every
/// activation after a convolution, whatever its kind, runs in the bias kernel. Against the
/// CPU network's own inference, for every parity case, after a training pass has moved the
/// BatchNorm statistics (so the folding is not an identity), with non-zero biases.
#[test]
fn the_kernel_network_infers_on_its_folded_plan_as_the_cpu_network_does() {
    let mut folded_acts = 0;
    for emulated in [false, true] {
        for (name, layers) in parity::cases() {
            let src = se_compile::SourceFile::new("f.yaml", parity::case_spec(&layers));
            let vg = se_compile::compile(&src).expect("compiles");
            let mut reference = Net::new(&vg, 3);
            let mut rng = Rng::new(11);
            for (i, p) in Model::param_info(&reference).iter().enumerate() {
                if p.name.ends_with("bias") {
                    reference.set_param(i, (0..p.len).map(|_| 0.5 * rng.normal()).collect());
                }
            }
            let x: Vec<f32> = (0..3 * 6 * 5 * 4).map(|_| rng.normal()).collect();
            let y = [0usize, 4, 2];
            let batch = || Batch {
                x: x.clone(),
                shape: vec![3, 6, 5, 4],
                labels: &y,
            };
            reference.gradients(batch(), 1);
            let lowered = reference.folded_for_inference().0.for_kernel_network();
            folded_acts += lowered
                .plan
                .layers
                .iter()
                .filter(|l| matches!(l, se_compile::lower::plan::Layer::Conv { act: Some(_), .. }))
                .count();
            let mut other: Box<dyn Model> = if emulated {
                Box::new(KernelNet::from_net(&lowered, emulated_gpu::build(), "e".into()).unwrap())
            } else {
                Box::new(KernelNet::from_net(&lowered, Host, "h".into()).unwrap())
            };
            let (a, b) = (reference.infer(batch()), other.infer(batch()));
            let d = a
                .probs
                .iter()
                .flatten()
                .zip(b.probs.iter().flatten())
                .fold((a.loss - b.loss).abs(), |m, (p, q)| m.max((p - q).abs()));
            assert!(d < 1e-4, "{name}: inference differs by {d}");
        }
    }
    // Activations did go into convolutions (every activation case has one after a conv).
    assert!(folded_acts >= 20, "{folded_acts}");
}

/// A convolution's bias that the BatchNorm after it takes in (`kernelnet::conv_bias_into_bn`)
/// gives the CPU network's outputs, gradients and moving statistics with biases that are not
/// zero (Keras starts them at zero, where dropping the bias altogether would pass as well):
/// a training pass, then inference on the moved statistics.
#[test]
fn a_conv_bias_taken_in_by_batch_norm_matches_with_nonzero_biases() {
    use se_compile::lower::kernelnet::conv_bias_into_bn;
    for case in ["batch_norm", "batch_norm + relu", "batch_norm + swish"] {
        let layers = parity::cases()
            .into_iter()
            .find(|c| c.0 == case)
            .expect(case)
            .1;
        let src = se_compile::SourceFile::new("b.yaml", parity::case_spec(&layers));
        let vg = se_compile::compile(&src).expect("compiles");
        let mut base = Net::new(&vg, 3);
        let mut rng = Rng::new(7);
        let info = Model::param_info(&base);
        let mut biases = 0;
        for (i, p) in info.iter().enumerate() {
            if p.name.ends_with("bias") {
                base.set_param(i, (0..p.len).map(|_| 1.0 + rng.normal()).collect());
                biases += 1;
            }
        }
        let placed = base.for_kernel_network();
        let taken = conv_bias_into_bn(&placed.plan)
            .1
            .iter()
            .filter(|b| **b)
            .count();
        assert!(
            biases > 0 && taken > 0,
            "{case}: {biases} biases, {taken} taken in"
        );
        for emulated in [false, true] {
            let mut reference = base.clone_for_device();
            let mut other: Box<dyn Model> = if emulated {
                Box::new(KernelNet::from_net(&placed, emulated_gpu::build(), "e".into()).unwrap())
            } else {
                Box::new(KernelNet::from_net(&placed, Host, "host".into()).unwrap())
            };
            let row = parity::compare(case, &mut reference, other.as_mut(), 3);
            assert!(
                row.passes(1e-4),
                "{}",
                parity::table(&[row], "kernel network", 1e-4)
            );
            for ((p, a), b) in info
                .iter()
                .zip(Model::param_values(&reference))
                .zip(other.param_values())
            {
                let d = a
                    .iter()
                    .zip(&b)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(d < 1e-5, "{case}: {} differs by {d}", p.name);
            }
        }
    }
}

/// The kernel network's own plan (`Plan::for_kernel_network`) against the plain one on the
/// seed's SE-ResNet-50 (64², batch 2, one training step and one inference batch, the CUDA
/// kernels compiled as C): fewer launches of the project's kernels and fewer bytes through
/// them, since activations run in the kernels before them and each SE tail is one pass; and
/// the same loss.
#[test]
fn the_kernel_networks_plan_moves_fewer_bytes_than_the_plain_one() {
    let src = se_compile::load("models/se_resnet50.yaml").expect("zoo model");
    let (_, vg) = se_compile::compile_full(&src, Some((64, 64))).expect("compiles");
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..2 * 64 * 64 * 3).map(|_| rng.normal()).collect();
    let y = [3usize, 11];
    let batch = || Batch {
        x: x.clone(),
        shape: vec![2, 64, 64, 3],
        labels: &y,
    };
    let opt = OptSettings::new(&TrainConfig::default(), 1e-3);
    let run = |net: &Net| {
        let mut k = KernelNet::from_net(net, emulated_gpu::build(), "e".into()).unwrap();
        let loss = k.train_step(batch(), &opt, 1).loss;
        let infer = k.infer(batch()).loss;
        let t = k.be.d.traffic.borrow().clone();
        let launches: u64 = t.values().map(|v| v.0).sum();
        let bytes: u64 = t.values().map(|v| v.1).sum();
        (loss, infer, launches, bytes, t)
    };
    let net = Net::new(&vg, 3);
    let plain = run(&net);
    let fused = run(&net.for_kernel_network());
    let row = |k: &str, a: (u64, u64), b: (u64, u64)| {
        let mb = |v: u64| v as f64 / 1e6;
        format!(
            "{k:<16} {:>6} -> {:>6}  {:>9.3} -> {:>9.3}\n",
            a.0,
            b.0,
            mb(a.1),
            mb(b.1)
        )
    };
    let mut table = String::from("kernel: launches, MB (plain -> kernel network's plan)\n");
    let names: std::collections::BTreeSet<_> = plain.4.keys().chain(fused.4.keys()).collect();
    for k in names {
        let get = |t: &std::collections::BTreeMap<&str, (u64, u64)>| {
            t.get(k).copied().unwrap_or_default()
        };
        table += &row(k, get(&plain.4), get(&fused.4));
    }
    table += &row("total", (plain.2, plain.3), (fused.2, fused.3));
    println!("{table}");
    assert!(
        (plain.0 - fused.0).abs() < 1e-4,
        "training loss {} vs {}",
        plain.0,
        fused.0
    );
    assert!(
        (plain.1 - fused.1).abs() < 1e-4,
        "inference loss {} vs {}",
        plain.1,
        fused.1
    );
    assert!(fused.2 < plain.2 && fused.3 < plain.3, "{table}");
    // No ReLU pass of its own is left: each runs in the kernel before it.
    assert!(!fused.4.contains_key("act_fwd"), "{table}");
}

#[test]
fn cuda_kernels_emulated_training_follows_the_cpu_loss_curve() {
    let be = std::rc::Rc::new(std::cell::RefCell::new(Some(emulated_gpu::build())));
    training_follows_the_cpu_loss_curve(&|net| {
        let be = be.borrow_mut().take().expect("one network");
        Box::new(KernelNet::from_net(net, be, "emulated".into()).unwrap())
    });
}

#[test]
fn kernel_network_refuses_a_broadcast_it_has_no_kernel_for() {
    // (N, 6, 5, 4) times (N, 1, 5, 4): neither equal shapes nor an SE gate.
    let spec = "model: m\ninput: [6, 5, 4]\nlayers:\n  - conv2d: {filters: 4, kernel: 1}\n    id: a\n  - avg_pool2d: {size: [6, 1]}\n    id: p\n  - multiply: {}\n    from: [a, p]\n  - flatten\n  - dense: {units: 3}\n";
    let src = se_compile::SourceFile::new("m.yaml", spec);
    let vg = se_compile::compile(&src).expect("compiles");
    let e = KernelNet::from_net(&Net::new(&vg, 1), Host, "cpu-kernelnet".into())
        .err()
        .expect("refused");
    assert!(
        e.contains("layer `multiply`") && e.contains("--device cpu"),
        "{e}"
    );
}

#[test]
fn kernel_network_resumes_from_its_saved_state() {
    // What a checkpoint keeps: parameter values and the optimizer's step and moments. A copy
    // made from them must take the same next step as the network that kept training.
    let spec = parity::case_spec("- batch_norm\n  - conv2d: {filters: 5, kernel: 3, stride: 2}");
    let src = se_compile::SourceFile::new("r.yaml", &spec);
    let vg = se_compile::compile(&src).expect("compiles");
    let cfg = TrainConfig::default();
    let opt = OptSettings::new(&cfg, 1e-2);
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..4 * 6 * 5 * 4).map(|_| rng.normal()).collect();
    let y = [0usize, 3, 1, 4];
    let batch = || Batch {
        x: x.clone(),
        shape: vec![4, 6, 5, 4],
        labels: &y,
    };
    let mut a = KernelNet::from_net(&Net::new(&vg, 1), emulated_gpu::build(), "a".into()).unwrap();
    for s in 0..3 {
        a.train_step(batch(), &opt, s);
    }
    let mut b = KernelNet::from_net(&Net::new(&vg, 2), emulated_gpu::build(), "b".into()).unwrap();
    for (i, v) in a.param_values().into_iter().enumerate() {
        b.set_param(i, v);
    }
    let (step, m, v) = a.opt_state();
    assert_eq!(step, 3);
    b.set_opt_state(step, m, v);
    let ra = a.train_step(batch(), &opt, 3);
    let rb = b.train_step(batch(), &opt, 3);
    assert_eq!(ra.loss, rb.loss);
    assert_eq!(a.param_values(), b.param_values());
    assert_eq!(a.opt_state().1, b.opt_state().1);
}

#[test]
fn kernel_network_long_reductions_match_the_cpu_kernels() {
    // 2 × 32 × 32 = 2048 rows: weight gradients are split into row chunks (split_k) and column
    // sums take two passes, which the 90-row parity cases do not reach.
    let spec = "model: long\ninput: [32, 32, 3]\nlayers:\n  - conv2d: {filters: 8, kernel: 3, padding: same}\n  - batch_norm\n  - relu\n  - conv2d: {filters: 6, kernel: 1}\n  - global_avg_pool\n  - dense: {units: 4}\n";
    assert_eq!(se_compile::lower::kernelnet::backend::split_k(2048), 2);
    let src = se_compile::SourceFile::new("long.yaml", spec);
    let vg = se_compile::compile(&src).expect("compiles");
    for name in ["cpu-kernelnet", "emulated"] {
        let mut reference = Net::new(&vg, 3);
        let mut other: Box<dyn Model> = if name == "emulated" {
            Box::new(KernelNet::from_net(&reference, emulated_gpu::build(), name.into()).unwrap())
        } else {
            Box::new(KernelNet::from_net(&reference, Host, name.into()).unwrap())
        };
        let row = parity::compare(name, &mut reference, other.as_mut(), 2);
        let table = parity::table(std::slice::from_ref(&row), name, 1e-4);
        assert!(row.passes(1e-4) && row.params == 8, "{table}");
    }
}

#[test]
fn cuda_kernels_emulated_agree_on_the_benchmarked_se_resnet50_as_well_as_host_loops() {
    // The network the GPU benchmark runs (the seed's SE-ResNet-50: 7×7/2 stem, same-padded max
    // pool, strided 1×1 shortcuts, SE gates, 17 classes), at 64×64 and batch 2 to keep the
    // test short. Fifty BatchNorm layers in training mode amplify rounding: every correct
    // implementation's largest gradient difference from the CPU network is several percent
    // (dfdx's composite network's, checked on an H200, included), so the CUDA kernels (compiled
    // as C) are held to the agreement of the same network with host loops for kernels, not to
    // 1e-4. A wrong kernel would be off by far more.
    let src = se_compile::load("models/se_resnet50.yaml").expect("zoo model");
    let (_, vg) = se_compile::compile_full(&src, Some((64, 64))).expect("compiles");
    let row = |name: &str, make: &dyn Fn(&Net) -> Box<dyn Model>| {
        let mut reference = Net::new(&vg, 3);
        let mut other = make(&reference);
        parity::compare(name, &mut reference, other.as_mut(), 2)
    };
    let host = row("host loops", &|net| {
        Box::new(KernelNet::from_net(net, Host, "host".into()).unwrap())
    });
    let emu = row("emulated", &|net| {
        Box::new(KernelNet::from_net(net, emulated_gpu::build(), "emulated".into()).unwrap())
    });
    let rows = vec![host, emu];
    let table = parity::table(&rows, "other", 1e-4);
    println!("{table}");
    let (h, e) = (&rows[0], &rows[1]);
    assert!(e.params > 100 && e.params == h.params, "{table}");
    // The floor: rounding alone puts the inference probabilities of this untrained network
    // (running statistics at their initial values, so nothing rescales the activations) 1e-4
    // to 2e-4 apart between correct implementations: the kernel network was 1.2e-4 from the
    // CPU network with im2col convolutions and 2.0e-4 from it with Winograd 3x3s, and dfdx's
    // composite network 9.9e-5 and 2.3e-5.
    let within = |mine: f32, theirs: f32| mine <= (3.0 * theirs).max(3e-4);
    assert!(
        within(e.infer_err, h.infer_err)
            && within(e.train_err, h.train_err)
            && within(e.grad_err, h.grad_err),
        "the CUDA kernels agree with the CPU network worse than host loops do:\n{table}"
    );
}
