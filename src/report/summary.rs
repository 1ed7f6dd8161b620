//! The Keras `model.summary()` table, with MACs, kernel/stride/groups and source columns,
//! at layer, block or stage depth, as text, JSON or markdown.

use super::{keras_order, thousands};
use crate::ir::ops::Counts;
use crate::ir::{keras_shape, NodeId, Op, Shape};
use crate::source::{SourceFile, Span};
use crate::validate::ValidGraph;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Depth {
    Stage,
    Block,
    #[default]
    Layer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    Markdown,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub depth: Depth,
    pub format: Format,
    pub show_source: bool,
}

/// One printed row: a layer, or at block/stage depth a group of layers.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub class: String,
    pub shape: Shape,
    pub is_input: bool,
    pub params: Counts,
    pub macs: u64,
    pub connected: Vec<String>,
    pub config: String,
    pub span: Span,
    /// Layers in the row (1 at layer depth).
    pub layers: usize,
    /// Output elements of the row's layers at batch 1 (activation memory / 4 bytes).
    pub elements: u64,
    /// Where the row lies: its group (`stage2`, `stage2.block1`), or for a layer the block
    /// (else stage) it belongs to, empty at the top level. `diff` aligns rows by it.
    pub path: String,
    /// The row's first layer in creation (spec) order.
    pub first: NodeId,
}

pub const MACS_CONVENTION: &str =
    "MACs are multiply-accumulates at batch 1: Conv2D Ho*Wo*Kh*Kw*(Cin/groups)*Cout, \
Dense in*units per position; bias, BatchNorm, pooling, activations and merges are not counted.";

pub(crate) fn group_of(vg: &ValidGraph, id: NodeId, depth: Depth) -> Option<(String, String)> {
    let scope = &vg.graph().node(id).scope;
    match depth {
        Depth::Layer => None,
        Depth::Block => scope.block.clone(),
        Depth::Stage => scope.stage.clone().or_else(|| scope.block.clone()),
    }
}

pub fn rows(vg: &ValidGraph, depth: Depth) -> Vec<Row> {
    let g = vg.graph();
    let order = keras_order(g);
    let display = |id: NodeId| -> String {
        match group_of(vg, id, depth) {
            Some((name, _)) => name,
            None => format!("{}[0][0]", g.node(id).name),
        }
    };
    let mut rows: Vec<Row> = vec![];
    let mut group_row: std::collections::HashMap<String, usize> = Default::default();
    // The last node of a group, in creation order, gives the group's output shape.
    let mut group_last: std::collections::HashMap<String, NodeId> = Default::default();
    for &id in &order {
        let node = g.node(id);
        let st = vg.stats(id);
        match group_of(vg, id, depth) {
            None => rows.push(Row {
                name: node.name.clone(),
                class: node.op.keras_class().to_string(),
                shape: node.shape.clone(),
                is_input: matches!(node.op, Op::Input(_)),
                params: st.params,
                macs: st.macs,
                connected: node.inputs.iter().map(|&i| display(i)).collect(),
                config: node.op.config(),
                span: node.span,
                layers: 1,
                elements: st.elements,
                first: id,
                path: node
                    .scope
                    .block
                    .as_ref()
                    .or(node.scope.stage.as_ref())
                    .map(|x| x.0.clone())
                    .unwrap_or_default(),
            }),
            Some((gname, template)) => {
                let external: Vec<String> = node
                    .inputs
                    .iter()
                    .filter(|&&i| group_of(vg, i, depth).map(|x| x.0) != Some(gname.clone()))
                    .map(|&i| display(i))
                    .collect();
                let last = group_last.entry(gname.clone()).or_insert(id);
                if id > *last {
                    *last = id;
                }
                match group_row.get(&gname) {
                    Some(&r) => {
                        let row = &mut rows[r];
                        row.params.trainable += st.params.trainable;
                        row.params.non_trainable += st.params.non_trainable;
                        row.macs += st.macs;
                        row.elements += st.elements;
                        row.first = row.first.min(id);
                        row.layers += 1;
                        row.span = row.span.join(node.span);
                        for e in external {
                            if !row.connected.contains(&e) {
                                row.connected.push(e);
                            }
                        }
                    }
                    None => {
                        group_row.insert(gname.clone(), rows.len());
                        rows.push(Row {
                            path: gname.clone(),
                            name: gname,
                            class: template,
                            shape: vec![],
                            is_input: false,
                            params: st.params,
                            macs: st.macs,
                            connected: external,
                            config: String::new(),
                            span: node.span,
                            layers: 1,
                            elements: st.elements,
                            first: id,
                        });
                    }
                }
            }
        }
    }
    for (gname, r) in group_row {
        let last = group_last[&gname];
        rows[r].shape = g.node(last).shape.clone();
        rows[r].config = format!("{} layers", rows[r].layers);
    }
    rows
}

