//! `se-compile memory`'s table: a `lower::memory` prediction per layer, block or stage (the
//! summary's depths), its totals, and the convention, as text, JSON or markdown.

use super::summary::{group_of, mb, Depth, Format};
use super::thousands;
use crate::ir::{keras_shape, NodeId};
use crate::lower::memory::{LayerMem, Precision, Prediction};
use crate::validate::ValidGraph;
use serde_json::{json, Value};

/// What the numbers mean, printed under the table as the summary prints its MAC convention.
pub const CONVENTION: &str =
    "Bytes as the engine allocates them, predicted from its allocation rules by replaying \
one step on a simulated heap: a tensor lives from the op that makes it to the last op that reads \
or keeps it, so the peak is the most alive at once, not the sum of all tensors. Output: a layer's \
result (0 when it reuses its input's buffer). Kept: what its backward holds until it runs (input \
values shared with other readers count in each reader's row; masks, indices and copies are its \
own). Gradient: its output's gradient in the backward. Workspace: buffers made and freed inside \
the layer (im2col, Winograd). Persistent: parameters as the engine holds them, optimizer moments, \
per-thread scratch kept between steps (the matrix library's L2-sized packing buffer per thread). \
Step: the peak above that, including the input batch, parameter gradients and the loss. bf16 (the \
pytorch engine under autocast): activations after the first convolution and the weights' casts are \
2 bytes an element; parameters, gradients and optimizer state stay float32. MB = 10^6 bytes, \
GiB = 2^30.";

pub struct Options {
    pub depth: Depth,
    pub format: Format,
    /// The `--fit` budget and the largest batch that fits in it (None: not even batch 1).
    pub fit: Option<(u64, Option<usize>)>,
    pub optimizer: String,
    pub input: [usize; 3],
    /// A table of every parameter tensor (JSON always has it).
    pub params: bool,
}

struct Row {
    name: String,
    class: String,
    shape: String,
    train: LayerMem,
    infer_output: u64,
}

fn rows(vg: &ValidGraph, p: &Prediction, depth: Depth) -> Vec<Row> {
    let g = vg.graph();
    let infer: std::collections::HashMap<usize, u64> =
        p.rows_infer.iter().map(|r| (r.node, r.output)).collect();
    let mut out: Vec<Row> = vec![];
    let mut at: std::collections::HashMap<String, usize> = Default::default();
    // Every layer of the spec, in the order the engine runs them; a layer whose op runs
    // inside another (a fused activation, an SE multiply in its Add) costs nothing of its own.
    let run: std::collections::HashMap<usize, &LayerMem> =
        p.rows_train.iter().map(|r| (r.node, r)).collect();
    let all: Vec<LayerMem> = g
        .ids()
        .filter(|id| id.index() > 0)
        .map(|id| match run.get(&id.index()) {
            Some(r) => (*r).clone(),
            None => LayerMem {
                node: id.index(),
                kept_what:
                    "nothing of its own: it runs inside another layer (fused) or after the logits",
                ..Default::default()
            },
        })
        .collect();
    for r in &all {
        let id = NodeId(r.node as u32);
        let node = g.node(id);
        let io = infer.get(&r.node).copied().unwrap_or(0);
        let (key, name, class) = match group_of(vg, id, depth) {
            Some((gname, template)) => (gname.clone(), gname, template),
            None => (
                format!("#{}", r.node),
                node.name.clone(),
                node.op.keras_class().to_string(),
            ),
        };
        let shape = keras_shape(&node.shape);
        match at.get(&key) {
            Some(&i) => {
                let row = &mut out[i];
                row.train.output += r.output;
                row.train.saved += r.saved;
                row.train.grad += r.grad;
                row.train.workspace_forward = row.train.workspace_forward.max(r.workspace_forward);
                row.train.workspace_backward =
                    row.train.workspace_backward.max(r.workspace_backward);
                row.infer_output += io;
                row.shape = shape;
                row.train.kept_what = "";
            }
            None => {
                at.insert(key, out.len());
                out.push(Row {
                    name,
                    class,
                    shape,
                    train: r.clone(),
                    infer_output: io,
                });
            }
        }
    }
    out
}

