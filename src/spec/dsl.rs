//! The DSL front end: pest pairs from `grammar/se.pest` → AST.

use super::ast::*;
use crate::diag::{Diagnostic, Result};
use crate::source::{SourceFile, Span};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/se.pest"]
pub struct SeParser;

fn span_of(p: &Pair<Rule>, base: usize) -> Span {
    let s = p.as_span();
    Span::new(base + s.start(), base + s.end())
}

fn ident(p: Pair<Rule>, base: usize) -> Ident {
    Ident {
        name: p.as_str().to_string(),
        span: span_of(&p, base),
    }
}

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::op_or, Assoc::Left))
            .op(Op::infix(Rule::op_and, Assoc::Left))
            .op(Op::infix(Rule::op_eq, Assoc::Left)
                | Op::infix(Rule::op_ne, Assoc::Left)
                | Op::infix(Rule::op_lt, Assoc::Left)
                | Op::infix(Rule::op_le, Assoc::Left)
                | Op::infix(Rule::op_gt, Assoc::Left)
                | Op::infix(Rule::op_ge, Assoc::Left))
            .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
            .op(Op::infix(Rule::op_mul, Assoc::Left)
                | Op::infix(Rule::op_div, Assoc::Left)
                | Op::infix(Rule::op_floordiv, Assoc::Left)
                | Op::infix(Rule::op_rem, Assoc::Left))
            .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
    })
}

/// Parses an `expr` pair; `base` is the byte offset of the text the pair's spans are relative to.
pub(crate) fn expr(p: Pair<Rule>, base: usize) -> Result<Expr> {
    pratt()
        .map_primary(|p| primary(p, base))
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let span = span_of(&op, base).join(rhs.span);
            let kind = match op.as_rule() {
                Rule::neg => ExprKind::Neg(Box::new(rhs)),
                _ => ExprKind::Not(Box::new(rhs)),
            };
            Ok(Expr { kind, span })
        })
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let bop = match op.as_rule() {
                Rule::op_add => BinOp::Add,
                Rule::op_sub => BinOp::Sub,
                Rule::op_mul => BinOp::Mul,
                Rule::op_div => BinOp::Div,
                Rule::op_floordiv => BinOp::FloorDiv,
                Rule::op_rem => BinOp::Rem,
                Rule::op_eq => BinOp::Eq,
                Rule::op_ne => BinOp::Ne,
                Rule::op_lt => BinOp::Lt,
                Rule::op_le => BinOp::Le,
                Rule::op_gt => BinOp::Gt,
                Rule::op_ge => BinOp::Ge,
                Rule::op_and => BinOp::And,
                _ => BinOp::Or,
            };
            let span = lhs.span.join(rhs.span);
            Ok(Expr {
                kind: ExprKind::Bin(bop, Box::new(lhs), Box::new(rhs)),
                span,
            })
        })
        .parse(p.into_inner())
}

fn primary(p: Pair<Rule>, base: usize) -> Result<Expr> {
    let span = span_of(&p, base);
    let kind = match p.as_rule() {
        Rule::int => ExprKind::Int(p.as_str().parse().map_err(|_| {
            Diagnostic::new(
                "parse::overflow",
                format!("integer `{}` is too large", p.as_str()),
            )
            .at(span, "does not fit in 64 bits")
            .help("use a number below 9223372036854775808")
        })?),
        Rule::float => ExprKind::Float(p.as_str().parse().map_err(|_| {
            Diagnostic::new("parse::number", format!("`{}` is not a number", p.as_str()))
                .at(span, "here")
        })?),
        Rule::bool => ExprKind::Bool(p.as_str() == "true"),
        Rule::string => ExprKind::Str(
            p.into_inner()
                .next()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        ),
        Rule::ident => ExprKind::Name(p.as_str().to_string()),
        Rule::list => ExprKind::List(
            p.into_inner()
                .map(|e| expr(e, base))
                .collect::<Result<_>>()?,
        ),
        Rule::paren => {
            return expr(
                p.into_inner().next().expect("grammar: paren holds expr"),
                base,
            )
        }
        Rule::func => {
            let mut it = p.into_inner();
            let name = ident(it.next().expect("grammar: func name"), base);
            ExprKind::Call(name, it.map(|e| expr(e, base)).collect::<Result<_>>()?)
        }
        r => unreachable!("grammar: unexpected primary {r:?}"),
    };
    Ok(Expr { kind, span })
}

