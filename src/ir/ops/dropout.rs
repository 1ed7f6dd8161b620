//! Dropout: shape-preserving, no weights.

use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dropout {
    pub rate: f64,
}

impl Dropout {
    pub fn parse(a: &mut Args) -> Result<Self> {
        a.positional(&["rate"])?;
        let rate = a
            .float("rate", 0.0, 0.999)?
            .ok_or_else(|| a.missing("rate", "a number in [0, 1)"))?;
        Ok(Dropout { rate })
    }
}

impl LayerKind for Dropout {
    fn keras_class(&self) -> &'static str {
        "Dropout"
    }
    fn base_name(&self) -> &'static str {
        "dropout"
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        Ok(cx.one().clone())
    }
    fn config(&self) -> String {
        format!("rate {}", self.rate)
    }
}
