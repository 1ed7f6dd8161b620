//! MaxPooling2D / AveragePooling2D: size, stride (defaults to size, as Keras), padding.
//! Explicit padding pads with -inf for max and is excluded from the average.

use super::conv2d::{window_out, Padding};
use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    Max,
    Avg,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub size: [usize; 2],
    pub stride: [usize; 2],
    pub padding: Padding,
}

impl Pool2d {
    pub fn parse(kind: PoolKind, a: &mut Args) -> Result<Self> {
        a.positional(&["size", "stride"])?;
        let size = a.pair("size", 1)?.unwrap_or([2, 2]);
        Ok(Pool2d {
            kind,
            size,
            stride: a.pair("stride", 1)?.unwrap_or(size),
            padding: Padding::parse(a, Padding::Valid)?,
        })
    }
    pub fn pads(&self, hw: [usize; 2]) -> [[usize; 2]; 2] {
        [0, 1].map(
            |i| match self.padding.resolve(i, hw[i], self.size[i], self.stride[i]) {
                Ok((b, a, _)) => [b, a],
                Err(_) => [0, 0],
            },
        )
    }
}

impl LayerKind for Pool2d {
    fn keras_class(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "MaxPooling2D",
            PoolKind::Avg => "AveragePooling2D",
        }
    }
    fn base_name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pooling2d",
            PoolKind::Avg => "average_pooling2d",
        }
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        let [h, w, c] = cx.image()?;
        let [ho, wo] = window_out(cx, [h, w], self.size, self.stride, &self.padding)?;
        Ok(vec![ho, wo, c])
    }
    fn config(&self) -> String {
        format!("{}x{}/{}", self.size[0], self.size[1], self.stride[0])
    }
}
