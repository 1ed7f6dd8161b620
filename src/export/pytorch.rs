//! PyTorch export: `model.py`, one plain `torch.nn.Module` with no se-compile import, and
//! `weights.safetensors`, its `state_dict` in PyTorch layouts (OIHW kernels, `[out, in]` linear
//! weights, BN statistics as the `running_mean`/`running_var` buffers).
//!
//! Each stage of the spec becomes an `nn.Sequential` of block modules, each block a class named
//! after its template (`Bottleneck`). Instances whose layers are the same up to their channel
//! counts share a class: a channel count is written as an expression of the constructor
//! arguments (`in_channels`, the template's integer parameters such as `filters`) where one
//! gives it, and as a literal otherwise, so every instance rebuilds exactly its own layers.
//! Activations are NCHW; where the spec's order matters (Flatten and Dense on an image, a
//! Reshape), the code permutes to NHWC so that the weights keep their Keras meaning.

use super::{hwio_to_oihw, in_channels, place, transpose2, ExportError, Weights};
use crate::ir::ops::{ActFn, MergeKind, Op, PoolKind};
use crate::ir::{Graph, NodeId};
use crate::source::SourceFile;
use crate::validate::ValidGraph;
use std::collections::HashMap;
use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Spec,
    Nchw,
}

#[derive(Clone, Debug)]
struct Val {
    var: String,
    rank: usize,
    layout: Layout,
}

impl Val {
    /// The expression of this value in `want` layout (a permute for a rank-4 value).
    fn expr(&self, want: Layout) -> (String, Layout) {
        if self.rank != 4 || self.layout == want {
            return (self.var.clone(), self.layout);
        }
        match want {
            Layout::Nchw => (format!("{}.permute(0, 3, 1, 2)", self.var), want),
            Layout::Spec => (format!("{}.permute(0, 2, 3, 1)", self.var), want),
        }
    }
}

/// A tensor of the state dict: key relative to its module, shape, f32 data (or the i64 BN
/// counter).
enum Data {
    F32(Vec<f32>),
    I64Zero,
}
struct Tensor {
    key: String,
    shape: Vec<usize>,
    data: Data,
    /// se-compile's name of the same tensor (`conv2d/kernel`); empty for torch's BN counter.
    se: String,
}

/// The code of one module body.
#[derive(Default)]
struct Body {
    attrs: Vec<String>,
    fwd: Vec<String>,
    tensors: Vec<Tensor>,
    /// Constructor arguments actually used, in order.
    used_args: Vec<String>,
}

/// How numbers and names are written in one body.
struct Naming<'a> {
    /// (argument name, value) pairs a channel count may be written as.
    cands: Vec<(String, i64)>,
    /// Role names inside a block (`conv1`, `bn2`) instead of Keras names.
    roles: bool,
    counters: HashMap<&'static str, usize>,
    /// Override for specific nodes (the head's `num_classes`).
    special: &'a dyn Fn(NodeId, &str) -> Option<String>,
}

impl Naming<'_> {
    /// `v` as `in_channels` (when `prefer_in`), a parameter, `p * k` or `p // k`, or a literal.
    fn num(&self, v: usize, body: &mut Body, prefer_in: bool) -> String {
        let v = v as i64;
        let mut order: Vec<&(String, i64)> = self.cands.iter().collect();
        order.sort_by_key(|(n, _)| (n == "in_channels") != prefer_in);
        let mut hit = None;
        'search: for form in 0..3 {
            for (name, val) in &order {
                let e = match form {
                    0 => (*val == v).then(|| name.clone()),
                    1 => [2, 4]
                        .into_iter()
                        .find(|k| val * k == v)
                        .map(|k| format!("{name} * {k}")),
                    _ => [2, 4, 8, 16, 32]
                        .into_iter()
                        .find(|k| val % k == 0 && val / k == v)
                        .map(|k| format!("{name} // {k}")),
                };
                if let Some(e) = e {
                    hit = Some((name.clone(), e));
                    break 'search;
                }
            }
        }
        match hit {
            Some((name, e)) => {
                if !body.used_args.contains(&name) {
                    body.used_args.push(name);
                }
                e
            }
            None => v.to_string(),
        }
    }
    fn name(&mut self, g: &Graph, id: NodeId, role: &'static str) -> String {
        if self.roles {
            let n = self.counters.entry(role).or_insert(0);
            *n += 1;
            format!("{role}{n}")
        } else {
            ident(&g.node(id).name)
        }
    }
}

/// A Python identifier from a layer name.
fn ident(s: &str) -> String {
    let mut o: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if o.is_empty() || o.starts_with(|c: char| c.is_ascii_digit()) {
        o.insert(0, '_');
    }
    const RESERVED: &[&str] = &[
        "x", "self", "training", "forward", "input", "F", "nn", "torch", "and", "as", "class",
        "def", "del", "for", "from", "global", "if", "import", "in", "is", "lambda", "not", "or",
        "pass", "return", "while", "with", "yield", "None", "True", "False",
    ];
    while RESERVED.contains(&o.as_str()) || o.ends_with("__") && o.starts_with("__") {
        o.push('_');
    }
    o
}

