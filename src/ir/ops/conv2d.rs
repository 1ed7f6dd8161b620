//! Conv2D: filters, kernel, stride, padding (same/valid/explicit), groups, dilation, use_bias.

use super::{prod, Counts, InferCx, LayerKind};
use crate::diag::{Diagnostic, Result};
use crate::ir::args::{check_range, Args, Value};
use crate::ir::Shape;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    Valid,
    /// Keras/TensorFlow `same`: output = ceil(in / stride), extra padding at the bottom/right.
    Same,
    /// `[[top, bottom], [left, right]]`.
    Explicit([[usize; 2]; 2]),
}

impl Padding {
    /// Reads `padding`: `same`, `valid`, `p`, `[ph, pw]` or `[[top, bottom], [left, right]]`.
    pub fn parse(a: &mut Args, default: Padding) -> Result<Padding> {
        let Some((v, span, i)) = a.raw("padding") else {
            return Ok(default);
        };
        let want = "`same`, `valid`, an integer, [ph, pw] or [[top, bottom], [left, right]]";
        let err = |a: &Args, v: &Value| a.type_error("padding", v, span, want, i);
        let int = |a: &Args, v: &Value| match v {
            Value::Int(n) => check_range(&a.op, "padding", *n, 0, span).map(|n| n as usize),
            _ => Err(err(a, v)),
        };
        match &v {
            Value::Sym(s) | Value::Str(s) if s == "same" => Ok(Padding::Same),
            Value::Sym(s) | Value::Str(s) if s == "valid" => Ok(Padding::Valid),
            Value::Sym(s) | Value::Str(s) => Err(Diagnostic::new(
                "spec::unknown-value",
                format!("unknown padding `{s}`"),
            )
            .at(span, "not a padding")
            .help(crate::diag::suggest(s, &["same", "valid"]))),
            Value::Int(_) => {
                let p = int(a, &v)?;
                Ok(Padding::Explicit([[p, p], [p, p]]))
            }
            Value::List(l) if l.len() == 2 => match (&l[0], &l[1]) {
                (Value::List(h), Value::List(w)) if h.len() == 2 && w.len() == 2 => {
                    Ok(Padding::Explicit([
                        [int(a, &h[0])?, int(a, &h[1])?],
                        [int(a, &w[0])?, int(a, &w[1])?],
                    ]))
                }
                (h, w) => {
                    let (h, w) = (int(a, h)?, int(a, w)?);
                    Ok(Padding::Explicit([[h, h], [w, w]]))
                }
            },
            _ => Err(err(a, &v)),
        }
    }

