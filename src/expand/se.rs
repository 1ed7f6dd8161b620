//! The SE construct, expanded as the seed writes it:
//! GlobalAveragePooling2D → Reshape(1, 1, C) → squeeze (C/r) + ReLU → excite (C) → sigmoid → Multiply.
//! `form: conv1x1` is the seed's ChannelSE (1x1 Conv2D with bias); `form: dense` is the seed's
//! `se_block` (Dense without bias). Reduced width: C // r (`rounding: floor`, the seed's `//`),
//! or `rounding: exact`, which requires r to divide C. Either way C/r must be at least 1.
//! `channels: N` sets the width outright; `divisor: N` rounds it as timm's `SEModule` does.
//! The paper's ablations: `squeeze: max` (Table 6) pools with GlobalMaxPooling2D, and `gate:
//! tanh | relu` (Table 7) replaces the sigmoid.

use super::{Env, Expander};
use crate::diag::{Diagnostic, Result};
use crate::ir::args::Args;
use crate::ir::ops::{
    ActFn, Activation, Conv2d, Dense, GlobalPool, Merge, MergeKind, Padding, PoolKind, Reshape,
};

/// The gates `se` accepts, in the order the README lists them.
pub const GATES: &[&str] = &["sigmoid", "hard_sigmoid", "tanh", "relu"];
use crate::ir::{shape_str, NodeId, Op};
use crate::source::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Conv1x1,
    Dense,
}

#[derive(Clone, Debug)]
pub struct SeConfig {
    pub r: usize,
    pub r_span: Span,
    pub form: Form,
    pub use_bias: Option<bool>,
    pub exact: bool,
    pub squeeze_name: Option<String>,
    pub excite_name: Option<String>,
    pub gate: ActFn,
    /// `squeeze: avg` (the paper's global average pooling) or `max` (Table 6).
    pub squeeze: PoolKind,
    /// `divisor: N`: the width is timm's `make_divisible(C / r, N)` (min N, round_limit 0).
    pub divisor: Option<usize>,
    /// `channels: N`: the width outright, whatever C and r are.
    pub channels: Option<usize>,
    /// `expand: slice` records the (C) → (1, 1, C) step as the seed's `x[:, None, None, :]`.
    pub as_slice: bool,
}

impl SeConfig {
    pub fn parse(mut a: Args) -> Result<SeConfig> {
        SeConfig::read(&mut a)
    }

    /// Reads the settings (also run in schema mode by `se-compile schema`).
    pub fn read(a: &mut Args) -> Result<SeConfig> {
        let r_span = a.get("r").map_or(a.span, |(_, span)| span);
        let r = a.int("r", 1)?.unwrap_or(16) as usize;
        let form = match a.word("form", &["conv1x1", "dense"])? {
            Some((f, _)) if f == "dense" => Form::Dense,
            _ => Form::Conv1x1,
        };
        let exact =
            matches!(a.word("rounding", &["floor", "exact"])?, Some((f, _)) if f == "exact");
        let name = |a: &mut Args, key: &'static str| -> Result<Option<String>> {
            Ok(match a.get(key) {
                Some((crate::ir::args::Value::Str(s) | crate::ir::args::Value::Sym(s), _)) => {
                    Some(s)
                }
                Some((v, span)) => {
                    return Err(Diagnostic::new(
                        "spec::type",
                        format!("`{key}` must be a layer name, found `{}`", v.describe()),
                    )
                    .at(span, "not a name")
                    .help("write a name such as \"se_block_one_\""))
                }
                None => None,
            })
        };
        let squeeze_name = name(a, "squeeze_name")?;
        let excite_name = name(a, "excite_name")?;
        let use_bias = a.bool("use_bias")?;
        let gate = match a.word("gate", GATES)? {
            Some((g, _)) => ActFn::from_name(&g).expect("GATES are activation names"),
            None => ActFn::Sigmoid,
        };
        let squeeze = match a.word("squeeze", &["avg", "max"])? {
            Some((s, _)) if s == "max" => PoolKind::Max,
            _ => PoolKind::Avg,
        };
        let divisor = a.int("divisor", 1)?.map(|d| d as usize);
        let channels = a.int("channels", 1)?.map(|c| c as usize);
        let as_slice =
            matches!(a.word("expand", &["reshape", "slice"])?, Some((e, _)) if e == "slice");
        a.finish()?;
        Ok(SeConfig {
            r,
            r_span,
            form,
            use_bias,
            exact,
            squeeze_name,
            excite_name,
            gate,
            squeeze,
            divisor,
            channels,
            as_slice,
        })
    }

    /// The squeeze width for C input channels: `channels`, else timm's rounding with `divisor`,
    /// else C // r.
    pub fn width(&self, c: usize) -> usize {
        match (self.channels, self.divisor) {
            (Some(n), _) => n,
            (None, Some(d)) => make_divisible(c as f64 * (1.0 / self.r as f64), d),
            (None, None) => c / self.r,
        }
    }
}

