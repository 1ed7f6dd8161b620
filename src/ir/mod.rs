//! The IR: an arena of layer nodes with typed handles. Each node carries its output shape
//! (batch excluded, channels-last) and the span of the spec text it came from.

pub mod args;
pub mod ops;

use crate::source::Span;
pub use ops::Op;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A shape without the batch dimension: `[H, W, C]` for images, `[C]` after pooling.
pub type Shape = Vec<usize>;

/// Where a node sits in the spec's structure, for the `--depth stage|block` views.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Scope {
    /// `stage3` (1-based, counting `stage` items in order) with the block template name.
    pub stage: Option<(String, String)>,
    /// `stage3.block2`, or `blockN` for a template used outside a stage, with the template name.
    pub block: Option<(String, String)>,
    /// The block's integer parameters as bound for this instance (`filters: 64`), for back
    /// ends that write a block as a class with constructor arguments (the PyTorch export).
    #[serde(skip)]
    pub args: Vec<(String, i64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub shape: Shape,
    pub span: Span,
    pub scope: Scope,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub model: String,
    pub nodes: Vec<Node>,
    pub classes: Option<usize>,
    /// The model output.
    pub output: NodeId,
}

impl Graph {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }
    pub fn input_shape(&self) -> &Shape {
        &self.nodes[0].shape
    }
    /// For each node, the nodes that read it.
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut c = vec![vec![]; self.nodes.len()];
        for id in self.ids() {
            for &i in &self.node(id).inputs {
                c[i.index()].push(id);
            }
        }
        c
    }
}

pub fn shape_str(s: &[usize]) -> String {
    let inner: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("({})", inner.join(", "))
}

/// Keras' form: `(None, 56, 56, 256)`.
pub fn keras_shape(s: &[usize]) -> String {
    let mut parts = vec!["None".to_string()];
    parts.extend(s.iter().map(|d| d.to_string()));
    format!("({})", parts.join(", "))
}
