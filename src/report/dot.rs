//! Graphviz DOT, like Keras `plot_model(show_shapes=True)`: one box per layer, the output
//! shape on every edge.

use crate::ir::keras_shape;
use crate::validate::ValidGraph;

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn dot(vg: &ValidGraph) -> String {
    let g = vg.graph();
    let mut out = format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=record, fontname=\"Helvetica\", fontsize=10];\n", esc(&g.model));
    for id in g.ids() {
        let n = g.node(id);
        let cfg = n.op.config();
        let extra = if cfg.is_empty() {
            String::new()
        } else {
            format!("|{}", esc(&cfg))
        };
        out.push_str(&format!(
            "  n{} [label=\"{{{}|{}{}}}\"];\n",
            id.0,
            esc(&n.name),
            n.op.keras_class(),
            extra
        ));
    }
    for id in g.ids() {
        for &i in &g.node(id).inputs {
            out.push_str(&format!(
                "  n{} -> n{} [label=\"{}\"];\n",
                i.0,
                id.0,
                keras_shape(&g.node(i).shape)
            ));
        }
    }
    let o = g.output;
    out.push_str(&format!(
        "  output [shape=plaintext, label=\"output\"];\n  n{} -> output [label=\"{}\"];\n}}\n",
        o.0,
        keras_shape(&g.node(o).shape)
    ));
    out
}
