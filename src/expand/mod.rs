//! Expansion: AST → IR graph. Evaluates template parameters, repeats stages, inserts SE
//! blocks, gives Keras auto-names (`conv2d`, `conv2d_1`, ... per type, in creation order) and
//! infers every node's shape as it is created, so SE can read its channel count.

pub mod se;

use crate::diag::{suggest, Diagnostic, Result};
use crate::ir::args::{ArgVal, Args, Value, MAX_DIM};
use crate::ir::ops::{arity, InShape, InferCx, Input, LAYER_KINDS};
use crate::ir::{Graph, Node, NodeId, Op, Scope, Shape};
use crate::source::Span;
use crate::spec::ast::*;
use crate::spec::eval::{eval, Vars};
use std::collections::HashMap;

/// The largest graph a spec may expand to. ResNet-152 has about 520 Keras layers; this is 200x that.
pub const MAX_LAYERS: usize = 100_000;
/// Deepest nesting of block templates.
pub const MAX_NESTING: usize = 32;

/// SE settings in force: off, or the arguments to apply (model level, then stage, then item).
#[derive(Clone, Debug)]
enum SeCtx {
    Off,
    On(Vec<ArgVal>),
}

/// What expansion knows inside one block instance.
#[derive(Clone)]
struct Env {
    vars: Vars,
    se: SeCtx,
    /// `id:` labels visible here.
    labels: HashMap<String, NodeId>,
    scope: Scope,
    /// Where the enclosing templates were used, innermost last.
    call_sites: Vec<(Span, String)>,
}

pub struct Expander<'a> {
    spec: &'a Spec,
    graph: Graph,
    counters: HashMap<&'static str, usize>,
    names: HashMap<String, NodeId>,
    /// Template names being instantiated, to catch a block that uses itself.
    stack: Vec<String>,
    stages: usize,
    blocks: usize,
    /// Every `se` item expands to nothing (`diff`'s SE overhead: the spec without SE).
    se_off: bool,
    /// With `expand_traced`: the nodes each item instance made, for the language server.
    trace: Option<Vec<Traced>>,
}

/// One expansion of one spec item (a template body's items expand once per use): the item's
/// span, the nodes it created (consecutive ids) and its output.
#[derive(Clone, Debug, PartialEq)]
pub struct Traced {
    pub span: Span,
    pub nodes: std::ops::Range<u32>,
    pub out: NodeId,
}

pub fn expand(spec: &Spec) -> Result<Graph> {
    expand_with(spec, false)
}

/// `expand`, with every `se` item skipped when `se_off` (whatever the model, stage or item
/// says): the same network without its SE layers.
pub fn expand_with(spec: &Spec, se_off: bool) -> Result<Graph> {
    Expander::new(spec, se_off, None).run()
}

/// `expand`, also returning what each item instance made (in the order items finished).
pub fn expand_traced(spec: &Spec) -> Result<(Graph, Vec<Traced>)> {
    let mut ex = Expander::new(spec, false, Some(vec![]));
    let graph = ex.build()?;
    Ok((graph, ex.trace.unwrap_or_default()))
}

fn eval_vals(args: &[Arg], vars: &Vars) -> Result<Vec<ArgVal>> {
    args.iter()
        .map(|a| {
            Ok(ArgVal {
                key: a.key.as_ref().map(|k| (k.name.clone(), k.span)),
                value: eval(&a.value, vars)?,
                span: a.value.span,
                scope_names: vars.names(),
            })
        })
        .collect()
}

fn as_int(v: &Value, span: Span, what: &str, min: i64) -> Result<i64> {
    match v {
        Value::Int(i) if *i >= min => Ok(*i),
        Value::Int(i) => Err(Diagnostic::new(
            "spec::range",
            format!("{what} is {i}, but must be at least {min}"),
        )
        .at(span, format!("must be >= {min}"))
        .help(format!("use a value of {min} or more"))),
        v => Err(Diagnostic::new(
            "spec::type",
            format!(
                "{what} must be an integer, found {} `{}`",
                v.type_name(),
                v.describe()
            ),
        )
        .at(span, "expected an integer")
        .help("write a whole number")),
    }
}

