//! GlobalAveragePooling2D / GlobalMaxPooling2D: (H, W, C) → (C), or (1, 1, C) with keepdims.

use super::pool2d::PoolKind;
use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlobalPool {
    pub kind: PoolKind,
    pub keepdims: bool,
}

impl GlobalPool {
    pub fn parse(kind: PoolKind, a: &mut Args) -> Result<Self> {
        a.positional(&[])?;
        Ok(GlobalPool {
            kind,
            keepdims: a.bool("keepdims")?.unwrap_or(false),
        })
    }
}

impl LayerKind for GlobalPool {
    fn keras_class(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "GlobalMaxPooling2D",
            PoolKind::Avg => "GlobalAveragePooling2D",
        }
    }
    fn base_name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "global_max_pooling2d",
            PoolKind::Avg => "global_average_pooling2d",
        }
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        let [_, _, c] = cx.image()?;
        Ok(if self.keepdims {
            vec![1, 1, c]
        } else {
            vec![c]
        })
    }
}
