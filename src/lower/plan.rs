//! What both runtime networks (CPU kernels, dfdx composites) execute: the validated graph, one
//! runtime layer per node, and the order and lifetimes of the values between them.

use super::layers::Layer;
use crate::ir::ops::ActFn;
use crate::ir::{Graph, NodeId};

pub struct Plan {
    pub graph: Graph,
    pub layers: Vec<Layer>,
    /// How many layers read each node's output (the graph output counts as one reader).
    uses: Vec<usize>,
    /// The node the loss reads, and whether it is a Dense layer whose softmax is skipped.
    logits: (NodeId, bool),
}

impl Plan {
    pub fn new(graph: Graph, layers: Vec<Layer>) -> Plan {
        let mut uses = vec![0; graph.nodes.len()];
        for id in graph.ids() {
            for &i in &graph.node(id).inputs {
                uses[i.index()] += 1;
            }
        }
        uses[graph.output.index()] += 1;
        // Training reads logits: a final softmax (a layer of its own, or a Dense layer's
        // activation) is fused into the cross-entropy.
        let out = graph.output;
        let logits = match &layers[out.index()] {
            Layer::Activation(ActFn::Softmax) => (graph.node(out).inputs[0], false),
            Layer::Dense {
                act: Some(ActFn::Softmax),
                ..
            } => (out, true),
            _ => (out, false),
        };
        Plan {
            graph,
            layers,
            uses,
            logits,
        }
    }

    /// The node whose output the loss reads, and whether its own softmax is to be skipped.
    pub fn logits(&self) -> (NodeId, bool) {
        self.logits
    }

    /// Runs the layers in node order up to the logits node and returns its value. A value
    /// read by several layers is handed out with `branch` until its last reader takes it.
    /// `layer` gets the node index, its inputs, its output shape with the batch axis, and
    /// whether to skip its softmax.
    pub fn walk<A>(
        &self,
        batch: usize,
        x: A,
        branch: impl Fn(&A) -> A,
        mut layer: impl FnMut(usize, Vec<A>, Vec<usize>, bool) -> A,
    ) -> A {
        let (stop, skip_softmax) = self.logits;
        let g = &self.graph;
        let mut remaining = self.uses.clone();
        // The loss reads `stop`; layers after it (a final softmax) are not run.
        remaining[stop.index()] += 1;
        let mut vals: Vec<Option<A>> = (0..g.nodes.len()).map(|_| None).collect();
        vals[0] = Some(x);
        for idx in 1..=stop.index() {
            let node = g.node(NodeId(idx as u32));
            let mut ins = vec![];
            for &i in &node.inputs {
                let i = i.index();
                remaining[i] -= 1;
                ins.push(if remaining[i] == 0 {
                    vals[i].take().expect("topological order")
                } else {
                    branch(vals[i].as_ref().expect("topological order"))
                });
            }
            let out_shape: Vec<usize> = std::iter::once(batch)
                .chain(node.shape.iter().copied())
                .collect();
            let skip = skip_softmax && idx == stop.index();
            vals[idx] = Some(layer(idx, ins, out_shape, skip));
        }
        vals[stop.index()].take().expect("output computed")
    }
}