impl<'a> Expander<'a> {
    fn new(spec: &'a Spec, se_off: bool, trace: Option<Vec<Traced>>) -> Self {
        Expander {
            spec,
            graph: Graph::default(),
            counters: HashMap::new(),
            names: HashMap::new(),
            stack: vec![],
            stages: 0,
            blocks: 0,
            se_off,
            trace,
        }
    }

    fn run(mut self) -> Result<Graph> {
        self.build()
    }

    fn build(&mut self) -> Result<Graph> {
        let spec = self.spec;
        let mut vars = Vars::default();
        self.graph.model = spec
            .model
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_else(|| "model".into());
        if let Some(c) = &spec.classes {
            let n = as_int(&eval(c, &vars)?, c.span, "`classes`", 1)?;
            crate::ir::args::check_range("model", "classes", n, 1, c.span)?;
            self.graph.classes = Some(n as usize);
            vars.vars.push(("classes".into(), Value::Int(n)));
        }
        // Input.
        if spec.input.len() != 3 {
            return Err(Diagnostic::new(
                "spec::input",
                format!("`input` needs 3 sizes (H, W, C), got {}", spec.input.len()),
            )
            .at(spec.input_span, "here")
            .help(
                "write `input: [224, 224, 3]` (height, width, channels; channels-last as in Keras)",
            ));
        }
        let mut shape: Shape = vec![];
        for e in &spec.input {
            let n = as_int(&eval(e, &vars)?, e.span, "an input size", 1)?;
            crate::ir::args::check_range("input", "size", n, 1, e.span)?;
            shape.push(n as usize);
        }
        for (i, (n, v)) in ["height", "width", "channels"]
            .iter()
            .zip(&shape)
            .enumerate()
        {
            vars.vars
                .push((format!("input_{n}"), Value::Int(*v as i64)));
            let _ = i;
        }
        // Keras numbers inputs from 1: `input_1`.
        self.counters.insert("input", 1);
        let root_scope = Scope::default();
        let input = self.push_node(
            "input_1".into(),
            Op::Input(Input {
                shape: shape.clone(),
            }),
            vec![],
            spec.input_span,
            &Env {
                vars: vars.clone(),
                se: SeCtx::Off,
                labels: HashMap::new(),
                scope: root_scope.clone(),
                call_sites: vec![],
            },
        )?;
        let se = match &spec.se {
            Some(SeSetting::Off(_)) => SeCtx::Off,
            Some(SeSetting::On(args, _)) => SeCtx::On(eval_vals(args, &vars)?),
            None => SeCtx::On(vec![]),
        };
        // Templates must not clash with built-in kinds.
        for (i, b) in spec.blocks.iter().enumerate() {
            if LAYER_KINDS.contains(&b.name.name.as_str())
                || ["se", "stage", "residual", "parallel"].contains(&b.name.name.as_str())
            {
                return Err(Diagnostic::new(
                    "spec::duplicate-name",
                    format!("block `{}` has the name of a built-in layer", b.name.name),
                )
                .at(b.name.span, "built-in name")
                .help("rename the block, e.g. `my_".to_string() + &b.name.name + "`"));
            }
            if let Some(p) = spec.blocks[..i].iter().find(|p| p.name.name == b.name.name) {
                return Err(Diagnostic::new(
                    "spec::duplicate-name",
                    format!("block `{}` is defined twice", b.name.name),
                )
                .at(b.name.span, "second definition")
                .related(p.name.span, "first definition")
                .help("rename or remove one of them"));
            }
        }
        for d in &spec.defaults {
            if !LAYER_KINDS.contains(&d.op.name.as_str()) && d.op.name != "se" {
                return Err(Diagnostic::new(
                    "spec::unknown-layer",
                    format!("defaults for unknown layer `{}`", d.op.name),
                )
                .at(d.op.span, "unknown layer")
                .help(suggest(&d.op.name, LAYER_KINDS)));
            }
        }
        let mut env = Env {
            vars,
            se,
            labels: HashMap::new(),
            scope: root_scope,
            call_sites: vec![],
        };
        env.labels.insert("input".into(), input);
        if spec.layers.is_empty() {
            return Err(Diagnostic::new("spec::missing", "`layers` is empty")
                .at(spec.layers_span, "no layers")
                .help("list the model's layers under `layers`"));
        }
        let out = self.seq(&spec.layers, input, &mut env)?;
        self.graph.output = out;
        Ok(std::mem::take(&mut self.graph))
    }

