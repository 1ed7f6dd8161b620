//! The validated IR as JSON (`se-compile compile -o graph.json`), for later stages and other tools.

use crate::source::SourceFile;
use crate::validate::ValidGraph;
use serde_json::{json, Value};

pub const FORMAT: &str = "se-compile-ir";
pub const VERSION: u32 = 1;

pub fn ir_json(vg: &ValidGraph, src: &SourceFile) -> Value {
    let g = vg.graph();
    let nodes: Vec<Value> = g
        .ids()
        .map(|id| {
            let n = g.node(id);
            let st = vg.stats(id);
            let (line, column) = src.line_col(n.span.start);
            json!({
                "id": id.0,
                "name": n.name,
                "type": n.op.keras_class(),
                "op": serde_json::to_value(&n.op).expect("plain data"),
                "inputs": n.inputs.iter().map(|i| i.0).collect::<Vec<_>>(),
                "shape": n.shape,
                "trainable_params": st.params.trainable,
                "non_trainable_params": st.params.non_trainable,
                "macs": st.macs,
                "scope": {"stage": n.scope.stage.as_ref().map(|s| &s.0), "block": n.scope.block.as_ref().map(|s| &s.0), "template": n.scope.block.as_ref().map(|s| &s.1)},
                "span": {"start": n.span.start, "end": n.span.end, "line": line, "column": column},
            })
        })
        .collect();
    let t = vg.totals();
    json!({
        "format": FORMAT,
        "version": VERSION,
        "source": src.name,
        "model": g.model,
        "classes": g.classes,
        "input_shape": g.input_shape(),
        "output": g.output.0,
        "nodes": nodes,
        "total_params": t.params.total(),
        "trainable_params": t.params.trainable,
        "non_trainable_params": t.params.non_trainable,
        "total_macs": t.macs,
    })
}