    /// (before, after) padding and the output size along one axis, or why there is none.
    pub fn resolve(
        &self,
        axis: usize,
        input: usize,
        k_eff: usize,
        stride: usize,
    ) -> std::result::Result<(usize, usize, usize), usize> {
        let (before, after) = match self {
            Padding::Valid => (0, 0),
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out.saturating_sub(1)) * stride + k_eff).saturating_sub(input);
                (total / 2, total - total / 2)
            }
            Padding::Explicit(p) => (p[axis][0], p[axis][1]),
        };
        let padded = input + before + after;
        if k_eff > padded {
            return Err(padded);
        }
        Ok((before, after, (padded - k_eff) / stride + 1))
    }

    pub fn describe(&self) -> String {
        match self {
            Padding::Valid => "valid".into(),
            Padding::Same => "same".into(),
            Padding::Explicit([[t, b], [l, r]]) if t == b && l == r && t == l => format!("pad {t}"),
            Padding::Explicit(p) => format!("pad {:?}", p),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conv2d {
    pub filters: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: Padding,
    pub groups: usize,
    pub dilation: [usize; 2],
    pub use_bias: bool,
}

impl Conv2d {
    pub fn parse(a: &mut Args) -> Result<Self> {
        a.positional(&["filters", "kernel"])?;
        let filters = a.req_int("filters", 1)? as usize;
        let kernel = a
            .pair("kernel", 1)?
            .ok_or_else(|| a.missing("kernel", "an integer or [kh, kw]"))?;
        Ok(Conv2d {
            filters,
            kernel,
            stride: a.pair("stride", 1)?.unwrap_or([1, 1]),
            padding: Padding::parse(a, Padding::Valid)?,
            groups: a.int("groups", 1)?.unwrap_or(1) as usize,
            dilation: a.pair("dilation", 1)?.unwrap_or([1, 1]),
            use_bias: a.bool("use_bias")?.unwrap_or(true),
        })
    }

    pub fn effective_kernel(&self) -> [usize; 2] {
        [0, 1].map(|i| self.dilation[i] * (self.kernel[i] - 1) + 1)
    }

    /// `[[top, bottom], [left, right]]` for an input of `hw`.
    pub fn pads(&self, hw: [usize; 2]) -> [[usize; 2]; 2] {
        let k = self.effective_kernel();
        [0, 1].map(
            |i| match self.padding.resolve(i, hw[i], k[i], self.stride[i]) {
                Ok((b, a, _)) => [b, a],
                Err(_) => [0, 0],
            },
        )
    }
}

/// Output H and W of a windowed op (conv or pool), or a diagnostic naming the failing axis.
pub fn window_out(
    cx: &InferCx,
    hw: [usize; 2],
    k_eff: [usize; 2],
    stride: [usize; 2],
    pad: &Padding,
) -> Result<[usize; 2]> {
    let mut out = [0; 2];
    for axis in 0..2 {
        match pad.resolve(axis, hw[axis], k_eff[axis], stride[axis]) {
            Ok((_, _, o)) => out[axis] = o,
            Err(padded) => {
                let what = if axis == 0 { "height" } else { "width" };
                return Err(cx.err(
                    "shape::kernel-too-large",
                    format!(
                        "`{}` window {}x{} is larger than its padded input ({what} {} after padding, from {})",
                        cx.op, k_eff[0], k_eff[1], padded, crate::ir::shape_str(cx.one())
                    ),
                    format!("window {} > {what} {padded}", k_eff[axis]),
                    "use a smaller kernel or dilation, `padding: same`, or remove a downsampling layer before it",
                )
                .related(cx.ins[0].span, format!("{} comes from here", crate::ir::shape_str(cx.one())))) ;
            }
        }
    }
    Ok(out)
}

impl LayerKind for Conv2d {
    fn keras_class(&self) -> &'static str {
        "Conv2D"
    }
    fn base_name(&self) -> &'static str {
        "conv2d"
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        let [h, w, c] = cx.image()?;
        if c % self.groups != 0 || !self.filters.is_multiple_of(self.groups) {
            let (what, n) = if c % self.groups != 0 {
                ("input channels", c)
            } else {
                ("filters", self.filters)
            };
            return Err(cx
                .err(
                    "shape::groups",
                    format!("groups = {} does not divide the {what} ({n})", self.groups),
                    format!("{n} % {} = {}", self.groups, n % self.groups),
                    "choose groups that divide both the input channels and the filters",
                )
                .related(cx.ins[0].span, format!("{} channels come from here", c)));
        }
        let [ho, wo] = window_out(
            cx,
            [h, w],
            self.effective_kernel(),
            self.stride,
            &self.padding,
        )?;
        Ok(vec![ho, wo, self.filters])
    }
    fn params(&self, ins: &[&Shape], _out: &Shape) -> Option<Counts> {
        let cin = *ins[0].last()? as u64;
        let k = prod(&[
            self.kernel[0] as u64,
            self.kernel[1] as u64,
            cin / self.groups as u64,
            self.filters as u64,
        ])?;
        let bias = if self.use_bias {
            self.filters as u64
        } else {
            0
        };
        Some(Counts {
            trainable: k.checked_add(bias)?,
            non_trainable: 0,
        })
    }
    fn macs(&self, ins: &[&Shape], out: &Shape) -> Option<u64> {
        let cin = *ins[0].last()? as u64;
        prod(&[
            out[0] as u64,
            out[1] as u64,
            self.kernel[0] as u64,
            self.kernel[1] as u64,
            cin / self.groups as u64,
            self.filters as u64,
        ])
    }
    fn config(&self) -> String {
        let mut s = format!("{}x{}/{}", self.kernel[0], self.kernel[1], self.stride[0]);
        if self.stride[0] != self.stride[1] {
            s = format!(
                "{}x{}/{}x{}",
                self.kernel[0], self.kernel[1], self.stride[0], self.stride[1]
            );
        }
        if self.groups > 1 {
            s.push_str(&format!(" g{}", self.groups));
        }
        if self.dilation != [1, 1] {
            s.push_str(&format!(" d{}", self.dilation[0]));
        }
        s
    }
}