    fn seq(&mut self, items: &[Item], mut cur: NodeId, env: &mut Env) -> Result<NodeId> {
        for item in items {
            cur = self.item(item, cur, env)?;
        }
        Ok(cur)
    }

    fn resolve(&self, r: &Ident, env: &Env) -> Result<NodeId> {
        if let Some(id) = env.labels.get(&r.name) {
            return Ok(*id);
        }
        if let Some(id) = self.names.get(&r.name) {
            return Ok(*id);
        }
        let mut known: Vec<&str> = env
            .labels
            .keys()
            .map(|s| s.as_str())
            .chain(self.names.keys().map(|s| s.as_str()))
            .collect();
        known.sort();
        Err(Diagnostic::new("expand::undefined", format!("`{}` names no earlier layer", r.name))
            .at(r.span, "undefined tensor")
            .help(match crate::diag::did_you_mean(&r.name, known.iter().copied()) {
                Some(c) => format!("did you mean `{c}`? A layer can only read outputs defined before it (the graph is acyclic)"),
                None => "give the layer an `id` (or `name`) before this point; a layer can only read earlier outputs".into(),
            }))
    }

    fn item(&mut self, item: &Item, cur: NodeId, env: &mut Env) -> Result<NodeId> {
        let first = self.graph.nodes.len() as u32;
        let out = self.item_nodes(item, cur, env)?;
        if let Some(t) = &mut self.trace {
            t.push(Traced {
                span: item.span,
                nodes: first..self.graph.nodes.len() as u32,
                out,
            });
        }
        Ok(out)
    }

