//! WebDataset shards as `--data`: shards the Python `webdataset` package writes train in both
//! engines, shards `se-compile shard` writes read back in `webdataset`, an epoch over shards is
//! an epoch over the folders they came from, resume continues an epoch order exactly, and
//! damaged shards are warned about once and skipped.

mod common;

use common::{bundled_subset, python, run, steps};
use se_compile::train::data::Dataset;
use std::path::{Path, PathBuf};
use std::process::Command;

const TINY: &str = "tests/scale_out/tiny_nobn.yaml";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("se-compile-shards-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(args: &[&str]) -> (String, String) {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?} failed:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    (out, err)
}

/// `se-compile shard SRC -o OUT --shard-size SIZE`.
fn shard(src: &Path, out: &Path, size: usize) -> String {
    ok(&[
        "shard",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--shard-size",
        &size.to_string(),
    ])
    .0
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-mini")
}

fn py(script: &str, args: &[&str]) -> String {
    common::stdout_of(Command::new(python()).arg("-c").arg(script).args(args))
}

/// Writes `DIR/{train,test}/<class>/*.png` as webdataset shards `OUT/{train,test}-%06d.tar` of 64
/// samples with `webdataset.ShardWriter`: every other image re-encoded as JPEG, the label as
/// `.cls`; `classes.txt` too when `names` is set.
const WDS_WRITE: &str = r#"
import io, os, sys, webdataset as wds
from PIL import Image
src, out, names = sys.argv[1], sys.argv[2], sys.argv[3] == "names"
os.makedirs(out, exist_ok=True)
for split in ["train", "test"]:
    classes = sorted(os.listdir(os.path.join(src, split)))
    with wds.ShardWriter(os.path.join(out, split + "-%06d.tar"), maxcount=64, verbose=0) as sink:
        i = 0
        for label, c in enumerate(classes):
            d = os.path.join(src, split, c)
            for f in sorted(os.listdir(d)):
                data = open(os.path.join(d, f), "rb").read()
                sample = {"__key__": f"{i:06d}", "cls": label}
                if i % 2:
                    buf = io.BytesIO()
                    Image.open(io.BytesIO(data)).convert("L").save(buf, "JPEG", quality=95)
                    sample["jpg"] = buf.getvalue()
                else:
                    sample["png"] = data
                sink.write(sample)
                i += 1
if names:
    open(os.path.join(out, "classes.txt"), "w").write("\n".join(classes) + "\n")
"#;