fn camel(s: &str) -> String {
    let mut o = String::new();
    for part in s.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut cs = part.chars();
        if let Some(f) = cs.next() {
            o.push(f.to_ascii_uppercase());
            o.extend(cs);
        }
    }
    if o.is_empty() || o.starts_with(|c: char| c.is_ascii_digit()) {
        o.insert(0, 'M');
    }
    o
}

fn pair(a: [usize; 2]) -> String {
    if a[0] == a[1] {
        a[0].to_string()
    } else {
        format!("({}, {})", a[0], a[1])
    }
}

fn unsupported(g: &Graph, id: NodeId, src: &SourceFile, why: &str, help: &str) -> ExportError {
    ExportError::Unsupported {
        layer: g.node(id).name.clone(),
        at: place(g, id, src),
        why: why.into(),
        help: help.into(),
    }
}

/// Python for activation `f` on expression `x` with layout `lay`.
fn act_expr(f: ActFn, x: &str, lay: Layout) -> String {
    match f {
        ActFn::Linear => x.to_string(),
        ActFn::Relu => format!("F.relu({x})"),
        ActFn::Relu6 => format!("F.relu6({x})"),
        ActFn::Sigmoid => format!("torch.sigmoid({x})"),
        // Keras 2's hard sigmoid (not torch's relu6(x + 3) / 6).
        ActFn::HardSigmoid => format!("torch.clamp(0.2 * {x} + 0.5, 0.0, 1.0)"),
        ActFn::Tanh => format!("torch.tanh({x})"),
        ActFn::Swish => format!("F.silu({x})"),
        ActFn::Gelu => format!("F.gelu({x}, approximate=\"tanh\")"),
        ActFn::Elu => format!("F.elu({x})"),
        ActFn::Mish => format!("F.mish({x})"),
        ActFn::Softmax => {
            let dim = if lay == Layout::Nchw { 1 } else { -1 };
            format!("torch.softmax({x}, dim={dim})")
        }
    }
}

