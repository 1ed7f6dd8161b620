//! `se-compile analyze` on `se_resnet_mini` trained (through the real binary) on a subset of the
//! bundled Fashion-MNIST data: the files it writes and their shapes, its statistics against the
//! SE gate computed here by hand, the untrained network's near-uniform excitations against the
//! trained one's, and its errors.

mod common;

use common::run;
use se_compile::lower::layers::Net;
use se_compile::lower::model::Model;
use se_compile::train::checkpoint;
use se_compile::train::data::Dataset;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SPEC: &str = "models/se_resnet_mini.yaml";
/// Training and test images per class, epochs: enough for the gates to become class-specific
/// well past the untrained network's, in about a minute of the dev profile on 2 cores.
const TRAIN_PER_CLASS: usize = 30;
const TEST_PER_CLASS: usize = 20;
const EPOCHS: &str = "4";
/// se_resnet_mini's SE blocks: two per stage, SE after each branch's last BN.
const CHANNELS: [usize; 6] = [32, 32, 64, 64, 128, 128];
const SCOPES: [&str; 6] = [
    "stage1.block1",
    "stage1.block2",
    "stage2.block1",
    "stage2.block2",
    "stage3.block1",
    "stage3.block2",
];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("se-compile-analyze-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The trained run and the untrained (seeded initial) weights, made once for all tests.
struct Trained {
    data: PathBuf,
    trained: PathBuf,
    untrained: PathBuf,
}

fn trained() -> &'static Trained {
    static RUN: OnceLock<Trained> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = tmp("run");
        let data = root.join("data");
        common::bundled_subset(&data, TRAIN_PER_CLASS, TEST_PER_CLASS);
        let out = root.join("run");
        let (code, stdout, stderr) = run(&[
            "train",
            SPEC,
            "--data",
            s(&data),
            "--out",
            s(&out),
            "--epochs",
            EPOCHS,
            "--batch-size",
            "16",
        ]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        // The values `train` starts from: the network built with the recipe's seed.
        let (src, vg) = common::model("se_resnet_mini.yaml");
        let spec = se_compile::spec::parse(&src).unwrap();
        let seed = se_compile::spec::recipe::TrainConfig::from_spec(&spec)
            .unwrap()
            .seed;
        let untrained = root.join("untrained.safetensors");
        checkpoint::save(&untrained, &Net::new(&vg, seed), &[], HashMap::new()).unwrap();
        Trained {
            data,
            trained: out.join("best.safetensors"),
            untrained,
        }
    })
}

