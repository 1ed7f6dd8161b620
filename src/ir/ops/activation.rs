//! Activation layers: `activation: relu` or the shorthands `relu`, `sigmoid`, `softmax`.

use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActFn {
    Linear,
    Relu,
    Relu6,
    Sigmoid,
    HardSigmoid,
    Softmax,
    Tanh,
    Swish,
    Gelu,
    Elu,
}

impl ActFn {
    pub const NAMES: &'static [&'static str] = &[
        "linear",
        "relu",
        "relu6",
        "sigmoid",
        "hard_sigmoid",
        "softmax",
        "tanh",
        "swish",
        "silu",
        "gelu",
        "elu",
    ];

    pub fn from_name(s: &str) -> Option<ActFn> {
        Some(match s {
            "linear" => ActFn::Linear,
            "relu" => ActFn::Relu,
            "relu6" => ActFn::Relu6,
            "sigmoid" => ActFn::Sigmoid,
            "hard_sigmoid" => ActFn::HardSigmoid,
            "softmax" => ActFn::Softmax,
            "tanh" => ActFn::Tanh,
            "swish" | "silu" => ActFn::Swish,
            "gelu" => ActFn::Gelu,
            "elu" => ActFn::Elu,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            ActFn::Linear => "linear",
            ActFn::Relu => "relu",
            ActFn::Relu6 => "relu6",
            ActFn::Sigmoid => "sigmoid",
            ActFn::HardSigmoid => "hard_sigmoid",
            ActFn::Softmax => "softmax",
            ActFn::Tanh => "tanh",
            ActFn::Swish => "swish",
            ActFn::Gelu => "gelu",
            ActFn::Elu => "elu",
        }
    }

    /// Reads an optional activation attribute (`dense(activation = relu)`).
    pub fn parse_opt(a: &mut Args, key: &'static str) -> Result<Option<ActFn>> {
        Ok(a.word(key, ActFn::NAMES)?
            .and_then(|(s, _)| ActFn::from_name(&s)))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Activation {
    pub function: ActFn,
}

impl Activation {
    pub fn parse(kind: &str, a: &mut Args) -> Result<Self> {
        let function = match ActFn::from_name(kind) {
            Some(f) => {
                a.positional(&[])?;
                f
            }
            None => {
                a.positional(&["function"])?;
                ActFn::parse_opt(a, "function")?
                    .ok_or_else(|| a.missing("function", "e.g. relu, sigmoid, softmax"))?
            }
        };
        Ok(Activation { function })
    }
}

impl LayerKind for Activation {
    fn keras_class(&self) -> &'static str {
        "Activation"
    }
    fn base_name(&self) -> &'static str {
        "activation"
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        Ok(cx.one().clone())
    }
    fn config(&self) -> String {
        self.function.name().to_string()
    }
}