pub fn render(vg: &ValidGraph, p: &Prediction, o: &Options) -> String {
    match o.format {
        Format::Text => text(vg, p, o),
        Format::Markdown => markdown(vg, p, o),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json_of(vg, p, o)).expect("json");
            s.push('\n');
            s
        }
    }
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn header(vg: &ValidGraph, p: &Prediction, o: &Options) -> String {
    let [h, w, c] = o.input;
    format!(
        "{} at {h}x{w}x{c}, batch {}, {}, {}, engine {}",
        vg.graph().model,
        p.batch,
        o.optimizer,
        match p.precision {
            Precision::Fp32 => "float32",
            Precision::Bf16 => "bf16 autocast",
        },
        p.engine.name()
    )
}

/// (label, bytes, note) lines under the table.
fn totals(p: &Prediction, o: &Options) -> Vec<(String, u64, String)> {
    let mut t = vec![
        (
            "Parameters, as the engine holds them".into(),
            p.param_bytes,
            format!("{} of float32 values", mb(p.param_values_bytes)),
        ),
        (
            format!("Optimizer state ({})", o.optimizer),
            p.optimizer_bytes,
            String::new(),
        ),
        (
            "Parameter gradients kept between steps".into(),
            p.kept_grad_bytes,
            String::new(),
        ),
        (
            "Per-thread scratch".into(),
            p.thread_scratch_bytes,
            String::new(),
        ),
        (
            "Training step, above those".into(),
            p.train_step_bytes,
            format!(
                "peak in the {}; parameter gradients {}",
                p.train_peak_at,
                mb(p.param_grad_bytes)
            ),
        ),
        (
            "Peak of a training step".into(),
            p.peak_train_bytes(),
            gib(p.peak_train_bytes()),
        ),
        (
            "Inference batch, above the parameters".into(),
            p.infer_step_bytes,
            format!("peak in the {}", p.infer_peak_at),
        ),
        (
            "Peak of inference".into(),
            p.peak_infer_bytes(),
            gib(p.peak_infer_bytes()),
        ),
    ];
    if let Some((budget, fit)) = o.fit {
        let what = match fit {
            Some(b) => format!("batch {b}"),
            None => "none: batch 1 does not fit".into(),
        };
        t.push((
            format!("Largest training batch in {}", gib(budget)),
            budget,
            what,
        ));
    }
    t
}

fn text(vg: &ValidGraph, p: &Prediction, o: &Options) -> String {
    let rows = rows(vg, p, o.depth);
    let mut s = header(vg, p, o);
    s.push('\n');
    let line = |a: &str, b: &str, c: &str, d: &str, e: &str, f: &str, g: &str, h: &str| {
        format!("{a:<34} {b:<20} {c:>11} {d:>11} {e:>11} {f:>11} {g:>11}  {h}")
            .trim_end()
            .to_string()
            + "\n"
    };
    let rule = "_".repeat(115) + "\n";
    s += &rule;
    s += &line(
        "Layer (type)",
        "Output Shape",
        "Output",
        "Kept",
        "Gradient",
        "Work fwd",
        "Work bwd",
        "Kept for the backward",
    );
    s += &"=".repeat(115);
    s.push('\n');
    for r in &rows {
        let name = format!("{} ({})", r.name, r.class);
        let name: String = name.chars().take(34).collect();
        s += &line(
            &name,
            &r.shape,
            &mb(r.train.output),
            &mb(r.train.saved),
            &mb(r.train.grad),
            &mb(r.train.workspace_forward),
            &mb(r.train.workspace_backward),
            r.train.kept_what,
        );
    }
    s += &"=".repeat(115);
    s.push('\n');
    for (label, bytes, note) in totals(p, o) {
        if label.starts_with("Largest") {
            s += &format!("{label}: {note}");
        } else {
            s += &format!("{label}: {}", mb(bytes));
            if !note.is_empty() {
                s += &format!(" ({note})");
            }
        }
        s.push('\n');
    }
    if o.params {
        s += &rule;
        s += &format!(
            "{:<50} {:>13} {:>13} {:>13} {:>13}\n",
            "Parameter (bytes)", "Values", "Held", "Gradient", "Moments"
        );
        for q in &p.params {
            s += &format!(
                "{:<50} {:>13} {:>13} {:>13} {:>13}\n",
                q.name,
                thousands(q.values),
                thousands(q.held),
                thousands(q.grad),
                thousands(q.moments)
            );
        }
    }
    s += &rule;
    s += CONVENTION;
    s.push('\n');
    s
}