    fn item_nodes(&mut self, item: &Item, cur: NodeId, env: &mut Env) -> Result<NodeId> {
        if let Some(w) = &item.when {
            match eval(w, &env.vars)? {
                Value::Bool(true) => {}
                Value::Bool(false) => return Ok(cur),
                v => {
                    return Err(Diagnostic::new(
                        "spec::type",
                        format!(
                            "`when` must be true or false, found {} `{}`",
                            v.type_name(),
                            v.describe()
                        ),
                    )
                    .at(w.span, "not a condition")
                    .help(match v {
                        Value::Sym(s) => format!(
                            "`{s}` is not a parameter in scope; {}",
                            suggest(
                                &s,
                                &env.vars
                                    .names()
                                    .iter()
                                    .map(|s| s.as_str())
                                    .collect::<Vec<_>>()
                            )
                        ),
                        _ => "write a comparison such as `stride > 1`, or `first`".into(),
                    }))
                }
            }
        }
        let inputs: Vec<NodeId> = if item.from.is_empty() {
            vec![cur]
        } else {
            item.from
                .iter()
                .map(|r| self.resolve(r, env))
                .collect::<Result<_>>()?
        };
        let composite = !matches!(&item.kind, ItemKind::Call { op, .. } if LAYER_KINDS.contains(&op.name.as_str()));
        if let (Some(n), true) = (&item.name, composite) {
            return Err(Diagnostic::new(
                "spec::name-on-group",
                format!("`name` applies to one layer, not to `{}`", item.op_name()),
            )
            .at(n.span, "cannot name a group")
            .help("use `id` to label the group's output for later `from` references"));
        }
        let single = |this: &Self, what: &str| -> Result<NodeId> {
            if inputs.len() != 1 {
                return Err(Diagnostic::new(
                    "spec::arity",
                    format!("`{what}` takes one input, got {}", inputs.len()),
                )
                .at(
                    item.from[0].span.join(item.from[item.from.len() - 1].span),
                    "several inputs",
                )
                .help("give one tensor in `from`"));
            }
            let _ = this;
            Ok(inputs[0])
        };
        let out = match &item.kind {
            ItemKind::Call { op, args } => {
                let kind = op.name.as_str();
                if kind == "se" {
                    let x = single(self, "se")?;
                    self.se(op, args, x, env)?
                } else if LAYER_KINDS.contains(&kind) {
                    if arity(kind) == Some(1) && inputs.len() != 1 {
                        single(self, kind)?;
                    }
                    let defaults = self
                        .spec
                        .defaults
                        .iter()
                        .filter(|d| d.op.name == kind)
                        .map(|d| eval_vals(&d.args, &env.vars))
                        .collect::<Result<Vec<_>>>()?
                        .concat();
                    let vals = eval_vals(args, &env.vars)?;
                    let mut a = Args::new(kind, op.span, vals).with_defaults(defaults);
                    let parsed = Op::parse(kind, &mut a).expect("kind is in LAYER_KINDS")?;
                    let name = match &item.name {
                        Some(n) => n.name.clone(),
                        None => self.auto_name(parsed.base_name()),
                    };
                    self.push_node(name, parsed, inputs, op.span, env)?
                } else if let Some(def) = self.spec.blocks.iter().find(|b| b.name.name == kind) {
                    let x = single(self, kind)?;
                    let is_top = env.scope.block.is_none();
                    let mut scope = env.scope.clone();
                    if is_top {
                        self.blocks += 1;
                        scope.block = Some((format!("block{}", self.blocks), kind.to_string()));
                    }
                    let vals = eval_vals(args, &env.vars)?;
                    self.instantiate(def, op.span, vals, x, env, scope, None, env.se.clone())?
                } else {
                    let mut known: Vec<&str> = LAYER_KINDS.to_vec();
                    known.extend(["se", "stage", "residual", "parallel"]);
                    known.extend(self.spec.blocks.iter().map(|b| b.name.name.as_str()));
                    return Err(Diagnostic::new(
                        "spec::unknown-layer",
                        format!("unknown layer or block `{kind}`"),
                    )
                    .at(op.span, "unknown layer")
                    .help(suggest(kind, &known)));
                }
            }
            ItemKind::Residual { shortcut, branch } => {
                let x = single(self, "residual")?;
                // Keras applications and the seed create the shortcut first, so it takes the
                // lower auto-name numbers (conv2d_1 before conv2d_2).
                let mut inner = env.clone();
                let sc = self.seq(shortcut, x, &mut inner)?;
                let br = self.seq(branch, x, &mut inner)?;
                let span = item.span;
                let add = Op::Merge(crate::ir::ops::Merge {
                    kind: crate::ir::ops::MergeKind::Add,
                });
                self.push_auto(add, vec![br, sc], span_head(span, "residual"), env)?
            }
            ItemKind::Parallel { branches } => {
                let x = single(self, "parallel")?;
                if branches.len() < 2 {
                    return Err(Diagnostic::new(
                        "spec::arity",
                        "`parallel` needs at least two branches",
                    )
                    .at(item.span, "fewer than two branches")
                    .help("add branches, or write the layers in sequence"));
                }
                let mut outs = vec![];
                for (_, b) in branches {
                    let mut inner = env.clone();
                    outs.push(self.seq(b, x, &mut inner)?);
                }
                let op = Op::Merge(crate::ir::ops::Merge {
                    kind: crate::ir::ops::MergeKind::Concatenate,
                });
                self.push_auto(op, outs, span_head(item.span, "parallel"), env)?
            }
            ItemKind::Stage { block, args } => {
                let x = single(self, "stage")?;
                self.stage(block, args, x, env)?
            }
        };
        if let Some(id) = &item.id {
            env.labels.insert(id.name.clone(), out);
        }
        Ok(out)
    }

