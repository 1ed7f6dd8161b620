//! What both runtime networks (the CPU network, the kernel network) execute, and what exports
//! and imports read: the validated graph, one lowered layer per node (`layer`), every
//! parameter's name and initial value (`init`), and the order and lifetimes of the values
//! between the layers. BatchNorm folding and the CPU network's fusions are passes over it
//! (`fold`).

mod init;
mod layer;
mod passes;

use crate::ir::ops::ActFn;
use crate::ir::{Graph, NodeId};
pub use init::{lower, Lowered, ParamInit};
pub use layer::{conv_shape, global_window, pool_window, rows_of, se_gate, Layer};

pub struct Plan {
    /// The spec's graph, as validated: names, shapes and the spec's wiring, which exports,
    /// summaries and probes read. The layers read `inputs`.
    pub graph: Graph,
    pub layers: Vec<Layer>,
    /// The nodes each layer reads: the graph's inputs, unless a fusion moved a node's op into
    /// its reader (`Net::with_fused_se_tails`); that reader then reads the node's inputs.
    inputs: Vec<Vec<NodeId>>,
    /// How many layers read each node's output (the graph output counts as one reader).
    uses: Vec<usize>,
    /// Nodes whose op runs inside their former reader: no layer reads them, and they are not
    /// run.
    absorbed: Vec<bool>,
    /// Nodes whose output is read by an average global pool (directly or through reshapes that
    /// keep the shape): their kernels also sum each image's channels while the output is in
    /// cache, and the pool takes the means from there (`Act::channel_means`).
    pooled: Vec<bool>,
    /// The node the loss reads, and whether it is a Dense layer whose softmax is skipped.
    logits: (NodeId, bool),
}

impl Plan {
    pub fn new(graph: Graph, layers: Vec<Layer>) -> Plan {
        let inputs = graph
            .ids()
            .map(|id| graph.node(id).inputs.clone())
            .collect();
        Plan::wired(graph, layers, inputs)
    }

    /// A plan whose layers read `inputs` (per node) rather than the graph's inputs. A node
    /// that the graph's layers read but none of these does is absorbed: it is not run.
    pub fn wired(graph: Graph, layers: Vec<Layer>, inputs: Vec<Vec<NodeId>>) -> Plan {
        let count = |ins: &mut dyn Iterator<Item = &Vec<NodeId>>| {
            let mut uses = vec![0; graph.nodes.len()];
            for i in ins.flatten() {
                uses[i.index()] += 1;
            }
            uses[graph.output.index()] += 1;
            uses
        };
        let uses = count(&mut inputs.iter());
        let spec_uses = count(&mut graph.nodes.iter().map(|n| &n.inputs));
        let absorbed: Vec<bool> = uses
            .iter()
            .zip(&spec_uses)
            .map(|(&u, &s)| u == 0 && s > 0)
            .collect();
        let mut pooled = vec![false; graph.nodes.len()];
        for id in graph.ids() {
            if !matches!(layers[id.index()], Layer::GlobalPool { max: false }) {
                continue;
            }
            // Back through reshapes that keep the shape (folded BatchNorms) to the producer.
            let mut src = inputs[id.index()][0];
            while src.index() > 0 && matches!(layers[src.index()], Layer::Reshape) {
                let from = inputs[src.index()][0];
                if graph.node(from).shape != graph.node(src).shape {
                    break;
                }
                src = from;
            }
            pooled[src.index()] = true;
        }
        // Training reads logits: a final softmax (a layer of its own, or a Dense layer's
        // activation) is fused into the cross-entropy.
        let out = graph.output;
        let logits = match &layers[out.index()] {
            Layer::Activation(ActFn::Softmax) => (inputs[out.index()][0], false),
            Layer::Dense {
                act: Some(ActFn::Softmax),
                ..
            } => (out, true),
            _ => (out, false),
        };
        Plan {
            graph,
            layers,
            inputs,
            uses,
            absorbed,
            pooled,
            logits,
        }
    }

    /// The nodes `id`'s layer reads.
    pub fn inputs(&self, id: NodeId) -> &[NodeId] {
        &self.inputs[id.index()]
    }

    /// Whether any layer reads other nodes than the graph says (a fusion rewired the plan).
    pub fn rewired(&self) -> bool {
        self.absorbed.iter().any(|a| *a)
    }

    /// The layers reading each node's output, under this plan's wiring.
    pub fn readers(&self) -> Vec<Vec<NodeId>> {
        let mut r = vec![vec![]; self.inputs.len()];
        for (id, ins) in self.inputs.iter().enumerate() {
            for i in ins {
                r[i.index()].push(NodeId(id as u32));
            }
        }
        r
    }

    /// Whether node `idx`'s output is read by an average global pool, which takes its
    /// per-image channel means from the producing kernel when that kernel gives them.
    pub fn pooled(&self, idx: usize) -> bool {
        self.pooled[idx]
    }

    /// The node whose output the loss reads, and whether its own softmax is to be skipped.
    pub fn logits(&self) -> (NodeId, bool) {
        self.logits
    }

    /// Runs the layers in node order up to the logits node (absorbed ones left out) and
    /// returns its value. A value
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
            if self.absorbed[idx] {
                continue;
            }
            let node = g.node(NodeId(idx as u32));
            let mut ins = vec![];
            for &i in &self.inputs[idx] {
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
