//! ZeroPadding2D: `p`, `[ph, pw]` or `[[top, bottom], [left, right]]`.

use super::conv2d::Padding;
use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZeroPadding2d {
    /// `[[top, bottom], [left, right]]`.
    pub padding: [[usize; 2]; 2],
}

impl ZeroPadding2d {
    pub fn parse(a: &mut Args) -> Result<Self> {
        a.positional(&["padding"])?;
        match Padding::parse(a, Padding::Explicit([[1, 1], [1, 1]]))? {
            Padding::Explicit(padding) => Ok(ZeroPadding2d { padding }),
            _ => Err(a.missing(
                "padding",
                "an integer, [ph, pw] or [[top, bottom], [left, right]]",
            )),
        }
    }
}

impl LayerKind for ZeroPadding2d {
    fn keras_class(&self) -> &'static str {
        "ZeroPadding2D"
    }
    fn base_name(&self) -> &'static str {
        "zero_padding2d"
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        let [h, w, c] = cx.image()?;
        let [[t, b], [l, r]] = self.padding;
        Ok(vec![h + t + b, w + l + r, c])
    }
    fn config(&self) -> String {
        Padding::Explicit(self.padding).describe()
    }
}
