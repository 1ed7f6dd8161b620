//! `se-compile analyze`: the SE paper's Section 7 (Fig. 6) for saved weights: the mean
//! excitation of every SE block per channel, over all images and per class, with a
//! class-specificity figure per block; CSV, JSON and PNG plots.

use super::eval::{eval_data, eval_split};
use super::shared::{load_cpu_net, Ctx, EXIT_INVALID, EXIT_USAGE};
use se_compile::report::excitation::{self, Analysis, Excitations, SeBlock};
use se_compile::train::plot;
use se_compile::util::atomic::write_atomic;
use std::path::{Path, PathBuf};

/// `se-compile analyze --help`, after the options.
pub const HELP: &str = "Example:
  se-compile analyze models/se_resnet_mini.yaml --weights runs/se_resnet_mini/best.safetensors \\
      --classes 1_trouser,5_sandal,7_sneaker -o runs/se_resnet_mini/analysis

An SE block is a Multiply of a feature map (H, W, C) by a gate (1, 1, C) computed from it; the
excitation s_c is the gate's value for channel c, in inference mode, on DIR/test (DIR/train
without one), as eval reads it. m_c: the mean of s_c over all images; m_kc: over class k.
Class specificity = sqrt(mean over the chosen classes k and channels c of (m_kc - m_c)^2)
(0: every class alike); channel spread = std over channels of m_c (0: a uniform gate).

DIR receives excitations.csv (block,scope,class,channel,mean,images; class `all` or a name),
excitations.json (per block: overall and per-class means, specificity, channel spread, counts,
the definitions) and excitations.png (a panel per block; past 8 blocks, excitations-N.png).
Exit codes: 0 ok; 1 invalid spec, no SE block, wrong weights or unreadable data; 2 bad usage
(a missing file, an unknown class).";

/// Without `--classes`: every class, or the first this many (the plot's ten colours).
pub const DEFAULT_CLASSES: usize = 10;
/// Panels per PNG: more SE blocks go to `excitations-1.png`, `excitations-2.png`, ...
pub const PANELS_PER_PNG: usize = 8;

