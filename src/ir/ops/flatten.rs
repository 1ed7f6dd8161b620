//! Flatten: (H, W, C) → (H·W·C).

use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Flatten {}

impl Flatten {
    pub fn parse(a: &mut Args) -> Result<Self> {
        a.positional(&[])?;
        Ok(Flatten {})
    }
}

impl LayerKind for Flatten {
    fn keras_class(&self) -> &'static str {
        "Flatten"
    }
    fn base_name(&self) -> &'static str {
        "flatten"
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        let n = cx
            .one()
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                cx.err(
                    "limit::overflow",
                    "flattened size overflows",
                    "too many elements",
                    "reduce the input size",
                )
            })?;
        Ok(vec![n])
    }
}
