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
    ("lsp_edits", lsp_edits),
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

/// An editing session as an editor drives `se-compile lsp`: the document opened, then edits,
/// each followed by the diagnostics a pause would publish, and requests at fuzzed positions.
///
/// The input: byte 0 picks the language (bit 0: `.se` or `.yaml`) and inlay hints (bit 1); up
/// to the first 0xFF byte (never in UTF-8) is the opened text; each later 0xFF-separated chunk
/// is one step, `[op, line, column, line2, column2, text...]` (missing bytes are 0). Positions
/// are LSP positions (lines, UTF-16 columns), out of range ones included, as editors send them.
///
/// Fails on a handler that panicked (the server turns that into an `InternalError` reply or an
/// `internal::panic` diagnostic, so it must be looked for), and on formatting that changes
/// what a valid `.se` file means or is not stable when run again.
pub fn lsp_edits(data: &[u8]) {
    use crate::lsp::Server;
    use lsp_server::{Notification, Request, RequestId};
    use serde_json::json;
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (lang, uri) = if flags & 1 == 0 {
        ("se", "file:///fuzz/spec.se")
    } else {
        ("yaml", "file:///fuzz/spec.yaml")
    };
    let mut chunks = rest.split(|&b| b == 0xFF);
    let text = String::from_utf8_lossy(chunks.next().unwrap_or_default()).into_owned();
    let mut server = Server::detached(flags & 2 != 0);
    let doc = json!({ "uri": uri });
    let luri: lsp_types::Uri = uri.parse().expect("a valid URI");
    let open = |server: &mut Server, text: &str| {
        server.notification(Notification::new(
            "textDocument/didOpen".into(),
            json!({ "textDocument": { "uri": uri, "languageId": lang, "version": 1, "text": text } }),
        ));
    };
    let check_diagnostics = |server: &mut Server| {
        for d in server.diagnostics(&luri) {
            let code = d.code.map(|c| match c {
                lsp_types::NumberOrString::String(s) => s,
                lsp_types::NumberOrString::Number(n) => n.to_string(),
            });
            assert_ne!(
                code.as_deref(),
                Some("internal::panic"),
                "the compiler panicked: {}",
                d.message
            );
        }
    };
    let mut id = 0;
    let mut ask = |server: &mut Server, method: &str, params: serde_json::Value| {
        id += 1;
        let resp = server.request(Request::new(RequestId::from(id), method.into(), params));
        match resp.response_result {
            Ok(v) => v,
            Err(e) => {
                assert_ne!(
                    e.code,
                    lsp_server::ErrorCode::InternalError as i32,
                    "`{method}` failed: {}",
                    e.message
                );
                serde_json::Value::Null
            }
        }
    };
    open(&mut server, &text);
    check_diagnostics(&mut server);
    let mut version = 1;
    let mut current = text;
    for step in chunks.take(64) {
        let b = |i: usize| step.get(i).copied().unwrap_or(0) as u32;
        let new = String::from_utf8_lossy(step.get(5..).unwrap_or_default()).into_owned();
        let pos = json!({ "line": b(1), "character": b(2) });
        let range = json!({ "start": pos, "end": { "line": b(3), "character": b(4) } });
        let at = json!({ "textDocument": doc, "position": pos });
        match b(0) % 11 {
            op @ (0 | 1) => {
                version += 1;
                let change = if op == 0 {
                    json!({ "range": range, "text": new })
                } else {
                    json!({ "text": new })
                };
                server.notification(Notification::new(
                    "textDocument/didChange".into(),
                    json!({ "textDocument": { "uri": uri, "version": version }, "contentChanges": [change] }),
                ));
                let r: Option<lsp_types::Range> = serde_json::from_value(range).ok();
                crate::lsp::text::apply_change(&mut current, r.filter(|_| op == 0), &new);
                check_diagnostics(&mut server);
            }
            2 => drop(ask(&mut server, "textDocument/hover", at)),
            3 => drop(ask(&mut server, "textDocument/completion", at)),
            4 => drop(ask(&mut server, "textDocument/definition", at)),
            5 => {
                let mut p = at;
                p["context"] = json!({ "includeDeclaration": b(3) & 1 == 1 });
                drop(ask(&mut server, "textDocument/references", p));
            }
            6 => drop(ask(
                &mut server,
                "textDocument/inlayHint",
                json!({ "textDocument": doc, "range": range }),
            )),
            7 => drop(ask(
                &mut server,
                "textDocument/codeAction",
                json!({ "textDocument": doc, "range": range, "context": { "diagnostics": [] } }),
            )),
            8 => {
                let _ = ask(
                    &mut server,
                    "textDocument/formatting",
                    json!({ "textDocument": doc, "options": { "tabSize": 4, "insertSpaces": true } }),
                );
                if lang == "se" {
                    check_format(&current);
                }
            }
            9 => drop(ask(
                &mut server,
                "textDocument/documentSymbol",
                json!({ "textDocument": doc }),
            )),
            _ => {
                server.notification(Notification::new(
                    "textDocument/didClose".into(),
                    json!({ "textDocument": doc }),
                ));
                open(&mut server, &current);
                check_diagnostics(&mut server);
            }
        }
    }
}