    fn stage(&mut self, block: &Ident, args: &[Arg], x: NodeId, env: &mut Env) -> Result<NodeId> {
        let Some(def) = self.spec.blocks.iter().find(|b| b.name.name == block.name) else {
            let known: Vec<&str> = self
                .spec
                .blocks
                .iter()
                .map(|b| b.name.name.as_str())
                .collect();
            return Err(Diagnostic::new(
                "spec::unknown-block",
                format!("unknown block `{}`", block.name),
            )
            .at(block.span, "no block template of this name")
            .help(if known.is_empty() {
                "define it under `blocks`".to_string()
            } else {
                suggest(&block.name, &known)
            }));
        };
        let mut vals = eval_vals(args, &env.vars)?;
        let mut take = |key: &str| -> Option<ArgVal> {
            let i = vals
                .iter()
                .position(|v| v.key.as_ref().is_some_and(|(k, _)| k == key))?;
            Some(vals.remove(i))
        };
        let repeat = match take("repeat") {
            Some(r) => as_int(&r.value, r.span, "`repeat`", 1)?,
            None => {
                return Err(Diagnostic::new("spec::missing", "a stage needs `repeat`")
                    .at(block.span, "how many blocks?")
                    .help("add `repeat: N`"))
            }
        };
        let repeat_span = args
            .iter()
            .find(|a| a.key.as_ref().is_some_and(|k| k.name == "repeat"))
            .map(|a| a.value.span)
            .unwrap_or(block.span);
        if repeat as usize > MAX_LAYERS || self.graph.nodes.len() + repeat as usize > MAX_LAYERS {
            return Err(Diagnostic::new(
                "limit::layers",
                format!("a stage of {repeat} blocks exceeds the limit of {MAX_LAYERS} layers"),
            )
            .at(repeat_span, "absurd repeat count")
            .help(format!(
                "se-compile expands at most {MAX_LAYERS} layers; use a realistic count"
            )));
        }
        let stride = take("stride");
        let se = match take("se") {
            None => env.se.clone(),
            Some(v) => match (&v.value, &env.se) {
                (Value::Bool(false), _) => SeCtx::Off,
                (Value::Sym(s) | Value::Str(s), _) if s == "off" || s == "none" => SeCtx::Off,
                (Value::Bool(true), SeCtx::On(a)) => SeCtx::On(a.clone()),
                (Value::Bool(true), SeCtx::Off) => SeCtx::On(vec![]),
                (Value::Sym(s) | Value::Str(s), prev) if s == "on" => match prev {
                    SeCtx::On(a) => SeCtx::On(a.clone()),
                    SeCtx::Off => SeCtx::On(vec![]),
                },
                (Value::Int(_), prev) => {
                    let mut a = match prev {
                        SeCtx::On(a) => a.clone(),
                        SeCtx::Off => vec![],
                    };
                    a.retain(|x| x.key.as_ref().is_none_or(|(k, _)| k != "r"));
                    a.push(ArgVal {
                        key: Some(("r".into(), v.span)),
                        ..v
                    });
                    SeCtx::On(a)
                }
                (other, _) => {
                    return Err(Diagnostic::new(
                        "spec::type",
                        format!(
                            "a stage's `se` must be off, on or a reduction ratio, found `{}`",
                            other.describe()
                        ),
                    )
                    .at(v.span, "not an SE setting")
                    .help("write `se: off`, `se: on` or `se: 8` (the reduction ratio r)"))
                }
            },
        };
        self.stages += 1;
        let stage_name = format!("stage{}", self.stages);
        let mut cur = x;
        for i in 0..repeat as usize {
            let mut scope = env.scope.clone();
            scope.stage = Some((stage_name.clone(), block.name.clone()));
            scope.block = Some((format!("{stage_name}.block{}", i + 1), block.name.clone()));
            let mut a = vals.clone();
            // The stage's stride applies to the first block; later blocks keep their input size.
            if let Some(s) = &stride {
                a.push(if i == 0 {
                    s.clone()
                } else {
                    ArgVal {
                        value: Value::Int(1),
                        ..s.clone()
                    }
                });
            }
            cur = self.instantiate(def, block.span, a, cur, env, scope, Some(i), se.clone())?;
        }
        Ok(cur)
    }