/// timm's `make_divisible(v, divisor, min_value=None, round_limit=0.)`, as its `SEModule` calls
/// it: `max(divisor, int(v + divisor / 2) // divisor * divisor)`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let rounded = ((v + d / 2.0).trunc() as usize) / divisor * divisor;
    rounded.max(divisor)
}

pub(super) fn expand(
    ex: &mut Expander,
    cfg: &SeConfig,
    span: Span,
    x: NodeId,
    env: &Env,
) -> Result<NodeId> {
    let shape = ex.shape(x).clone();
    let [_, _, c] = shape.as_slice() else {
        return Err(Diagnostic::new(
            "shape::rank",
            format!(
                "SE needs an image input (H, W, C), got {}",
                shape_str(&shape)
            ),
        )
        .at(span, "needs (H, W, C)")
        .help("apply SE to a convolutional feature map"));
    };
    let c = *c;
    let reduced = cfg.width(c);
    if reduced < 1 {
        return Err(Diagnostic::new(
            "shape::se-ratio",
            format!("SE reduction leaves no channels: C/r = {c}/{} < 1", cfg.r),
        )
        .at(span, format!("{c} channels // r={} = 0", cfg.r))
        .related(cfg.r_span, "r set here")
        .help(format!(
            "use r <= {c} for this layer, or turn SE off here (e.g. `se: off` on the stage)"
        )));
    }
    if cfg.exact && cfg.channels.is_none() && cfg.divisor.is_none() && c % cfg.r != 0 {
        return Err(Diagnostic::new(
            "shape::se-ratio",
            format!(
                "`rounding: exact` needs r to divide C, but {c} % {} = {}",
                cfg.r,
                c % cfg.r
            ),
        )
        .at(span, format!("{c} channels, r = {}", cfg.r))
        .related(cfg.r_span, "r set here")
        .help(
            "choose r dividing the channel count, or use `rounding: floor` (C // r, as the seed)",
        ));
    }
    let gap = ex.push_auto(
        Op::GlobalPool(GlobalPool {
            kind: cfg.squeeze,
            keepdims: false,
        }),
        vec![x],
        span,
        env,
    )?;
    let rs = ex.push_auto(
        Op::Reshape(Reshape {
            target: vec![1, 1, c],
            as_slice: cfg.as_slice,
        }),
        vec![gap],
        span,
        env,
    )?;
    let name = |ex: &mut Expander, given: &Option<String>, base: &'static str| {
        given.clone().unwrap_or_else(|| ex.auto_name(base))
    };
    let gate_in = match cfg.form {
        Form::Conv1x1 => {
            let bias = cfg.use_bias.unwrap_or(true);
            let conv = |f: usize| Conv2d {
                filters: f,
                kernel: [1, 1],
                stride: [1, 1],
                padding: Padding::Valid,
                groups: 1,
                dilation: [1, 1],
                use_bias: bias,
            };
            let n = name(ex, &cfg.squeeze_name, "conv2d");
            let sq = ex.push_node(n, Op::Conv2d(conv(reduced)), vec![rs], span, env)?;
            let act = ex.push_auto(
                Op::Activation(Activation {
                    function: ActFn::Relu,
                }),
                vec![sq],
                span,
                env,
            )?;
            let n = name(ex, &cfg.excite_name, "conv2d");
            ex.push_node(n, Op::Conv2d(conv(c)), vec![act], span, env)?
        }
        Form::Dense => {
            let bias = cfg.use_bias.unwrap_or(false);
            let n = name(ex, &cfg.squeeze_name, "dense");
            let sq = ex.push_node(
                n,
                Op::Dense(Dense {
                    units: reduced,
                    use_bias: bias,
                    activation: Some(ActFn::Relu),
                }),
                vec![rs],
                span,
                env,
            )?;
            let n = name(ex, &cfg.excite_name, "dense");
            ex.push_node(
                n,
                Op::Dense(Dense {
                    units: c,
                    use_bias: bias,
                    activation: None,
                }),
                vec![sq],
                span,
                env,
            )?
        }
    };
    let gate = ex.push_auto(
        Op::Activation(Activation { function: cfg.gate }),
        vec![gate_in],
        span,
        env,
    )?;
    ex.push_auto(
        Op::Merge(Merge {
            kind: MergeKind::Multiply,
        }),
        vec![x, gate],
        span,
        env,
    )
}
