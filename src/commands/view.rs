//! `se-compile view`: the network as one self-contained, interactive HTML page.

mod serve;

use super::shared::{check_parent, compile_spec, fail, write_out, Ctx, EXIT_USAGE};
use se_compile::diag::Style;
use se_compile::report::diff::Side;
use se_compile::report::view::{self, Model, RunData};
use se_compile::ValidGraph;
use serde_json::Value;
use std::path::Path;

/// Write the network as one self-contained HTML page: the graph top to bottom with a shape on
/// every edge, stages and blocks collapsed as "×N" (a click expands them), SE blocks drawn as in
/// the SE paper's Fig. 3, params/MACs/memory per box, search, the summary table and, for two
/// specs, their diff.
#[derive(clap::Args, Clone)]
#[command(
    after_help = "Examples:\n  se-compile view models/se_resnet50.yaml -o se_resnet50.html\n  se-compile view se_resnet50 models/se_resnet50_timm.yaml -o diff.html\n  se-compile view models/se_resnet_mini.yaml --run runs/se_resnet_mini -o mini.html\n  se-compile view models/se_resnet_mini.yaml --serve --port 8000\n\nWith --serve the page is served on 127.0.0.1 and redrawn when a spec file changes; an invalid\nspec's diagnostics (as `check` prints them) are shown above the last good graph.\nThe page needs no network: its script and styles are inline (hand-written, no library).\nIts state is in the URL fragment: #expand=all, #expand=stage2, #layer=conv2d_5, #color=macs."
)]
pub struct ViewArgs {
    /// A spec file or a model name from models/ (e.g. `se_resnet50`).
    pub spec: String,
    /// A second spec: the page shows both and their diff (B against A, as `se-compile diff`).
    pub spec_b: Option<String>,
    /// A run directory of `se-compile train`: its training curves (history.csv) and, where
    /// `analyze` wrote excitations.json there (or in RUN_DIR/analysis), each SE block's mean excitations.
    #[arg(long, value_name = "RUN_DIR")]
    pub run: Option<String>,
    /// Output HTML file (`-` for standard output). Default: MODEL.html (A_vs_B.html for two).
    #[arg(short, long, conflicts_with = "serve")]
    pub output: Option<String>,
    /// Open the page in the desktop's browser (xdg-open, or `open` on macOS) once written (with
    /// --serve: once served).
    #[arg(long)]
    pub open: bool,
    /// Serve the page on http://127.0.0.1:PORT/ instead of writing it, and redraw it within a
    /// second of a change to a spec file; runs until interrupted (Ctrl-C).
    #[arg(long)]
    pub serve: bool,
    /// The port for --serve; 0 picks a free one (the URL is printed).
    #[arg(long, requires = "serve", default_value_t = 8000)]
    pub port: u16,
}

/// The page's data for the specs (and run) of `a`, and the page's default file name. `Err`: the
/// worst exit code and every spec's diagnostics, as `check` prints them.
fn build_data(
    a: &ViewArgs,
    run: Option<&RunData>,
    style: Style,
) -> Result<(Value, String), (u8, String)> {
    let first = compile_spec(&a.spec, None, style);
    let second = a.spec_b.as_ref().map(|b| compile_spec(b, None, style));
    let (src_a, _, vg_a, second) = match (first, second.transpose()) {
        (Ok((src, spec, vg)), Ok(b)) => (src, spec, vg, b),
        (x, y) => {
            let errs: Vec<(u8, String)> = [x.err(), y.err()].into_iter().flatten().collect();
            let code = errs
                .iter()
                .map(|e| e.0)
                .max()
                .unwrap_or(super::shared::EXIT_INVALID);
            return Err((code, errs.into_iter().map(|e| e.1).collect()));
        }
    };
    let mut models = vec![Model {
        src: &src_a,
        vg: &vg_a,
    }];
    let mut diff = None;
    if let Some((src_b, _, vg_b)) = &second {
        models.push(Model {
            src: src_b,
            vg: vg_b,
        });
        let off_a = se_compile::compile_without_se(&src_a).map_err(|d| d.message);
        let off_b = se_compile::compile_without_se(src_b).map_err(|d| d.message);
        diff = Some(view::diff_json(
            &side(&src_a.name, &vg_a, &off_a),
            &side(&src_b.name, vg_b, &off_b),
        ));
    }
    let name = match &second {
        Some((_, _, vg_b)) => format!("{}_vs_{}.html", vg_a.graph().model, vg_b.graph().model),
        None => format!("{}.html", vg_a.graph().model),
    };
    Ok((view::data(&models, diff, run), name))
}

pub fn run(cx: &Ctx, a: ViewArgs) -> Result<(), u8> {
    let run = match &a.run {
        Some(dir) => Some(view::read_run(Path::new(dir)).map_err(|e| {
            eprintln!("error: {e}");
            if Path::new(dir).is_dir() {
                super::shared::EXIT_INVALID
            } else {
                EXIT_USAGE
            }
        })?),
        None => None,
    };
    if a.serve {
        return serve::serve(&a, run.as_ref());
    }
    let (data, name) = build_data(&a, run.as_ref(), cx.style).map_err(|(code, text)| {
        eprint!("{text}");
        code
    })?;
    let out = a.output.clone().unwrap_or(name);
    if out != "-" {
        check_parent(Path::new(&out))?;
    }
    write_out(&out, &view::page(&data))?;
    if a.open {
        if out == "-" {
            return Err(fail("--open needs a file: give -o FILE.html"));
        }
        open_in_browser(&out)?;
    }
    Ok(())
}

fn side<'a>(file: &str, vg: &'a ValidGraph, off: &'a Result<ValidGraph, String>) -> Side<'a> {
    Side {
        file: file.to_string(),
        vg,
        without_se: off.as_ref().map_err(Clone::clone),
    }
}

/// The page in the desktop's browser; its absence is a one-line error after the file is written.
fn open_in_browser(path: &str) -> Result<(), u8> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener).arg(path).spawn() {
        Ok(_) => Ok(()),
        Err(e) => Err(fail(format!(
            "`{opener}` could not open {path} ({e}); open it in a browser yourself"
        ))),
    }
}