/// Parses one expression that starts at byte `base` of the file (used for YAML strings).
pub fn parse_expr(text: &str, base: usize) -> Result<Expr> {
    super::check_nesting(text, base, "write the expression with fewer parentheses")?;
    let mut pairs =
        SeParser::parse(Rule::expr_only, text).map_err(|e| pest_error(e, base, "an expression"))?;
    let top = pairs.next().expect("grammar: expr_only");
    expr(top.into_inner().next().expect("grammar: expr"), base)
}

fn rule_name(r: &Rule) -> Option<&'static str> {
    Some(match r {
        Rule::ident => "a name",
        Rule::expr
        | Rule::float
        | Rule::int
        | Rule::bool
        | Rule::string
        | Rule::list
        | Rule::func
        | Rule::paren => "a value",
        Rule::args => "`(`",
        Rule::body => "`{`",
        Rule::item | Rule::call_item => "a layer",
        Rule::residual | Rule::parallel => "a layer",
        Rule::block_def
        | Rule::layers_stmt
        | Rule::train_stmt
        | Rule::defaults_stmt
        | Rule::model_call => "a statement (input, classes, se, defaults, block, layers, train)",
        Rule::shortcut => "`shortcut`",
        Rule::branch => "`branch`",
        Rule::arg => "an argument",
        Rule::param => "a parameter",
        Rule::EOI => "end of input",
        Rule::infix | Rule::op_add | Rule::op_mul => "an operator, `,` or a closing bracket",
        _ => return None,
    })
}

fn pest_error(e: pest::error::Error<Rule>, base: usize, what: &str) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(rule_name).collect();
            names.sort();
            names.dedup();
            names.join(" or ")
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let expected = if expected.is_empty() {
        what.to_string()
    } else {
        expected
    };
    Diagnostic::new(
        "parse::syntax",
        format!("syntax error: expected {expected}"),
    )
    .at(
        Span::new(base + pos, base + pos + 1),
        format!("expected {expected} here"),
    )
    .help("see the DSL grammar in grammar/se.pest and the README's annotated example")
}

