//! Add, Multiply (with broadcasting of size-1 axes, as the SE gate (1, 1, C) needs) and
//! Concatenate on the channel axis.

use super::{InferCx, LayerKind};
use crate::diag::{Diagnostic, Result};
use crate::ir::args::Args;
use crate::ir::{shape_str, Shape};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeKind {
    Add,
    Multiply,
    Concatenate,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Merge {
    pub kind: MergeKind,
}

impl Merge {
    pub fn parse(kind: MergeKind, a: &mut Args) -> Result<Self> {
        a.positional(&[])?;
        if kind == MergeKind::Concatenate {
            // Only the channel axis is supported; accept Keras' spelling of it.
            if let Some(ax) = a.int("axis", -1)? {
                if ax != -1 && ax != 3 {
                    let (_, span) = a
                        .get("axis")
                        .unwrap_or((crate::ir::args::Value::Int(ax), a.span));
                    return Err(Diagnostic::new(
                        "spec::range",
                        format!("concatenate on axis {ax} is not supported"),
                    )
                    .at(span, "only the channel axis")
                    .help("use axis = -1 (channels, the default)"));
                }
            }
        }
        Ok(Merge { kind })
    }
}

impl LayerKind for Merge {
    fn keras_class(&self) -> &'static str {
        match self.kind {
            MergeKind::Add => "Add",
            MergeKind::Multiply => "Multiply",
            MergeKind::Concatenate => "Concatenate",
        }
    }
    fn base_name(&self) -> &'static str {
        match self.kind {
            MergeKind::Add => "add",
            MergeKind::Multiply => "multiply",
            MergeKind::Concatenate => "concatenate",
        }
    }
    fn infer(&self, cx: &InferCx) -> Result<Shape> {
        if cx.ins.len() < 2 {
            return Err(cx.err(
                "shape::arity",
                format!(
                    "`{}` needs at least two inputs, got {}",
                    cx.op,
                    cx.ins.len()
                ),
                "one input",
                "list the tensors to merge with `from: [a, b]`",
            ));
        }
        let first = &cx.ins[0];
        let mut out = first.shape.clone();
        for other in &cx.ins[1..] {
            let (a, b) = (&out, other.shape);
            let ok_rank = a.len() == b.len();
            let merged: Option<Shape> = match self.kind {
                MergeKind::Concatenate if ok_rank && a[..a.len() - 1] == b[..b.len() - 1] => {
                    let mut m = a.clone();
                    *m.last_mut().expect("rank >= 1") += b[b.len() - 1];
                    Some(m)
                }
                MergeKind::Add if a == b => Some(a.clone()),
                MergeKind::Multiply
                    if ok_rank
                        && a.iter()
                            .zip(b.iter())
                            .all(|(x, y)| x == y || *x == 1 || *y == 1) =>
                {
                    Some(a.iter().zip(b.iter()).map(|(x, y)| *x.max(y)).collect())
                }
                _ => None,
            };
            match merged {
                Some(m) => out = m,
                None => {
                    let rule = match self.kind {
                        MergeKind::Add => "needs equal shapes",
                        MergeKind::Multiply => {
                            "needs equal shapes, or size 1 on an axis to broadcast"
                        }
                        MergeKind::Concatenate => "needs equal shapes except the channel axis",
                    };
                    let what = if ok_rank
                        && a[..a.len().saturating_sub(1)] == b[..b.len().saturating_sub(1)]
                    {
                        "channel"
                    } else {
                        "spatial"
                    };
                    return Err(Diagnostic::new(
                        "shape::mismatch",
                        format!(
                            "`{}` {rule}: `{}` is {} but `{}` is {} ({what} mismatch)",
                            cx.op,
                            first.name,
                            shape_str(first.shape),
                            other.name,
                            shape_str(other.shape)
                        ),
                    )
                    .at(cx.span, format!("{} vs {}", shape_str(first.shape), shape_str(other.shape)))
                    .related(first.span, format!("{} from here", shape_str(first.shape)))
                    .related(other.span, format!("{} from here", shape_str(other.shape)))
                    .help(match what {
                        "channel" => "give both inputs the same channel count, e.g. a 1x1 conv projection on the shortcut",
                        _ => "give both inputs the same spatial size, e.g. the same stride on the shortcut",
                    }));
                }
            }
        }
        Ok(out)
    }
}
