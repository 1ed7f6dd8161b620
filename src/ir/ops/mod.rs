//! Layer kinds. Each file holds one kind: its attributes, its shape rule, its parameter count
//! (Keras' rules) and its MACs. `Op` only dispatches.

mod activation;
mod batch_norm;
mod conv2d;
mod dense;
mod dropout;
mod flatten;
mod global_pool;
mod input;
mod merge;
mod pool2d;
mod reshape;
mod zero_padding2d;

pub use activation::{ActFn, Activation};
pub use batch_norm::BatchNorm;
pub use conv2d::{Conv2d, Padding};
pub use dense::Dense;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use global_pool::GlobalPool;
pub use input::Input;
pub use merge::{Merge, MergeKind};
pub use pool2d::{Pool2d, PoolKind};
pub use reshape::Reshape;
pub use zero_padding2d::ZeroPadding2d;

use super::args::Args;
use super::{shape_str, Shape};
use crate::diag::{Diagnostic, Result};
use crate::source::Span;
use serde::Serialize;

/// One input of a node, as shape inference sees it.
pub struct InShape<'a> {
    pub shape: &'a Shape,
    pub name: &'a str,
    pub span: Span,
}

/// What a shape rule gets: the node's own span and its inputs.
pub struct InferCx<'a> {
    pub op: &'a str,
    pub span: Span,
    pub ins: Vec<InShape<'a>>,
}

impl InferCx<'_> {
    pub fn one(&self) -> &Shape {
        self.ins[0].shape
    }
    /// The single input as (H, W, C).
    pub fn image(&self) -> Result<[usize; 3]> {
        match self.one().as_slice() {
            [h, w, c] => Ok([*h, *w, *c]),
            s => Err(Diagnostic::new(
                "shape::rank",
                format!(
                    "`{}` needs an image input (H, W, C), but `{}` gives {}",
                    self.op,
                    self.ins[0].name,
                    shape_str(s)
                ),
            )
            .at(self.span, "needs (H, W, C)")
            .related(
                self.ins[0].span,
                format!("{} comes from here", shape_str(s)),
            )
            .help("feed it a 3-D tensor, or insert a `reshape` before it")),
        }
    }
    pub fn err(
        &self,
        code: &'static str,
        msg: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::new(code, msg).at(self.span, label).help(help)
    }
}

/// Keras' split of a layer's weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub trainable: u64,
    pub non_trainable: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.trainable + self.non_trainable
    }
}

/// Checked product, `None` on overflow.
pub fn prod(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |a, &x| a.checked_mul(x))
}

pub trait LayerKind: Sized {
    fn keras_class(&self) -> &'static str;
    /// Keras' auto-name stem: `conv2d`, `batch_normalization`, ...
    fn base_name(&self) -> &'static str;
    fn infer(&self, cx: &InferCx) -> Result<Shape>;
    fn params(&self, _ins: &[&Shape], _out: &Shape) -> Option<Counts> {
        Some(Counts::default())
    }
    /// Multiply-accumulates at batch 1 (conv and dense only).
    fn macs(&self, _ins: &[&Shape], _out: &Shape) -> Option<u64> {
        Some(0)
    }
    /// Kernel/stride/groups, for the summary's extra column.
    fn config(&self) -> String {
        String::new()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Input(Input),
    Conv2d(Conv2d),
    BatchNorm(BatchNorm),
    Activation(Activation),
    ZeroPadding2d(ZeroPadding2d),
    Pool2d(Pool2d),
    GlobalPool(GlobalPool),
    Dense(Dense),
    Dropout(Dropout),
    Flatten(Flatten),
    Reshape(Reshape),
    Merge(Merge),
}

macro_rules! dispatch {
    ($self:ident, $x:ident => $e:expr) => {
        match $self {
            Op::Input($x) => $e,
            Op::Conv2d($x) => $e,
            Op::BatchNorm($x) => $e,
            Op::Activation($x) => $e,
            Op::ZeroPadding2d($x) => $e,
            Op::Pool2d($x) => $e,
            Op::GlobalPool($x) => $e,
            Op::Dense($x) => $e,
            Op::Dropout($x) => $e,
            Op::Flatten($x) => $e,
            Op::Reshape($x) => $e,
            Op::Merge($x) => $e,
        }
    };
}

/// Layer kinds a spec can name (besides `se`, `stage`, `residual`, `parallel` and templates).
pub const LAYER_KINDS: &[&str] = &[
    "conv2d",
    "batch_norm",
    "activation",
    "relu",
    "sigmoid",
    "softmax",
    "zero_padding2d",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
    "global_max_pool",
    "dense",
    "dropout",
    "flatten",
    "reshape",
    "add",
    "multiply",
    "concatenate",
];

/// How many inputs a kind takes: `None` for "two or more" (merges).
pub fn arity(kind: &str) -> Option<usize> {
    match kind {
        "add" | "multiply" | "concatenate" => None,
        _ => Some(1),
    }
}

impl Op {
    /// Builds an op from a spec kind and its arguments; `None` when the kind is unknown.
    pub fn parse(kind: &str, a: &mut Args) -> Option<Result<Op>> {
        let r = match kind {
            "conv2d" => Conv2d::parse(a).map(Op::Conv2d),
            "batch_norm" => BatchNorm::parse(a).map(Op::BatchNorm),
            "activation" | "relu" | "sigmoid" | "softmax" => {
                Activation::parse(kind, a).map(Op::Activation)
            }
            "zero_padding2d" => ZeroPadding2d::parse(a).map(Op::ZeroPadding2d),
            "max_pool2d" => Pool2d::parse(PoolKind::Max, a).map(Op::Pool2d),
            "avg_pool2d" => Pool2d::parse(PoolKind::Avg, a).map(Op::Pool2d),
            "global_avg_pool" => GlobalPool::parse(PoolKind::Avg, a).map(Op::GlobalPool),
            "global_max_pool" => GlobalPool::parse(PoolKind::Max, a).map(Op::GlobalPool),
            "dense" => Dense::parse(a).map(Op::Dense),
            "dropout" => Dropout::parse(a).map(Op::Dropout),
            "flatten" => Flatten::parse(a).map(Op::Flatten),
            "reshape" => Reshape::parse(a).map(Op::Reshape),
            "add" => Merge::parse(MergeKind::Add, a).map(Op::Merge),
            "multiply" => Merge::parse(MergeKind::Multiply, a).map(Op::Merge),
            "concatenate" => Merge::parse(MergeKind::Concatenate, a).map(Op::Merge),
            _ => return None,
        };
        Some(r.and_then(|op| a.finish().map(|_| op)))
    }

    pub fn keras_class(&self) -> &'static str {
        dispatch!(self, x => x.keras_class())
    }
    pub fn base_name(&self) -> &'static str {
        dispatch!(self, x => x.base_name())
    }
    pub fn infer(&self, cx: &InferCx) -> Result<Shape> {
        dispatch!(self, x => x.infer(cx))
    }
    pub fn params(&self, ins: &[&Shape], out: &Shape) -> Option<Counts> {
        dispatch!(self, x => x.params(ins, out))
    }
    pub fn macs(&self, ins: &[&Shape], out: &Shape) -> Option<u64> {
        dispatch!(self, x => x.macs(ins, out))
    }
    pub fn config(&self) -> String {
        dispatch!(self, x => x.config())
    }
}