    #[allow(clippy::too_many_arguments)]
    fn instantiate(
        &mut self,
        def: &BlockDef,
        site: Span,
        args: Vec<ArgVal>,
        x: NodeId,
        env: &Env,
        scope: Scope,
        index: Option<usize>,
        se: SeCtx,
    ) -> Result<NodeId> {
        if let Some(pos) = self.stack.iter().position(|n| *n == def.name.name) {
            let mut chain = self.stack[pos..].to_vec();
            chain.push(def.name.name.clone());
            return Err(Diagnostic::new("expand::cycle", format!("block `{}` uses itself: {}", def.name.name, chain.join(" -> ")))
                .at(site, "recursive use")
                .related(def.name.span, "defined here")
                .help("a block cannot contain itself, directly or through other blocks; the expansion would never end"));
        }
        if self.stack.len() >= MAX_NESTING {
            return Err(Diagnostic::new(
                "limit::nesting",
                format!("block templates nest deeper than {MAX_NESTING} levels"),
            )
            .at(site, "too deep")
            .help(format!(
                "a template may use templates at most {MAX_NESTING} levels deep; write the innermost ones' layers in place"
            )));
        }
        // Bind parameters: named or positional arguments, then defaults.
        let mut vars = Vars {
            vars: env
                .vars
                .vars
                .iter()
                .filter(|(n, _)| n == "classes" || n.starts_with("input_"))
                .cloned()
                .collect(),
        };
        vars.vars
            .push(("first".into(), Value::Bool(index.is_none_or(|i| i == 0))));
        vars.vars
            .push(("index".into(), Value::Int(index.unwrap_or(0) as i64)));
        let mut bound: Vec<Option<ArgVal>> = vec![None; def.params.len()];
        let mut pos = 0;
        let pnames: Vec<&str> = def.params.iter().map(|p| p.name.name.as_str()).collect();
        for a in args {
            let slot = match &a.key {
                Some((k, ks)) => match pnames.iter().position(|p| p == k) {
                    Some(i) => i,
                    None => {
                        return Err(Diagnostic::new(
                            "spec::unknown-param",
                            format!("block `{}` has no parameter `{k}`", def.name.name),
                        )
                        .at(*ks, "unknown parameter")
                        .related(def.name.span, "block defined here")
                        .help(if pnames.is_empty() {
                            "this block takes no parameters".to_string()
                        } else {
                            suggest(k, &pnames)
                        }))
                    }
                },
                None => {
                    pos += 1;
                    if pos > pnames.len() {
                        return Err(Diagnostic::new(
                            "spec::arity",
                            format!(
                                "block `{}` takes {} parameter(s)",
                                def.name.name,
                                pnames.len()
                            ),
                        )
                        .at(a.span, "extra argument")
                        .help("remove it or name it"));
                    }
                    pos - 1
                }
            };
            if bound[slot].is_some() {
                return Err(Diagnostic::new(
                    "spec::duplicate-key",
                    format!(
                        "parameter `{}` of `{}` is given twice",
                        pnames[slot], def.name.name
                    ),
                )
                .at(a.key.as_ref().map(|k| k.1).unwrap_or(a.span), "given again")
                .help("keep one of them"));
            }
            bound[slot] = Some(a);
        }
        for (p, b) in def.params.iter().zip(bound) {
            let v = match (b, &p.default) {
                (Some(a), _) => a.value,
                (None, Some(d)) => eval(d, &vars)?,
                (None, None) => {
                    return Err(Diagnostic::new(
                        "spec::missing",
                        format!(
                            "block `{}` needs parameter `{}`",
                            def.name.name, p.name.name
                        ),
                    )
                    .at(site, format!("`{}` is missing", p.name.name))
                    .related(p.name.span, "declared here without a default")
                    .help(format!("pass `{}`", p.name.name)))
                }
            };
            vars.vars.push((p.name.name.clone(), v));
        }
        let mut call_sites = env.call_sites.clone();
        call_sites.push((site, format!("in block `{}` used here", def.name.name)));
        let mut scope = scope;
        scope.args = def
            .params
            .iter()
            .filter_map(
                |p| match vars.vars.iter().rev().find(|(n, _)| *n == p.name.name) {
                    Some((n, Value::Int(v))) => Some((n.clone(), *v)),
                    _ => None,
                },
            )
            .collect();
        let mut inner = Env {
            vars,
            se,
            labels: HashMap::new(),
            scope,
            call_sites,
        };
        inner.labels.insert("input".into(), x);
        self.stack.push(def.name.name.clone());
        let out = self.seq(&def.body, x, &mut inner);
        self.stack.pop();
        out
    }