/// Generates the attributes, forward lines and tensors of `nodes`, which read `input`.
fn body(
    g: &Graph,
    src: &SourceFile,
    w: &Weights,
    nodes: &[NodeId],
    vals: &mut HashMap<NodeId, Val>,
    naming: &mut Naming,
) -> Result<(Body, Val), ExportError> {
    let mut b = Body::default();
    let inside: std::collections::HashSet<NodeId> = nodes.iter().copied().collect();
    let consumers = g.consumers();
    // The body's own input (a block's `x`), read from outside `nodes`.
    let block_input: Option<NodeId> = nodes
        .first()
        .and_then(|&n| g.node(n).inputs.first().copied())
        .filter(|i| !inside.contains(i));
    for (pos, &id) in nodes.iter().enumerate() {
        let node = g.node(id);
        let cin = in_channels(g, id);
        let ins: Vec<Val> = node.inputs.iter().map(|i| vals[i].clone()).collect();
        let x = &ins[0];
        // A value read only by the next layer of this body lives in `x`.
        let cons = &consumers[id.index()];
        let next = nodes.get(pos + 1);
        let chain = cons.len() == 1
            && Some(&cons[0]) == next
            && inside.contains(&cons[0])
            && g.node(cons[0]).inputs.len() == 1;
        let role: &'static str = match &node.op {
            Op::Conv2d(_) => "conv",
            Op::BatchNorm(_) => "bn",
            Op::Dense(_) => "fc",
            Op::Pool2d(_) => "pool",
            Op::Dropout(_) => "drop",
            Op::Activation(a) if a.function == ActFn::Softmax => "probs",
            Op::Activation(_) => "act",
            Op::Merge(m) => match m.kind {
                MergeKind::Add => "add",
                MergeKind::Multiply => "mul",
                MergeKind::Concatenate => "cat",
            },
            Op::GlobalPool(_) => "pooled",
            Op::ZeroPadding2d(_) => "padded",
            Op::Flatten(_) | Op::Reshape(_) => "reshaped",
            Op::Input(_) => "x",
        };
        let attr = naming.name(g, id, role);
        let var = if chain { "x".to_string() } else { attr.clone() };
        let mut out_layout = Layout::Spec;
        let out_rank = node.shape.len() + 1;
        let line = match &node.op {
            Op::Input(_) => unreachable!("the input is node 0"),
            Op::Conv2d(c) => {
                let xi = &g.node(node.inputs[0]).shape;
                let (xe, _) = x.expr(Layout::Nchw);
                let [[t, bo], [l, r]] = c.pads([xi[0], xi[1]]);
                let (pad_arg, xe) = if t == bo && l == r {
                    (
                        if t == 0 && l == 0 {
                            String::new()
                        } else {
                            format!(", padding={}", pair([t, l]))
                        },
                        xe,
                    )
                } else {
                    (String::new(), format!("F.pad({xe}, ({l}, {r}, {t}, {bo}))"))
                };
                let mut extra = String::new();
                if c.stride != [1, 1] {
                    write!(extra, ", stride={}", pair(c.stride)).unwrap();
                }
                extra.push_str(&pad_arg);
                if c.dilation != [1, 1] {
                    write!(extra, ", dilation={}", pair(c.dilation)).unwrap();
                }
                if c.groups > 1 {
                    write!(extra, ", groups={}", c.groups).unwrap();
                }
                if !c.use_bias {
                    extra.push_str(", bias=False");
                }
                let reads_input = Some(&node.inputs[0]) == block_input.as_ref();
                let ci = (naming.special)(id, "in")
                    .unwrap_or_else(|| naming.num(cin, &mut b, reads_input));
                let co = naming.num(c.filters, &mut b, false);
                b.attrs.push(format!(
                    "self.{attr} = nn.Conv2d({ci}, {co}, {}{extra})",
                    pair(c.kernel)
                ));
                let cig = cin / c.groups;
                b.tensors.push(Tensor {
                    key: format!("{attr}.weight"),
                    shape: vec![c.filters, cig, c.kernel[0], c.kernel[1]],
                    data: Data::F32(hwio_to_oihw(
                        w.get(&node.name, "kernel"),
                        c.kernel[0],
                        c.kernel[1],
                        cig,
                        c.filters,
                    )),
                    se: format!("{}/kernel", node.name),
                });
                if c.use_bias {
                    b.tensors.push(Tensor {
                        key: format!("{attr}.bias"),
                        shape: vec![c.filters],
                        data: Data::F32(w.get(&node.name, "bias").to_vec()),
                        se: format!("{}/bias", node.name),
                    });
                }
                out_layout = Layout::Nchw;
                format!("self.{attr}({xe})")
            }
            Op::BatchNorm(bn) => {
                if bn.center != bn.scale {
                    return Err(unsupported(
                        g,
                        id,
                        src,
                        "torch's BatchNorm learns both gamma and beta or neither",
                        "set both `center` and `scale` to the same value",
                    ));
                }
                let (kind, xe, lay) =
                    match x.rank {
                        4 => {
                            let (e, l) = x.expr(Layout::Nchw);
                            ("BatchNorm2d", e, l)
                        }
                        2 => ("BatchNorm1d", x.var.clone(), Layout::Spec),
                        _ => return Err(unsupported(
                            g,
                            id,
                            src,
                            "a BatchNorm on a tensor of rank other than 1 or 3 has no torch module",
                            "normalise an image (H, W, C) or a vector (C)",
                        )),
                    };
                let mut extra = format!(
                    ", eps={}, momentum={}",
                    py_float(bn.epsilon),
                    py_float(1.0 - bn.momentum)
                );
                if !bn.scale {
                    extra.push_str(", affine=False");
                }
                let c = naming.num(cin, &mut b, false);
                b.attrs.push(format!("self.{attr} = nn.{kind}({c}{extra})"));
                let n = &node.name;
                if bn.scale {
                    b.tensors.push(Tensor {
                        key: format!("{attr}.weight"),
                        shape: vec![cin],
                        data: Data::F32(w.get(n, "gamma").to_vec()),
                        se: format!("{n}/gamma"),
                    });
                    b.tensors.push(Tensor {
                        key: format!("{attr}.bias"),
                        shape: vec![cin],
                        data: Data::F32(w.get(n, "beta").to_vec()),
                        se: format!("{n}/beta"),
                    });
                }
                for (k, what) in [
                    ("running_mean", "moving_mean"),
                    ("running_var", "moving_variance"),
                ] {
                    b.tensors.push(Tensor {
                        key: format!("{attr}.{k}"),
                        shape: vec![cin],
                        data: Data::F32(w.get(n, what).to_vec()),
                        se: format!("{n}/{what}"),
                    });
                }
                b.tensors.push(Tensor {
                    key: format!("{attr}.num_batches_tracked"),
                    shape: vec![],
                    data: Data::I64Zero,
                    se: String::new(),
                });
                out_layout = lay;
                format!("self.{attr}({xe})")
            }
            Op::Activation(a) => {
                out_layout = x.layout;
                act_expr(a.function, &x.var, x.layout)
            }
            Op::ZeroPadding2d(z) => {
                let (xe, _) = x.expr(Layout::Nchw);
                let [[t, bo], [l, r]] = z.padding;
                out_layout = Layout::Nchw;
                format!("F.pad({xe}, ({l}, {r}, {t}, {bo}))")
            }
            Op::Pool2d(p) => {
                let xi = &g.node(node.inputs[0]).shape;
                let (xe, _) = x.expr(Layout::Nchw);
                let [[t, bo], [l, r]] = p.pads([xi[0], xi[1]]);
                let (k, s) = (pair(p.size), pair(p.stride));
                let symmetric = t == bo && l == r && 2 * t <= p.size[0] && 2 * l <= p.size[1];
                out_layout = Layout::Nchw;
                let nopad = t == 0 && bo == 0 && l == 0 && r == 0;
                match (p.kind, nopad, symmetric) {
                    (PoolKind::Max, true, _) => {
                        b.attrs.push(format!("self.{attr} = nn.MaxPool2d({k}, stride={s})"));
                        format!("self.{attr}({xe})")
                    }
                    (PoolKind::Max, false, true) => {
                        b.attrs.push(format!(
                            "self.{attr} = nn.MaxPool2d({k}, stride={s}, padding={})",
                            pair([t, l])
                        ));
                        format!("self.{attr}({xe})")
                    }
                    (PoolKind::Max, false, false) => format!(
                        "F.max_pool2d(F.pad({xe}, ({l}, {r}, {t}, {bo}), value=float(\"-inf\")), {k}, stride={s})"
                    ),
                    (PoolKind::Avg, true, _) => {
                        b.attrs.push(format!("self.{attr} = nn.AvgPool2d({k}, stride={s})"));
                        format!("self.{attr}({xe})")
                    }
                    (PoolKind::Avg, false, true) => {
                        // Keras divides by the taps inside the image.
                        b.attrs.push(format!(
                            "self.{attr} = nn.AvgPool2d({k}, stride={s}, padding={}, count_include_pad=False)",
                            pair([t, l])
                        ));
                        format!("self.{attr}({xe})")
                    }
                    (PoolKind::Avg, false, false) => format!(
                        "avg_pool_keras({xe}, {k}, {s}, ({l}, {r}, {t}, {bo}))"
                    ),
                }
            }
            Op::GlobalPool(p) => {
                let (xe, _) = x.expr(Layout::Nchw);
                let f = match p.kind {
                    PoolKind::Avg => "mean",
                    PoolKind::Max => "amax",
                };
                if p.keepdims {
                    out_layout = Layout::Nchw;
                    format!("{xe}.{f}((2, 3), keepdim=True)")
                } else {
                    format!("{xe}.{f}((2, 3))")
                }
            }
            Op::Dense(d) => {
                let (xe, _) = x.expr(Layout::Spec);
                let reads_input = Some(&node.inputs[0]) == block_input.as_ref();
                let ci = naming.num(cin, &mut b, reads_input);
                let co = (naming.special)(id, "out")
                    .unwrap_or_else(|| naming.num(d.units, &mut b, false));
                let bias = if d.use_bias { "" } else { ", bias=False" };
                b.attrs
                    .push(format!("self.{attr} = nn.Linear({ci}, {co}{bias})"));
                b.tensors.push(Tensor {
                    key: format!("{attr}.weight"),
                    shape: vec![d.units, cin],
                    data: Data::F32(transpose2(w.get(&node.name, "kernel"), cin, d.units)),
                    se: format!("{}/kernel", node.name),
                });
                if d.use_bias {
                    b.tensors.push(Tensor {
                        key: format!("{attr}.bias"),
                        shape: vec![d.units],
                        data: Data::F32(w.get(&node.name, "bias").to_vec()),
                        se: format!("{}/bias", node.name),
                    });
                }
                let e = format!("self.{attr}({xe})");
                match d.activation {
                    Some(f) => act_expr(f, &e, Layout::Spec),
                    None => e,
                }
            }
            Op::Dropout(dr) => {
                out_layout = x.layout;
                b.attrs
                    .push(format!("self.{attr} = nn.Dropout({})", py_float(dr.rate)));
                format!("self.{attr}({})", x.var)
            }
            Op::Flatten(_) => {
                let (xe, _) = x.expr(Layout::Spec);
                if x.rank == 4 && x.layout == Layout::Nchw {
                    b.fwd.push(
                        "# flatten in Keras' (H, W, C) order, which the next weights expect".into(),
                    );
                }
                format!("{xe}.flatten(1)")
            }
            Op::Reshape(_) => {
                let t = &node.shape;
                if t.len() == 3 && t[0] == 1 && t[1] == 1 && x.rank == 2 {
                    // (C) → (1, 1, C): the SE gate, (N, C, 1, 1) in NCHW.
                    out_layout = Layout::Nchw;
                    format!("{0}.reshape({0}.shape[0], -1, 1, 1)", x.var)
                } else {
                    let (xe, _) = x.expr(Layout::Spec);
                    let dims: Vec<String> = t.iter().map(|d| d.to_string()).collect();
                    format!("{xe}.reshape(-1, {})", dims.join(", "))
                }
            }
            Op::Merge(m) => {
                let want = if ins.iter().any(|v| v.rank == 4 && v.layout == Layout::Nchw) {
                    Layout::Nchw
                } else {
                    Layout::Spec
                };
                let xs: Vec<String> = ins.iter().map(|v| v.expr(want).0).collect();
                if out_rank == 4 {
                    out_layout = want;
                }
                match m.kind {
                    MergeKind::Add => xs.join(" + "),
                    MergeKind::Multiply => xs.join(" * "),
                    MergeKind::Concatenate => {
                        let dim = if want == Layout::Nchw && out_rank == 4 {
                            1
                        } else {
                            -1
                        };
                        format!("torch.cat([{}], dim={dim})", xs.join(", "))
                    }
                }
            }
        };
        b.fwd.push(format!("{var} = {line}"));
        vals.insert(
            id,
            Val {
                var,
                rank: out_rank,
                layout: if out_rank == 4 {
                    out_layout
                } else {
                    Layout::Spec
                },
            },
        );
    }
    let last = vals[nodes.last().expect("a body has layers")].clone();
    Ok((b, last))
}

