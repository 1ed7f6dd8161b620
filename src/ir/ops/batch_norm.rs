//! BatchNormalization over the last axis. Keras counts 4·C: gamma and beta trainable, the
//! moving mean and variance non-trainable.

use super::{Counts, InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchNorm {
    pub epsilon: f64,
    pub momentum: f64,
    /// Learn beta (Keras `center`).
    pub center: bool,
    /// Learn gamma (Keras `scale`).
    pub scale: bool,
}

impl BatchNorm {
    pub fn parse(a: &mut Args) -> Result<Self> {
        a.positional(&[])?;
        Ok(BatchNorm {
            epsilon: a.float("epsilon", 0.0, 1.0)?.unwrap_or(1e-3),
            momentum: a.float("momentum", 0.0, 1.0)?.unwrap_or(0.99),
            center: a.bool("center")?.unwrap_or(true),
            scale: a.bool("scale")?.unwrap_or(true),
        })
    }
}

impl LayerKind for BatchNorm {
    fn keras_class(&self) -> &'static str {
        "BatchNormalization"
    }
    fn base_name(&self) -> &'static str {
        "batch_normalization"
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        Ok(cx.one().clone())
    }
    fn params(&self, ins: &[&Shape], _out: &Shape) -> Option<Counts> {
        let c = *ins[0].last()? as u64;
        let learned = u64::from(self.center) + u64::from(self.scale);
        Some(Counts {
            trainable: learned * c,
            non_trainable: 2 * c,
        })
    }
}