    fn se(&mut self, op: &Ident, args: &[Arg], x: NodeId, env: &Env) -> Result<NodeId> {
        let SeCtx::On(base) = &env.se else {
            return Ok(x);
        };
        if self.se_off {
            return Ok(x);
        }
        let mut vals = eval_vals(args, &env.vars)?;
        // Item arguments override the stage's and the model's.
        let mut merged: Vec<ArgVal> = base.clone();
        for v in vals.iter_mut() {
            if v.key.is_none() {
                v.key = Some(("r".into(), v.span));
            }
        }
        merged.retain(|b| {
            !vals
                .iter()
                .any(|v| v.key.as_ref().map(|k| &k.0) == b.key.as_ref().map(|k| &k.0))
        });
        merged.extend(vals);
        let cfg = se::SeConfig::parse(Args::new("se", op.span, merged))?;
        se::expand(self, &cfg, op.span, x, env)
    }

    pub(crate) fn auto_name(&mut self, base: &'static str) -> String {
        let n = self.counters.entry(base).or_insert(0);
        let name = if *n == 0 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        };
        *n += 1;
        name
    }

    fn push_node(
        &mut self,
        name: String,
        op: Op,
        inputs: Vec<NodeId>,
        span: Span,
        env: &Env,
    ) -> Result<NodeId> {
        if self.graph.nodes.len() >= MAX_LAYERS {
            return Err(Diagnostic::new(
                "limit::layers",
                format!("the spec expands past the limit of {MAX_LAYERS} layers"),
            )
            .at(span, "layer number 100001")
            .help("se-compile expands at most 100000 layers; check repeat counts"));
        }
        if let Some(prev) = self.names.get(&name) {
            let prev_span = self.graph.node(*prev).span;
            return Err(Diagnostic::new(
                "expand::duplicate-name",
                format!("layer name `{name}` is used twice"),
            )
            .at(span, "second layer with this name")
            .related(prev_span, "first layer with this name")
            .help(
                "layer names must be unique; rename one, or drop `name` to get an automatic one",
            ));
        }
        let shape = {
            let ins: Vec<InShape> = inputs
                .iter()
                .map(|&i| {
                    let n = self.graph.node(i);
                    InShape {
                        shape: &n.shape,
                        name: &n.name,
                        span: n.span,
                    }
                })
                .collect();
            let cx = InferCx {
                op: op.base_name(),
                span,
                ins,
            };
            match &op {
                Op::Input(i) => i.shape.clone(),
                _ => op.infer(&cx).map_err(|mut d| {
                    if let Some((s, l)) = env.call_sites.last() {
                        d = d.related(*s, l.clone());
                    }
                    d
                })?,
            }
        };
        if let Some(&big) = shape.iter().find(|&&d| d as i64 > MAX_DIM * 16) {
            return Err(Diagnostic::new(
                "limit::size",
                format!("`{name}` would have a dimension of {big}, above the limit"),
            )
            .at(span, "absurdly large output")
            .help("check the sizes feeding this layer"));
        }
        let id = NodeId(self.graph.nodes.len() as u32);
        self.names.insert(name.clone(), id);
        self.graph.nodes.push(Node {
            name,
            op,
            inputs,
            shape,
            span,
            scope: env.scope.clone(),
        });
        Ok(id)
    }

    /// A node with Keras' automatic name for its type.
    fn push_auto(&mut self, op: Op, inputs: Vec<NodeId>, span: Span, env: &Env) -> Result<NodeId> {
        let name = self.auto_name(op.base_name());
        self.push_node(name, op, inputs, span, env)
    }

    pub(crate) fn shape(&self, id: NodeId) -> &Shape {
        &self.graph.node(id).shape
    }
}

/// The span of a group's keyword (`residual`, `parallel`), for its merge node.
fn span_head(item: Span, word: &str) -> Span {
    Span::new(
        item.start,
        item.start + word.len().min(item.len().max(word.len())),
    )
}
