//! Back ends that let a model leave se-compile, and weights come in:
//! - `onnx`: one ONNX model (opset 17) with the weights as initializers, NHWC input;
//! - `pytorch`: `model.py` (a plain `torch.nn.Module`) and `weights.safetensors` in PyTorch
//!   layouts;
//! - `import`: a PyTorch state dict (timm's ResNet family) into a se-compile checkpoint.
//!
//! All of them read a `ValidGraph` and the parameters of a lowered network by their Keras names
//! (`conv2d_3/kernel`), so the layouts below are the only conversions.

pub mod import;
pub mod onnx;
pub mod pytorch;

use crate::ir::ops::Op;
use crate::ir::{Graph, NodeId};
use crate::source::SourceFile;
use std::collections::HashMap;

/// Why an export or import cannot be done; each renders as one line.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportError {
    /// A layer the target format cannot express: the layer, its spec line, why, and the fix.
    Unsupported {
        layer: String,
        at: String,
        why: String,
        help: String,
    },
    /// The serialized model is over a format limit (protobuf's 2 GiB).
    TooLarge { bytes: u64, limit: u64 },
    /// Import: a tensor of the source file that feeds no layer of the spec.
    Unmatched { tensor: String, file: String },
    /// Import: a tensor the spec needs that the file lacks.
    Missing {
        tensor: String,
        layer: String,
        at: String,
        file: String,
    },
    /// Import: a tensor whose shape is not the one the layer needs.
    Shape {
        tensor: String,
        found: Vec<usize>,
        want: Vec<usize>,
        layer: String,
        at: String,
    },
    /// Import: a file that cannot be read as safetensors, or a tensor type we cannot read.
    Read(String),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            ExportError::Unsupported { layer, at, why, help } => {
                write!(f, "{at}: layer `{layer}` cannot be exported: {why}; {help}")
            }
            ExportError::TooLarge { bytes, limit } => write!(
                f,
                "the model is {bytes} bytes, over the {limit}-byte protobuf limit of a single ONNX file; export fewer classes or a smaller input"
            ),
            ExportError::Unmatched { tensor, file } => write!(
                f,
                "{file}: tensor `{tensor}` feeds no layer of the spec; is it the weights of another model (or pass --map to choose the key mapping)?"
            ),
            ExportError::Missing { tensor, layer, at, file } => write!(
                f,
                "{file}: has no tensor `{tensor}`, which layer `{layer}` ({at}) needs; the weights belong to a different model"
            ),
            ExportError::Shape { tensor, found, want, layer, at } => write!(
                f,
                "tensor `{tensor}` has shape {found:?} but layer `{layer}` ({at}) needs {want:?}; the weights belong to a different configuration"
            ),
            ExportError::Read(s) => write!(f, "{s}"),
        }
    }
}

impl std::error::Error for ExportError {}

/// `file:line:col` of a node's spec text, for messages.
pub fn place(g: &Graph, id: NodeId, src: &SourceFile) -> String {
    let (l, c) = src.line_col(g.node(id).span.start);
    format!("{}:{l}:{c}", src.name)
}

/// A network's parameters by name (`conv2d_3/kernel`), in se-compile's layouts: conv kernels
/// HWIO `[kh, kw, cin/groups, cout]`, dense kernels `[in, units]`, vectors per channel.
pub struct Weights(HashMap<String, Vec<f32>>);

impl Weights {
    pub fn from_model(m: &dyn crate::lower::model::Model) -> Weights {
        Weights(
            m.param_info()
                .into_iter()
                .map(|p| p.name)
                .zip(m.param_values())
                .collect(),
        )
    }
    /// The initial values of a lowered network (`plan::lower`).
    pub fn from_params(params: &[crate::lower::plan::ParamInit]) -> Weights {
        Weights(
            params
                .iter()
                .map(|p| (p.name.clone(), p.values.clone()))
                .collect(),
        )
    }
    pub fn new(map: HashMap<String, Vec<f32>>) -> Weights {
        Weights(map)
    }
    /// The tensor `{layer}/{what}`; the lowering creates every one the graph needs.
    pub fn get(&self, layer: &str, what: &str) -> &[f32] {
        self.0
            .get(&format!("{layer}/{what}"))
            .unwrap_or_else(|| panic!("the network has `{layer}/{what}`"))
    }
    pub fn try_get(&self, layer: &str, what: &str) -> Option<&[f32]> {
        self.0.get(&format!("{layer}/{what}")).map(|v| v.as_slice())
    }
}

/// HWIO `[kh, kw, ci, co]` → OIHW `[co, ci, kh, kw]` (ONNX and PyTorch).
pub fn hwio_to_oihw(w: &[f32], kh: usize, kw: usize, ci: usize, co: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for y in 0..kh {
        for x in 0..kw {
            for i in 0..ci {
                for o in 0..co {
                    out[((o * ci + i) * kh + y) * kw + x] = w[((y * kw + x) * ci + i) * co + o];
                }
            }
        }
    }
    out
}

/// OIHW → HWIO, the inverse of `hwio_to_oihw`.
pub fn oihw_to_hwio(w: &[f32], co: usize, ci: usize, kh: usize, kw: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for o in 0..co {
        for i in 0..ci {
            for y in 0..kh {
                for x in 0..kw {
                    out[((y * kw + x) * ci + i) * co + o] = w[((o * ci + i) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// `[rows, cols]` → `[cols, rows]` (a dense kernel `[in, units]` ↔ torch's `[out, in]`).
pub fn transpose2(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

/// The channels a node reads (its first input's last axis).
pub fn in_channels(g: &Graph, id: NodeId) -> usize {
    let n = g.node(id);
    n.inputs
        .first()
        .and_then(|&i| g.node(i).shape.last().copied())
        .unwrap_or(0)
}

/// Whether the graph's output is a softmax (a layer, or a Dense layer's activation).
pub fn ends_in_softmax(g: &Graph) -> bool {
    use crate::ir::ops::ActFn;
    match &g.node(g.output).op {
        Op::Activation(a) => a.function == ActFn::Softmax,
        Op::Dense(d) => d.activation == Some(ActFn::Softmax),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let (kh, kw, ci, co) = (3, 2, 4, 5);
        let w: Vec<f32> = (0..kh * kw * ci * co).map(|i| i as f32).collect();
        let o = hwio_to_oihw(&w, kh, kw, ci, co);
        // element (y=1, x=0, i=2, o=3) of HWIO sits at OIHW [3, 2, 1, 0]
        assert_eq!(o[((3 * ci + 2) * kh + 1) * kw], w[((kw) * ci + 2) * co + 3]);
        assert_eq!(oihw_to_hwio(&o, co, ci, kh, kw), w);
        let t = transpose2(&w[..12], 3, 4);
        assert_eq!(t[4 * 3 - 1], w[11]);
        assert_eq!(transpose2(&t, 4, 3), w[..12].to_vec());
    }
}
