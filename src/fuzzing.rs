//! The fuzz targets: one per reader of a user's file, each taking the whole path that file
//! takes through se-compile, and each required never to panic (a clean error is fine). The
//! coverage-guided harnesses in `fuzz/` (cargo-afl) call these; `tests/fuzz_corpus.rs` runs
//! every file of their corpora and every crash they found through them, so what the fuzzer
//! learned stays checked in CI.

use crate::diag::{render, Style};
use crate::report::summary::{self, Depth, Format, Options};
use crate::source::SourceFile;
use std::path::PathBuf;

/// A fuzz target: an input's bytes, handled as se-compile handles that kind of file.
pub type Target = fn(&[u8]);

/// The targets, by the name of their `fuzz/` harness and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec_yaml", spec_yaml),
    ("spec_dsl", spec_dsl),
    ("weights", weights),
    ("run_files", run_files),
    ("image", image),
    ("shard", shard),
];

/// A spec's path: parse, expand, validate, then the summary at every depth; an invalid spec's
/// diagnostic is rendered as `check` renders it.
fn spec(data: &[u8], name: &str) {
    let text = String::from_utf8_lossy(data);
    let src = SourceFile::new(name, text.into_owned());
    match crate::compile(&src) {
        Ok(vg) => {
            for depth in [Depth::Layer, Depth::Block, Depth::Stage] {
                for format in [Format::Text, Format::Json] {
                    let opts = Options {
                        depth,
                        format,
                        show_source: true,
                    };
                    std::hint::black_box(summary::render(&vg, &src, &opts));
                }
            }
        }
        Err(d) => {
            std::hint::black_box(render(&d, &src, Style::Plain));
        }
    }
}

pub fn spec_yaml(data: &[u8]) {
    spec(data, "fuzz.yaml")
}

pub fn spec_dsl(data: &[u8]) {
    spec(data, "fuzz.se")
}

/// A scratch file of this process for the readers that take a path.
fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("se-compile-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the temp dir is writable");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("the temp dir is writable");
    path
}

/// A checkpoint or weights file (`--resume`, `eval`, `predict`, `import-weights` read them with
/// `checkpoint::read`), then loaded into a small network as `load_into` does.
pub fn weights(data: &[u8]) {
    use crate::lower::model::Model;
    let path = scratch("weights.safetensors", data);
    let Ok(ck) = crate::train::checkpoint::read(&path) else {
        return;
    };
    let mut net = crate::lower::layers::Net::new(fuzz_net(), 1);
    let _ = crate::train::checkpoint::load_into(&mut net as &mut dyn Model, &ck, &path);
}

/// The small network the `weights` target loads checkpoints into.
fn fuzz_net() -> &'static crate::ValidGraph {
    static VG: std::sync::OnceLock<crate::ValidGraph> = std::sync::OnceLock::new();
    VG.get_or_init(|| {
        let spec = crate::lower::parity::case_spec(
            "- conv2d: {filters: 4, kernel: 3}\n  - batch_norm\n  - relu",
        );
        crate::compile(&SourceFile::new("fuzz.yaml", spec)).expect("the fuzz network compiles")
    })
}

/// A checkpoint of that network as `train` writes one (the `weights` corpus's seed).
pub fn weights_seed(path: &std::path::Path) -> Result<(), String> {
    let net = crate::lower::layers::Net::new(fuzz_net(), 1);
    let meta = [("epoch".to_string(), "1".to_string())]
        .into_iter()
        .collect();
    crate::train::checkpoint::save(path, &net, &[], meta)
}

/// A run directory's files as `--resume` and `view --run` read them: the first byte picks
/// history.csv (read by `report::view::read_run`), history.json (parsed and replayed through
/// the callbacks) or config.json; the rest is the file.
pub fn run_files(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let path = scratch("history.csv", rest);
            let _ = crate::report::view::read_run(path.parent().expect("a dir"));
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(h) = serde_json::from_str::<Vec<crate::train::run::EpochRecord>>(&text) {
                let cfg = crate::spec::recipe::TrainConfig::default();
                let cb = crate::train::callbacks::Callbacks::replay(&cfg, &h);
                for e in 0..h.len().min(1000) {
                    std::hint::black_box(cb.lr(&cfg, e));
                }
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let _ = serde_json::from_str::<crate::train::run::RunConfig>(&text);
        }
    }
}

/// An image as the data loader decodes it, to the mini model's input and to an RGB one.
pub fn image(data: &[u8]) {
    let path = scratch("image.png", data);
    let _ = crate::train::data::decode(&path, 28, 28, 1);
    let _ = crate::train::data::decode(&path, 32, 32, 3);
}

/// A WebDataset shard as `--data` reads it: its headers and labels scanned, then each sample's
/// image read and decoded as the loader does (the first 64).
pub fn shard(data: &[u8]) {
    use crate::train::data::{decode_source, Source};
    let path = scratch("shard.tar", data);
    let scanned = crate::train::shards::scan(&path);
    for (m, _) in scanned.samples.into_iter().take(64) {
        let _ = decode_source(&Source::Shard(m), 28, 28, 1);
    }
}