fn analyze(weights: &Path, data: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "analyze",
        SPEC,
        "--weights",
        s(weights),
        "--data",
        s(data),
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn json(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("excitations.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The network with `weights`, and the test split's images (N, 28, 28, 1) with their labels.
fn net_and_images(weights: &Path, data: &Path) -> (Net, Vec<f32>, Vec<usize>, Vec<String>) {
    let (_, vg) = common::model("se_resnet_mini.yaml");
    let mut net = Net::new(&vg, 0);
    checkpoint::load_into(&mut net, &checkpoint::read(weights).unwrap(), weights).unwrap();
    let ds = Dataset::load(data, 28, 28, 1, 0.0, 0).unwrap();
    let idx: Vec<usize> = (0..ds.val.len()).collect();
    let b = ds.batch(&ds.val, &idx, None);
    assert!(b.failed.is_empty());
    (net, b.x, b.labels, ds.classes)
}

fn node_named(net: &Net, name: &str) -> se_compile::ir::NodeId {
    let g = &net.plan.graph;
    g.ids()
        .find(|&id| g.node(id).name == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

#[test]
fn writes_csv_json_and_png_of_the_documented_shapes() {
    let t = trained();
    let out = tmp("shapes").join("analysis");
    let classes = ["1_trouser", "5_sandal", "7_sneaker"];
    let (code, stdout, stderr) = analyze(
        &t.trained,
        &t.data,
        &out,
        &["--classes", &classes.join(",")],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("se_resnet_mini: 6 SE blocks, 200 images of")
            && stdout.contains("3 of 10 classes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("specificity") && stdout.contains("stage3.block2"),
        "{stdout}"
    );

    // JSON: every block in graph order with its scope, channels, means and figures.
    let j = json(&out);
    assert_eq!(j["model"], "se_resnet_mini");
    assert_eq!(j["split"], "test");
    assert_eq!(j["images"], 10 * TEST_PER_CLASS);
    assert_eq!(j["plots"], serde_json::json!(["excitations.png"]));
    for key in ["excitation", "means", "specificity", "channel_spread"] {
        assert!(j["definitions"][key].as_str().unwrap().len() > 40, "{key}");
    }
    let names: Vec<&str> = j["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, classes);
    let blocks = j["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 6);
    for (b, blk) in blocks.iter().enumerate() {
        let c = CHANNELS[b];
        assert_eq!(blk["scope"], SCOPES[b]);
        assert!(
            blk["name"].as_str().unwrap().starts_with("multiply"),
            "{blk}"
        );
        assert_eq!(blk["channels"], c);
        assert_eq!(blk["images"], 10 * TEST_PER_CLASS);
        let overall = floats(&blk["overall"]);
        assert_eq!(overall.len(), c);
        let per = blk["per_class"].as_array().unwrap();
        assert_eq!(per.len(), 3);
        let mut sq = 0.0;
        for (p, name) in per.iter().zip(classes) {
            assert_eq!(p["class"], name);
            assert_eq!(p["images"], TEST_PER_CLASS);
            let m = floats(&p["mean"]);
            assert_eq!(m.len(), c);
            assert!(m.iter().all(|v| (0.0..=1.0).contains(v)), "sigmoid gates");
            sq += m
                .iter()
                .zip(&overall)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>();
        }
        // The stated definitions, recomputed from the written means.
        let spec = (sq / (3 * c) as f64).sqrt();
        assert!((blk["specificity"].as_f64().unwrap() - spec).abs() < 1e-12);
        let mean = overall.iter().sum::<f64>() / c as f64;
        let spread =
            (overall.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64).sqrt();
        assert!((blk["channel_spread"].as_f64().unwrap() - spread).abs() < 1e-12);
    }

    // CSV: long form, blocks × (all + classes) × channels rows, the same numbers as the JSON.
    let csv = std::fs::read_to_string(out.join("excitations.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "block,scope,class,channel,mean,images"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows.len(),
        CHANNELS.iter().sum::<usize>() * (classes.len() + 1)
    );
    let mut k = 0;
    for (b, blk) in blocks.iter().enumerate() {
        let series = std::iter::once(("all", floats(&blk["overall"]), 10 * TEST_PER_CLASS)).chain(
            blk["per_class"].as_array().unwrap().iter().map(|p| {
                (
                    p["class"].as_str().unwrap(),
                    floats(&p["mean"]),
                    TEST_PER_CLASS,
                )
            }),
        );
        for (class, means, n) in series {
            for (c, m) in means.iter().enumerate() {
                let r = &rows[k];
                k += 1;
                assert_eq!(r[0], blk["name"].as_str().unwrap());
                assert_eq!(r[1], SCOPES[b]);
                assert_eq!(r[2], class);
                assert_eq!(r[3], c.to_string());
                assert_eq!(r[4].parse::<f64>().unwrap(), *m, "{r:?}");
                assert_eq!(r[5], n.to_string());
            }
        }
    }

    // PNG: 6 panels, two per row, each PANEL_SIZE; the class lines and the black overall mean.
    let img = image::open(out.join("excitations.png")).unwrap().to_rgb8();
    let (w, h) = se_compile::train::plot::PANEL_SIZE;
    assert_eq!(img.dimensions(), (2 * w, 3 * h));
    for i in 0..3 {
        let colour = se_compile::train::plot::colour(i);
        let n = img.pixels().filter(|p| p.0 == colour).count();
        assert!(n > 1000, "class {i}: {n} pixels");
    }
    assert_eq!(
        img.pixels()
            .filter(|p| p.0 == se_compile::train::plot::colour(3))
            .count(),
        0,
        "only 3 classes are drawn"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn statistics_equal_the_gate_computed_by_hand() {
    let t = trained();
    let out = tmp("direct");
    let (code, stdout, stderr) = analyze(
        &t.trained,
        &t.data,
        &out,
        &["--classes", "0_tshirt_top,8_bag"],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let j = json(&out);
    let (mut net, x, labels, classes) = net_and_images(&t.trained, &t.data);
    let n = labels.len();
    let ck = checkpoint::read(&t.trained).unwrap();
    let w = |name: &str| ck.tensors[name].clone();
    let mean_of = |rows: &[Vec<f64>], keep: &dyn Fn(usize) -> bool| -> Vec<f64> {
        let c = rows[0].len();
        let picked: Vec<&Vec<f64>> = (0..n)
            .filter(|&i| keep(labels[i]))
            .map(|i| &rows[i])
            .collect();
        (0..c)
            .map(|j| picked.iter().map(|r| r[j]).sum::<f64>() / picked.len() as f64)
            .collect()
    };
    let close = |what: &str, a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "{what}: differs by {worst}");
    };
    let g = net.plan.graph.clone();
    for blk in j["blocks"].as_array().unwrap() {
        // The block as se.rs builds it: x, GlobalPool, Reshape, 1x1 conv, ReLU, 1x1 conv,
        // sigmoid, Multiply(x, gate).
        let mul = node_named(&net, blk["name"].as_str().unwrap());
        let [x_id, gate] = g.node(mul).inputs[..] else {
            panic!("two inputs")
        };
        let input = |id| g.node(id).inputs[0];
        let excite = input(gate);
        let squeeze = input(input(excite));
        let pooled_id = input(input(squeeze));
        assert_eq!(input(pooled_id), x_id);
        for (id, kind) in [
            (gate, "Activation"),
            (excite, "Conv2D"),
            (squeeze, "Conv2D"),
            (pooled_id, "GlobalAveragePooling2D"),
        ] {
            assert_eq!(g.node(id).op.keras_class(), kind);
        }
        // The feature map from the network; the squeeze and excitation computed here.
        let fm = net.probe(x.clone(), vec![n, 28, 28, 1], &[x_id]).remove(0);
        let c = *g.node(x_id).shape.last().unwrap();
        let hw = fm.len() / n / c;
        let (w1, b1) = (
            w(&format!("{}/kernel", g.node(squeeze).name)),
            w(&format!("{}/bias", g.node(squeeze).name)),
        );
        let (w2, b2) = (
            w(&format!("{}/kernel", g.node(excite).name)),
            w(&format!("{}/bias", g.node(excite).name)),
        );
        let r = b1.len();
        assert_eq!((w1.len(), w2.len()), (c * r, r * c));
        let gates: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let img = &fm[i * hw * c..(i + 1) * hw * c];
                let p: Vec<f64> = (0..c)
                    .map(|ch| (0..hw).map(|q| img[q * c + ch] as f64).sum::<f64>() / hw as f64)
                    .collect();
                // 1x1 kernels are (1, 1, C_in, C_out): element [i][o] at i * C_out + o.
                let z: Vec<f64> = (0..r)
                    .map(|o| {
                        (b1[o] as f64 + (0..c).map(|i| p[i] * w1[i * r + o] as f64).sum::<f64>())
                            .max(0.0)
                    })
                    .collect();
                (0..c)
                    .map(|o| {
                        let e =
                            b2[o] as f64 + (0..r).map(|i| z[i] * w2[i * c + o] as f64).sum::<f64>();
                        1.0 / (1.0 + (-e).exp())
                    })
                    .collect()
            })
            .collect();
        let label = blk["label"].as_str().unwrap();
        close(
            &format!("{label} all"),
            &floats(&blk["overall"]),
            &mean_of(&gates, &|_| true),
        );
        for p in blk["per_class"].as_array().unwrap() {
            let k = classes
                .iter()
                .position(|c| c == p["class"].as_str().unwrap())
                .unwrap();
            close(
                &format!("{label} {k}"),
                &floats(&p["mean"]),
                &mean_of(&gates, &|l| l == k),
            );
        }
    }
}

#[test]
fn probe_reads_the_values_forward_computes() {
    let t = trained();
    let (mut net, x, labels, _) = net_and_images(&t.trained, &t.data);
    let n = labels.len();
    let shape = vec![n, 28, 28, 1];
    let (logits, _) = net.plan.logits();
    let out = net.probe(
        x.clone(),
        shape.clone(),
        &[logits, se_compile::ir::NodeId(0), logits],
    );
    assert_eq!(out[0], out[2], "a node asked twice");
    assert_eq!(out[1], x, "the input node");
    let probs = net.outputs(x.clone(), shape.clone());
    let soft = se_compile::lower::layers::softmax_rows(&out[0], 10);
    let worst = soft
        .iter()
        .zip(&probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "softmax(probe(logits)) vs outputs: {worst}");
    // Inference mode: the moving BN statistics are left alone.
    let before = net.param_values();
    let _ = net.probe(x, shape, &[logits]);
    assert_eq!(before, net.param_values());
}

#[test]
fn an_untrained_network_is_class_agnostic_and_a_trained_one_is_not() {
    let t = trained();
    let figures = |weights: &Path, name: &str| -> Vec<(f64, f64)> {
        let out = tmp(name);
        let (code, stdout, stderr) = analyze(weights, &t.data, &out, &[]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let j = json(&out);
        assert_eq!(
            j["classes"].as_array().unwrap().len(),
            10,
            "all classes by default"
        );
        j["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["specificity"].as_f64().unwrap(),
                    b["channel_spread"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let untrained = figures(&t.untrained, "untrained");
    let trained = figures(&t.trained, "trained");
    eprintln!("untrained (specificity, channel spread) per block: {untrained:?}");
    eprintln!("trained   (specificity, channel spread) per block: {trained:?}");
    let spec = |f: &[(f64, f64)]| f.iter().map(|x| x.0).collect::<Vec<_>>();
    let (su, st) = (spec(&untrained), spec(&trained));
    let max_untrained = su.iter().cloned().fold(0.0, f64::max);
    // Measured (seed 42): untrained 0.025..0.048 in every block; trained 0.024, 0.046, 0.044,
    // 0.071, 0.130, 0.166. Over the untrained networks of seeds 1, 3, 7, 11 and 42 the largest
    // block specificity was 0.057, and the trained last block's 0.166..0.172 over seeds 1, 7, 42.
    // The untrained network is class-agnostic: every class's mean gate stays close to the mean
    // over all images, in every block (its random weights still make the channels differ:
    // channel spread 0.10..0.23).
    assert!(max_untrained < 0.08, "untrained specificity: {su:?}");
    // The trained one is not: its last block is more than twice as class-specific as any
    // block of the untrained network ...
    let last = st[st.len() - 1];
    assert!(
        last > 2.0 * max_untrained,
        "trained {st:?} vs untrained {su:?}"
    );
    // ... and, as in the paper's Fig. 6, class specificity grows with depth: stage 3's blocks
    // are at least twice as class-specific as stage 1's.
    let (first, deep) = ((st[0] + st[1]) / 2.0, (st[4] + st[5]) / 2.0);
    assert!(deep > 2.0 * first, "stage 1 {first} vs stage 3 {deep}");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let t = trained();
    let out = tmp("errors");
    let o = out.join("a");
    // An unknown class names itself and the valid ones; a usage error.
    let (code, _, err) = analyze(&t.trained, &t.data, &o, &["--classes", "1_trouser,socks"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`socks`") && err.contains("0_tshirt_top, 1_trouser"),
        "{err}"
    );
    // Missing weights: usage (2), as eval; another spec's weights: invalid (1).
    let (code, _, err) = analyze(&out.join("none.safetensors"), &t.data, &o, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("none.safetensors"), "{err}");
    let (code, _, err) = run(&[
        "analyze",
        "models/se_block.yaml",
        "--weights",
        s(&t.trained),
        "--data",
        s(&t.data),
        "-o",
        s(&o),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("different spec"), "{err}");
    let junk = out.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let (code, _, err) = analyze(&junk, &t.data, &o, &[]);
    assert_eq!(code, 1, "{err}");
    // A spec without SE.
    let (code, _, err) = run(&[
        "analyze",
        "models/resnet50.yaml",
        "--weights",
        s(&t.trained),
        "-o",
        s(&o),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no SE block in models/resnet50.yaml"), "{err}");
    // Data that is not there, or not images.
    let (code, _, err) = analyze(&t.trained, &out.join("nowhere"), &o, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no such data folder"), "{err}");
    // Test images whose header reads but whose data does not decode (truncated PNGs): each is
    // reported; a chosen class left with none, or a split with none, is an error.
    let broken = out.join("broken");
    common::bundled_subset(&broken, 1, 1);
    let truncate = |class: &str| {
        for f in std::fs::read_dir(broken.join("test").join(class)).unwrap() {
            let p = f.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        }
    };
    truncate("8_bag");
    let (code, _, err) = analyze(&t.trained, &broken, &o, &["--classes", "1_trouser,8_bag"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot decode") && err.contains("class `8_bag` has no image that decodes"),
        "{err}"
    );
    for e in std::fs::read_dir(broken.join("test")).unwrap() {
        truncate(e.unwrap().file_name().to_str().unwrap());
    }
    let (code, _, err) = analyze(&t.trained, &broken, &o, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no image decodes"), "{err}");
    // An output directory that cannot be made.
    std::fs::write(out.join("file"), b"x").unwrap();
    let (code, _, err) = analyze(&t.trained, &t.data, &out.join("file/sub"), &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot create"), "{err}");
    // -o is made before the data is read (a bad one fails first), but no file is written.
    let written: Vec<_> = std::fs::read_dir(&o).map_or(vec![], |d| d.collect());
    assert!(written.is_empty(), "nothing written on error: {written:?}");
}

#[test]
fn help_has_an_example_and_the_definitions() {
    let (code, out, err) = run(&["analyze", "--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Example") && out.contains("se-compile analyze models/"),
        "{out}"
    );
    assert!(
        out.contains("Class specificity = sqrt(mean over the chosen classes k and channels c of (m_kc - m_c)^2)"),
        "{out}"
    );
    assert!(
        out.contains("channel spread = std over channels of m_c"),
        "{out}"
    );
}

#[test]
fn sixteen_blocks_of_se_resnet50_go_to_two_pngs_of_eight_panels() {
    // SE-ResNet-50's seeded initial weights at 32x32 on one test image per class: only the
    // layout is checked here.
    let root = tmp("r50");
    let data = root.join("data");
    common::bundled_subset(&data, 1, 1);
    let (_, vg) = common::model("se_resnet50.yaml");
    let weights = root.join("init.safetensors");
    checkpoint::save(&weights, &Net::new(&vg, 0), &[], HashMap::new()).unwrap();
    let out = root.join("out");
    let (code, stdout, stderr) = run(&[
        "analyze",
        "se_resnet50",
        "--weights",
        s(&weights),
        "--data",
        s(&data),
        "--input",
        "32",
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("has 10 classes but the model's output has 17 units"),
        "{stderr}"
    );
    let j = json(&out);
    assert_eq!(
        j["plots"],
        serde_json::json!(["excitations-1.png", "excitations-2.png"])
    );
    let blocks = j["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 16);
    assert_eq!(blocks[15]["scope"], "stage4.block3");
    assert_eq!(blocks[15]["channels"], 2048);
    assert!(!out.join("excitations.png").exists());
    let (w, h) = se_compile::train::plot::PANEL_SIZE;
    for name in ["excitations-1.png", "excitations-2.png"] {
        let img = image::open(out.join(name)).unwrap();
        assert_eq!((img.width(), img.height()), (2 * w, 4 * h), "{name}");
    }
}
