//! The lowered layers both networks execute, one per IR node, with indices into the
//! parameter list, and the geometry of their windows.

use super::super::kernels::{ConvShape, Window};
use crate::ir::ops::{ActFn, MergeKind};

/// Indices into the parameter list (`plan::lower`'s, which every network keeps in order).
#[derive(Clone, Debug)]
pub enum Layer {
    Input,
    Conv {
        op: crate::ir::ops::Conv2d,
        w: usize,
        b: Option<usize>,
        /// An elementwise activation fused into the convolution's epilogue
        /// (`Net::with_fused_activations`, the CPU network's inference lowering; the kernel
        /// network runs it as a pass after the convolution).
        act: Option<ActFn>,
    },
    BatchNorm {
        gamma: Option<usize>,
        beta: Option<usize>,
        mean: usize,
        var: usize,
        eps: f32,
        momentum: f32,
        /// An elementwise activation fused into the BatchNorm
        /// (`Net::with_fused_bn_and_add_activations`, the CPU network's lowering).
        act: Option<ActFn>,
    },
    Activation(ActFn),
    ZeroPad([[usize; 2]; 2]),
    Pool {
        max: bool,
        op: crate::ir::ops::Pool2d,
    },
    GlobalPool {
        max: bool,
    },
    Dense {
        w: usize,
        b: Option<usize>,
        act: Option<ActFn>,
    },
    Dropout(f32),
    /// Flatten and Reshape: the data is already flat; only the logical shape changes.
    Reshape,
    Merge {
        kind: MergeKind,
        /// A ReLU fused into an Add (`Net::with_fused_bn_and_add_activations`, the CPU
        /// network's lowering).
        act: Option<ActFn>,
    },
    /// The SE tail as one op, act(x · gate + the other inputs), reading [x (N, H, W, C), gate
    /// (N, 1, 1, C), others...]: an Add whose SE multiply was absorbed into it
    /// (`Net::with_fused_se_tails`, the CPU network's lowering; the kernel network runs it too).
    GatedAdd {
        /// A ReLU fused into the Add, or none.
        act: Option<ActFn>,
    },
}

/// The convolution geometry of a conv layer between two batch shapes (N, H, W, C).
pub fn conv_shape(op: &crate::ir::ops::Conv2d, ins: &[usize], outs: &[usize]) -> ConvShape {
    let pads = op.pads([ins[1], ins[2]]);
    ConvShape {
        win: Window::between(
            ins,
            outs,
            op.kernel,
            op.stride,
            op.dilation,
            [pads[0][0], pads[1][0]],
        ),
        cout: op.filters,
        groups: op.groups,
    }
}

pub fn pool_window(op: &crate::ir::ops::Pool2d, ins: &[usize], outs: &[usize]) -> Window {
    let pads = op.pads([ins[1], ins[2]]);
    Window::between(
        ins,
        outs,
        op.size,
        op.stride,
        [1, 1],
        [pads[0][0], pads[1][0]],
    )
}

/// A global pool is a pool whose window is the whole image.
pub fn global_window(ins: &[usize]) -> Window {
    let outs = [ins[0], 1, 1, ins[3]];
    Window::between(ins, &outs, [ins[1], ins[2]], [1, 1], [1, 1], [0, 0])
}

/// (rows, last axis) of a batch shape: the 2-D view of an activation.
pub fn rows_of(shape: &[usize]) -> (usize, usize) {
    let last = *shape.last().expect("rank >= 1");
    (shape.iter().product::<usize>() / last.max(1), last)
}

/// (N, 1, 1, C) against (N, H, W, C): the SE gate.
pub fn se_gate(gate: &[usize], x: &[usize]) -> bool {
    gate.len() == x.len()
        && gate[0] == x[0]
        && gate[gate.len() - 1] == x[x.len() - 1]
        && gate[1..gate.len() - 1].iter().all(|&d| d == 1)
}

impl Layer {
    /// The elementwise activation a fusion pass moved into this layer, run on its output.
    pub fn epilogue(&self) -> Option<ActFn> {
        match self {
            Layer::Conv { act, .. }
            | Layer::BatchNorm { act, .. }
            | Layer::Merge { act, .. }
            | Layer::GatedAdd { act } => *act,
            _ => None,
        }
    }
}
