//! Training through the real binary on a tiny subset of the bundled Fashion-MNIST data: the
//! files a run writes, resume equivalence, eval/predict, and data errors.

mod common;

use common::{run, run_env};
use std::path::{Path, PathBuf};

/// `se-compile train SPEC --data DATA --out OUT EXTRA...`.
fn train(spec: &str, data: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "train",
        spec,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `se-compile train SPEC --data DATA EXTRA... --resume DIR`.
fn resume(spec: &str, data: &Path, dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["train", spec, "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--resume", dir.to_str().unwrap()]);
    run(&args)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("se-compile-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `per_class` train and 2 test images of each class, copied from the bundled subset.
fn tiny_data(name: &str, per_class: usize) -> PathBuf {
    let root = tmp(name);
    common::bundled_subset(&root, per_class, 2);
    root
}

fn history(dir: &Path) -> Vec<serde_json::Value> {
    let h: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("history.json")).unwrap()).unwrap();
    h.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("seconds");
            r
        })
        .collect()
}

#[test]
fn one_epoch_smoke_writes_every_file() {
    let data = tiny_data("smoke", 4);
    // One corrupt image: reported, skipped and counted, never fatal.
    std::fs::write(data.join("train/0_tshirt_top/broken.png"), b"not a png").unwrap();
    let out = tmp("smoke-run").join("run");
    let (code, stdout, stderr) = train(
        "models/se_resnet_mini.yaml",
        &data,
        &out,
        &["--epochs", "1", "--batch-size", "8"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Found 40 training and 20 validation images in 10 classes"),
        "{stdout}"
    );
    assert!(stdout.contains("skipped 1 unreadable"), "{stdout}");
    assert!(stderr.contains("broken.png"), "{stderr}");
    assert!(
        stdout.contains("Epoch 1/1") && stdout.contains("val_accuracy:"),
        "{stdout}"
    );
    for f in [
        "history.csv",
        "history.json",
        "accuracy.png",
        "loss.png",
        "last.safetensors",
        "best.safetensors",
        "spec.yaml",
        "config.json",
    ] {
        let p = out.join(f);
        assert!(
            p.is_file() && std::fs::metadata(&p).unwrap().len() > 0,
            "{f} missing"
        );
    }
    let csv = std::fs::read_to_string(out.join("history.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds"
    );
    assert_eq!(csv.lines().count(), 2);
    let row: Vec<f64> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(row[1].is_finite() && row[1] > 0.0 && (0.0..=1.0).contains(&row[4]));
    assert_eq!(
        &std::fs::read(out.join("accuracy.png")).unwrap()[..4],
        b"\x89PNG"
    );
    // No temporary files are left behind by the atomic writes.
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));

    // The saved weights work with eval and predict.
    let w = out.join("best.safetensors");
    let (code, stdout, stderr) = run(&[
        "eval",
        "models/se_resnet_mini.yaml",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("20 images, 10 classes: loss") && stdout.contains("confusion matrix"),
        "{stdout}"
    );
    let img = data
        .join("test/7_sneaker")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (code, stdout, stderr) = run(&[
        "predict",
        "models/se_resnet_mini.yaml",
        "--weights",
        w.to_str().unwrap(),
        "--top-k",
        "2",
        img.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(
        stdout.matches(" 0.").count() + stdout.matches(" 1.0").count(),
        2,
        "{stdout}"
    );
    // Weights of another spec are refused with the tensor named.
    let (code, _, stderr) = run(&[
        "eval",
        "models/se_block.yaml",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("has no tensor") || stderr.contains("different spec"),
        "{stderr}"
    );
    // An existing run is never overwritten.
    let (code, _, stderr) = train(
        "models/se_resnet_mini.yaml",
        &data,
        &out,
        &["--epochs", "1"],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("--resume"), "{stderr}");
}

#[test]
fn resume_gives_the_same_metrics_as_an_uninterrupted_run() {
    let data = tiny_data("resume", 3);
    let base = tmp("resume-runs");
    let (a, b) = (base.join("a"), base.join("b"));
    let common = ["--batch-size", "10", "--seed", "7", "--augment", "true"];
    let spec = "models/se_resnet_mini.yaml";
    let (code, _, e) = train(spec, &data, &a, &[&common[..], &["--epochs", "2"]].concat());
    assert_eq!(code, 0, "{e}");
    let (code, _, e) = train(spec, &data, &b, &[&common[..], &["--epochs", "1"]].concat());
    assert_eq!(code, 0, "{e}");
    let (code, out, e) = resume(spec, &data, &b, &[&common[..], &["--epochs", "2"]].concat());
    assert_eq!(code, 0, "{e}");
    assert!(
        out.contains("Epoch 2/2") && !out.contains("Epoch 1/2"),
        "{out}"
    );
    let (ha, hb) = (history(&a), history(&b));
    assert_eq!(ha.len(), 2);
    assert_eq!(ha, hb, "resumed run differs");
    // Same weights and optimizer state, tensor by tensor.
    let read = |d: &Path| se_compile::train::checkpoint::read(&d.join("last.safetensors")).unwrap();
    let (wa, wb) = (read(&a), read(&b));
    assert_eq!(wa.tensors.len(), wb.tensors.len());
    for (name, va) in &wa.tensors {
        assert!(
            wb.tensors.get(name) == Some(va),
            "tensor {name} differs after resume"
        );
    }
    assert_eq!(wa.meta, wb.meta);
}

/// Pixels of exactly `rgb` in `img`.
fn pixels_of(img: &image::RgbImage, rgb: [u8; 3]) -> usize {
    img.pixels().filter(|p| p.0 == rgb).count()
}

#[test]
fn plots_are_800x500_with_both_curves_and_real_text() {
    let data = tiny_data("plots", 2);
    let out = tmp("plots-run").join("run");
    let (code, stdout, stderr) = train(
        "models/se_resnet_mini.yaml",
        &data,
        &out,
        &["--epochs", "2", "--batch-size", "10"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (train_rgb, val_rgb) = (
        se_compile::train::plot::colour(0),
        se_compile::train::plot::colour(1),
    );
    for name in ["accuracy.png", "loss.png"] {
        let img = image::open(out.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_rgb8();
        assert_eq!(img.dimensions(), (800, 500), "{name}");
        // Both lines run across the plot (2 px wide, markers at both epochs, the legend).
        let (t, v) = (pixels_of(&img, train_rgb), pixels_of(&img, val_rgb));
        assert!(
            t > 500 && v > 500,
            "{name}: train {t}, validation {v} pixels"
        );
        // Anti-aliased text and grid lines: many distinct colours, where a blank image or
        // hand-drawn glyphs have a handful.
        let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 100, "{name}: {} colours", colours.len());
        // Mostly background, but not blank.
        let white = pixels_of(&img, [255, 255, 255]);
        assert!(
            white > 200_000 && white < 390_000,
            "{name}: {white} white pixels"
        );
    }
}

/// One epoch of `spec` on `data`, writing the run into `data/r`.
fn train_one_epoch(spec: &str, data: &Path) -> (i32, String, String) {
    train(spec, data, &data.join("r"), &["--epochs", "1"])
}

#[test]
fn data_errors_are_clear() {
    let one = tmp("one-class");
    std::fs::create_dir_all(one.join("train/only")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/fashion-mnist-mini/train/1_trouser")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
        one.join("train/only/a.png"),
    )
    .unwrap();
    let (code, _, e) = train_one_epoch("models/se_resnet_mini.yaml", &one);
    assert_eq!(code, 1);
    assert!(e.contains("at least 2"), "{e}");
    let empty = tiny_data("empty-class", 1);
    std::fs::create_dir_all(empty.join("train/zz_empty")).unwrap();
    let (code, _, e) = train_one_epoch("models/se_resnet_mini.yaml", &empty);
    assert_eq!(code, 1);
    assert!(e.contains("zz_empty") && e.contains("no images"), "{e}");
    let (code, _, e) = run(&["train", "models/se_resnet_mini.yaml", "--device", "cuda"]);
    assert_eq!(code, 2);
    assert!(e.contains("--features cuda"), "{e}");
    // 17 classes in the spec, 10 in the data.
    let data = tiny_data("mismatch", 1);
    let (code, _, e) = train_one_epoch("models/se_resnet50.yaml", &data);
    assert_eq!(code, 1);
    assert!(e.contains("10 classes") && e.contains("17"), "{e}");
}

/// A TensorBoard directory that cannot be made is an error naming it, before any epoch.
#[test]
fn an_unwritable_tensorboard_directory_is_a_clear_error() {
    let data = tiny_data("tb-unwritable", 1);
    let out = tmp("tb-unwritable-run");
    std::fs::write(out.join("tb"), b"a file where tb/ goes").unwrap();
    let (code, stdout, e) = train(
        "models/se_resnet_mini.yaml",
        &data,
        &out,
        &["--epochs", "1"],
    );
    assert_eq!(code, 1, "{stdout}");
    assert!(
        e.contains(&format!("{}: cannot create", out.join("tb").display())),
        "{e}"
    );
    assert!(!stdout.contains("Epoch 1/1"), "{stdout}");
}

#[test]
fn nan_loss_stops_the_run_and_keeps_the_checkpoint() {
    let data = tiny_data("nan", 2);
    let dir = tmp("nan-run");
    // No BatchNorm to tame it: plain SGD with an absurd learning rate diverges within steps.
    let spec = dir.join("diverge.yaml");
    std::fs::write(&spec, "model: diverge\ninput: [28, 28, 1]\nclasses: 10\nlayers:\n  - conv2d: {filters: 8, kernel: 3}\n  - global_avg_pool\n  - dense: {units: 10}\n").unwrap();
    let out = dir.join("run");
    let (code, o, e) = train(
        spec.to_str().unwrap(),
        &data,
        &out,
        &[
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--lr",
            "1e30",
            "--optimizer",
            "sgd",
        ],
    );
    assert_eq!(code, 1, "{o}\n{e}");
    assert!(
        e.contains("loss became") && e.contains("no checkpoint"),
        "{e}"
    );
    // With a finished epoch, the NaN in the next one leaves epoch 1's checkpoint intact.
    let out2 = dir.join("run2");
    let (spec, opts) = (
        spec.to_str().unwrap(),
        ["--batch-size", "4", "--optimizer", "sgd"],
    );
    let first = [&opts[..], &["--epochs", "1", "--lr", "0.01"]].concat();
    assert_eq!(train(spec, &data, &out2, &first).0, 0);
    let before = std::fs::read(out2.join("last.safetensors")).unwrap();
    let second = [&opts[..], &["--epochs", "3", "--lr", "1e30"]].concat();
    let (code, _, e) = resume(spec, &data, &out2, &second);
    assert_eq!(code, 1, "{e}");
    assert!(e.contains("last good checkpoint is kept"), "{e}");
    assert_eq!(
        std::fs::read(out2.join("last.safetensors")).unwrap(),
        before
    );
}

#[test]
fn cached_and_streamed_runs_match_and_undecodable_images_are_left_out() {
    let data = tiny_data("stream", 3);
    let imgs: Vec<PathBuf> = data
        .join("test/7_sneaker")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // A header that reads and data that does not: it passes the listing, fails every decode.
    let bytes = std::fs::read(&imgs[0]).unwrap();
    std::fs::write(data.join("train/0_tshirt_top/truncated.png"), &bytes[..60]).unwrap();
    let base = tmp("stream-runs");
    let common = [
        "--batch-size",
        "8",
        "--seed",
        "5",
        "--augment",
        "true",
        "--epochs",
        "2",
    ];
    let (cached, streamed) = (base.join("cached"), base.join("streamed"));
    let (code, out_c, err_c) = train("models/se_resnet_mini.yaml", &data, &cached, &common);
    assert_eq!(code, 0, "{out_c}\n{err_c}");
    assert!(
        out_c.contains("Found 31 training and 20 validation images"),
        "{out_c}"
    );
    assert!(
        out_c.contains("data: 51 images, 0.0 MB decoded: cached in memory"),
        "{out_c}"
    );
    let (code, out_s, err_s) = train(
        "models/se_resnet_mini.yaml",
        &data,
        &streamed,
        &[&common[..], &["--cache-mb", "0"]].concat(),
    );
    assert_eq!(code, 0, "{out_s}\n{err_s}");
    assert!(
        out_s.contains("streamed from disk (cache off: --cache-mb 0)"),
        "{out_s}"
    );
    // Reported once over two epochs, with its path and the reason.
    for err in [&err_c, &err_s] {
        assert_eq!(
            err.matches("truncated.png: cannot decode").count(),
            1,
            "{err}"
        );
    }
    assert_eq!(history(&cached), history(&streamed), "cached run differs");
    let read = |d: &Path| se_compile::train::checkpoint::read(&d.join("last.safetensors")).unwrap();
    assert!(read(&cached).tensors == read(&streamed).tensors);

    // predict runs in batches: a bad image is an error of its own, the others are predicted.
    let w = cached.join("best.safetensors");
    let bad = data.join("train/0_tshirt_top/truncated.png");
    let list = [&imgs[0], &bad, &imgs[1]].map(|p| p.to_str().unwrap().to_string());
    let predict = |bs: &str| {
        let mut args = vec!["predict", "models/se_resnet_mini.yaml", "--weights"];
        args.extend([w.to_str().unwrap(), "--batch-size", bs]);
        args.extend(list.iter().map(|s| s.as_str()));
        run(&args)
    };
    let (code, one, e1) = predict("1");
    assert_eq!(code, 1, "{e1}");
    assert!(e1.contains("truncated.png: cannot decode"), "{e1}");
    let lines: Vec<&str> = one.lines().collect();
    assert_eq!(lines.len(), 2, "{one}");
    assert!(lines[0].starts_with(&format!("{}: ", list[0])), "{one}");
    assert!(lines[1].starts_with(&format!("{}: ", list[2])), "{one}");
    let (code, three, _) = predict("3");
    assert_eq!((code, three), (1, one));
}

/// `SE_COMPILE_PROFILE=1 bench`: a layer with a fused activation is named with it (its time
/// includes the activation's), on the CPU network and on the kernel network with host loops,
/// and the table's columns line up whatever the longest name.
#[test]
fn the_profile_names_fused_activations_and_lines_up() {
    for device in ["cpu", "cpu-kernelnet"] {
        let (code, out, err) = run_env(
            &[("SE_COMPILE_PROFILE", "1")],
            &["bench", "models/se_resnet_mini.yaml", "--steps", "1"]
                .into_iter()
                .chain(["--batch-size", "2", "--device", device])
                .collect::<Vec<_>>(),
        );
        assert_eq!(code, 0, "{err}");
        let text = out + &err;
        for label in [
            "forward: batch_norm + relu",
            "backward: se multiply + add + relu",
        ] {
            assert!(text.contains(label), "{device}: no `{label}` in\n{text}");
        }
        // Every table row's "ms total" figure ends where the header's column ends.
        let mut rows = 0;
        for table in text.split("phase / layer kind").skip(1) {
            let head = table.lines().next().unwrap();
            let end =
                "phase / layer kind".len() + head.find("ms total").unwrap() + "ms total".len();
            for row in table.lines().skip(1).take_while(|l| l.ends_with('%')) {
                let cols: Vec<&str> = row.split_whitespace().rev().take(3).collect();
                let ms = cols[2];
                let at = row.rfind(&format!(" {ms} ")).unwrap() + 1 + ms.len();
                assert_eq!(at, end, "{device}: misaligned row `{row}` under `{head}`");
                rows += 1;
            }
        }
        assert!(rows >= 20, "{device}: {rows} profile rows in\n{text}");
    }
}

/// `SE_COMPILE_FUSE=0` runs the kernel network on the spec's plan, layer by layer (to measure
/// what its passes gain), which the profile shows; any value but 0 or 1 is a usage error for
/// the network and for `memory --engine cuda`, and so is an unknown `SE_COMPILE_CONV`, both
/// checked with the device before any work.
#[test]
fn se_compile_fuse_switches_the_kernel_networks_passes() {
    let bench = |fuse: &str| {
        run_env(
            &[("SE_COMPILE_PROFILE", "1"), ("SE_COMPILE_FUSE", fuse)],
            &[
                "bench",
                "models/se_resnet_mini.yaml",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--device",
                "cpu-kernelnet",
            ],
        )
    };
    for (fuse, relu_passes, fused) in [("1", false, true), ("0", true, false)] {
        let (code, text, err) = bench(fuse);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            text.contains("forward: activation relu"),
            relu_passes,
            "{fuse}:\n{text}"
        );
        assert_eq!(
            text.contains("forward: batch_norm + relu"),
            fused,
            "{fuse}:\n{text}"
        );
    }
    // A usage error in one line, exit code 2.
    let one_line_usage_error = |(code, _, err): (i32, String, String), what: &str| {
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(what) && err.lines().count() == 1, "{err}");
    };
    one_line_usage_error(bench("yes"), "SE_COMPILE_FUSE=yes: use 1");
    // SE_COMPILE_CONV is checked as early, with the device (before any data is read).
    one_line_usage_error(
        run_env(
            &[("SE_COMPILE_CONV", "fast")],
            &[
                "train",
                "models/se_resnet_mini.yaml",
                "--data",
                "no/such/dir",
                "--device",
                "cpu-kernelnet",
            ],
        ),
        "SE_COMPILE_CONV=fast: use auto",
    );
    let (code, _, err) = run_env(
        &[("SE_COMPILE_FUSE", "yes")],
        &["memory", "models/se_resnet_mini.yaml", "--engine", "cuda"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SE_COMPILE_FUSE=yes: use 1"), "{err}");
}