/// The SE paper's excitation analysis (Section 7, Fig. 6): the mean excitation of every SE
/// block per channel, over all images and per class, and each block's class specificity.
#[derive(clap::Args)]
#[command(after_help = HELP)]
pub struct AnalyzeArgs {
    /// A spec file or a model name from models/.
    pub spec: String,
    /// The run's weights (e.g. runs/se_resnet_mini/best.safetensors).
    #[arg(long)]
    pub weights: String,
    /// DIR with train/<class>/ and test/<class>/; DIR/test is read (DIR/train without it), as
    /// `eval` does. Default: the bundled data/fashion-mnist-mini.
    #[arg(long)]
    pub data: Option<String>,
    /// Class folder names, comma-separated (e.g. `1_trouser,7_sneaker`). Default: all classes,
    /// or the first 10 in folder order when there are more.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Output directory (created if missing): excitations.csv, excitations.json, excitations.png.
    #[arg(short, long, value_name = "DIR")]
    pub output: String,
    /// Images decoded and run per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Override the input height and width (as `predict --input`; e.g. 64 for SE-ResNet-50).
    #[arg(long)]
    pub input: Option<usize>,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> u8 {
    eprintln!("error: {msg}");
    code
}

/// The class indices `--classes` names, in its order (a name given twice counts once).
fn chosen_classes(names: &[String], asked: Option<&[String]>) -> Result<Vec<usize>, u8> {
    let Some(asked) = asked else {
        if names.len() > DEFAULT_CLASSES {
            eprintln!(
                "note: the data has {} classes; analysing the first {DEFAULT_CLASSES} (choose others with --classes)",
                names.len()
            );
        }
        return Ok((0..names.len().min(DEFAULT_CLASSES)).collect());
    };
    let mut out = vec![];
    for a in asked {
        let a = a.trim();
        let Some(k) = names.iter().position(|n| n == a) else {
            return Err(fail(
                EXIT_USAGE,
                format!(
                    "--classes: no class `{a}` in the data; its classes are: {}",
                    names.join(", ")
                ),
            ));
        };
        if !out.contains(&k) {
            out.push(k);
        }
    }
    if out.is_empty() {
        return Err(fail(EXIT_USAGE, "--classes names no class"));
    }
    Ok(out)
}

/// The PNG names for `n` blocks: `excitations.png`, or one file per [`PANELS_PER_PNG`].
pub fn plot_names(n: usize) -> Vec<String> {
    let pages = n.div_ceil(PANELS_PER_PNG);
    if pages <= 1 {
        vec!["excitations.png".into()]
    } else {
        (1..=pages)
            .map(|i| format!("excitations-{i}.png"))
            .collect()
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), u8> {
    write_atomic(path, bytes).map_err(|e| {
        fail(
            EXIT_INVALID,
            format!("{}: cannot write: {e}", path.display()),
        )
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

pub fn run(cx: &Ctx, a: AnalyzeArgs) -> Result<(), u8> {
    let (src, _, vg) = cx.build_full(&a.spec, a.input.map(|i| (i, i)))?;
    let g = vg.graph();
    let blocks: Vec<SeBlock> = excitation::se_blocks(g);
    if blocks.is_empty() {
        return Err(fail(
            EXIT_INVALID,
            format!(
                "no SE block in {}: analyze needs a Multiply of a feature map (H, W, C) by a gate (1, 1, C) computed from it",
                src.name
            ),
        ));
    }
    let mut net = load_cpu_net(&vg, &a.weights)?;
    let (data_dir, ds) = eval_data(&vg, a.data)?;
    let (split_name, split) = eval_split(&ds);
    let chosen = chosen_classes(&ds.classes, a.classes.as_deref())?;
    let model_classes = g.node(g.output).shape.last().copied().unwrap_or(0);
    if ds.classes.len() != model_classes {
        eprintln!(
            "warning: {} has {} classes but the model's output has {} units",
            data_dir.display(),
            ds.classes.len(),
            model_classes
        );
    }
    let out = PathBuf::from(&a.output);
    std::fs::create_dir_all(&out).map_err(|e| {
        fail(
            EXIT_INVALID,
            format!("{}: cannot create: {e}", out.display()),
        )
    })?;

    let gates: Vec<_> = blocks.iter().map(|b| b.gate).collect();
    let mut ex = Excitations::new(
        blocks.iter().map(|b| b.channels).collect(),
        ds.classes.len(),
    );
    ds.each_batch(split, a.batch_size, |b| {
        let shape = vec![b.len(), ds.h, ds.w, ds.c];
        ex.add(&net.probe(b.x, shape, &gates), &b.labels);
    });
    let split_dir = data_dir.join(split_name);
    if ex.images() == 0 {
        return Err(fail(
            EXIT_INVALID,
            format!("{}: no image decodes", split_dir.display()),
        ));
    }
    if let Some(&k) = chosen.iter().find(|&&k| ex.class_images(k) == 0) {
        return Err(fail(
            EXIT_INVALID,
            format!(
                "{}: class `{}` has no image that decodes",
                split_dir.display(),
                ds.classes[k]
            ),
        ));
    }

    let data_str = data_dir.display().to_string();
    let an = Analysis {
        model: &g.model,
        spec: &src.name,
        weights: &a.weights,
        data: &data_str,
        split: split_name,
        class_names: &ds.classes,
        chosen: &chosen,
        blocks: &blocks,
        ex: &ex,
    };
    let stats = an.stats();
    let names = plot_names(blocks.len());
    let all = plot::excitation_panels(&an, &stats);
    for (name, page) in names.iter().zip(all.chunks(PANELS_PER_PNG)) {
        let path = out.join(name);
        plot::lines(&path, page).map_err(|e| fail(EXIT_INVALID, e))?;
        eprintln!("wrote {}", path.display());
    }
    write(&out.join("excitations.csv"), an.csv(&stats).as_bytes())?;
    let mut json = serde_json::to_string_pretty(&an.json(&stats, &names)).expect("plain JSON");
    json.push('\n');
    write(&out.join("excitations.json"), json.as_bytes())?;

    println!(
        "{}: {} SE blocks, {} images of {}, {} of {} classes",
        g.model,
        blocks.len(),
        ex.images(),
        split_dir.display(),
        chosen.len(),
        ds.classes.len()
    );
    let w = blocks
        .iter()
        .map(|b| b.label().len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<w$}  {:>8}  {:>11}  {:>14}",
        "block", "channels", "specificity", "channel spread"
    );
    for (blk, st) in blocks.iter().zip(&stats) {
        println!(
            "{:<w$}  {:>8}  {:>11.4}  {:>14.4}",
            blk.label(),
            blk.channels,
            st.specificity,
            st.channel_spread
        );
    }
    Ok(())
}
