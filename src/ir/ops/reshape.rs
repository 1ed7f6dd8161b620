//! Reshape to a target shape with the same number of elements.

use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::{check_range, Args, Value};
use crate::ir::{shape_str, Shape};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reshape {
    pub target: Vec<usize>,
    /// Written as the seed's `x[:, None, None, :]`, which Keras records as a TensorFlow op
    /// layer (`tf_op_layer_strided_slice`) instead of a Reshape. Same shape, same (no) weights.
    pub as_slice: bool,
}

impl Reshape {
    pub fn parse(a: &mut Args) -> Result<Self> {
        a.positional(&["shape"])?;
        let Some((v, span, i)) = a.raw("shape") else {
            return Err(a.missing("shape", "a list such as [1, 1, 256]"));
        };
        let Value::List(l) = &v else {
            return Err(a.type_error("shape", &v, span, "a list of sizes", i));
        };
        let target = l
            .iter()
            .map(|x| match x {
                Value::Int(n) => check_range(&a.op, "shape", *n, 1, span).map(|n| n as usize),
                other => Err(a.type_error("shape", other, span, "a list of sizes", i)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Reshape {
            target,
            as_slice: false,
        })
    }
}

impl LayerKind for Reshape {
    fn keras_class(&self) -> &'static str {
        if self.as_slice {
            "TensorFlowOpLayer"
        } else {
            "Reshape"
        }
    }
    fn base_name(&self) -> &'static str {
        if self.as_slice {
            "tf_op_layer_strided_slice"
        } else {
            "reshape"
        }
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        let n_in: u128 = cx.one().iter().map(|&d| d as u128).product();
        let n_out: u128 = self.target.iter().map(|&d| d as u128).product();
        if n_in != n_out {
            return Err(cx.err(
                "shape::reshape",
                format!(
                    "cannot reshape {} ({n_in} values) to {} ({n_out} values)",
                    shape_str(cx.one()),
                    shape_str(&self.target)
                ),
                "element counts differ",
                "choose a target shape with the same number of elements",
            ));
        }
        Ok(self.target.clone())
    }
}
