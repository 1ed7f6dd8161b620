//! `se-compile view`: the network as one self-contained HTML page. The data (every layer with
//! its shape, inputs, params, MACs, activation memory and source line; the stage and block
//! groups with the summary's totals; the SE blocks; for two specs the diff at every depth; a
//! run's training history and excitations) is embedded as JSON, and the page's own hand-written
//! JavaScript (`view/view.js`, no library) lays it out top to bottom in SVG and HTML.

use super::diff::{self, Side};
use super::excitation::se_blocks;
use super::summary::{self, Depth, Row};
use crate::ir::{Graph, NodeId, Op};
use crate::source::SourceFile;
use crate::validate::ValidGraph;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;

const TEMPLATE: &str = include_str!("view/page.html");
const CSS: &str = include_str!("view/view.css");
const JS: &str = include_str!("view/view.js");

/// The format tag and version of the embedded JSON (`window.SE_VIEW` in the page).
pub const FORMAT: &str = "se-compile-view";
pub const VERSION: u32 = 1;

/// One spec shown in the page.
pub struct Model<'a> {
    pub src: &'a SourceFile,
    pub vg: &'a ValidGraph,
}

/// What a run directory adds: `history.csv` and, where `analyze` wrote it (in the run directory
/// or its `analysis/`), `excitations.json`.
#[derive(Clone, Debug, Default)]
pub struct RunData {
    pub dir: String,
    /// history.csv's header and its rows (an empty cell is `None`).
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<f64>>>,
    /// Per SE block (the Multiply's name): the mean excitation of each channel over all images.
    pub excitations: Vec<(String, Vec<f64>)>,
}