/// DSL text → AST.
pub fn parse(src: &SourceFile) -> Result<Spec> {
    let mut pairs = SeParser::parse(Rule::spec, &src.text)
        .map_err(|e| pest_error(e, 0, "`model NAME { ... }`"))?;
    let spec_pair = pairs.next().expect("grammar: spec");
    let whole = span_of(&spec_pair, 0);
    let mut it = spec_pair.into_inner();
    let model = ident(it.next().expect("grammar: model name"), 0);
    let mut spec = Spec {
        model: Some(model),
        input: vec![],
        input_span: whole,
        classes: None,
        se: None,
        defaults: vec![],
        blocks: vec![],
        layers: vec![],
        layers_span: whole,
        train: vec![],
        train_span: None,
        span: whole,
    };
    let mut seen: Vec<Ident> = vec![];
    for st in it {
        let sspan = span_of(&st, 0);
        match st.as_rule() {
            Rule::model_call => {
                let mut i = st.into_inner();
                let name = ident(i.next().expect("grammar"), 0);
                let args = args(i.next().expect("grammar"))?;
                check_once(&mut seen, &name)?;
                match name.name.as_str() {
                    "input" => {
                        no_keys(&args)?;
                        spec.input = args.into_iter().map(|a| a.value).collect();
                        spec.input_span = sspan;
                    }
                    "classes" => {
                        no_keys(&args)?;
                        if args.len() != 1 {
                            return Err(Diagnostic::new(
                                "spec::arity",
                                "`classes` takes one value",
                            )
                            .at(sspan, "here")
                            .help("write e.g. `classes(10)`"));
                        }
                        spec.classes = args.into_iter().next().map(|a| a.value);
                    }
                    "se" => spec.se = Some(se_setting(args, sspan)),
                    other => {
                        return Err(Diagnostic::new(
                            "spec::unknown-key",
                            format!("unknown statement `{other}`"),
                        )
                        .at(name.span, "not a model statement")
                        .help(crate::diag::suggest(
                            other,
                            &[
                                "input", "classes", "se", "defaults", "block", "layers", "train",
                            ],
                        )))
                    }
                }
            }
            Rule::defaults_stmt => {
                let mut i = st.into_inner();
                let op = ident(i.next().expect("grammar"), 0);
                spec.defaults.push(Defaults {
                    op,
                    args: args(i.next().expect("grammar"))?,
                });
            }
            Rule::block_def => {
                let mut i = st.into_inner();
                let name = ident(i.next().expect("grammar"), 0);
                let mut params = vec![];
                for p in i.next().expect("grammar").into_inner() {
                    let mut pi = p.into_inner();
                    let pname = ident(pi.next().expect("grammar"), 0);
                    let default = pi.next().map(|e| expr(e, 0)).transpose()?;
                    params.push(Param {
                        name: pname,
                        default,
                    });
                }
                let body = body(i.next().expect("grammar"))?;
                spec.blocks.push(BlockDef {
                    name,
                    params,
                    body,
                    span: sspan,
                });
            }
            Rule::layers_stmt => {
                check_once(
                    &mut seen,
                    &Ident {
                        name: "layers".into(),
                        span: sspan,
                    },
                )?;
                spec.layers = body(st.into_inner().next().expect("grammar"))?;
                spec.layers_span = sspan;
            }
            Rule::train_stmt => {
                check_once(
                    &mut seen,
                    &Ident {
                        name: "train".into(),
                        span: sspan,
                    },
                )?;
                spec.train = st.into_inner().map(arg).collect::<Result<_>>()?;
                spec.train_span = Some(sspan);
            }
            Rule::EOI => {}
            r => unreachable!("grammar: statement {r:?}"),
        }
    }
    Ok(spec)
}

fn check_once(seen: &mut Vec<Ident>, name: &Ident) -> Result<()> {
    if let Some(prev) = seen.iter().find(|s| s.name == name.name) {
        return Err(Diagnostic::new(
            "spec::duplicate-key",
            format!("`{}` is given twice", name.name),
        )
        .at(name.span, "second time")
        .related(prev.span, "first time")
        .help("keep one of them"));
    }
    seen.push(name.clone());
    Ok(())
}

fn no_keys(args: &[Arg]) -> Result<()> {
    if let Some(k) = args.iter().find_map(|a| a.key.as_ref()) {
        return Err(Diagnostic::new(
            "spec::unknown-key",
            format!("`{}` takes no named arguments", k.name),
        )
        .at(k.span, "named argument")
        .help("write the values alone, e.g. `input(224, 224, 3)`"));
    }
    Ok(())
}

/// `se(off)`, `se(r = 16, form = conv1x1)`.
pub(crate) fn se_setting(args: Vec<Arg>, span: Span) -> SeSetting {
    if let [Arg {
        key: None,
        value:
            Expr {
                kind: ExprKind::Name(n) | ExprKind::Str(n),
                span: vs,
            },
    }] = args.as_slice()
    {
        if n == "off" || n == "none" {
            return SeSetting::Off(*vs);
        }
    }
    if let [Arg {
        key: None,
        value: Expr {
            kind: ExprKind::Bool(false),
            span: vs,
        },
    }] = args.as_slice()
    {
        return SeSetting::Off(*vs);
    }
    SeSetting::On(args, span)
}

fn args(p: Pair<Rule>) -> Result<Vec<Arg>> {
    p.into_inner().map(arg).collect()
}

fn arg(p: Pair<Rule>) -> Result<Arg> {
    let mut parts: Vec<Pair<Rule>> = p.into_inner().collect();
    let value = expr(parts.pop().expect("grammar: arg value"), 0)?;
    let key = parts.pop().map(|k| ident(k, 0));
    Ok(Arg { key, value })
}

