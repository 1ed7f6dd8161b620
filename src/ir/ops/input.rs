//! InputLayer: the spec's `input: [H, W, C]`.

use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Input {
    pub shape: Shape,
}

impl LayerKind for Input {
    fn keras_class(&self) -> &'static str {
        "InputLayer"
    }
    fn base_name(&self) -> &'static str {
        "input"
    }
    fn infer(&self, _cx: &InferCx) -> Result<Shape> {
        Ok(self.shape.clone())
    }
}
