//! Dense on the last axis: in·units weights plus units biases (use_bias defaults to true).

use super::activation::ActFn;
use super::{prod, Counts, InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dense {
    pub units: usize,
    pub use_bias: bool,
    pub activation: Option<ActFn>,
}

impl Dense {
    pub fn parse(a: &mut Args) -> Result<Self> {
        a.positional(&["units"])?;
        Ok(Dense {
            units: a.req_int("units", 1)? as usize,
            use_bias: a.bool("use_bias")?.unwrap_or(true),
            activation: ActFn::parse_opt(a, "activation")?.filter(|f| *f != ActFn::Linear),
        })
    }
}

impl LayerKind for Dense {
    fn keras_class(&self) -> &'static str {
        "Dense"
    }
    fn base_name(&self) -> &'static str {
        "dense"
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        let mut s = cx.one().clone();
        match s.last_mut() {
            Some(last) => *last = self.units,
            None => s.push(self.units),
        }
        Ok(s)
    }
    fn params(&self, ins: &[&Shape], _out: &Shape) -> Option<Counts> {
        let w = prod(&[*ins[0].last()? as u64, self.units as u64])?;
        Some(Counts {
            trainable: w.checked_add(if self.use_bias { self.units as u64 } else { 0 })?,
            non_trainable: 0,
        })
    }
    fn macs(&self, ins: &[&Shape], _out: &Shape) -> Option<u64> {
        let dims: Vec<u64> = ins[0]
            .iter()
            .map(|&d| d as u64)
            .chain([self.units as u64])
            .collect();
        prod(&dims)
    }
    fn config(&self) -> String {
        self.activation
            .map(|f| f.name().to_string())
            .unwrap_or_default()
    }
}