/// Shards from `webdataset` (brace pattern, PNG and JPEG samples) train in se-compile's engine
/// and in train.py under torchrun: one process follows se-compile's steps (the same epoch
/// order), two processes split the shards between them.
#[test]
fn webdataset_shards_train_in_both_engines() {
    let d = tmp("wds");
    let folders = d.join("folders");
    bundled_subset(&folders, 20, 5);
    let shards = d.join("shards");
    py(
        WDS_WRITE,
        &[folders.to_str().unwrap(), shards.to_str().unwrap(), "names"],
    );
    let pattern = format!("{}/train-{{000000..000003}}.tar", shards.display());
    let val = format!("{}/test-000000.tar", shards.display());
    let torchrun = python().with_file_name("torchrun");
    let common = [
        "--epochs",
        "1",
        "--no-tensorboard",
        "--data",
        &pattern,
        "--val-data",
        &val,
    ];
    let se = d.join("se");
    let (out, _) = ok(&[&["train", TINY, "--out", se.to_str().unwrap()], &common[..]].concat());
    assert!(
        out.contains("Found 200 training and 50 validation images in 10 classes"),
        "{out}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(se.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["classes"][0], "0_tshirt_top");
    for procs in ["1", "2"] {
        let t = d.join(format!("torch{procs}"));
        let (out, _) = ok(&[
            &[
                "train",
                TINY,
                "--out",
                t.to_str().unwrap(),
                "--engine",
                "torchrun",
                "--nproc-per-node",
                procs,
                "--workers",
                "0",
                "--torchrun",
                torchrun.to_str().unwrap(),
            ],
            &common[..],
        ]
        .concat());
        assert!(
            out.contains("Found 200 training and 50 validation images in 10 classes"),
            "{out}"
        );
        let (a, b) = (steps(&se), steps(&t));
        assert_eq!(a.len(), b.len(), "200 images in steps of 32");
        if procs == "1" {
            assert!(
                (a[0] - b[0]).abs() < 1e-5,
                "first step: se-compile {} vs train.py {}",
                a[0],
                b[0]
            );
        } else {
            // Each rank reads its own shards, so the batches are others than se-compile's.
            assert!(
                (a[0] - b[0]).abs() > 1e-7,
                "two ranks gave se-compile's batch"
            );
        }
    }
    // Without classes.txt the class names are the indices; eval reads the same samples.
    let bare = d.join("bare");
    py(
        WDS_WRITE,
        &[folders.to_str().unwrap(), bare.to_str().unwrap(), "none"],
    );
    let eval = |dir: &Path| {
        ok(&[
            "eval",
            TINY,
            "--weights",
            se.join("last.safetensors").to_str().unwrap(),
            "--data",
            &format!("{}/test-000000.tar", dir.display()),
        ])
        .0
    };
    let (named, indices) = (eval(&shards), eval(&bare));
    assert!(named.contains("50 images, 10 classes: loss"), "{named}");
    assert!(named.contains("0_tshirt_top"), "{named}");
    assert!(!indices.contains("0_tshirt_top"), "{indices}");
    let loss = |s: &str| {
        s.lines()
            .find(|l| l.contains(": loss"))
            .unwrap()
            .to_string()
    };
    assert_eq!(loss(&named), loss(&indices));
}

/// `se-compile shard` output read with `webdataset`: the same image bytes and labels as the
/// folders, and classes.txt with the folder names.
#[test]
fn se_compile_shards_are_read_by_webdataset() {
    let d = tmp("ours");
    let folders = d.join("folders");
    bundled_subset(&folders, 13, 3);
    let out = d.join("shards");
    let stdout = shard(&folders, &out, 40);
    assert!(
        stdout.contains("130 images in 10 classes -> 4 shard(s)"),
        "{stdout}"
    );
    let got = py(
        r#"
import glob, hashlib, json, os, sys
import webdataset as wds
shards, folders = sys.argv[1], sys.argv[2]
res = {}
for split in ["train", "test"]:
    urls = sorted(glob.glob(os.path.join(shards, split, "*.tar")))
    ds = wds.WebDataset(urls, shardshuffle=False).to_tuple("png", "cls")
    res[split] = sorted([hashlib.sha256(p).hexdigest(), int(c)] for p, c in ds)
    classes = sorted(os.listdir(os.path.join(folders, split)))
    want = []
    for label, c in enumerate(classes):
        for f in os.listdir(os.path.join(folders, split, c)):
            data = open(os.path.join(folders, split, c, f), "rb").read()
            want.append([hashlib.sha256(data).hexdigest(), label])
    res[split + "_folders"] = sorted(want)
    res[split + "_classes"] = [classes, open(os.path.join(shards, split, "classes.txt")).read().split()]
print(json.dumps(res))
"#,
        &[out.to_str().unwrap(), folders.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    for (split, n) in [("train", 130), ("test", 30)] {
        assert_eq!(v[split].as_array().unwrap().len(), n, "{split}");
        assert_eq!(v[split], v[format!("{split}_folders")], "{split}");
        assert_eq!(
            v[format!("{split}_classes")][0],
            v[format!("{split}_classes")][1]
        );
    }
}

/// Every image of one epoch as (label, pixels), sorted: the multiset an epoch sees.
fn epoch_multiset(ds: &Dataset, epoch: usize) -> Vec<(usize, Vec<u8>)> {
    let order = ds.epoch_order(7, epoch);
    let mut seen = order.clone();
    seen.sort();
    assert_eq!(
        seen,
        (0..ds.train.len()).collect::<Vec<_>>(),
        "a permutation"
    );
    let mut out = vec![];
    for chunk in order.chunks(64) {
        let b = ds.batch(&ds.train, chunk, None);
        assert!(b.failed.is_empty(), "{:?}", b.failed);
        let per = ds.h * ds.w * ds.c;
        for (k, &l) in b.labels.iter().enumerate() {
            let px = b.x[k * per..(k + 1) * per]
                .iter()
                .map(|v| (v * 255.0).round() as u8)
                .collect();
            out.push((l, px));
        }
    }
    out.sort();
    out
}

/// An epoch over `se-compile shard`'s shards of the bundled data and an epoch over its folders
/// give the same images with the same labels; the shard order is not the folders' order.
#[test]
fn an_epoch_over_shards_is_an_epoch_over_the_folders() {
    let d = tmp("multiset");
    let bundled = bundled();
    shard(&bundled, &d, 128);
    let shape = [28, 28, 1];
    let folders = Dataset::load_any(bundled.to_str().unwrap(), None, &shape, 0.0, 7).unwrap();
    let shards = Dataset::load_any(
        d.join("train").to_str().unwrap(),
        Some(d.join("test").to_str().unwrap()),
        &shape,
        0.0,
        7,
    )
    .unwrap();
    assert_eq!(shards.classes, folders.classes);
    assert_eq!(shards.train.len(), 1000);
    assert_eq!(shards.train.shards.len(), 8, "1000 images in shards of 128");
    assert!(shards.warnings.is_empty(), "{:?}", shards.warnings);
    let a = epoch_multiset(&shards, 0);
    assert_eq!(a, epoch_multiset(&folders, 0));
    assert_eq!(a, epoch_multiset(&shards, 1));
    assert_ne!(shards.epoch_order(7, 0), shards.epoch_order(7, 1));
    // Without --val-data, a seeded share of the shard list is held out, whole shards.
    let split =
        Dataset::load_any(d.join("train").to_str().unwrap(), None, &shape, 0.25, 7).unwrap();
    assert_eq!((split.train.shards.len(), split.val.shards.len()), (6, 2));
    assert_eq!(split.train.len() + split.val.len(), 1000);
}

/// A run on shards resumed after its first epoch takes the steps of the uninterrupted run.
#[test]
fn resume_on_shards_continues_the_epoch_order() {
    let d = tmp("resume");
    shard(&bundled(), &d, 300);
    let data = d.join("train");
    let val = d.join("test");
    let flags = [
        "--data",
        data.to_str().unwrap(),
        "--val-data",
        val.to_str().unwrap(),
        "--no-tensorboard",
    ];
    let (whole, part) = (d.join("whole"), d.join("part"));
    let train = |epochs: &str, how: &str, dir: &Path| {
        let head = [
            "train",
            TINY,
            "--epochs",
            epochs,
            how,
            dir.to_str().unwrap(),
        ];
        ok(&[&head[..], &flags[..]].concat());
    };
    train("2", "--out", &whole);
    train("1", "--out", &part);
    train("2", "--resume", &part);
    let (a, b) = (steps(&whole), steps(&part));
    assert_eq!(a.len(), 64);
    assert_eq!(a, b, "the resumed run's steps");
}

/// Overwrites `len` bytes of `file` at `at`.
fn overwrite(file: &Path, at: usize, bytes: &[u8]) {
    let mut data = std::fs::read(file).unwrap();
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(file, data).unwrap();
}

/// The byte offset of the tar header of member `name`.
fn header_of(file: &Path, name: &str) -> usize {
    let data = std::fs::read(file).unwrap();
    data.windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap_or_else(|| panic!("{name} in {}", file.display()))
}

/// A truncated shard, a shard with a corrupt header, a sample without a label, one with a bad
/// label and an image that does not decode: each is reported once (over two epochs), skipped,
/// and training goes on.
#[test]
fn damaged_shards_are_warned_about_once_and_skipped() {
    let d = tmp("damaged");
    let folders = d.join("folders");
    bundled_subset(&folders, 20, 2);
    shard(&folders, &d, 50);
    let train = d.join("train");
    // Shard 1 cut inside its 21st sample's image; shard 2's 31st header garbled; shard 3 cut
    // just before its 31st sample (a tar that looks whole but has no end-of-archive blocks).
    let s1 = train.join("train-000001.tar");
    let cut = header_of(&s1, "000000070.png") + 512 + 100;
    std::fs::write(&s1, &std::fs::read(&s1).unwrap()[..cut]).unwrap();
    let s2 = train.join("train-000002.tar");
    overwrite(&s2, header_of(&s2, "000000130.png") + 148, b"garbage!");
    let s3 = train.join("train-000003.tar");
    let cut = header_of(&s3, "000000180.png");
    std::fs::write(&s3, &std::fs::read(&s3).unwrap()[..cut]).unwrap();
    // A shard of 4 samples: a good one, one with no .cls, one with a bad .cls, one whose image
    // does not decode.
    let png = std::fs::read(
        std::fs::read_dir(folders.join("train/0_tshirt_top"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let f = std::fs::File::create(train.join("train-000004.tar")).unwrap();
    let mut b = tar::Builder::new(f);
    for (name, data) in [
        ("x1.png", &png[..]),
        ("x1.cls", b"3"),
        ("x2.png", &png[..]),
        ("x3.png", &png[..]),
        ("x3.cls", b"three"),
        ("x4.png", b"not a png"),
        ("x4.cls", b"5"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
    let torchrun = python().with_file_name("torchrun");
    let test = d.join("test");
    for engine in ["se-compile", "torchrun"] {
        let run_dir = d.join(engine);
        let mut args = vec![
            "train",
            TINY,
            "--data",
            train.to_str().unwrap(),
            "--val-data",
            test.to_str().unwrap(),
            "--epochs",
            "2",
            "--no-tensorboard",
            "--out",
            run_dir.to_str().unwrap(),
        ];
        if engine == "torchrun" {
            args.extend(["--engine", "torchrun", "--workers", "0"]);
            args.extend(["--torchrun", torchrun.to_str().unwrap()]);
        } else {
            args.extend(["--cache-mb", "0"]);
        }
        let (out, err) = ok(&args);
        let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
        let once = |what: &str| {
            let n = warnings.iter().filter(|l| l.contains(what)).count();
            assert_eq!(n, 1, "{engine}: {what}: {n} warnings in\n{err}");
        };
        once("train-000001.tar: damaged (truncated");
        once("train-000002.tar: damaged");
        once("train-000003.tar: damaged (truncated or corrupt: no end-of-archive");
        once("with no .cls label skipped (first: x2)");
        once("with a bad .cls label skipped");
        // 50 + 20 + 30 + 30 + 2 (x1, x4) samples kept; x4 then fails to decode in its batch.
        assert!(
            out.contains("Found 132 training and 20 validation images"),
            "{engine}: {out}"
        );
        assert_eq!(steps(&run_dir).len(), 10, "{engine}: 2 epochs of 5 steps");
        // Left out of its batches (se-compile), a black image (train.py): once either way.
        once("train-000004.tar:x4.png");
        assert_eq!(warnings.len(), 6, "{engine}: {err}");
    }
}

/// Bad shard arguments are clear errors that name the fix.
#[test]
fn bad_shard_arguments_are_clear_errors() {
    let d = tmp("bad");
    let missing = format!("{}/train-{{000000..000002}}.tar", d.display());
    let (code, _, err) = run(&["train", TINY, "--data", &missing]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("train-000000.tar: no such shard"), "{err}");
    let (code, _, err) = run(&[
        "train",
        TINY,
        "--data",
        &format!("{}/x-{{9..1}}.tar", d.display()),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("{FIRST..LAST}"), "{err}");
    let (code, _, err) = run(&["train", TINY, "--val-data", &missing]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only for shards"), "{err}");
    let (code, _, err) = run(&["shard", d.join("nope").to_str().unwrap(), "-o", "x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such folder"), "{err}");
}