/// The `.se` printer keeps a valid file's meaning (the same layer table) and is stable.
fn check_format(text: &str) {
    let once = crate::lsp::format::format_dsl(text);
    let twice = crate::lsp::format::format_dsl(&once);
    assert_eq!(once, twice, "formatting twice differs from formatting once");
    // The layer table without the source places (formatting moves lines).
    let table = |t: &str| {
        let src = SourceFile::new("fuzz.se", t);
        crate::compile(&src).ok().map(|vg| {
            let opts = Options {
                depth: Depth::Layer,
                format: Format::Json,
                show_source: false,
            };
            let mut v: serde_json::Value =
                serde_json::from_str(&summary::render(&vg, &src, &opts)).expect("valid JSON");
            let mut layers = v["layers"].take();
            for l in layers.as_array_mut().into_iter().flatten() {
                l.as_object_mut().map(|o| o.remove("source"));
            }
            (v, layers)
        })
    };
    if let Some((totals, layers)) = table(text) {
        let Some((totals2, layers2)) = table(&once) else {
            panic!("the formatted spec does not compile:\n{once}");
        };
        assert_eq!(totals, totals2, "formatting changed the spec's totals");
        let (a, b) = (layers.as_array(), layers2.as_array());
        let first = a
            .zip(b)
            .and_then(|(a, b)| (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)));
        if let Some(i) = first {
            panic!(
                "formatting changed layer {i}: {} became {}",
                layers[i], layers2[i]
            );
        }
    }
}

/// A seed for `lsp_edits`: a document opened, then a few of each step at places in it.
pub fn lsp_edits_seed(text: &str, yaml: bool) -> Vec<u8> {
    let mut out = vec![if yaml { 3 } else { 2 }];
    out.extend_from_slice(text.as_bytes());
    let lines = text.lines().count().clamp(1, 250) as u8;
    let mut step = |op: u8, line: u8, col: u8, line2: u8, col2: u8, new: &str| {
        out.push(0xFF);
        out.extend_from_slice(&[op, line, col, line2, col2]);
        out.extend_from_slice(new.as_bytes());
    };
    for i in 0..4u8 {
        let line = (lines / 4).saturating_mul(i);
        step(2, line, 4, 0, 0, "");
        step(3, line, 2, 0, 0, "");
        step(4, line, 6, 0, 0, "");
    }
    step(0, lines / 2, 2, lines / 2, 3, "x");
    step(2, lines / 2, 4, 0, 0, "");
    step(7, lines / 2, 0, lines / 2, 40, "");
    step(0, lines / 2, 2, lines / 2, 3, "");
    step(6, 0, 0, lines, 0, "");
    step(9, 0, 0, 0, 0, "");
    step(5, lines / 3, 4, 1, 0, "");
    step(8, 0, 0, 0, 0, "");
    step(10, 0, 0, 0, 0, "");
    out
}
