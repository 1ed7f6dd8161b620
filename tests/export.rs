//! The exports, checked by the other side's reference: `onnx.checker` and onnxruntime for ONNX,
//! PyTorch (strict `load_state_dict`) for the PyTorch export, timm for `import-weights`. The
//! Python packages come from `scripts/pyenv.sh` (a cached virtual environment outside the
//! clone, made on first use). Run with `--nocapture` to see the measured differences.

use se_compile::lower::layers::Net;
use se_compile::lower::model::Model;
use se_compile::train::checkpoint;
use se_compile::{compile_full, load, ValidGraph};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::python;

const TOL: f32 = 1e-4;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_se-compile"))
}

/// Runs a script of tests/python and returns its JSON line.
fn py(script: &str, args: &[&Path]) -> serde_json::Value {
    let text = py_stdout(script, args);
    serde_json::from_str(text.lines().last().expect("a JSON line")).expect("JSON")
}

/// Runs a script of tests/python, which must succeed, and returns its standard output.
fn py_stdout(script: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> String {
    common::stdout_of(
        Command::new(python())
            .arg(root().join("tests/python").join(script))
            .args(args),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("se-compile-export-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn compile(spec: &str, hw: Option<usize>) -> ValidGraph {
    let src = load(spec).unwrap_or_else(|e| panic!("{e}"));
    compile_full(&src, hw.map(|v| (v, v)))
        .unwrap_or_else(|d| panic!("{}", d.message))
        .1
}

/// A tiny deterministic generator for test weights.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

/// The seeded initial network with every BatchNorm given non-trivial values (gamma, beta,
/// moving statistics) and biases made non-zero, so the export of each is exercised.
fn given_weights(vg: &ValidGraph) -> Net {
    let mut net = Net::new(vg, 7);
    let mut r = Lcg(11);
    let infos = net.param_info();
    for (i, p) in infos.iter().enumerate() {
        let what = p.name.rsplit('/').next().unwrap();
        let v: Option<Vec<f32>> = match what {
            "gamma" | "moving_variance" => Some((0..p.len).map(|_| 0.5 + r.next()).collect()),
            "beta" | "moving_mean" | "bias" => {
                Some((0..p.len).map(|_| (r.next() - 0.5) * 0.2).collect())
            }
            _ => None,
        };
        if let Some(v) = v {
            net.set_param(i, v);
        }
    }
    net
}

fn save_ckpt(net: &Net, path: &Path) {
    checkpoint::save(path, net, &[], HashMap::new()).unwrap();
}

/// `n` images of the bundled test set, decoded as se-compile decodes them, scaled to [0, 1].
fn real_images(shape: &[usize], n: usize) -> (Vec<f32>, Vec<PathBuf>) {
    let dir = root().join("data/fashion-mnist-mini/test");
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    let mut x = vec![];
    let mut paths = vec![];
    for c in classes.iter().cycle().take(n) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(c)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let f = files[paths.len() % files.len()].clone();
        let px = se_compile::train::data::decode(&f, shape[0], shape[1], shape[2]).unwrap();
        x.extend(px.iter().map(|&v| v as f32 / 255.0));
        paths.push(f);
    }
    (x, paths)
}

fn random_input(len: usize) -> Vec<f32> {
    let mut r = Lcg(5);
    (0..len).map(|_| r.next() * 2.0 - 1.0).collect()
}

fn write_x(path: &Path, x: &[f32], shape: &[usize]) {
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .unwrap();
    std::fs::write(
        path,
        safetensors::serialize(vec![("x", view)], &None).unwrap(),
    )
    .unwrap();
}

fn read_y(path: &Path) -> Vec<f32> {
    checkpoint::read(path)
        .unwrap()
        .tensors
        .remove("y")
        .expect("y")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "output sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One model: given weights, real images (random data for a non-image input), our output,
/// and the export's output in its reference runtime.
#[derive(Clone, Copy)]
struct Case {
    spec: &'static str,
    input: Option<usize>,
    batch: usize,
    images: bool,
}

const CASES: &[Case] = &[
    Case {
        spec: "se_resnet_mini",
        input: None,
        batch: 4,
        images: true,
    },
    Case {
        spec: "se_block",
        input: None,
        batch: 2,
        images: false,
    },
    Case {
        spec: "se_resnet50",
        input: Some(64),
        batch: 2,
        images: true,
    },
    Case {
        spec: "tests/ok/features.yaml",
        input: None,
        batch: 3,
        images: true,
    },
    Case {
        spec: "tests/ok/se_ablation_settings.yaml",
        input: None,
        batch: 3,
        images: true,
    },
];

/// The export cases: the written ones, and a spec with every elementwise activation of the
/// IR's list as a branch of its own (`ActFn::ALL`), so that a new activation is checked
/// against onnxruntime and PyTorch without a line here.
fn cases() -> Vec<Case> {
    use se_compile::ir::ops::ActFn;
    let acts: Vec<&str> = ActFn::ALL
        .iter()
        .filter(|f| **f != ActFn::Softmax)
        .map(|f| f.name())
        .collect();
    let mut spec = String::from(
        "model: activations\ninput: [6, 5, 4]\nclasses: 5\nlayers:\n  - conv2d: {filters: 4, kernel: 1}\n    id: pre\n",
    );
    for a in &acts {
        spec += &format!("  - activation: {a}\n    from: [pre]\n    id: act_{a}\n");
    }
    let all: Vec<String> = acts.iter().map(|a| format!("act_{a}")).collect();
    spec += &format!(
        "  - concatenate: {{}}\n    from: [{}]\n  - flatten\n  - dense: {{units: 5, activation: softmax}}\n",
        all.join(", ")
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("export-activations.yaml");
    std::fs::write(&path, spec).expect("write the activations spec");
    let path: &'static str = Box::leak(path.to_string_lossy().into_owned().into_boxed_str());
    let mut all_cases: Vec<Case> = CASES.to_vec();
    all_cases.push(Case {
        spec: path,
        input: None,
        batch: 3,
        images: false,
    });
    all_cases
}

struct Prepared {
    dir: PathBuf,
    ckpt: PathBuf,
    x: PathBuf,
    ours: Vec<f32>,
    vg: ValidGraph,
}

fn prepare(c: &Case, tag: &str) -> Prepared {
    let spec = if c.spec.contains('/') {
        root().join(c.spec).to_string_lossy().into_owned()
    } else {
        c.spec.to_string()
    };
    let vg = compile(&spec, c.input);
    let name = vg.graph().model.clone();
    let dir = tmp(&format!("{tag}-{name}"));
    let mut net = given_weights(&vg);
    let ckpt = dir.join("weights.safetensors");
    save_ckpt(&net, &ckpt);
    let s = vg.graph().input_shape().clone();
    let mut shape = vec![c.batch];
    shape.extend(&s);
    let x = if c.images {
        real_images(&s, c.batch).0
    } else {
        random_input(shape.iter().product())
    };
    let xp = dir.join("x.safetensors");
    write_x(&xp, &x, &shape);
    let ours = net.outputs(x, shape);
    Prepared {
        dir,
        ckpt,
        x: xp,
        ours,
        vg,
    }
}

fn spec_arg(c: &Case) -> String {
    if c.spec.contains('/') {
        root().join(c.spec).to_string_lossy().into_owned()
    } else {
        c.spec.to_string()
    }
}

#[test]
fn onnx_outputs_match_onnxruntime() {
    for c in &cases() {
        let p = prepare(c, "onnx");
        let model = p.dir.join("model.onnx");
        let mut cmd = bin();
        cmd.args(["export", &spec_arg(c), "--format", "onnx", "-o"])
            .arg(&model)
            .arg("--weights")
            .arg(&p.ckpt);
        if let Some(i) = c.input {
            cmd.args(["--input", &i.to_string()]);
        }
        run_ok(&mut cmd);
        let y = p.dir.join("y.safetensors");
        let info = py("onnx_check.py", &[&model, &p.x, &y]);
        assert_eq!(info["checked"], true);
        let meta: Vec<String> = serde_json::from_value(info["metadata"].clone()).unwrap();
        for k in ["model", "se_compile_version", "spec"] {
            assert!(meta.contains(&k.to_string()), "metadata has {k}: {meta:?}");
        }
        let d = max_diff(&read_y(&y), &p.ours);
        eprintln!(
            "onnx {:<16} {} nodes, largest |onnxruntime - se-compile| = {d:.2e}",
            p.vg.graph().model,
            info["nodes"]
        );
        assert!(d <= TOL, "{}: onnxruntime differs by {d}", c.spec);
        let _ = std::fs::remove_dir_all(&p.dir);
    }
}

#[test]
fn onnx_nchw_input_matches() {
    let c = &CASES[0];
    let p = prepare(c, "nchw");
    let model = p.dir.join("model.onnx");
    run_ok(
        bin()
            .args([
                "export",
                c.spec,
                "--format",
                "onnx",
                "--input-layout",
                "nchw",
                "--batch",
                "4",
                "-o",
            ])
            .arg(&model)
            .arg("--weights")
            .arg(&p.ckpt),
    );
    // The same images, NCHW.
    let s = p.vg.graph().input_shape().clone();
    let (x, _) = real_images(&s, c.batch);
    let (h, w, ch) = (s[0], s[1], s[2]);
    let mut t = vec![0.0f32; x.len()];
    for n in 0..c.batch {
        for y in 0..h {
            for xx in 0..w {
                for k in 0..ch {
                    t[((n * ch + k) * h + y) * w + xx] = x[((n * h + y) * w + xx) * ch + k];
                }
            }
        }
    }
    let xp = p.dir.join("x_nchw.safetensors");
    write_x(&xp, &t, &[c.batch, ch, h, w]);
    let y = p.dir.join("y.safetensors");
    let info = py("onnx_check.py", &[&model, &xp, &y]);
    assert_eq!(info["inputs"][0][1], serde_json::json!([4, ch, h, w]));
    let d = max_diff(&read_y(&y), &p.ours);
    eprintln!("onnx nchw se_resnet_mini: largest difference {d:.2e}");
    assert!(d <= TOL);
    let _ = std::fs::remove_dir_all(&p.dir);
}

/// `se-compile predict --format json` gives the probabilities onnxruntime gives on the images.
#[test]
fn onnx_matches_predict_cli() {
    let c = &CASES[0];
    let p = prepare(c, "predict");
    let model = p.dir.join("model.onnx");
    run_ok(
        bin()
            .args(["export", c.spec, "--format", "onnx", "-o"])
            .arg(&model)
            .arg("--weights")
            .arg(&p.ckpt),
    );
    let s = p.vg.graph().input_shape().clone();
    let (_, paths) = real_images(&s, c.batch);
    let out = bin()
        .args(["predict", c.spec, "--format", "json", "--weights"])
        .arg(&p.ckpt)
        .args(&paths)
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probs: Vec<f32> = rows
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let y = p.dir.join("y.safetensors");
    py("onnx_check.py", &[&model, &p.x, &y]);
    let d = max_diff(&read_y(&y), &probs);
    eprintln!("onnx vs `se-compile predict` (se_resnet_mini, 4 images): {d:.2e}");
    assert!(d <= TOL);
    let _ = std::fs::remove_dir_all(&p.dir);
}

/// Every zoo model exports (seeded initial weights) and passes `onnx.checker` (full check).
#[test]
fn every_zoo_model_passes_the_onnx_checker() {
    let dir = tmp("zoo");
    for (name, _) in se_compile::zoo::MODELS {
        let model = dir.join(format!("{}.onnx", name.replace('/', "_")));
        run_ok(
            bin()
                .args(["export", name, "--format", "onnx", "-o"])
                .arg(&model),
        );
        let info = py("onnx_check.py", &[&model]);
        assert_eq!(info["checked"], true, "{name}");
        assert_eq!(info["opset"], 17);
        std::fs::remove_file(&model).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pytorch_export_loads_strictly_and_matches() {
    for c in &cases() {
        let p = prepare(c, "torch");
        let out = p.dir.join("torch");
        let mut cmd = bin();
        cmd.args(["export", &spec_arg(c), "--format", "pytorch", "-o"])
            .arg(&out)
            .arg("--weights")
            .arg(&p.ckpt);
        if let Some(i) = c.input {
            cmd.args(["--input", &i.to_string()]);
        }
        run_ok(&mut cmd);
        let py_src = std::fs::read_to_string(out.join("model.py")).unwrap();
        assert!(
            !py_src.contains("se_compile"),
            "model.py imports nothing of ours"
        );
        let y = p.dir.join("y.safetensors");
        let info = py("torch_check.py", &[&out, &p.x, &y]);
        let t = p.vg.totals().params;
        assert_eq!(
            info["parameters"], t.trainable,
            "{}: parameters = trainable",
            c.spec
        );
        assert_eq!(
            info["bn_statistics"], t.non_trainable,
            "{}: BN buffers = non-trainable",
            c.spec
        );
        let d = max_diff(&read_y(&y), &p.ours);
        eprintln!(
            "pytorch {:<16} class {}, {} parameters, largest |torch - se-compile| = {d:.2e}",
            p.vg.graph().model,
            info["class"],
            info["parameters"]
        );
        assert!(d <= TOL, "{}: PyTorch differs by {d}", c.spec);
        let _ = std::fs::remove_dir_all(&p.dir);
    }
}

/// timm's `seresnet50` and `seresnext50_32x4d` (timm's random init, saved by timm) through
/// `import-weights` give timm's outputs.
#[test]
fn timm_weights_import_and_match_timm() {
    for (timm, spec) in [
        ("seresnet50", "models/se_resnet50_timm.yaml"),
        ("seresnext50_32x4d", "models/se_resnext50_32x4d.yaml"),
    ] {
        let dir = tmp(timm);
        let spec = root().join(spec);
        let vg = compile(spec.to_str().unwrap(), Some(64));
        let s = vg.graph().input_shape().clone();
        let batch = 2;
        let (x, _) = real_images(&s, batch);
        let xp = dir.join("x.safetensors");
        write_x(&xp, &x, &[batch, s[0], s[1], s[2]]);
        let sd = dir.join("timm.safetensors");
        let y = dir.join("y.safetensors");
        py("timm_make.py", &[Path::new(timm), &sd, &xp, &y]);
        let ck = dir.join("imported.safetensors");
        let log = run_ok(
            bin()
                .arg("import-weights")
                .arg(&spec)
                .arg("--from")
                .arg(&sd)
                .arg("-o")
                .arg(&ck),
        );
        assert!(log.contains("timm mapping"), "{log}");
        let mut net = Net::new(&vg, 0);
        let loaded = checkpoint::read(&ck).unwrap();
        checkpoint::load_into(&mut net, &loaded, &ck).unwrap();
        let ours = net.outputs(x, vec![batch, s[0], s[1], s[2]]);
        let d = max_diff(&read_y(&y), &ours);
        eprintln!("timm {timm:<18} -> import-weights: largest |timm - se-compile| = {d:.2e}");
        assert!(d <= TOL, "{timm}: differs by {d}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Runs the binary and returns (exit code, stderr).
fn run_err(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0]
}

#[test]
fn bad_export_input_is_a_one_line_error_and_writes_nothing() {
    let dir = tmp("bad");
    let mini = compile("se_resnet_mini", None);
    let ck = dir.join("mini.safetensors");
    save_ckpt(&Net::new(&mini, 1), &ck);
    let out = dir.join("out.onnx");

    // Weights of another spec.
    let (code, err) = run_err(
        bin()
            .args(["export", "se_block", "--format", "onnx", "-o"])
            .arg(&out)
            .arg("--weights")
            .arg(&ck),
    );
    assert_eq!(code, 1);
    assert!(one_line_error(&err).contains("different spec"), "{err}");
    assert!(!out.exists());

    // A truncated checkpoint.
    let bytes = std::fs::read(&ck).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for fmt in ["onnx", "pytorch"] {
        let (code, err) = run_err(
            bin()
                .args(["export", "se_resnet_mini", "--format", fmt, "-o"])
                .arg(&out)
                .arg("--weights")
                .arg(&cut),
        );
        assert_eq!(code, 1, "{err}");
        assert!(one_line_error(&err).contains("cut.safetensors"), "{err}");
        assert!(!out.exists());
    }

    // An output path in a missing directory.
    for fmt in ["onnx", "pytorch"] {
        let missing = dir.join("no/such/dir/model.onnx");
        let (code, err) = run_err(
            bin()
                .args(["export", "se_resnet_mini", "--format", fmt, "-o"])
                .arg(&missing),
        );
        assert_eq!(code, 1, "{err}");
        assert!(one_line_error(&err).contains("does not exist"), "{err}");
        assert!(!dir.join("no").exists());
    }

    // An unknown format is a usage error.
    let (code, err) = run_err(
        bin()
            .args(["export", "se_resnet_mini", "--format", "tflite", "-o"])
            .arg(&out),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tflite"));
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `tensors` (name, shape, values) as a safetensors file.
fn write_tensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.2.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            (
                t.0.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, t.1.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, &None).unwrap()).unwrap();
}

#[test]
fn import_weights_checks_every_tensor_and_writes_nothing_on_error() {
    let dir = tmp("import");
    let vg = compile("se_resnet_mini", None);
    let net = given_weights(&vg);
    let good: Vec<(String, Vec<usize>, Vec<f32>)> = net
        .param_info()
        .into_iter()
        .zip(net.param_values())
        .map(|(p, v)| (p.name, vec![p.len], v))
        .collect();
    let out = dir.join("w.safetensors");
    let import = |file: &Path| {
        run_err(
            bin()
                .args([
                    "import-weights",
                    "se_resnet_mini",
                    "--map",
                    "keras",
                    "--from",
                ])
                .arg(file)
                .arg("-o")
                .arg(&out),
        )
    };
    // A complete file imports, and gives the same network.
    let f = dir.join("good.safetensors");
    write_tensors(&f, &good);
    let (code, err) = import(&f);
    assert_eq!(code, 0, "{err}");
    let mut back = Net::new(&vg, 0);
    checkpoint::load_into(&mut back, &checkpoint::read(&out).unwrap(), &out).unwrap();
    assert_eq!(back.param_values(), net.param_values());
    std::fs::remove_file(&out).unwrap();

    // An extra tensor, a missing one, a misshaped one.
    let mut extra = good.clone();
    extra.push(("head/kernel".into(), vec![3], vec![0.0; 3]));
    let missing: Vec<_> = good
        .iter()
        .filter(|t| t.0 != "conv2d_3/kernel")
        .cloned()
        .collect();
    let mut shaped = good.clone();
    let k = shaped.iter().position(|t| t.0 == "dense/kernel").unwrap();
    shaped[k].1 = vec![10, 128];
    for (what, tensors, needle) in [
        ("extra", extra, "`head/kernel` feeds no layer"),
        (
            "missing",
            missing,
            "no tensor `conv2d_3/kernel`, which layer `conv2d_3`",
        ),
        (
            "shape",
            shaped,
            "`dense/kernel` has shape [10, 128] but layer `dense`",
        ),
    ] {
        let f = dir.join(format!("{what}.safetensors"));
        write_tensors(&f, &tensors);
        let (code, err) = import(&f);
        assert_eq!(code, 1, "{what}: {err}");
        let line = one_line_error(&err);
        assert!(line.contains(needle), "{what}: {line}");
        assert!(
            line.contains("se_resnet_mini.yaml:") || what == "extra",
            "{what} names the spec line: {line}"
        );
        assert!(!out.exists(), "{what}: nothing written");
    }
    // Not a safetensors file at all.
    let f = dir.join("junk.safetensors");
    std::fs::write(&f, b"not a state dict").unwrap();
    let (code, err) = import(&f);
    assert_eq!(code, 1);
    assert!(one_line_error(&err).contains("not a safetensors file"));
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `se-compile bench --format csv|json` names its fields as timm's own `benchmark.py` does: the
/// script (tests/python/timm_benchmark.py, a copy of timm's) is run on timm's `test_resnet` on the
/// CPU and its results CSV's header is compared with ours. timm adds `infer_gmacs` (and
/// `infer_macts`) only with fvcore or deepspeed installed, which the test environment has not;
/// se-compile counts MACs itself and always gives `infer_gmacs`, where timm's inference runner
/// puts it.
#[test]
fn bench_results_use_timms_field_names() {
    let dir = tmp("timm-bench");
    let theirs = dir.join("timm.csv");
    let mut args: Vec<std::ffi::OsString> = [
        "--model",
        "test_resnet",
        "--device",
        "cpu",
        "--bench",
        "both",
        "-b",
        "2",
        "--img-size",
        "32",
        "--num-warm-iter",
        "1",
        "--num-bench-iter",
        "5",
        "--results-format",
        "csv",
        "--results-file",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(theirs.clone().into());
    py_stdout("timm_benchmark.py", &args);
    let timm_csv = std::fs::read_to_string(&theirs).unwrap();
    let mut timm_fields: Vec<&str> = timm_csv.lines().next().unwrap().split(',').collect();
    let script = std::fs::read_to_string(root().join("tests/python/timm_benchmark.py")).unwrap();
    assert!(script.contains("results['gmacs'] = round(macs / 1e9, 2)"));
    let at = timm_fields
        .iter()
        .position(|f| *f == "infer_img_size")
        .unwrap();
    timm_fields.insert(at + 1, "infer_gmacs");

    let bench = |format: &str| {
        common::stdout_of(
            bin()
                .current_dir(root())
                .args(["bench", "models/se_resnet_mini.yaml", "--steps", "1"])
                .args(["--batch-size", "2", "--format", format]),
        )
    };
    let csv = bench("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    let ours: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(ours, timm_fields, "ours:\n{csv}\ntimm's:\n{timm_csv}");

    // The JSON has the same fields in the same order, and the figures are timm's units.
    let json = bench("json");
    let j: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json).unwrap();
    let mut keys: Vec<&str> = json
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        .collect();
    keys.dedup();
    assert_eq!(keys, timm_fields, "{json}");
    let vg = compile("models/se_resnet_mini.yaml", None);
    let t = vg.totals();
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    assert_eq!(j["model"], "se_resnet_mini");
    assert_eq!(j["param_count"], round2(t.params.trainable as f64 / 1e6));
    assert_eq!(j["infer_gmacs"], round2(t.macs as f64 / 1e9));
    for p in ["infer", "train"] {
        assert_eq!(j[&format!("{p}_batch_size")], 2);
        assert_eq!(j[&format!("{p}_img_size")], 28);
        let (img_s, ms) = (
            j[&format!("{p}_samples_per_sec")].as_f64().unwrap(),
            j[&format!("{p}_step_time")].as_f64().unwrap(),
        );
        // One step of 2 images: samples/s is 2000 / (ms per step), up to the rounding.
        assert!(
            ms > 0.0 && (img_s - 2000.0 / ms).abs() <= 0.01 + img_s * 1e-3,
            "{json}"
        );
    }
    // `summary --format json` gives the same two figures under timm's names.
    let out = bin()
        .current_dir(root())
        .args(["summary", "models/se_resnet_mini.yaml", "--format", "json"])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["param_count"], j["param_count"]);
    assert_eq!(s["gmacs"], j["infer_gmacs"]);
}