fn shape_text(r: &Row) -> String {
    if r.is_input {
        format!("[{}]", keras_shape(&r.shape))
    } else {
        keras_shape(&r.shape)
    }
}

fn source_text(src: &SourceFile, span: Span) -> String {
    let (line, _) = src.line_col(span.start);
    let text: String = src.line_text(span.start).trim().chars().take(48).collect();
    format!("{line}: {text}")
}

/// Keras' four columns.
const KERAS_COLUMNS: usize = 4;

/// Keras' `print_row`: each field is cut at its column end and padded to it; the character
/// before each new field is a space. Our extra columns add their space instead, so the Keras
/// part of every line stays exactly what Keras prints.
fn print_row(fields: &[String], positions: &[usize]) -> String {
    let mut line: Vec<char> = vec![];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            if i < KERAS_COLUMNS {
                line.pop();
            }
            line.push(' ');
        }
        line.extend(f.chars());
        line.truncate(positions[i]);
        while line.len() < positions[i] {
            line.push(' ');
        }
    }
    line.into_iter().collect()
}

/// 3858475008 → "3.86 G", as the SE paper quotes GFLOPs (multiply-adds).
pub fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} M", f / 1e6)
    } else {
        format!("{:.2} K", f / 1e3)
    }
}

pub fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

pub fn text(vg: &ValidGraph, src: &SourceFile, opts: &Options) -> String {
    let rows = rows(vg, opts.depth);
    // Keras' widths for a functional model (line_length 98), then our extra columns.
    let mut positions = vec![32, 53, 65, 98, 115, 131];
    let mut header = vec![
        "Layer (type)",
        "Output Shape",
        "Param #",
        "Connected to",
        "MACs",
        "Kernel/Stride",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if opts.show_source {
        positions.push(191);
        header.push("Source".into());
    }
    let width = *positions.last().expect("positions");
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("Model: \"{}\"", vg.graph().model));
    line("_".repeat(width));
    line(print_row(&header, &positions));
    line("=".repeat(width));
    for (i, r) in rows.iter().enumerate() {
        let mut fields = vec![
            format!("{} ({})", r.name, r.class),
            shape_text(r),
            r.params.total().to_string(),
            r.connected.first().cloned().unwrap_or_default(),
            if r.macs > 0 {
                thousands(r.macs)
            } else {
                String::new()
            },
            r.config.clone(),
        ];
        if opts.show_source {
            fields.push(source_text(src, r.span));
        }
        line(print_row(&fields, &positions));
        for c in r.connected.iter().skip(1) {
            let mut f = vec![String::new(); fields.len()];
            f[3] = c.clone();
            line(print_row(&f, &positions));
        }
        line(if i + 1 == rows.len() {
            "=".repeat(width)
        } else {
            "_".repeat(width)
        });
    }
    let t = vg.totals();
    line(format!("Total params: {}", thousands(t.params.total())));
    line(format!(
        "Trainable params: {}",
        thousands(t.params.trainable)
    ));
    line(format!(
        "Non-trainable params: {}",
        thousands(t.params.non_trainable)
    ));
    line("_".repeat(width));
    line(format!(
        "Total MACs: {} ({})",
        thousands(t.macs),
        human(t.macs)
    ));
    line(format!(
        "Parameter memory: {} (float32)",
        mb(t.params.total() * 4)
    ));
    line(format!(
        "Activation memory: {} per image (float32, the outputs of all layers, forward pass)",
        mb(t.elements * 4)
    ));
    line(MACS_CONVENTION.to_string());
    out
}

