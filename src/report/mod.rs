//! Back ends that read only a `ValidGraph`: the Keras-style summary (text, JSON, markdown),
//! Graphviz DOT, and the IR as JSON; and the excitation statistics of `analyze`.

pub mod diff;
pub mod dot;
pub mod excitation;
pub mod ir_json;
pub mod memory;
pub mod summary;
pub mod view;

use crate::ir::{Graph, NodeId};

/// Keras' row order for a functional model: layers by decreasing depth (longest path to the
/// output), ties broken by the order a depth-first walk from the output first meets them.
/// This is why the seed prints the shortcut `conv2d_1` after the SE branch.
pub fn keras_order(g: &Graph) -> Vec<NodeId> {
    let n = g.nodes.len();
    let mut visit_index = vec![usize::MAX; n];
    let mut next = 0;
    let mut stack = vec![g.output];
    while let Some(id) = stack.pop() {
        if visit_index[id.index()] != usize::MAX {
            continue;
        }
        visit_index[id.index()] = next;
        next += 1;
        // Push inputs reversed so the first input is walked first (Keras recurses in input order).
        for &i in g.node(id).inputs.iter().rev() {
            if visit_index[i.index()] == usize::MAX {
                stack.push(i);
            }
        }
    }
    // Creation order is topological, so walking it backwards sees every consumer before its inputs.
    let mut depth = vec![0usize; n];
    for id in g.ids().rev() {
        let d = depth[id.index()];
        for &i in &g.node(id).inputs {
            depth[i.index()] = depth[i.index()].max(d + 1);
        }
    }
    let mut ids: Vec<NodeId> = g.ids().collect();
    ids.sort_by_key(|id| {
        (
            std::cmp::Reverse(depth[id.index()]),
            visit_index[id.index()],
        )
    });
    ids
}

pub use crate::util::thousands;
