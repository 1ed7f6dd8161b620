//! The YAML front end: serde-saphyr (with `Spanned` locations) → a spanned YAML tree → AST.

use super::ast::*;
use super::dsl::{call_kind, parse_expr, se_setting};
use crate::diag::{suggest, Diagnostic, Result};
use crate::source::{SourceFile, Span};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

/// A YAML value with the location of every node, as serde-saphyr reports it.
#[derive(Debug)]
enum YNode {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<YNode>>),
    Map(Vec<(Spanned<String>, Spanned<YNode>)>),
}

impl<'de> Deserialize<'de> for YNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = YNode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_unit<E>(self) -> std::result::Result<YNode, E> {
                Ok(YNode::Null)
            }
            fn visit_none<E>(self) -> std::result::Result<YNode, E> {
                Ok(YNode::Null)
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<YNode, D::Error> {
                YNode::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<YNode, E> {
                Ok(YNode::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<YNode, E> {
                Ok(YNode::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<YNode, E> {
                i64::try_from(v)
                    .map(YNode::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> std::result::Result<YNode, E> {
                i64::try_from(v)
                    .map(YNode::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> std::result::Result<YNode, E> {
                i64::try_from(v)
                    .map(YNode::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<YNode, E> {
                Ok(YNode::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<YNode, E> {
                Ok(YNode::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<YNode, E> {
                Ok(YNode::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<YNode, A::Error> {
                let mut v = vec![];
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(YNode::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<YNode, A::Error> {
                let mut v = vec![];
                while let Some(k) = a.next_key()? {
                    v.push((k, a.next_value()?));
                }
                Ok(YNode::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

struct Ctx<'a> {
    src: &'a SourceFile,
}

impl Ctx<'_> {
    fn span(&self, loc: &Location) -> Span {
        let sp = loc.span();
        let start = match sp.byte_offset() {
            Some(b) => b as usize,
            None => self
                .src
                .offset_of(loc.line() as usize, loc.column() as usize),
        };
        let len = sp.byte_len().map(|l| l as usize).unwrap_or(1).max(1);
        Span::new(start, start + len)
    }
    fn s<T>(&self, n: &Spanned<T>) -> Span {
        self.span(&n.referenced)
    }

    fn ident(&self, k: &Spanned<String>) -> Ident {
        Ident {
            name: k.value.clone(),
            span: self.s(k),
        }
    }

    fn name_of(&self, n: &Spanned<YNode>, what: &str) -> Result<Ident> {
        match &n.value {
            YNode::Str(s) => Ok(Ident {
                name: s.clone(),
                span: self.s(n),
            }),
            _ => Err(type_error(self.s(n), what, "a name")),
        }
    }

    fn expr(&self, n: &Spanned<YNode>) -> Result<Expr> {
        let span = self.s(n);
        let kind = match &n.value {
            YNode::Int(i) => ExprKind::Int(*i),
            YNode::Float(f) => ExprKind::Float(*f),
            YNode::Bool(b) => ExprKind::Bool(*b),
            YNode::Str(s) => {
                // Expressions such as `filters * 4` are YAML strings; quoted ones start one byte later.
                let quoted = matches!(self.src.text.as_bytes().get(span.start), Some(b'"' | b'\''));
                return parse_expr(s, span.start + usize::from(quoted));
            }
            YNode::Seq(v) => ExprKind::List(v.iter().map(|x| self.expr(x)).collect::<Result<_>>()?),
            YNode::Null => {
                return Err(Diagnostic::new("spec::missing", "a value is missing here")
                    .at(span, "empty value")
                    .help("write a value after the colon"))
            }
            YNode::Map(_) => {
                return Err(type_error(span, "this value", "a number, a name or a list"))
            }
        };
        Ok(Expr { kind, span })
    }

    fn map<'n>(
        &self,
        n: &'n Spanned<YNode>,
        what: &str,
    ) -> Result<&'n [(Spanned<String>, Spanned<YNode>)]> {
        match &n.value {
            YNode::Map(m) => Ok(m),
            _ => Err(type_error(
                self.s(n),
                what,
                "a mapping (`key: value` lines)",
            )),
        }
    }

    fn seq<'n>(&self, n: &'n Spanned<YNode>, what: &str) -> Result<&'n [Spanned<YNode>]> {
        match &n.value {
            YNode::Seq(s) => Ok(s),
            YNode::Null => Ok(&[]),
            _ => Err(type_error(self.s(n), what, "a list (`- item` lines)")),
        }
    }

    /// Arguments of a layer: a mapping gives named ones, a scalar one positional, a list several.
    fn args(&self, n: &Spanned<YNode>) -> Result<Vec<Arg>> {
        match &n.value {
            YNode::Null => Ok(vec![]),
            YNode::Map(m) => {
                check_dups(self, m)?;
                m.iter()
                    .map(|(k, v)| {
                        Ok(Arg {
                            key: Some(self.ident(k)),
                            value: self.expr(v)?,
                        })
                    })
                    .collect()
            }
            YNode::Seq(s) => s
                .iter()
                .map(|v| {
                    Ok(Arg {
                        key: None,
                        value: self.expr(v)?,
                    })
                })
                .collect(),
            _ => Ok(vec![Arg {
                key: None,
                value: self.expr(n)?,
            }]),
        }
    }

    fn items(&self, n: &Spanned<YNode>, what: &str) -> Result<Vec<Item>> {
        self.seq(n, what)?.iter().map(|i| self.item(i)).collect()
    }

    fn item(&self, n: &Spanned<YNode>) -> Result<Item> {
        let span = self.s(n);
        if let YNode::Str(s) = &n.value {
            // `- global_avg_pool`: a layer without arguments.
            let op = Ident {
                name: s.clone(),
                span,
            };
            return Ok(Item {
                kind: call_kind(op, vec![], span)?,
                name: None,
                id: None,
                from: vec![],
                when: None,
                span,
            });
        }
        let m = self.map(n, "a layer")?;
        check_dups(self, m)?;
        let mut item = Item {
            kind: ItemKind::Parallel { branches: vec![] },
            name: None,
            id: None,
            from: vec![],
            when: None,
            span,
        };
        let mut op: Option<&(Spanned<String>, Spanned<YNode>)> = None;
        for entry in m {
            let (k, v) = entry;
            match k.value.as_str() {
                "name" => item.name = Some(self.name_of(v, "`name`")?),
                "id" => item.id = Some(self.name_of(v, "`id`")?),
                "from" => {
                    item.from = match &v.value {
                        YNode::Seq(s) => s
                            .iter()
                            .map(|x| self.name_of(x, "`from`"))
                            .collect::<Result<_>>()?,
                        _ => vec![self.name_of(v, "`from`")?],
                    }
                }
                "when" => item.when = Some(self.expr(v)?),
                _ => {
                    if let Some((first, _)) = op {
                        return Err(Diagnostic::new(
                            "spec::two-layers",
                            format!("one list entry holds two layers, `{}` and `{}`", first.value, k.value),
                        )
                        .at(self.s(k), "second layer")
                        .related(self.s(first), "first layer")
                        .help("start each layer with its own `- ` entry; an entry may also hold name, id, from, when"));
                    }
                    op = Some(entry);
                }
            }
        }
        let Some((k, v)) = op else {
            return Err(
                Diagnostic::new("spec::missing", "this entry names no layer")
                    .at(span, "no layer kind")
                    .help("add the layer kind as a key, e.g. `- conv2d: {filters: 64, kernel: 3}`"),
            );
        };
        let opid = self.ident(k);
        item.kind = match k.value.as_str() {
            "residual" => {
                let mm = self.map(v, "`residual`")?;
                check_dups(self, mm)?;
                let (mut shortcut, mut branch) = (vec![], None);
                for (rk, rv) in mm {
                    match rk.value.as_str() {
                        "shortcut" => shortcut = self.items(rv, "`shortcut`")?,
                        "branch" => branch = Some(self.items(rv, "`branch`")?),
                        other => {
                            return Err(unknown_key(
                                self.s(rk),
                                other,
                                "residual",
                                &["shortcut", "branch"],
                            ))
                        }
                    }
                }
                let Some(branch) = branch else {
                    return Err(
                        Diagnostic::new("spec::missing", "a residual needs a `branch`")
                            .at(opid.span, "no branch")
                            .help("add `branch:` with the residual function's layers"),
                    );
                };
                ItemKind::Residual { shortcut, branch }
            }
            "parallel" => {
                let bs = self.seq(v, "`parallel`")?;
                let branches = bs
                    .iter()
                    .map(|b| Ok((self.s(b), self.items(b, "a parallel branch")?)))
                    .collect::<Result<_>>()?;
                ItemKind::Parallel { branches }
            }
            _ => call_kind(opid, self.args(v)?, span)?,
        };
        Ok(item)
    }
}

fn type_error(span: Span, what: &str, expected: &str) -> Diagnostic {
    Diagnostic::new("spec::type", format!("{what} must be {expected}"))
        .at(span, format!("expected {expected}"))
        .help(format!("write {what} as {expected}"))
}

fn unknown_key(span: Span, key: &str, ctx: &str, allowed: &[&str]) -> Diagnostic {
    Diagnostic::new("spec::unknown-key", format!("unknown key `{key}` in {ctx}"))
        .at(span, "unknown key")
        .help(suggest(key, allowed))
}

fn check_dups(cx: &Ctx, m: &[(Spanned<String>, Spanned<YNode>)]) -> Result<()> {
    for (i, (k, _)) in m.iter().enumerate() {
        if let Some((p, _)) = m[..i].iter().find(|(p, _)| p.value == k.value) {
            return Err(Diagnostic::new(
                "spec::duplicate-key",
                format!("key `{}` is given twice", k.value),
            )
            .at(cx.s(k), "second time")
            .related(cx.s(p), "first time")
            .help("keep one of them"));
        }
    }
    Ok(())
}

pub const TOP_KEYS: &[&str] = &[
    "model", "input", "classes", "se", "defaults", "blocks", "layers", "train",
];

/// The YAML reader's limits (serde-saphyr's budget): nodes (mappings, sequences and
/// scalars), nesting depth, and aliases (serde-saphyr's defaults, named here so the README and
/// the errors state them).
pub const YAML_MAX_NODES: usize = 250_000;
pub const YAML_MAX_DEPTH: usize = 64;
pub const YAML_MAX_ALIASES: usize = 50_000;

/// The error for a breached budget, in se-compile's words.
fn budget_error(e: &serde_saphyr::Error) -> Option<(String, String)> {
    use serde_saphyr::budget::BudgetBreach as B;
    let mut e = e;
    while let serde_saphyr::Error::WithSnippet { error, .. }
    | serde_saphyr::Error::AliasError { error, .. } = e
    {
        e = error;
    }
    let serde_saphyr::Error::Budget { breach, .. } = e else {
        return None;
    };
    Some(match breach {
        B::Depth { .. } => (
            format!("the YAML nests deeper than {YAML_MAX_DEPTH} levels"),
            "name the inner part as a block template (`blocks:`) and use it".into(),
        ),
        B::Nodes { .. } => (
            format!(
                "the YAML has more than {} nodes",
                crate::util::thousands(YAML_MAX_NODES as u64)
            ),
            "write repeated layers as a `stage` of a block template".into(),
        ),
        B::Aliases { .. } => (
            format!(
                "the YAML has more than {} aliases",
                crate::util::thousands(YAML_MAX_ALIASES as u64)
            ),
            "use block templates instead of YAML aliases".into(),
        ),
        other => (
            format!("the YAML exceeds se-compile's reading budget ({other:?})"),
            "the file is far larger than a spec; check it is the right file".into(),
        ),
    })
}

/// YAML text → AST.
pub fn parse(src: &SourceFile) -> Result<Spec> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = YAML_MAX_NODES;
    budget.max_depth = YAML_MAX_DEPTH;
    budget.max_aliases = YAML_MAX_ALIASES;
    let opts = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::LastWins,
        budget: Some(budget),
    };
    let root: Spanned<YNode> = match serde_saphyr::from_str_with_options(&src.text, opts) {
        Ok(r) => r,
        Err(e) => {
            let at = |d: Diagnostic| match e.location() {
                Some(loc) if loc.line() > 0 => {
                    let off = src.offset_of(loc.line() as usize, loc.column() as usize);
                    d.at(Span::new(off, off + 1), "here")
                }
                _ => d,
            };
            if let Some((msg, help)) = budget_error(&e) {
                return Err(at(Diagnostic::new("limit::yaml", msg)).help(help));
            }
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid YAML").to_string();
            let d = at(Diagnostic::new(
                "parse::yaml",
                format!("invalid YAML: {first}"),
            ));
            return Err(d.help("check the indentation and the `key: value` syntax near this place"));
        }
    };
    let cx = Ctx { src };
    let whole = Span::new(0, src.text.len());
    let YNode::Map(top) = &root.value else {
        return Err(
            Diagnostic::new("spec::type", "a spec must be a YAML mapping")
                .at(cx.s(&root).join(Span::new(0, 1)), "not a mapping")
                .help("start with `model: NAME`, `input: [H, W, C]`, `layers: [...]`"),
        );
    };
    check_dups(&cx, top)?;
    let mut spec = Spec {
        model: None,
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
    let mut have_layers = false;
    for (k, v) in top {
        match k.value.as_str() {
            "model" => spec.model = Some(cx.name_of(v, "`model`")?),
            "input" => {
                spec.input = cx
                    .seq(v, "`input`")?
                    .iter()
                    .map(|x| cx.expr(x))
                    .collect::<Result<_>>()?;
                spec.input_span = cx.s(k).join(cx.s(v));
            }
            "classes" => spec.classes = Some(cx.expr(v)?),
            "se" => {
                let span = cx.s(v);
                spec.se = Some(match &v.value {
                    YNode::Map(_) => SeSetting::On(cx.args(v)?, span),
                    _ => se_setting(cx.args(v)?, span),
                });
            }
            "defaults" => {
                for (op, args) in cx.map(v, "`defaults`")? {
                    spec.defaults.push(Defaults {
                        op: cx.ident(op),
                        args: cx.args(args)?,
                    });
                }
            }
            "blocks" => {
                let bm = cx.map(v, "`blocks`")?;
                check_dups(&cx, bm)?;
                for (name, def) in bm {
                    let dm = cx.map(def, "a block definition")?;
                    check_dups(&cx, dm)?;
                    let mut params = vec![];
                    let mut body = None;
                    for (dk, dv) in dm {
                        match dk.value.as_str() {
                            "params" => match &dv.value {
                                YNode::Map(pm) => {
                                    check_dups(&cx, pm)?;
                                    for (pk, pv) in pm {
                                        let default = match pv.value {
                                            YNode::Null => None,
                                            _ => Some(cx.expr(pv)?),
                                        };
                                        params.push(Param {
                                            name: cx.ident(pk),
                                            default,
                                        });
                                    }
                                }
                                YNode::Seq(ps) => {
                                    for p in ps {
                                        params.push(Param {
                                            name: cx.name_of(p, "a parameter")?,
                                            default: None,
                                        });
                                    }
                                }
                                _ => {
                                    return Err(type_error(
                                        cx.s(dv),
                                        "`params`",
                                        "a mapping of name: default",
                                    ))
                                }
                            },
                            "body" | "layers" => body = Some(cx.items(dv, "`body`")?),
                            other => {
                                return Err(unknown_key(
                                    cx.s(dk),
                                    other,
                                    "a block definition",
                                    &["params", "body"],
                                ))
                            }
                        }
                    }
                    let Some(body) = body else {
                        return Err(Diagnostic::new(
                            "spec::missing",
                            format!("block `{}` has no `body`", name.value),
                        )
                        .at(cx.s(name), "no body")
                        .help("add `body:` with the block's layers"));
                    };
                    spec.blocks.push(BlockDef {
                        name: cx.ident(name),
                        params,
                        body,
                        span: cx.s(name),
                    });
                }
            }
            "layers" => {
                spec.layers = cx.items(v, "`layers`")?;
                spec.layers_span = cx.s(k);
                have_layers = true;
            }
            "train" => {
                spec.train = cx.args(v)?;
                spec.train_span = Some(cx.s(k));
            }
            other => return Err(unknown_key(cx.s(k), other, "the spec", TOP_KEYS)),
        }
    }
    if !have_layers {
        return Err(Diagnostic::new("spec::missing", "the spec has no `layers`")
            .at(
                Span::new(0, src.text.len().min(1)),
                "no `layers:` key in this file",
            )
            .help("add `layers:` with a list of layers"));
    }
    Ok(spec)
}