fn json_shape(s: &Shape) -> Value {
    let mut v = vec![Value::Null];
    v.extend(s.iter().map(|&d| json!(d)));
    Value::Array(v)
}

pub fn json(vg: &ValidGraph, src: &SourceFile, opts: &Options) -> Value {
    let t = vg.totals();
    let layers: Vec<Value> = rows(vg, opts.depth)
        .into_iter()
        .map(|r| {
            let (line, column) = src.line_col(r.span.start);
            json!({
                "name": r.name,
                "type": r.class,
                "output_shape": json_shape(&r.shape),
                "params": r.params.total(),
                "trainable_params": r.params.trainable,
                "non_trainable_params": r.params.non_trainable,
                "macs": r.macs,
                "connected_to": r.connected.iter().map(|c| c.trim_end_matches("[0][0]")).collect::<Vec<_>>(),
                "config": r.config,
                "layers": r.layers,
                "source": {"file": src.name, "line": line, "column": column, "text": src.line_text(r.span.start).trim()},
            })
        })
        .collect();
    json!({
        "model": vg.graph().model,
        "input_shape": json_shape(vg.graph().input_shape()),
        "depth": match opts.depth { Depth::Layer => "layer", Depth::Block => "block", Depth::Stage => "stage" },
        "layers": layers,
        "total_params": t.params.total(),
        "trainable_params": t.params.trainable,
        "non_trainable_params": t.params.non_trainable,
        "total_macs": t.macs,
        "param_memory_bytes": t.params.total() * 4,
        "activation_memory_bytes_per_image": t.elements * 4,
        "macs_convention": MACS_CONVENTION,
        // timm's names (`benchmark.py`, its results CSVs): parameters in millions and MACs at
        // batch 1 in G, each rounded to 2 decimals. timm counts `model.parameters()`, where
        // BatchNorm's moving statistics are buffers: the trainable parameters here.
        "param_count": timm_round(t.params.trainable as f64 / 1e6, 2),
        "gmacs": timm_round(t.macs as f64 / 1e9, 2),
    })
}

/// Python's `round(x, digits)` as timm rounds its figures (`param_count` and `gmacs` to 2
/// decimals), except that an exact tie rounds away from zero here, to even there.
pub fn timm_round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

pub fn markdown(vg: &ValidGraph, src: &SourceFile, opts: &Options) -> String {
    let mut out = format!("### Model: `{}`\n\n", vg.graph().model);
    out.push_str("| Layer | Type | Output Shape | Param # | MACs | Connected to | Kernel/Stride |");
    if opts.show_source {
        out.push_str(" Source |");
    }
    out.push_str("\n|---|---|---|---:|---:|---|---|");
    if opts.show_source {
        out.push_str("---|");
    }
    out.push('\n');
    for r in rows(vg, opts.depth) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.class,
            shape_text(&r).replace('[', "\\[").replace(']', "\\]"),
            thousands(r.params.total()),
            thousands(r.macs),
            r.connected
                .iter()
                .map(|c| c.trim_end_matches("[0][0]"))
                .collect::<Vec<_>>()
                .join(", "),
            r.config
        ));
        if opts.show_source {
            out.push_str(&format!(
                " {} |",
                source_text(src, r.span).replace('|', "\\|")
            ));
        }
        out.push('\n');
    }
    let t = vg.totals();
    out.push_str(&format!(
        "\n- Total params: {}\n- Trainable params: {}\n- Non-trainable params: {}\n- Total MACs: {} ({})\n- Parameter memory: {} (float32)\n- Activation memory: {} per image (float32)\n\n{}\n",
        thousands(t.params.total()),
        thousands(t.params.trainable),
        thousands(t.params.non_trainable),
        thousands(t.macs),
        human(t.macs),
        mb(t.params.total() * 4),
        mb(t.elements * 4),
        MACS_CONVENTION
    ));
    out
}

pub fn render(vg: &ValidGraph, src: &SourceFile, opts: &Options) -> String {
    match opts.format {
        Format::Text => text(vg, src, opts),
        Format::Markdown => markdown(vg, src, opts),
        Format::Json => {
            let mut s =
                serde_json::to_string_pretty(&json(vg, src, opts)).expect("JSON of plain values");
            s.push('\n');
            s
        }
    }
}
