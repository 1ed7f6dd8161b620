//! Activation layers: `activation: relu` or the shorthands `relu`, `sigmoid`, `softmax`.

use super::{InferCx, LayerKind};
use crate::diag::Result;
use crate::ir::args::Args;
use crate::ir::Shape;
use serde::Serialize;

/// The one list of activation functions: the enum, its names, and its codes (the position in
/// the list, which the CUDA kernels receive as `ACT_<NAME>` constants generated from it; see
/// `lower::kernelnet::backend::kernel_defines`).
macro_rules! act_fns {
    ($($v:ident => $name:literal),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(i32)]
        pub enum ActFn {
            $($v),*
        }

        impl ActFn {
            /// Every activation, in code order.
            pub const ALL: &'static [ActFn] = &[$(ActFn::$v),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(ActFn::$v => $name),*
                }
            }
        }
    };
}

act_fns! {
    Linear => "linear",
    Relu => "relu",
    Relu6 => "relu6",
    Sigmoid => "sigmoid",
    HardSigmoid => "hard_sigmoid",
    Softmax => "softmax",
    Tanh => "tanh",
    Swish => "swish",
    Gelu => "gelu",
    Elu => "elu",
    Mish => "mish",
}

impl ActFn {
    /// The words a spec may write: every name, and `silu` for swish.
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
        "mish",
    ];

    pub fn from_name(s: &str) -> Option<ActFn> {
        match s {
            "silu" => Some(ActFn::Swish),
            _ => ActFn::ALL.iter().copied().find(|f| f.name() == s),
        }
    }

    /// The code the kernels receive: the position in `ALL`.
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<ActFn> {
        usize::try_from(code)
            .ok()
            .and_then(|i| ActFn::ALL.get(i).copied())
    }

    /// The activation of v (softmax is not elementwise: `softmax_rows`).
    pub fn value(self, v: f32) -> f32 {
        match self {
            ActFn::Linear => v,
            ActFn::Relu => v.max(0.0),
            ActFn::Relu6 => v.clamp(0.0, 6.0),
            ActFn::Sigmoid => sigmoid(v),
            ActFn::HardSigmoid => (0.2 * v + 0.5).clamp(0.0, 1.0),
            ActFn::Tanh => v.tanh(),
            ActFn::Swish => v * sigmoid(v),
            ActFn::Gelu => 0.5 * v * (1.0 + (0.797_884_6 * (v + 0.044715 * v * v * v)).tanh()),
            ActFn::Elu => {
                if v > 0.0 {
                    v
                } else {
                    v.exp() - 1.0
                }
            }
            // x · tanh(softplus(x)) (Misra 2019; Keras' and PyTorch's mish).
            ActFn::Mish => v * softplus(v).tanh(),
            ActFn::Softmax => unreachable!("softmax is not elementwise"),
        }
    }

    /// Whether the derivative can be read off the output alone: `grad(y, y) == grad(x, y)`,
    /// the output standing in for the input (ReLU's, ReLU6's and ELU's tests on x hold for y;
    /// sigmoid and tanh read y only). Softmax's backward reads its output too. A backward
    /// that needs only the output lets the input go (`lower::kernelnet::backward_reads`).
    pub fn grad_from_output(self) -> bool {
        match self {
            ActFn::Linear
            | ActFn::Relu
            | ActFn::Relu6
            | ActFn::Sigmoid
            | ActFn::Tanh
            | ActFn::Elu
            | ActFn::Softmax => true,
            ActFn::HardSigmoid | ActFn::Swish | ActFn::Gelu | ActFn::Mish => false,
        }
    }

    /// d(activation)/dx at input x with output y.
    pub fn grad(self, x: f32, y: f32) -> f32 {
        match self {
            ActFn::Linear => 1.0,
            ActFn::Relu => (x > 0.0) as i32 as f32,
            ActFn::Relu6 => (x > 0.0 && x < 6.0) as i32 as f32,
            ActFn::Sigmoid => y * (1.0 - y),
            ActFn::HardSigmoid => {
                if x > -2.5 && x < 2.5 {
                    0.2
                } else {
                    0.0
                }
            }
            ActFn::Tanh => 1.0 - y * y,
            ActFn::Swish => {
                let s = sigmoid(x);
                s + x * s * (1.0 - s)
            }
            ActFn::Gelu => {
                let k = 0.797_884_6f32;
                let u = k * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            }
            ActFn::Elu => {
                if x > 0.0 {
                    1.0
                } else {
                    y + 1.0
                }
            }
            ActFn::Mish => {
                let t = softplus(x).tanh();
                t + x * (1.0 - t * t) * sigmoid(x)
            }
            ActFn::Softmax => unreachable!("softmax is not elementwise"),
        }
    }

    /// Reads an optional activation attribute (`dense(activation = relu)`).
    pub fn parse_opt(a: &mut Args, key: &'static str) -> Result<Option<ActFn>> {
        Ok(a.word(key, ActFn::NAMES)?
            .and_then(|(s, _)| ActFn::from_name(&s)))
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// ln(1 + e^x) without overflow.
fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
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

#[cfg(test)]
mod tests {
    use super::ActFn;

    #[test]
    fn names_and_codes_round_trip() {
        for (i, f) in ActFn::ALL.iter().enumerate() {
            assert_eq!(f.code(), i as i32);
            assert_eq!(ActFn::from_code(f.code()), Some(*f));
            assert_eq!(ActFn::from_name(f.name()), Some(*f));
            assert!(ActFn::NAMES.contains(&f.name()), "{f:?}");
        }
        for n in ActFn::NAMES {
            assert!(ActFn::from_name(n).is_some(), "{n}");
        }
        assert_eq!(ActFn::from_code(ActFn::ALL.len() as i32), None);
        assert_eq!(ActFn::from_code(-1), None);
    }

    /// Where the derivative is read off the output alone, it equals the derivative at the
    /// input, for inputs across every branch of each function.
    #[test]
    fn grad_from_output_is_the_same_derivative() {
        let xs: Vec<f32> = (-80..=80).map(|i| i as f32 * 0.1 + 0.05).collect();
        let mut checked = 0;
        for f in ActFn::ALL.iter().copied().filter(|f| f.grad_from_output()) {
            if f == ActFn::Softmax {
                continue;
            }
            for &x in &xs {
                let y = f.value(x);
                assert_eq!(f.grad(y, y), f.grad(x, y), "{f:?} at {x}");
            }
            checked += 1;
        }
        assert_eq!(checked, 6);
        // And not where it cannot: hard sigmoid's flat ends are not visible in its output's
        // test, swish's, GELU's and mish's derivatives are functions of x.
        for f in [ActFn::HardSigmoid, ActFn::Swish, ActFn::Gelu, ActFn::Mish] {
            assert!(!f.grad_from_output());
            assert!(xs.iter().any(|&x| {
                let y = f.value(x);
                f.grad(y, y) != f.grad(x, y)
            }));
        }
    }
}