/// Reads `RUN_DIR/history.csv` and, when `analyze` wrote it there or in `RUN_DIR/analysis/`,
/// `excitations.json`. Errors are one line.
pub fn read_run(dir: &Path) -> Result<RunData, String> {
    let shown = dir.display().to_string();
    if !dir.is_dir() {
        return Err(format!("{shown}: no such run directory"));
    }
    let hist = dir.join("history.csv");
    let text = std::fs::read_to_string(&hist).map_err(|e| {
        format!(
            "{}: cannot be read ({e}); a run directory written by `se-compile train` has it",
            hist.display()
        )
    })?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let columns: Vec<String> = lines
        .next()
        .ok_or_else(|| format!("{}: the file is empty", hist.display()))?
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    if !columns.iter().any(|c| c == "epoch") {
        return Err(format!(
            "{}: the header has no `epoch` column (it reads {:?})",
            hist.display(),
            columns.join(",")
        ));
    }
    let mut rows = vec![];
    for (i, l) in lines.enumerate() {
        let cells: Vec<&str> = l.split(',').collect();
        if cells.len() != columns.len() {
            return Err(format!(
                "{}: line {} has {} fields, the header {}",
                hist.display(),
                i + 2,
                cells.len(),
                columns.len()
            ));
        }
        let mut row = vec![];
        for c in cells {
            let c = c.trim();
            if c.is_empty() {
                row.push(None);
                continue;
            }
            let v: f64 = c.parse().map_err(|_| {
                format!("{}: line {}: `{c}` is not a number", hist.display(), i + 2)
            })?;
            row.push(v.is_finite().then_some(v));
        }
        rows.push(row);
    }
    let mut excitations = vec![];
    // `analyze -o RUN_DIR` or `analyze -o RUN_DIR/analysis` (as the README's tour writes it).
    let ex = [
        dir.join("excitations.json"),
        dir.join("analysis/excitations.json"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    if let Some(ex) = ex {
        let bad = |why: String| format!("{}: {why}", ex.display());
        let text = std::fs::read_to_string(&ex).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        for b in v["blocks"].as_array().into_iter().flatten() {
            let name = b["name"].as_str().unwrap_or_default().to_string();
            let overall: Vec<f64> = b["overall"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect();
            if !name.is_empty() && !overall.is_empty() {
                excitations.push((name, overall));
            }
        }
    }
    Ok(RunData {
        dir: shown,
        columns,
        rows,
        excitations,
    })
}

/// The nodes of each SE block's squeeze–excitation branch: everything the gate is computed
/// from, back to (not including) the feature map it scales.
fn se_json(g: &Graph) -> (Vec<Value>, HashMap<NodeId, (usize, &'static str)>) {
    let mut role: HashMap<NodeId, (usize, &'static str)> = HashMap::new();
    let mut out = vec![];
    for (k, b) in se_blocks(g).into_iter().enumerate() {
        let mut branch: Vec<NodeId> = vec![];
        let mut seen: HashSet<NodeId> = HashSet::new();
        let mut stack = vec![b.gate];
        while let Some(id) = stack.pop() {
            if id == b.features || !seen.insert(id) || id < b.features {
                continue;
            }
            branch.push(id);
            stack.extend(g.node(id).inputs.iter().copied());
        }
        branch.sort();
        // A branch that reaches past the feature map (another path to the input) is no SE
        // branch as the paper draws it; such a Multiply is drawn as a plain layer.
        if branch
            .iter()
            .flat_map(|&id| g.node(id).inputs.iter())
            .any(|&i| i != b.features && !seen.contains(&i))
        {
            continue;
        }
        let width = branch
            .iter()
            .filter(|&&id| matches!(g.node(id).op, Op::Conv2d(_) | Op::Dense(_)))
            .filter_map(|&id| g.node(id).shape.last().copied())
            .min();
        let squeeze = branch
            .iter()
            .find(|&&id| matches!(g.node(id).op, Op::GlobalPool(_)))
            .map(|&id| {
                let op = &g.node(id).op;
                match op.config() {
                    c if c.is_empty() => op.keras_class().to_string(),
                    c => c,
                }
            })
            .unwrap_or_default();
        let gate = g.node(b.gate);
        let gate_fn = match &gate.op {
            Op::Activation(_) => gate.op.config(),
            _ => gate.op.keras_class().to_string(),
        };
        for &id in &branch {
            role.insert(id, (k, "branch"));
        }
        role.insert(b.multiply, (k, "scale"));
        out.push(json!({
            "name": b.name,
            "scope": b.scope,
            "multiply": b.multiply.0,
            "features": b.features.0,
            "gate": b.gate.0,
            "channels": b.channels,
            "width": width,
            "squeeze": squeeze,
            "gate_fn": gate_fn,
            "nodes": branch.iter().map(|i| i.0).collect::<Vec<_>>(),
        }));
    }
    (out, role)
}

fn group_json(
    r: &Row,
    src: &SourceFile,
    kind: &str,
    template: &str,
    parent: Option<&str>,
) -> Value {
    let (line, _) = src.line_col(r.span.start);
    json!({
        "path": r.name,
        "kind": kind,
        "template": template,
        "parent": parent,
        "layers": r.layers,
        "params": r.params.total(),
        "macs": r.macs,
        "bytes": r.elements * 4,
        "shape": r.shape,
        "line": line,
        "children": [],
    })
}

/// One spec's layers, groups and SE blocks, as the page reads them.
pub fn model_json(m: &Model) -> Value {
    let (g, src) = (m.vg.graph(), m.src);
    let (se, role) = se_json(g);
    let layers: Vec<Value> = g
        .ids()
        .map(|id| {
            let n = g.node(id);
            let st = m.vg.stats(id);
            let (line, _) = src.line_col(n.span.start);
            let text: String = src
                .line_text(n.span.start)
                .trim()
                .chars()
                .take(96)
                .collect();
            json!({
                "name": n.name,
                "type": n.op.keras_class(),
                "config": n.op.config(),
                "shape": n.shape,
                "inputs": n.inputs.iter().map(|i| i.0).collect::<Vec<_>>(),
                "params": st.params.total(),
                "trainable": st.params.trainable,
                "macs": st.macs,
                "bytes": st.elements * 4,
                "line": line,
                "text": text,
                "stage": n.scope.stage.as_ref().map(|s| &s.0),
                "block": n.scope.block.as_ref().map(|s| &s.0),
                "se": role.get(&id).map(|r| r.0),
                "se_role": role.get(&id).map(|r| r.1),
            })
        })
        .collect();
    // Groups with the summary's own rows: a stage's numbers are the `--depth stage` row's.
    let stage_rows = summary::rows(m.vg, Depth::Stage);
    let block_rows = summary::rows(m.vg, Depth::Block);
    let row_of =
        |rows: &[Row], path: &str| rows.iter().position(|r| r.path == path && r.name == path);
    let mut groups: Vec<Value> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    for id in g.ids() {
        let s = &g.node(id).scope;
        if let Some((path, template)) = &s.stage {
            if !index.contains_key(path) {
                if let Some(r) = row_of(&stage_rows, path) {
                    index.insert(path.clone(), groups.len());
                    groups.push(group_json(&stage_rows[r], src, "stage", template, None));
                }
            }
        }
        if let Some((path, template)) = &s.block {
            if !index.contains_key(path) {
                if let Some(r) = row_of(&block_rows, path) {
                    let parent = s.stage.as_ref().map(|x| x.0.as_str());
                    index.insert(path.clone(), groups.len());
                    groups.push(group_json(&block_rows[r], src, "block", template, parent));
                    if let Some(p) = parent.and_then(|p| index.get(p)) {
                        if let Some(c) = groups[*p]["children"].as_array_mut() {
                            c.push(json!(path));
                        }
                    }
                }
            }
        }
    }
    let t = m.vg.totals();
    json!({
        "model": g.model,
        "file": src.name,
        "input_shape": g.input_shape(),
        "output": g.output.0,
        "totals": {
            "params": t.params.total(),
            "trainable": t.params.trainable,
            "non_trainable": t.params.non_trainable,
            "macs": t.macs,
            "bytes": t.elements * 4,
        },
        "layers": layers,
        "groups": groups,
        "se": se,
    })
}

/// The diff of two specs at stage, block and layer depth, each as `se-compile diff --format
/// json` writes it.
pub fn diff_json(a: &Side, b: &Side) -> Value {
    let at = |d: Depth| diff::json(&diff::diff(a, b, d));
    json!({
        "stage": at(Depth::Stage),
        "block": at(Depth::Block),
        "layer": at(Depth::Layer),
    })
}

/// Everything the page shows, as the JSON it embeds.
pub fn data(models: &[Model], diff: Option<Value>, run: Option<&RunData>) -> Value {
    json!({
        "format": FORMAT,
        "version": VERSION,
        "generator": format!("se-compile {}", env!("CARGO_PKG_VERSION")),
        "macs_convention": summary::MACS_CONVENTION,
        "models": models.iter().map(model_json).collect::<Vec<_>>(),
        "diff": diff,
        "run": run.map(|r| json!({
            "dir": r.dir,
            "columns": r.columns,
            "rows": r.rows,
            "excitations": r.excitations.iter().map(|(n, v)| json!({"name": n, "overall": v})).collect::<Vec<_>>(),
        })),
    })
}

/// JSON made safe inside `<script>`: `<`, `>` and `&` only occur in its strings, where their
/// `\u` escapes mean the same.
fn script_safe(v: &Value) -> String {
    serde_json::to_string(v)
        .expect("JSON of plain values")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole page: the template with the CSS, the script and the data inlined.
pub fn page(data: &Value) -> String {
    let title = data["models"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["model"].as_str())
                .collect::<Vec<_>>()
                .join(" vs ")
        })
        .unwrap_or_default();
    TEMPLATE
        .replace("{{TITLE}}", &html_escape(&title))
        .replace("/*{{CSS}}*/", CSS)
        .replace("/*{{JS}}*/", JS)
        .replace("{{DATA}}", &script_safe(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_script_safe() {
        let v = json!({"x": "</script><!-- & >"});
        let s = script_safe(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'));
        let back: Value = serde_json::from_str(&s).expect("still JSON");
        assert_eq!(back, v);
    }

    #[test]
    fn se_branch_of_the_seed_block() {
        let src = SourceFile::new(
            "se_block.yaml",
            crate::zoo::find("se_block").expect("zoo").1,
        );
        let vg = crate::compile(&src).expect("compiles");
        let m = model_json(&Model { src: &src, vg: &vg });
        let se = &m["se"][0];
        assert_eq!(se["channels"], 512);
        assert_eq!(se["width"], 32);
        assert_eq!(se["gate_fn"], "sigmoid");
        // gap, reshape, squeeze dense, excite dense, sigmoid.
        assert_eq!(se["nodes"].as_array().map(Vec::len), Some(5));
    }
}
