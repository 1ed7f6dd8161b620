//! The data path streams: a dataset whose decoded images far exceed memory trains with a peak
//! RSS bounded by the prefetch queue and one batch, not by the dataset.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Small PNGs on disk, large once decoded: every image is resized to the spec's input.
const FILES_PER_CLASS: usize = 450;
const SIDE: usize = 640;
const SPEC: &str = "model: huge_input\ninput: [640, 640, 3]\nclasses: 2\nlayers:\n  - conv2d: {filters: 4, kernel: 8, stride: 8}\n  - global_avg_pool\n  - dense: {units: 2, activation: softmax}\ntrain:\n  epochs: 1\n  batch_size: 4\n";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("se-compile-stream-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 2 classes of 16x16 RGB noise, one reddish and one bluish.
fn write_images(root: &Path) {
    let mut state = 1u64;
    for (label, class) in ["a_red", "b_blue"].iter().enumerate() {
        let dir = root.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..FILES_PER_CLASS {
            let img = image::RgbImage::from_fn(16, 16, |_, _| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = (state >> 57) as u8; // 0..127
                if label == 0 {
                    image::Rgb([128 + n, n / 2, n / 2])
                } else {
                    image::Rgb([n / 2, n / 2, 128 + n])
                }
            });
            img.save(dir.join(format!("{k:04}.png"))).unwrap();
        }
    }
}

/// Runs the binary to its end; returns (exit code, peak RSS in bytes, stdout, stderr). The peak
/// comes from the kernel's accounting of that one child (`wait4`'s `ru_maxrss`).
// The child is reaped by `wait4` itself, which also reports its peak RSS.
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&str], dir: &Path) -> (i32, u64, String, String) {
    let (out, err) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let child = Command::new(env!("CARGO_BIN_EXE_se-compile"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("runs");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 only writes into the two locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        usage.ru_maxrss as u64 * 1024,
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    )
}

#[test]
fn training_on_data_larger_than_memory_keeps_rss_bounded() {
    let root = tmp("huge");
    write_images(&root);
    let spec = root.join("huge_input.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let decoded = (2 * FILES_PER_CLASS * SIDE * SIDE * 3) as u64;
    assert!(decoded > 1 << 30, "the decoded dataset should exceed 1 GiB");
    let run = root.join("run");
    let t = std::time::Instant::now();
    let (code, peak, stdout, stderr) = run_measured(
        &[
            "train",
            spec.to_str().unwrap(),
            "--data",
            root.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            // Well under the decoded size, so the data must stream.
            "--cache-mb",
            "256",
        ],
        &root,
    );
    eprintln!(
        "streamed training: peak RSS {:.0} MB for {:.0} MB of decoded images, {:.1} s",
        peak as f64 / 1e6,
        decoded as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Found 720 training and 180 validation images in 2 classes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("streamed from disk (over the 256 MB cache budget)"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.lines().nth(1).unwrap().starts_with("1,"), "{csv}");
    assert!(
        peak < decoded / 3,
        "peak RSS {peak} B is not well under the {decoded} B of decoded images"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn cached_images_are_decoded_once_and_streamed_ones_every_time() {
    use se_compile::train::data::Dataset;
    let root = tmp("cache");
    for class in ["a", "b"] {
        let dir = root.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..3u8 {
            image::GrayImage::from_pixel(4, 4, image::Luma([k * 40]))
                .save(dir.join(format!("{k}.png")))
                .unwrap();
        }
    }
    let load = |budget_mb| {
        let mut ds = Dataset::load(&root, 8, 8, 1, 0.0, 1).unwrap();
        let line = ds.cache(budget_mb);
        (ds, line)
    };
    let (cached, line) = load(1);
    assert_eq!(line, "data: 6 images, 0.0 MB decoded: cached in memory");
    let (streamed, line) = load(0);
    assert!(line.ends_with("streamed from disk (cache off: --cache-mb 0)"));
    let all: Vec<usize> = (0..6).collect();
    let first = cached.batch(&cached.train, &all, None);
    assert_eq!((first.len(), first.x.len()), (6, 6 * 64));
    assert_eq!(first.labels, cached.train.labels);
    assert_eq!(first.labels.iter().sum::<usize>(), 3);
    assert_eq!(streamed.batch(&streamed.train, &all, None).x, first.x);
    // With the files gone, only the cache still has the images.
    std::fs::remove_dir_all(root.join("train")).unwrap();
    let again = cached.batch(&cached.train, &all, None);
    assert!(again.failed.is_empty() && again.x == first.x);
    let gone = streamed.batch(&streamed.train, &[1, 4], None);
    assert!(gone.is_empty() && gone.x.is_empty());
    assert_eq!(gone.failed.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 4]);
    let _ = std::fs::remove_dir_all(&root);
}