fn markdown(vg: &ValidGraph, p: &Prediction, o: &Options) -> String {
    let rows = rows(vg, p, o.depth);
    let mut s = format!("**{}**\n\n", header(vg, p, o));
    s += "| Layer (type) | Output Shape | Output | Kept | Gradient | Work fwd | Work bwd | Kept for the backward |\n";
    s += "|---|---|---:|---:|---:|---:|---:|---|\n";
    for r in &rows {
        s += &format!(
            "| {} ({}) | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.class,
            r.shape,
            mb(r.train.output),
            mb(r.train.saved),
            mb(r.train.grad),
            mb(r.train.workspace_forward),
            mb(r.train.workspace_backward),
            r.train.kept_what
        );
    }
    s += "\n| total | bytes | |\n|---|---:|---|\n";
    for (label, bytes, note) in totals(p, o) {
        s += &format!("| {label} | {bytes} | {note} |\n");
    }
    if o.params {
        s += "\n| Parameter | Values | Held | Gradient | Moments |\n|---|---:|---:|---:|---:|\n";
        for q in &p.params {
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                q.name, q.values, q.held, q.grad, q.moments
            );
        }
    }
    s += &format!("\n{CONVENTION}\n");
    s
}

fn json_of(vg: &ValidGraph, p: &Prediction, o: &Options) -> Value {
    let rows: Vec<Value> = rows(vg, p, o.depth)
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "class": r.class,
                "output_shape": r.shape,
                "output_bytes": r.train.output,
                "kept_bytes": r.train.saved,
                "grad_bytes": r.train.grad,
                "workspace_forward_bytes": r.train.workspace_forward,
                "workspace_backward_bytes": r.train.workspace_backward,
                "infer_output_bytes": r.infer_output,
                "kept_what": r.train.kept_what,
            })
        })
        .collect();
    let mut v = json!({
        "model": vg.graph().model,
        "engine": p.engine.name(),
        "batch": p.batch,
        "input": o.input,
        "optimizer": o.optimizer,
        "precision": p.precision.name(),
        "param_bytes": p.param_bytes,
        "param_values_bytes": p.param_values_bytes,
        "optimizer_bytes": p.optimizer_bytes,
        "param_grad_bytes": p.param_grad_bytes,
        "kept_grad_bytes": p.kept_grad_bytes,
        "thread_scratch_bytes": p.thread_scratch_bytes,
        "train_step_bytes": p.train_step_bytes,
        "train_peak_at": p.train_peak_at,
        "infer_step_bytes": p.infer_step_bytes,
        "infer_peak_at": p.infer_peak_at,
        "peak_train_bytes": p.peak_train_bytes(),
        "peak_infer_bytes": p.peak_infer_bytes(),
        "convention": CONVENTION,
        "rows": rows,
        "params": p.params.iter().map(|q| json!({
            "name": q.name,
            "value_bytes": q.values,
            "held_bytes": q.held,
            "grad_bytes": q.grad,
            "moment_bytes": q.moments,
        })).collect::<Vec<_>>(),
    });
    if let Some((budget, fit)) = o.fit {
        v["fit_bytes"] = json!(budget);
        v["max_batch"] = json!(fit);
    }
    v
}
