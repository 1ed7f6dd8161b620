#![allow(dead_code)]
use se_compile::diag::{render, Style};
use se_compile::report::summary::{self, Depth, Format, Options};
use se_compile::{compile, SourceFile, ValidGraph};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The reference environment's python (`scripts/pyenv.sh`: installed once, then cached outside
/// the clone).
pub fn python() -> &'static Path {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/pyenv.sh"))
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "scripts/pyenv.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// Reads a test file with the path relative to the crate root, so snapshots hold no absolute paths.
pub fn source(path: &Path) -> SourceFile {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rel = path.strip_prefix(root).unwrap_or(path);
    let text = std::fs::read_to_string(path).expect("test input is UTF-8");
    SourceFile::new(rel.to_string_lossy().replace('\\', "/"), text)
}

pub fn build(src: &SourceFile) -> ValidGraph {
    match compile(src) {
        Ok(vg) => vg,
        Err(d) => panic!("{}", render(&d, src, Style::Plain)),
    }
}

pub fn summary_text(vg: &ValidGraph, src: &SourceFile, depth: Depth) -> String {
    summary::render(
        vg,
        src,
        &Options {
            depth,
            format: Format::Text,
            show_source: false,
        },
    )
}

pub fn summary_json(vg: &ValidGraph, src: &SourceFile) -> serde_json::Value {
    summary::json(
        vg,
        src,
        &Options {
            depth: Depth::Layer,
            format: Format::Json,
            show_source: false,
        },
    )
}

pub fn model(name: &str) -> (SourceFile, ValidGraph) {
    let src = source(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name),
    );
    let vg = build(&src);
    (src, vg)
}

/// Fills `root` with the first `train` training and `test` test images of each class of the
/// bundled Fashion-MNIST subset (sorted by name), in its `train/<class>/`, `test/<class>/` layout.
pub fn bundled_subset(root: &Path, train: usize, test: usize) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-mini");
    for (split, n) in [("train", train), ("test", test)] {
        let mut classes: Vec<_> = std::fs::read_dir(src.join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        classes.sort();
        for c in classes {
            let dst = root.join(split).join(c.file_name().unwrap());
            std::fs::create_dir_all(&dst).unwrap();
            let mut files: Vec<_> = std::fs::read_dir(&c)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for f in files.iter().take(n) {
                std::fs::copy(f, dst.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
}

/// Runs `cmd`, which must succeed (else the test fails with its stderr), and returns its stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs the real `se-compile` binary in the crate root: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_env(&[], args)
}

/// `run` with environment variables set.
pub fn run_env(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_se-compile"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A run directory's steps.csv: the training loss of every step.
pub fn steps(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("steps.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect()
}
