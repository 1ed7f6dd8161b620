//! `se-compile memory`'s predictions for the CPU network checked against what the network
//! really allocates, counted by this test binary's global allocator: the peak of a training
//! step and of an inference batch above what persists, and what persists (parameters, Adam's
//! moments, per-thread scratch). One test function, so no other test allocates meanwhile.

mod common;

use se_compile::lower::device;
use se_compile::lower::layers::Net;
use se_compile::lower::memory::{Engine, Planner, Precision, Prediction};
use se_compile::lower::model::{Batch, OptSettings};
use se_compile::spec::recipe::{Optimizer, TrainConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

struct Counting;
static CUR: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

fn grew(by: usize) {
    let now = CUR.fetch_add(by as u64, SeqCst) + by as u64;
    PEAK.fetch_max(now, SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        CUR.fetch_sub(l.size() as u64, SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let q = System.realloc(p, l, n);
        if !q.is_null() {
            if n > l.size() {
                grew(n - l.size());
            } else {
                CUR.fetch_sub((l.size() - n) as u64, SeqCst);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The tests of this binary run one at a time, so that only one allocates while measuring.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Makes the matrix library's per-thread packing buffers (gemm's, L2-sized, kept for the
/// life of each thread) before anything is measured, so no case counts them: one step of the
/// kernel network with host loops, which runs gemm on every thread and keeps no scratch of
/// its own.
fn warm_gemm() {
    let src = se_compile::load("models/se_resnet_mini.yaml").expect("zoo model");
    let vg = se_compile::compile(&src).expect("compiles");
    let mut m = device::Opened::KernelNetHost
        .place(Net::new(&vg, 1))
        .expect("placed");
    let labels = [0usize, 1];
    let x = vec![0.5f32; 2 * 28 * 28];
    let opt = OptSettings::new(&TrainConfig::default(), 1e-3);
    m.train_step(
        Batch {
            x,
            shape: vec![2, 28, 28, 1],
            labels: &labels,
        },
        &opt,
        0,
    );
}

/// Runs `f` and returns how far the live bytes rose above where they were before it.
fn peak_of(f: impl FnOnce()) -> u64 {
    let before = CUR.load(SeqCst);
    PEAK.store(before, SeqCst);
    f();
    PEAK.load(SeqCst) - before
}

struct Measured {
    /// Live bytes between steps (from before the network was made), after two steps.
    persistent: u64,
    train_step: u64,
    infer_step: u64,
}

/// Three Adam steps (the first makes the moments and the threads' scratch) and the peak of the
/// third; then the network lowered for inference, one warm-up batch and the peak of a second.
fn measure(vg: &se_compile::ValidGraph, n: usize, dev: device::Opened) -> Measured {
    let s = vg.graph().input_shape().to_vec();
    let per: usize = s.iter().product();
    let shape = vec![n, s[0], s[1], s[2]];
    let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let opt = OptSettings::new(&TrainConfig::default(), 1e-3);
    let base = CUR.load(SeqCst);
    let mut m = dev.place(Net::new(vg, 1)).expect("placed");
    let batch = |k: usize| Batch {
        x: (0..n * per)
            .map(|i| ((i * 7 + k) % 13) as f32 / 13.0)
            .collect(),
        shape: shape.clone(),
        labels: &labels,
    };
    for k in 0..2 {
        m.train_step(batch(k), &opt, k as u64);
    }
    let persistent = CUR.load(SeqCst) - base;
    let train_step = peak_of(|| {
        m.train_step(batch(2), &opt, 2);
    });
    drop(m);
    let net = Net::new(vg, 1);
    // As commands::shared::lowered_for_inference lowers it for the device.
    let folded = net.folded_for_inference().0;
    let inference = match dev {
        device::Opened::Cpu => folded.with_fused_activations().0,
        _ => folded,
    };
    drop(net);
    let mut m = dev.place(inference).expect("placed");
    m.infer(batch(0));
    let infer_step = peak_of(|| {
        m.infer(batch(1));
    });
    Measured {
        persistent,
        train_step,
        infer_step,
    }
}

fn within(what: &str, predicted: u64, measured: u64, tol: f64, table: &mut String) -> bool {
    let err = (predicted as f64 - measured as f64) / measured as f64;
    table.push_str(&format!(
        "{what:<44} predicted {:>10.3} MB  measured {:>10.3} MB  error {:+.2}%\n",
        predicted as f64 / 1e6,
        measured as f64 / 1e6,
        100.0 * err
    ));
    err.abs() <= tol
}

/// Persistent bytes, the training step and the inference batch, each within 10%.
fn check_step(name: &str, p: &Prediction, persistent: u64, m: &Measured, t: &mut String) -> bool {
    let a = within(
        &format!("{name}: persistent"),
        persistent,
        m.persistent,
        0.10,
        t,
    );
    let b = within(
        &format!("{name}: training step"),
        p.train_step_bytes,
        m.train_step,
        0.10,
        t,
    );
    let c = within(
        &format!("{name}: inference batch"),
        p.infer_step_bytes,
        m.infer_step,
        0.10,
        t,
    );
    a && b && c
}

#[test]
fn predictions_match_the_cpu_networks_allocations_within_10_percent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    warm_gemm();
    let cases = [
        ("models/se_resnet_mini.yaml", None, 8),
        ("models/se_resnet50.yaml", Some((64, 64)), 8),
    ];
    let mut table = String::new();
    let mut ok = true;
    for (path, hw, n) in cases {
        let src = se_compile::load(path).expect("zoo model");
        let vg = se_compile::compile_full(&src, hw).expect("compiles").1;
        let p: Prediction = Planner::new(&vg).predict(n, Optimizer::Adam, Engine::Cpu);
        let m = measure(&vg, n, device::Opened::Cpu);
        let name = format!("{}, batch {n}", vg.graph().model);
        // gemm's buffers were made before (`warm_gemm`); the network's own scratch was not.
        let persistent =
            p.param_bytes + p.optimizer_bytes + p.thread_scratch_bytes - p.library_scratch_bytes;
        ok &= check_step(&name, &p, persistent, &m, &mut table);
        ok &= within(
            &format!("{name}: training peak"),
            p.peak_train_bytes() - p.library_scratch_bytes,
            m.persistent + m.train_step,
            0.10,
            &mut table,
        );
    }
    println!("{table}");
    assert!(ok, "a prediction is off by more than 10%:\n{table}");
}

/// The kernel network (`--device cuda`) modelled from its allocation rules, checked where it
/// runs without a GPU: with host loops for kernels (`cpu-kernelnet`), its buffers host vectors
/// counted by the allocator, and no convolution library (as `SE_COMPILE_CONV=gemm`).
#[test]
fn kernel_network_predictions_match_its_host_run_within_10_percent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    warm_gemm();
    let mut table = String::new();
    let mut ok = true;
    for (path, hw, n) in [
        ("models/se_resnet_mini.yaml", None, 8),
        ("models/se_resnet50.yaml", Some((64, 64)), 4),
    ] {
        let src = se_compile::load(path).expect("zoo model");
        let vg = se_compile::compile_full(&src, hw).expect("compiles").1;
        let p = Planner::new(&vg).kernelnet(n, Optimizer::Adam, &|_| false);
        let m = measure(&vg, n, device::Opened::KernelNetHost);
        let name = format!("{} (kernel network, host), batch {n}", vg.graph().model);
        let persistent = p.param_bytes + p.optimizer_bytes;
        ok &= check_step(&name, &p, persistent, &m, &mut table);
    }
    println!("{table}");
    assert!(
        ok,
        "a kernel-network prediction is off by more than 10%:\n{table}"
    );
}

/// The planner sees what changes memory: a larger batch, SGD against Adam (the CPU network
/// makes both moment buffers either way), and an inference batch far below a training step.
#[test]
fn predictions_follow_the_batch_and_the_phase() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let src = se_compile::load("models/se_resnet_mini.yaml").expect("zoo model");
    let vg = se_compile::compile(&src).expect("compiles");
    let pl = Planner::new(&vg);
    let a = pl.predict(8, Optimizer::Adam, Engine::Cpu);
    let b = pl.predict(16, Optimizer::Adam, Engine::Cpu);
    assert!(b.train_step_bytes > a.train_step_bytes * 19 / 10);
    assert!(a.infer_step_bytes * 3 < a.train_step_bytes);
    assert_eq!(
        pl.predict(8, Optimizer::Sgd, Engine::Cpu).optimizer_bytes,
        a.optimizer_bytes
    );
    let fit = pl
        .max_batch(Optimizer::Adam, Engine::Cpu, b.peak_train_bytes())
        .expect("fits");
    assert!((16..32).contains(&fit), "{fit}");
    assert_eq!(pl.max_batch(Optimizer::Adam, Engine::Cpu, 1000), None);
}

/// The PyTorch engine's prediction against `torch.profiler` (profile_memory=True) running the
/// exported model.py of the seed SE-ResNet-50 on the CPU at 224², batch 8: a training step as
/// train.py runs it and an inference batch under no_grad, each above what was live before it
/// (tests/python/torch_memory.py), and Adam's state; in float32 and under bf16 autocast.
#[test]
fn pytorch_predictions_match_torch_profiler_within_10_percent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let py = common::python();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("se-memory-torch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_se-compile"))
        .args([
            "export",
            "models/se_resnet50.yaml",
            "--format",
            "pytorch",
            "-o",
        ])
        .arg(&dir)
        .current_dir(root)
        .output()
        .expect("se-compile runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = se_compile::load("models/se_resnet50.yaml").expect("zoo model");
    let vg = se_compile::compile(&src).expect("compiles");
    let pl = Planner::new(&vg);
    let mut table = String::new();
    let mut ok = true;
    for precision in [Precision::Fp32, Precision::Bf16] {
        let mut cmd = std::process::Command::new(py);
        cmd.arg(root.join("tests/python/torch_memory.py"))
            .arg(&dir)
            .args(["8", "224", "224", "3"]);
        if precision == Precision::Bf16 {
            cmd.arg("--bf16");
        }
        let out = cmd.output().expect("python runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rfind(|l| l.starts_with('{'))
            .expect("a JSON line");
        let m: serde_json::Value = serde_json::from_str(line).expect("JSON");
        let get = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k} in {m}"));
        let p = pl
            .predict_in(8, Optimizer::Adam, Engine::Pytorch, precision)
            .expect("pytorch runs both");
        let name = format!(
            "se_resnet50 (PyTorch, CPU, {}), 224², batch 8",
            precision.name()
        );
        ok &= within(
            &format!("{name}: training step"),
            p.train_step_bytes,
            get("train_step_bytes"),
            0.10,
            &mut table,
        );
        ok &= within(
            &format!("{name}: inference batch"),
            p.infer_step_bytes,
            get("infer_step_bytes"),
            0.10,
            &mut table,
        );
        ok &= within(
            &format!("{name}: Adam state"),
            p.optimizer_bytes,
            get("optimizer_bytes"),
            0.01,
            &mut table,
        );
        ok &= within(
            &format!("{name}: parameters and buffers"),
            p.param_bytes,
            get("param_bytes") + get("buffer_bytes"),
            0.01,
            &mut table,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{table}");
    assert!(ok, "a PyTorch prediction is off:\n{table}");
}

/// bf16 is modelled for PyTorch's autocast only; the engines that train in float32 refuse it,
/// and `--fit` finds no batch for them.
#[test]
fn bf16_is_refused_where_the_engine_trains_in_float32_only() {
    let src = se_compile::load("models/se_resnet_mini.yaml").expect("zoo model");
    let vg = se_compile::compile(&src).expect("compiles");
    let pl = Planner::new(&vg);
    for engine in [Engine::Cpu, Engine::Cuda] {
        let e = pl
            .predict_in(8, Optimizer::Adam, engine, Precision::Bf16)
            .err()
            .expect("refused");
        assert!(e.contains("trains in float32 only"), "{e}");
        assert_eq!(
            pl.max_batch_in(Optimizer::Adam, engine, Precision::Bf16, 1 << 40),
            None
        );
    }
    let bf = pl
        .predict_in(8, Optimizer::Adam, Engine::Pytorch, Precision::Bf16)
        .unwrap();
    let fp = pl.predict(8, Optimizer::Adam, Engine::Pytorch);
    assert_eq!(bf.precision, Precision::Bf16);
    assert_eq!(bf.optimizer_bytes, fp.optimizer_bytes);
    assert!(bf.train_step_bytes < fp.train_step_bytes);
}

/// The per-parameter rows add up to the totals, for every engine.
#[test]
fn parameter_rows_add_up_to_the_totals() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let src = se_compile::load("models/se_resnet_mini.yaml").expect("zoo model");
    let vg = se_compile::compile(&src).expect("compiles");
    let pl = Planner::new(&vg);
    for engine in [Engine::Cpu, Engine::Pytorch, Engine::Cuda] {
        for opt in [Optimizer::Adam, Optimizer::Sgd] {
            let p = pl.predict(4, opt, engine);
            let sum = |f: fn(&se_compile::lower::memory::ParamMem) -> u64| -> u64 {
                p.params.iter().map(f).sum()
            };
            assert_eq!(sum(|q| q.held), p.param_bytes, "{engine:?}");
            assert_eq!(sum(|q| q.values), p.param_values_bytes, "{engine:?}");
            assert_eq!(sum(|q| q.grad), p.param_grad_bytes, "{engine:?}");
            assert_eq!(sum(|q| q.moments), p.optimizer_bytes, "{engine:?} {opt:?}");
        }
    }
}

/// The command: JSON with the fields scripts rely on, and one-line usage errors (exit 2).
#[test]
fn the_command_gives_its_json_fields_and_clear_usage_errors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_se-compile"))
            .arg("memory")
            .args(args)
            .current_dir(root)
            .output()
            .expect("se-compile runs")
    };
    let out = run(&[
        "models/se_resnet_mini.yaml",
        "--fit",
        "1GiB",
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for k in [
        "peak_train_bytes",
        "peak_infer_bytes",
        "param_bytes",
        "optimizer_bytes",
        "max_batch",
    ] {
        assert!(v[k].as_u64().is_some(), "{k} in {v}");
    }
    assert!(v["peak_train_bytes"].as_u64() > v["peak_infer_bytes"].as_u64());
    assert_eq!(v["precision"], "fp32");
    // bf16: PyTorch's autocast, in the header and the JSON, and a larger batch fits.
    let out = run(&[
        "models/se_resnet_mini.yaml",
        "--engine",
        "pytorch",
        "--precision",
        "bf16",
        "--fit",
        "1GiB",
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(b["precision"], "bf16");
    let fp = run(&[
        "models/se_resnet_mini.yaml",
        "--engine",
        "pytorch",
        "--fit",
        "1GiB",
        "--format",
        "json",
    ]);
    let f: serde_json::Value = serde_json::from_slice(&fp.stdout).expect("JSON");
    assert!(b["max_batch"].as_u64() > f["max_batch"].as_u64(), "{b} {f}");
    for (args, says) in [
        (
            vec!["models/se_resnet_mini.yaml", "--fit", "12XB"],
            "unknown unit",
        ),
        (
            vec!["models/se_resnet_mini.yaml", "--batch", "0"],
            "--batch 0",
        ),
        (
            vec!["models/se_resnet_mini.yaml", "--precision", "bf16"],
            "--precision bf16: the cpu engine trains in float32 only",
        ),
        (
            vec![
                "models/se_resnet_mini.yaml",
                "--precision",
                "bf16",
                "--engine",
                "cuda",
            ],
            "--precision bf16: the cuda engine trains in float32 only",
        ),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(says) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}