fn body(p: Pair<Rule>) -> Result<Vec<Item>> {
    p.into_inner().map(item).collect()
}

fn item(p: Pair<Rule>) -> Result<Item> {
    let span = span_of(&p, 0);
    let mut it = p.into_inner();
    let head = it.next().expect("grammar: item head");
    let kind = match head.as_rule() {
        Rule::call_item => {
            let mut i = head.into_inner();
            let op = ident(i.next().expect("grammar"), 0);
            let args = match i.next() {
                Some(a) => args(a)?,
                None => vec![],
            };
            call_kind(op, args, span)?
        }
        Rule::residual => {
            let (mut shortcut, mut branch) = (None, None);
            for part in head.into_inner() {
                let pspan = span_of(&part, 0);
                let slot = if part.as_rule() == Rule::shortcut {
                    &mut shortcut
                } else {
                    &mut branch
                };
                if slot.is_some() {
                    return Err(Diagnostic::new(
                        "spec::duplicate-key",
                        "a residual has one shortcut and one branch",
                    )
                    .at(pspan, "given again")
                    .help("merge the two lists into one"));
                }
                *slot = Some(body(part.into_inner().next().expect("grammar"))?);
            }
            let Some(branch) = branch else {
                return Err(Diagnostic::new(
                    "spec::missing",
                    "a residual needs a `branch { ... }`",
                )
                .at(span, "no branch")
                .help("add `branch { ... }` with the residual function's layers"));
            };
            ItemKind::Residual {
                shortcut: shortcut.unwrap_or_default(),
                branch,
            }
        }
        Rule::parallel => {
            let mut branches = vec![];
            for b in head.into_inner() {
                let bspan = span_of(&b, 0);
                branches.push((bspan, body(b.into_inner().next().expect("grammar"))?));
            }
            ItemKind::Parallel { branches }
        }
        r => unreachable!("grammar: item {r:?}"),
    };
    let mut item = Item {
        kind,
        name: None,
        id: None,
        from: vec![],
        when: None,
        span,
    };
    for m in it {
        let mspan = span_of(&m, 0);
        match m.as_rule() {
            Rule::mod_as => item.id = Some(ident(m.into_inner().next().expect("grammar"), 0)),
            Rule::mod_named => {
                let v = m.into_inner().next().expect("grammar");
                let text = match v.as_rule() {
                    Rule::string => v
                        .into_inner()
                        .next()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    _ => v.as_str().to_string(),
                };
                item.name = Some(Ident {
                    name: text,
                    span: mspan,
                });
            }
            Rule::mod_from => item.from = m.into_inner().map(|i| ident(i, 0)).collect(),
            Rule::mod_if => item.when = Some(expr(m.into_inner().next().expect("grammar"), 0)?),
            r => unreachable!("grammar: modifier {r:?}"),
        }
    }
    Ok(item)
}

/// `stage(bottleneck, repeat = 3, ...)` becomes a Stage; everything else a Call.
pub(crate) fn call_kind(op: Ident, mut args: Vec<Arg>, span: Span) -> Result<ItemKind> {
    if op.name != "stage" {
        return Ok(ItemKind::Call { op, args });
    }
    let pos = args
        .iter()
        .position(|a| a.key.as_ref().is_none_or(|k| k.name == "block"));
    let block = match pos.map(|p| args.remove(p)) {
        Some(Arg {
            value:
                Expr {
                    kind: ExprKind::Name(n) | ExprKind::Str(n),
                    span,
                },
            ..
        }) => Ident { name: n, span },
        Some(a) => {
            return Err(
                Diagnostic::new("spec::type", "a stage's block must be a block name")
                    .at(a.value.span, "not a name")
                    .help("write e.g. `stage(bottleneck, repeat = 3, filters = 64)`"),
            )
        }
        None => {
            return Err(
                Diagnostic::new("spec::missing", "a stage needs the block to repeat")
                    .at(span, "no block given")
                    .help("write e.g. `stage(bottleneck, repeat = 3, filters = 64)`"),
            )
        }
    };
    Ok(ItemKind::Stage { block, args })
}