fn py_float(v: f64) -> String {
    // Nine significant digits: 1 - 0.9 prints as 0.1, not 0.09999999999999998.
    let s = format!("{:?}", format!("{v:.9e}").parse::<f64>().unwrap_or(v));
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// A run of top-level code: plain layers, one block instance, or a stage of block instances.
enum Unit {
    Layers(Vec<NodeId>),
    Block(Instance),
    Stage(String, Vec<Instance>),
}

#[derive(Clone)]
struct Instance {
    /// `stage2.block1`, or `block3` outside a stage.
    name: String,
    template: String,
    nodes: Vec<NodeId>,
    input: NodeId,
    args: Vec<(String, i64)>,
}

/// Whether `nodes` (contiguous) read only `input` from outside and only their last node is
/// read from outside.
fn self_contained(g: &Graph, nodes: &[NodeId]) -> Option<NodeId> {
    let first = nodes[0].index();
    if nodes
        .iter()
        .enumerate()
        .any(|(k, n)| n.index() != first + k)
    {
        return None;
    }
    let inside = |i: NodeId| i.index() >= first && i.index() < first + nodes.len();
    let mut input = None;
    for &n in nodes {
        for &i in &g.node(n).inputs {
            if !inside(i) {
                if input.is_some_and(|p| p != i) {
                    return None;
                }
                input = Some(i);
            }
        }
    }
    let consumers = g.consumers();
    let last = *nodes.last()?;
    for &n in nodes {
        let outside = consumers[n.index()].iter().any(|&c| !inside(c));
        if n != last && (outside || n == g.output) {
            return None;
        }
    }
    input
}

fn units(g: &Graph) -> Vec<Unit> {
    // Group nodes by block instance, in order.
    let mut units: Vec<Unit> = vec![];
    let mut i = 1;
    let n = g.nodes.len();
    while i < n {
        let node = &g.nodes[i];
        let Some((block, template)) = node.scope.block.clone() else {
            match units.last_mut() {
                Some(Unit::Layers(v)) => v.push(NodeId(i as u32)),
                _ => units.push(Unit::Layers(vec![NodeId(i as u32)])),
            }
            i += 1;
            continue;
        };
        let mut j = i;
        while j < n && g.nodes[j].scope.block.as_ref().map(|b| &b.0) == Some(&block) {
            j += 1;
        }
        let nodes: Vec<NodeId> = (i..j).map(|k| NodeId(k as u32)).collect();
        let stage = node.scope.stage.clone().map(|s| s.0);
        match self_contained(g, &nodes) {
            Some(input) => {
                let inst = Instance {
                    name: block.clone(),
                    template,
                    nodes,
                    input,
                    args: node.scope.args.clone(),
                };
                match (stage, units.last_mut()) {
                    (Some(s), Some(Unit::Stage(cur, v)))
                        if *cur == s
                            && v.last().and_then(|b| b.nodes.last()) == Some(&inst.input) =>
                    {
                        v.push(inst)
                    }
                    (Some(s), _) => units.push(Unit::Stage(s, vec![inst])),
                    (None, _) => units.push(Unit::Block(inst)),
                }
            }
            None => match units.last_mut() {
                Some(Unit::Layers(v)) => v.extend(nodes),
                _ => units.push(Unit::Layers(nodes)),
            },
        }
        i = j;
    }
    units
}

struct Class {
    name: String,
    args: Vec<String>,
    body: Body,
    /// The variable `forward` returns.
    ret: String,
}

/// Writes `model.py` and `weights.safetensors`.
pub fn export(
    vg: &ValidGraph,
    src: &SourceFile,
    w: &Weights,
) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
    let g = vg.graph();
    let in_shape = g.input_shape().clone();
    let model_class = camel(&g.model);
    let classes_n = g.classes;
    let head_dense = {
        // The Dense layer that produces the classes, whose width becomes `num_classes`.
        let mut id = g.output;
        if matches!(&g.node(id).op, Op::Activation(_)) {
            id = g.node(id).inputs[0];
        }
        match &g.node(id).op {
            Op::Dense(d) if Some(d.units) == classes_n => Some(id),
            _ => None,
        }
    };
    let stem_reads_input = |id: NodeId| g.node(id).inputs.first() == Some(&NodeId(0));
    let special = |id: NodeId, what: &str| -> Option<String> {
        match what {
            "out" if Some(id) == head_dense => Some("num_classes".into()),
            "in" if stem_reads_input(id) && in_shape.len() == 3 => Some("in_chans".into()),
            _ => None,
        }
    };
    let no_special = |_: NodeId, _: &str| -> Option<String> { None };

    let mut block_classes: Vec<Class> = vec![];
    let mut top = Body::default();
    let mut state: Vec<Tensor> = vec![];
    let x0 = Val {
        var: "x".into(),
        rank: in_shape.len() + 1,
        layout: if in_shape.len() == 3 {
            Layout::Nchw
        } else {
            Layout::Spec
        },
    };
    let mut cur = x0.clone();
    let mut top_vals: HashMap<NodeId, Val> = HashMap::new();
    if g.consumers()[0].len() > 1 {
        top.fwd.push("inputs = x".into());
        top_vals.insert(
            NodeId(0),
            Val {
                var: "inputs".into(),
                ..x0.clone()
            },
        );
    } else {
        top_vals.insert(NodeId(0), x0.clone());
    }
    let mut top_naming = Naming {
        cands: vec![],
        roles: false,
        counters: HashMap::new(),
        special: &special,
    };

    // A block instance → its class (made or reused) and the constructor call.
    let mut instance =
        |inst: &Instance, input: Val| -> Result<(String, Vec<Tensor>, Val), ExportError> {
            let cin = *g.node(inst.input).shape.last().unwrap_or(&0) as i64;
            let mut cands = vec![("in_channels".to_string(), cin)];
            // Channel counts only: a stride or an index is no width.
            cands.extend(
                inst.args
                    .iter()
                    .filter(|(n, v)| *v > 1 && !n.contains("stride") && n != "index")
                    .cloned(),
            );
            let mut naming = Naming {
                cands,
                roles: true,
                counters: HashMap::new(),
                special: &no_special,
            };
            let mut vals = HashMap::new();
            let mut pre = vec![];
            // The block's input stays readable after `x` is reused, if a later layer reads it too.
            let var = if g.consumers()[inst.input.index()].len() > 1 {
                pre.push("identity = x".to_string());
                "identity"
            } else {
                "x"
            };
            vals.insert(
                inst.input,
                Val {
                    var: var.into(),
                    ..input.clone()
                },
            );
            let (mut body, out) = body(g, src, w, &inst.nodes, &mut vals, &mut naming)?;
            pre.append(&mut body.fwd);
            body.fwd = pre;
            let base = camel(&inst.template);
            let mut args = body.used_args.clone();
            args.sort_by_key(|a| (a != "in_channels", a.clone()));
            let found = block_classes.iter().find(|c| {
                c.name.starts_with(&base)
                    && c.body.attrs == body.attrs
                    && c.body.fwd == body.fwd
                    && c.args == args
                    && c.ret == out.var
            });
            let name = match found {
                Some(c) => c.name.clone(),
                None => {
                    let k = block_classes
                        .iter()
                        .filter(|c| {
                            c.name.starts_with(&base)
                                && c.name[base.len()..].chars().all(|ch| ch.is_ascii_digit())
                        })
                        .count();
                    let name = if k == 0 {
                        base.clone()
                    } else {
                        format!("{base}{}", k + 1)
                    };
                    block_classes.push(Class {
                        name: name.clone(),
                        args: args.clone(),
                        ret: out.var.clone(),
                        body: Body {
                            attrs: body.attrs.clone(),
                            fwd: body.fwd.clone(),
                            tensors: vec![],
                            used_args: vec![],
                        },
                    });
                    name
                }
            };
            let call_args: Vec<String> = args
                .iter()
                .map(|a| {
                    let v = if a == "in_channels" {
                        cin
                    } else {
                        inst.args
                            .iter()
                            .find(|(n, _)| n == a)
                            .map(|p| p.1)
                            .unwrap_or(0)
                    };
                    format!("{a}={v}")
                })
                .collect();
            Ok((
                format!("{name}({})", call_args.join(", ")),
                body.tensors,
                out,
            ))
        };

    for unit in units(g) {
        match unit {
            Unit::Layers(nodes) => {
                let (b, out) = body(g, src, w, &nodes, &mut top_vals, &mut top_naming)?;
                top.attrs.extend(b.attrs);
                top.fwd.extend(b.fwd);
                state.extend(b.tensors);
                cur = out;
            }
            Unit::Block(inst) => {
                let attr = ident(&inst.name);
                let input = top_vals[&inst.input].clone();
                let (call, tensors, out) = instance(&inst, to_block_input(&input))?;
                top.attrs.push(format!("self.{attr} = {call}"));
                let last = *inst.nodes.last().expect("nodes");
                let var = out_var(g, last, &attr);
                top.fwd
                    .push(format!("{var} = self.{attr}({})", block_arg(&input)));
                state.extend(tensors.into_iter().map(|t| Tensor {
                    key: format!("{attr}.{}", t.key),
                    ..t
                }));
                cur = Val { var, ..out };
                top_vals.insert(last, cur.clone());
            }
            Unit::Stage(name, insts) => {
                let attr = ident(&name);
                let mut calls = vec![];
                let first_in = top_vals[&insts[0].input].clone();
                let mut input = to_block_input(&first_in);
                for (k, inst) in insts.iter().enumerate() {
                    let (call, tensors, out) = instance(inst, input.clone())?;
                    calls.push(call);
                    state.extend(tensors.into_iter().map(|t| Tensor {
                        key: format!("{attr}.{k}.{}", t.key),
                        ..t
                    }));
                    input = Val {
                        var: "x".into(),
                        ..out
                    };
                }
                let mut s = format!("self.{attr} = nn.Sequential(\n");
                for c in &calls {
                    writeln!(s, "    {c},").unwrap();
                }
                s.push(')');
                top.attrs.push(s);
                let last = *insts.last().and_then(|i| i.nodes.last()).expect("nodes");
                let var = out_var(g, last, &attr);
                top.fwd
                    .push(format!("{var} = self.{attr}({})", block_arg(&first_in)));
                cur = Val { var, ..input };
                top_vals.insert(last, cur.clone());
            }
        }
    }
    let (ret, _) = cur.expr(Layout::Nchw);
    // A final softmax becomes switchable, so that train.py computes the loss from the logits
    // (as se-compile does) while the module's output stays the spec's probabilities.
    let softmax_head = match top.fwd.last() {
        Some(l) if super::ends_in_softmax(g) => l
            .strip_prefix(&format!("{ret} = torch.softmax("))
            .and_then(|r| r.strip_suffix(", dim=-1)"))
            .map(|inner| inner.to_string()),
        _ => None,
    };

    // model.py
    let mut py = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let (h, wd, c) = match in_shape.as_slice() {
        [h, w, c] => (*h, *w, *c),
        _ => (0, 0, 0),
    };
    writeln!(
        py,
        "\"\"\"{} as a PyTorch module, exported by se-compile {version} from {}.",
        g.model, src.name
    )
    .unwrap();
    writeln!(py).unwrap();
    if in_shape.len() == 3 {
        writeln!(py, "Input: float images (N, {c}, {h}, {wd}), NCHW, pixels / 255 (as se-compile feeds them).").unwrap();
    } else {
        writeln!(
            py,
            "Input: (N, {}).",
            in_shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
        .unwrap();
    }
    if super::ends_in_softmax(g) {
        writeln!(
            py,
            "Output: class probabilities (the spec ends in a softmax)."
        )
        .unwrap();
    }
    writeln!(py).unwrap();
    writeln!(py, "    import safetensors.torch").unwrap();
    writeln!(py, "    from model import {model_class}").unwrap();
    writeln!(py, "    model = {model_class}()").unwrap();
    writeln!(
        py,
        "    model.load_state_dict(safetensors.torch.load_file(\"weights.safetensors\"))"
    )
    .unwrap();
    writeln!(py, "    model.eval()").unwrap();
    writeln!(py).unwrap();
    writeln!(
        py,
        "BatchNorm momentum is PyTorch's (1 - Keras' momentum); the spec's epsilon is kept."
    )
    .unwrap();
    writeln!(py, "\"\"\"").unwrap();
    writeln!(py).unwrap();
    writeln!(py, "import torch").unwrap();
    writeln!(py, "import torch.nn as nn").unwrap();
    writeln!(py, "import torch.nn.functional as F").unwrap();
    let all_fwd: String = block_classes
        .iter()
        .flat_map(|c| c.body.fwd.iter())
        .chain(top.fwd.iter())
        .cloned()
        .collect();
    if all_fwd.contains("avg_pool_keras(") {
        py.push_str(
            "\n\ndef avg_pool_keras(x, kernel, stride, pad):\n    \"\"\"Average pool over zero padding `pad` = (left, right, top, bottom), divided by the\n    taps inside the image, as Keras does.\"\"\"\n    ones = F.pad(torch.ones_like(x[:, :1]), pad)\n    return F.avg_pool2d(F.pad(x, pad), kernel, stride) / F.avg_pool2d(ones, kernel, stride)\n",
        );
    }
    for cls in &block_classes {
        writeln!(py, "\n\nclass {}(nn.Module):", cls.name).unwrap();
        let tmpl = cls.name.trim_end_matches(|ch: char| ch.is_ascii_digit());
        writeln!(
            py,
            "    \"\"\"Block `{}` of the spec.\"\"\"",
            snake_of(g, tmpl)
        )
        .unwrap();
        writeln!(py).unwrap();
        let sig: Vec<String> = cls.args.iter().map(|a| format!("{a}: int")).collect();
        writeln!(py, "    def __init__(self, {}):", sig.join(", ")).unwrap();
        writeln!(py, "        super().__init__()").unwrap();
        for a in &cls.body.attrs {
            writeln!(py, "        {a}").unwrap();
        }
        writeln!(py).unwrap();
        writeln!(py, "    def forward(self, x):").unwrap();
        for l in &cls.body.fwd {
            writeln!(py, "        {l}").unwrap();
        }
        writeln!(py, "        return {}", cls.ret).unwrap();
    }
    writeln!(py, "\n\nclass {model_class}(nn.Module):").unwrap();
    writeln!(py, "    \"\"\"`{}` from {}.\"\"\"", g.model, src.name).unwrap();
    writeln!(py).unwrap();
    let mut sig = vec![];
    if let (Some(_), Some(n)) = (head_dense, classes_n) {
        sig.push(format!("num_classes: int = {n}"));
    }
    if in_shape.len() == 3 && top.attrs.iter().any(|a| a.contains("in_chans")) {
        sig.push(format!("in_chans: int = {c}"));
    }
    if sig.is_empty() {
        writeln!(py, "    def __init__(self):").unwrap();
    } else {
        writeln!(py, "    def __init__(self, {}):", sig.join(", ")).unwrap();
    }
    writeln!(py, "        super().__init__()").unwrap();
    if softmax_head.is_some() {
        writeln!(
            py,
            "        self.softmax_output = True  # False: return the logits (train.py)"
        )
        .unwrap();
    }
    for a in &top.attrs {
        for l in a.lines() {
            writeln!(py, "        {l}").unwrap();
        }
    }
    writeln!(py).unwrap();
    writeln!(py, "    def forward(self, x):").unwrap();
    let n_fwd = top.fwd.len() - usize::from(softmax_head.is_some());
    for l in &top.fwd[..n_fwd] {
        writeln!(py, "        {l}").unwrap();
    }
    if let Some(inner) = &softmax_head {
        writeln!(py, "        {ret} = {inner}").unwrap();
        writeln!(py, "        if self.softmax_output:").unwrap();
        writeln!(py, "            {ret} = torch.softmax({ret}, dim=-1)").unwrap();
    }
    writeln!(py, "        return {ret}").unwrap();

    let st = safetensors_bytes(&state, g, version)?;
    // state-dict key -> se-compile name, for train.py's checkpoints in se-compile's names.
    let names: serde_json::Map<String, serde_json::Value> = state
        .iter()
        .filter(|t| !t.se.is_empty())
        .map(|t| (t.key.clone(), serde_json::Value::String(t.se.clone())))
        .collect();
    let mut names = serde_json::to_string_pretty(&names).expect("plain JSON");
    names.push('\n');
    Ok(vec![
        ("model.py".into(), py.into_bytes()),
        ("weights.safetensors".into(), st),
        ("names.json".into(), names.into_bytes()),
    ])
}

/// `x` for a sub-module's output read once, else a name of its own.
/// The training half of the export: `train.py` (DDP, launched by torchrun), `recipe.json` (the
/// spec's `train:` recipe and what train.py needs to know of the model) and the spec itself,
/// copied into every run directory as `se-compile train` does.
pub fn training_files(
    vg: &ValidGraph,
    src: &SourceFile,
    cfg: &crate::spec::recipe::TrainConfig,
) -> Vec<(String, Vec<u8>)> {
    let g = vg.graph();
    let ext = if src.name.ends_with(".se") {
        "se"
    } else {
        "yaml"
    };
    let recipe = serde_json::json!({
        "model": g.model,
        "class": camel(&g.model),
        "spec": src.name,
        "spec_file": format!("spec.{ext}"),
        "input": g.input_shape(),
        "classes": g.classes,
        "softmax_output": super::ends_in_softmax(g),
        // The SE blocks in graph order, as TensorBoard's `excitation/` tags name them.
        "se_blocks": crate::report::excitation::se_blocks(g)
            .iter()
            .map(|b| b.tag())
            .collect::<Vec<_>>(),
        "se_compile_version": env!("CARGO_PKG_VERSION"),
        "train": cfg,
    });
    let mut recipe = serde_json::to_string_pretty(&recipe).expect("plain JSON");
    recipe.push('\n');
    vec![
        ("train.py".into(), TRAIN_PY.as_bytes().to_vec()),
        ("recipe.json".into(), recipe.into_bytes()),
        (format!("spec.{ext}"), src.text.as_bytes().to_vec()),
    ]
}

/// The training script: the same for every model (it reads `recipe.json` and `names.json`).
pub const TRAIN_PY: &str = include_str!("train.py");

fn out_var(g: &Graph, last: NodeId, attr: &str) -> String {
    if g.consumers()[last.index()].len() > 1 {
        format!("{attr}_out")
    } else {
        "x".into()
    }
}

/// A block's input inside its class is `x`; images arrive NCHW.
fn to_block_input(v: &Val) -> Val {
    Val {
        var: "x".into(),
        rank: v.rank,
        layout: if v.rank == 4 {
            Layout::Nchw
        } else {
            Layout::Spec
        },
    }
}
fn block_arg(v: &Val) -> String {
    v.expr(Layout::Nchw).0
}

fn snake_of(g: &Graph, camel_name: &str) -> String {
    g.nodes
        .iter()
        .filter_map(|n| n.scope.block.as_ref().map(|b| b.1.clone()))
        .find(|t| camel(t) == camel_name)
        .unwrap_or_else(|| camel_name.to_string())
}

fn safetensors_bytes(state: &[Tensor], g: &Graph, version: &str) -> Result<Vec<u8>, ExportError> {
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = state
        .iter()
        .map(|t| match &t.data {
            Data::F32(v) => (
                t.key.clone(),
                safetensors::Dtype::F32,
                t.shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Data::I64Zero => (
                t.key.clone(),
                safetensors::Dtype::I64,
                vec![],
                0i64.to_le_bytes().to_vec(),
            ),
        })
        .collect();
    let meta: HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        ("model".to_string(), g.model.clone()),
        ("se_compile_version".to_string(), version.to_string()),
    ]
    .into_iter()
    .collect();
    crate::train::checkpoint::serialize(&owned, meta).map_err(ExportError::Read)
}
