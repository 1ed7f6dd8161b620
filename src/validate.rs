//! Validation: the pass whose result (`ValidGraph`) every back end requires. It checks what
//! expansion cannot see locally (unused layers, the class count, overflow in any count) and
//! computes per-layer parameter counts and MACs with checked arithmetic.

use crate::diag::{Diagnostic, Result};
use crate::ir::ops::Counts;
use crate::ir::{shape_str, Graph, NodeId, Op};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub params: Counts,
    pub macs: u64,
    /// Output elements at batch 1.
    pub elements: u64,
}

/// A graph that passed validation. Only `validate` constructs it.
#[derive(Clone, Debug)]
pub struct ValidGraph {
    graph: Graph,
    stats: Vec<NodeStats>,
    totals: NodeStats,
}

impl ValidGraph {
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn stats(&self, id: NodeId) -> &NodeStats {
        &self.stats[id.index()]
    }
    /// Sums over all layers (`elements` is the activation count of one image).
    pub fn totals(&self) -> &NodeStats {
        &self.totals
    }
}

pub fn validate(graph: Graph) -> Result<ValidGraph> {
    let n = graph.nodes.len();
    // Every layer must feed the output; Keras would silently drop it, which hides spec mistakes.
    let mut live = vec![false; n];
    live[graph.output.index()] = true;
    for id in graph.ids().rev() {
        if live[id.index()] {
            for &i in &graph.node(id).inputs {
                live[i.index()] = true;
            }
        }
    }
    if let Some(dead) = graph.ids().find(|id| !live[id.index()]) {
        let node = graph.node(dead);
        let out = graph.node(graph.output);
        return Err(Diagnostic::new(
            "shape::unused",
            format!("layer `{}` does not reach the model output", node.name),
        )
        .at(node.span, "its output is never used")
        .related(out.span, format!("the output is `{}`", out.name))
        .help("connect it (e.g. `from:` on a later layer) or remove it"));
    }
    if let Some(classes) = graph.classes {
        let out = graph.node(graph.output);
        if out.shape.last() != Some(&classes) || out.shape.len() != 1 {
            return Err(Diagnostic::new(
                "shape::classes",
                format!("the model output `{}` is {}, but `classes` is {classes}", out.name, shape_str(&out.shape)),
            )
            .at(out.span, format!("gives {}", shape_str(&out.shape)))
            .help(format!("end with a global pool and `dense: {{units: classes, activation: softmax}}`, giving ({classes})")));
        }
    }
    let mut stats = Vec::with_capacity(n);
    let mut totals = NodeStats::default();
    let overflow = |node: &crate::ir::Node, what: &str| {
        Diagnostic::new(
            "limit::overflow",
            format!("the {what} of `{}` overflows 64 bits", node.name),
        )
        .at(node.span, "count overflows")
        .help("reduce the sizes of this layer")
    };
    for id in graph.ids() {
        let node = graph.node(id);
        let ins: Vec<&crate::ir::Shape> =
            node.inputs.iter().map(|&i| &graph.node(i).shape).collect();
        let (params, macs) = match &node.op {
            Op::Input(_) => (Counts::default(), 0),
            op => (
                op.params(&ins, &node.shape)
                    .ok_or_else(|| overflow(node, "parameter count"))?,
                op.macs(&ins, &node.shape)
                    .ok_or_else(|| overflow(node, "MAC count"))?,
            ),
        };
        let elements =
            crate::ir::ops::prod(&node.shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
                .ok_or_else(|| overflow(node, "element count"))?;
        let s = NodeStats {
            params,
            macs,
            elements,
        };
        totals.params.trainable = totals
            .params
            .trainable
            .checked_add(params.trainable)
            .ok_or_else(|| overflow(node, "total parameter count"))?;
        totals.params.non_trainable = totals
            .params
            .non_trainable
            .checked_add(params.non_trainable)
            .ok_or_else(|| overflow(node, "total parameter count"))?;
        totals
            .params
            .trainable
            .checked_add(totals.params.non_trainable)
            .ok_or_else(|| overflow(node, "total parameter count"))?;
        totals.macs = totals
            .macs
            .checked_add(macs)
            .ok_or_else(|| overflow(node, "total MAC count"))?;
        totals.elements = totals
            .elements
            .checked_add(elements)
            .ok_or_else(|| overflow(node, "activation count"))?;
        stats.push(s);
    }
    Ok(ValidGraph {
        graph,
        stats,
        totals,
    })
}
