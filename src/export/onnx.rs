//! ONNX export: the validated graph as one ONNX model (opset 17), weights as initializers named
//! like the Keras weights (`conv2d_3/kernel`), node names = the summary's layer names.
//!
//! The graph input is NHWC, as the spec and Keras (`--input-layout nchw` makes it NCHW). ONNX's
//! image ops are NCHW, so every value carries its layout: an image stays NCHW from the first
//! convolution on, and a `Transpose` is inserted only where a layer needs the spec's own order
//! (a Dense layer on an image, Flatten, Reshape, the graph output). Inference semantics:
//! BatchNorm with the moving statistics and the spec's epsilon, dropout as identity, Keras'
//! average-pool divisor (padding excluded), max pools padded with -inf.

use super::{ends_in_softmax, hwio_to_oihw, in_channels, ExportError, Weights};
use crate::ir::ops::{ActFn, MergeKind, Op, PoolKind};
use crate::ir::NodeId;
use crate::source::SourceFile;
use crate::validate::ValidGraph;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17 (ONNX 1.12+).
pub const IR_VERSION: i64 = 8;
/// protobuf's limit for one message.
const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The spec's own order: batch, then the node's shape (`N, H, W, C` for an image).
    Spec,
    /// `N, C, H, W` (images only).
    Nchw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    Fixed(usize),
    Dynamic,
}

pub struct Options {
    pub batch: Batch,
    pub input_layout: Layout,
}

/// A value of the ONNX graph: its name, its rank with the batch axis, its layout.
#[derive(Clone, Debug)]
struct Val {
    name: String,
    rank: usize,
    layout: Layout,
}

impl Val {
    fn nchw(name: &str) -> Val {
        Val {
            name: name.into(),
            rank: 4,
            layout: Layout::Nchw,
        }
    }
    fn spec(name: &str, rank: usize) -> Val {
        Val {
            name: name.into(),
            rank,
            layout: Layout::Spec,
        }
    }
}

struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Values converted once already: (value, wanted layout) → converted value.
    converted: std::collections::HashMap<(String, bool), Val>,
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}
fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}
fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}
fn attr_str(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::FLOAT as i32;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}
fn tensor_i64(name: &str, data: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::INT64 as i32;
    t.dims = vec![data.len() as i64];
    t.raw_data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    t
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        match d {
            Some(v) => dim.set_dim_value(*v as i64),
            None => dim.set_dim_param("batch".into()),
        }
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = DataType::FLOAT as i32;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

impl Builder {
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<AttributeProto>,
    ) {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = name.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n.attribute = attrs;
        self.nodes.push(n);
    }
    fn init(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(tensor_f32(name, dims, data));
        name.into()
    }
    fn init_i64(&mut self, name: &str, data: &[i64]) -> String {
        self.inits.push(tensor_i64(name, data));
        name.into()
    }

    /// `v` in `want` layout; a rank-4 value changes layout with one Transpose, made once.
    fn to(&mut self, v: &Val, want: Layout) -> Val {
        if v.rank != 4 {
            return Val {
                layout: Layout::Spec,
                ..v.clone()
            };
        }
        if v.layout == want {
            return v.clone();
        }
        let key = (v.name.clone(), want == Layout::Nchw);
        if let Some(c) = self.converted.get(&key) {
            return c.clone();
        }
        let (perm, suffix): (&[i64], &str) = match want {
            Layout::Nchw => (&[0, 3, 1, 2], "to_nchw"),
            Layout::Spec => (&[0, 2, 3, 1], "to_nhwc"),
        };
        let out = format!("{}/{suffix}", v.name);
        self.node(
            "Transpose",
            &out,
            &[&v.name],
            &out,
            vec![attr_ints("perm", perm)],
        );
        let c = Val {
            name: out,
            rank: 4,
            layout: want,
        };
        self.converted.insert(key, c.clone());
        c
    }

    /// Elementwise activation `f` on `x`, written to `out`; the channel axis for softmax.
    fn activation(&mut self, f: ActFn, x: &Val, name: &str, out: &str) {
        let xn = x.name.as_str();
        match f {
            ActFn::Linear => self.node("Identity", name, &[xn], out, vec![]),
            ActFn::Relu => self.node("Relu", name, &[xn], out, vec![]),
            ActFn::Relu6 => {
                let lo = self.init(&format!("{name}/min"), &[], &[0.0]);
                let hi = self.init(&format!("{name}/max"), &[], &[6.0]);
                self.node("Clip", name, &[xn, &lo, &hi], out, vec![])
            }
            ActFn::Sigmoid => self.node("Sigmoid", name, &[xn], out, vec![]),
            // se-compile's (and Keras 2's) hard sigmoid: clip(0.2 x + 0.5, 0, 1).
            ActFn::HardSigmoid => self.node(
                "HardSigmoid",
                name,
                &[xn],
                out,
                vec![attr_float("alpha", 0.2), attr_float("beta", 0.5)],
            ),
            ActFn::Tanh => self.node("Tanh", name, &[xn], out, vec![]),
            ActFn::Elu => self.node("Elu", name, &[xn], out, vec![attr_float("alpha", 1.0)]),
            ActFn::Swish => {
                let s = format!("{name}/sigmoid");
                self.node("Sigmoid", &s, &[xn], &s, vec![]);
                self.node("Mul", name, &[xn, &s], out, vec![])
            }
            ActFn::Gelu => {
                // The tanh approximation the CPU network uses (opset 17 has no Gelu):
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
                let p = |s: &str| format!("{name}/{s}");
                let c3 = self.init(&p("three"), &[], &[3.0]);
                let ca = self.init(&p("a"), &[], &[0.044715]);
                let ck = self.init(&p("k"), &[], &[0.797_884_6]);
                let one = self.init(&p("one"), &[], &[1.0]);
                let half = self.init(&p("half"), &[], &[0.5]);
                self.node("Pow", &p("cube"), &[xn, &c3], &p("cube"), vec![]);
                self.node("Mul", &p("acube"), &[&p("cube"), &ca], &p("acube"), vec![]);
                self.node("Add", &p("inner"), &[xn, &p("acube")], &p("inner"), vec![]);
                self.node(
                    "Mul",
                    &p("scaled"),
                    &[&p("inner"), &ck],
                    &p("scaled"),
                    vec![],
                );
                self.node("Tanh", &p("tanh"), &[&p("scaled")], &p("tanh"), vec![]);
                self.node("Add", &p("onep"), &[&p("tanh"), &one], &p("onep"), vec![]);
                self.node("Mul", &p("xh"), &[xn, &half], &p("xh"), vec![]);
                self.node("Mul", name, &[&p("xh"), &p("onep")], out, vec![])
            }
            ActFn::Mish => {
                // Opset 17 has no Mish: x · tanh(softplus(x)).
                let p = |s: &str| format!("{name}/{s}");
                self.node("Softplus", &p("softplus"), &[xn], &p("softplus"), vec![]);
                self.node("Tanh", &p("tanh"), &[&p("softplus")], &p("tanh"), vec![]);
                self.node("Mul", name, &[xn, &p("tanh")], out, vec![])
            }
            ActFn::Softmax => {
                let axis = if x.layout == Layout::Nchw { 1 } else { -1 };
                self.node("Softmax", name, &[xn], out, vec![attr_int("axis", axis)])
            }
        }
    }
}

/// The ONNX model of `vg` with the parameters `w`.
pub fn export(
    vg: &ValidGraph,
    src: &SourceFile,
    w: &Weights,
    opts: &Options,
) -> Result<ModelProto, ExportError> {
    let g = vg.graph();
    let mut b = Builder {
        nodes: vec![],
        inits: vec![],
        converted: Default::default(),
    };
    let batch_dim = match opts.batch {
        Batch::Fixed(n) => Some(n),
        Batch::Dynamic => None,
    };
    let mut vals: Vec<Option<Val>> = vec![None; g.nodes.len()];
    let in_shape = g.input_shape();
    let mut in_dims: Vec<Option<usize>> = vec![batch_dim];
    if opts.input_layout == Layout::Nchw && in_shape.len() == 3 {
        in_dims.extend([in_shape[2], in_shape[0], in_shape[1]].map(Some));
    } else {
        in_dims.extend(in_shape.iter().map(|&d| Some(d)));
    }
    let input_name = "input".to_string();
    vals[0] = Some(Val {
        name: input_name.clone(),
        rank: in_shape.len() + 1,
        layout: if in_shape.len() == 3 {
            opts.input_layout
        } else {
            Layout::Spec
        },
    });

    for id in g.ids().skip(1) {
        let node = g.node(id);
        let name = node.name.clone();
        let ins: Vec<Val> = node
            .inputs
            .iter()
            .map(|i| vals[i.index()].clone().expect("topological order"))
            .collect();
        let out_rank = node.shape.len() + 1;
        let cin = in_channels(g, id);
        let x = &ins[0];
        let val = match &node.op {
            Op::Input(_) => unreachable!("the input is node 0"),
            Op::Conv2d(c) => {
                let xi = g.node(node.inputs[0]).shape.clone();
                let x = b.to(x, Layout::Nchw);
                let [[t, bo], [l, r]] = c.pads([xi[0], xi[1]]);
                let cig = cin / c.groups;
                let k = hwio_to_oihw(
                    w.get(&name, "kernel"),
                    c.kernel[0],
                    c.kernel[1],
                    cig,
                    c.filters,
                );
                let wk = b.init(
                    &format!("{name}/kernel"),
                    &[c.filters, cig, c.kernel[0], c.kernel[1]],
                    &k,
                );
                let mut inputs = vec![x.name.clone(), wk];
                if c.use_bias {
                    inputs.push(b.init(
                        &format!("{name}/bias"),
                        &[c.filters],
                        w.get(&name, "bias"),
                    ));
                }
                let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
                b.node(
                    "Conv",
                    &name,
                    &refs,
                    &name,
                    vec![
                        attr_ints("kernel_shape", &[c.kernel[0] as i64, c.kernel[1] as i64]),
                        attr_ints("strides", &[c.stride[0] as i64, c.stride[1] as i64]),
                        attr_ints("dilations", &[c.dilation[0] as i64, c.dilation[1] as i64]),
                        attr_ints("pads", &[t as i64, l as i64, bo as i64, r as i64]),
                        attr_int("group", c.groups as i64),
                    ],
                );
                Val::nchw(&name)
            }
            Op::BatchNorm(bn) => {
                let c = cin;
                let gamma = w
                    .try_get(&name, "gamma")
                    .map(|v| v.to_vec())
                    .unwrap_or_else(|| vec![1.0; c]);
                let beta = w
                    .try_get(&name, "beta")
                    .map(|v| v.to_vec())
                    .unwrap_or_else(|| vec![0.0; c]);
                let sc = b.init(&format!("{name}/gamma"), &[c], &gamma);
                let sh = b.init(&format!("{name}/beta"), &[c], &beta);
                let mm = b.init(
                    &format!("{name}/moving_mean"),
                    &[c],
                    w.get(&name, "moving_mean"),
                );
                let mv = b.init(
                    &format!("{name}/moving_variance"),
                    &[c],
                    w.get(&name, "moving_variance"),
                );
                let attrs = || vec![attr_float("epsilon", bn.epsilon as f32)];
                if x.rank == 4 || x.rank == 2 {
                    // Channels on axis 1: an image made NCHW, or a (N, C) vector as it is.
                    let (x, out) = if x.rank == 4 {
                        (b.to(x, Layout::Nchw), Val::nchw(&name))
                    } else {
                        (x.clone(), Val::spec(&name, 2))
                    };
                    b.node(
                        "BatchNormalization",
                        &name,
                        &[&x.name, &sc, &sh, &mm, &mv],
                        &name,
                        attrs(),
                    );
                    out
                } else {
                    // (N, d1.., C): channels to axis 1 for BatchNormalization, and back.
                    let r = x.rank as i64;
                    let fwd: Vec<i64> = [0, r - 1].into_iter().chain(1..r - 1).collect();
                    let back: Vec<i64> = [0].into_iter().chain(2..r).chain([1]).collect();
                    let a = format!("{name}/channels_first");
                    b.node(
                        "Transpose",
                        &a,
                        &[&x.name],
                        &a,
                        vec![attr_ints("perm", &fwd)],
                    );
                    let m = format!("{name}/normalized");
                    b.node(
                        "BatchNormalization",
                        &m,
                        &[&a, &sc, &sh, &mm, &mv],
                        &m,
                        attrs(),
                    );
                    b.node(
                        "Transpose",
                        &name,
                        &[&m],
                        &name,
                        vec![attr_ints("perm", &back)],
                    );
                    Val {
                        name: name.clone(),
                        rank: x.rank,
                        layout: Layout::Spec,
                    }
                }
            }
            Op::Activation(a) => {
                b.activation(a.function, x, &name, &name);
                Val {
                    name: name.clone(),
                    ..x.clone()
                }
            }
            Op::ZeroPadding2d(z) => {
                let x = b.to(x, Layout::Nchw);
                let [[t, bo], [l, r]] = z.padding;
                let pads = b.init_i64(
                    &format!("{name}/pads"),
                    &[0, 0, t as i64, l as i64, 0, 0, bo as i64, r as i64],
                );
                b.node(
                    "Pad",
                    &name,
                    &[&x.name, &pads],
                    &name,
                    vec![attr_str("mode", "constant")],
                );
                Val::nchw(&name)
            }
            Op::Pool2d(p) => {
                let xi = g.node(node.inputs[0]).shape.clone();
                let x = b.to(x, Layout::Nchw);
                let [[t, bo], [l, r]] = p.pads([xi[0], xi[1]]);
                let mut attrs = vec![
                    attr_ints("kernel_shape", &[p.size[0] as i64, p.size[1] as i64]),
                    attr_ints("strides", &[p.stride[0] as i64, p.stride[1] as i64]),
                    attr_ints("pads", &[t as i64, l as i64, bo as i64, r as i64]),
                ];
                let op = match p.kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Avg => {
                        // Keras divides by the taps inside the image.
                        attrs.push(attr_int("count_include_pad", 0));
                        "AveragePool"
                    }
                };
                b.node(op, &name, &[&x.name], &name, attrs);
                Val::nchw(&name)
            }
            Op::GlobalPool(p) => {
                let x = b.to(x, Layout::Nchw);
                let op = match p.kind {
                    PoolKind::Max => "GlobalMaxPool",
                    PoolKind::Avg => "GlobalAveragePool",
                };
                if p.keepdims {
                    b.node(op, &name, &[&x.name], &name, vec![]);
                    Val::nchw(&name)
                } else {
                    let pooled = format!("{name}/pooled");
                    b.node(op, &pooled, &[&x.name], &pooled, vec![]);
                    b.node(
                        "Flatten",
                        &name,
                        &[&pooled],
                        &name,
                        vec![attr_int("axis", 1)],
                    );
                    Val::spec(&name, 2)
                }
            }
            Op::Dense(d) => {
                let x = b.to(x, Layout::Spec);
                let wk = b.init(
                    &format!("{name}/kernel"),
                    &[cin, d.units],
                    w.get(&name, "kernel"),
                );
                let bias = d
                    .use_bias
                    .then(|| b.init(&format!("{name}/bias"), &[d.units], w.get(&name, "bias")));
                let lin = if d.activation.is_some() {
                    format!("{name}/linear")
                } else {
                    name.clone()
                };
                if x.rank == 2 {
                    let mut inputs = vec![x.name.as_str(), wk.as_str()];
                    if let Some(bb) = &bias {
                        inputs.push(bb);
                    }
                    b.node("Gemm", &name, &inputs, &lin, vec![]);
                } else if let Some(bb) = &bias {
                    let mm = format!("{name}/matmul");
                    b.node("MatMul", &mm, &[&x.name, &wk], &mm, vec![]);
                    b.node("Add", &name, &[&mm, bb], &lin, vec![]);
                } else {
                    b.node("MatMul", &name, &[&x.name, &wk], &lin, vec![]);
                }
                let out = Val {
                    name: lin.clone(),
                    rank: x.rank,
                    layout: Layout::Spec,
                };
                if let Some(f) = d.activation {
                    b.activation(f, &out, &format!("{name}/{}", f.name()), &name);
                }
                Val {
                    name: name.clone(),
                    ..out
                }
            }
            Op::Dropout(_) => {
                b.node("Identity", &name, &[&x.name], &name, vec![]);
                Val {
                    name: name.clone(),
                    ..x.clone()
                }
            }
            Op::Flatten(_) => {
                let x = b.to(x, Layout::Spec);
                b.node(
                    "Flatten",
                    &name,
                    &[&x.name],
                    &name,
                    vec![attr_int("axis", 1)],
                );
                Val::spec(&name, 2)
            }
            Op::Reshape(_) => {
                let t = &node.shape;
                let x = b.to(x, Layout::Spec);
                // (C) → (1, 1, C), the SE gate's shape, is (C, 1, 1) in NCHW: same data.
                let direct = t.len() == 3 && t[0] == 1 && t[1] == 1 && x.rank == 2;
                let dims: Vec<i64> = if direct {
                    vec![0, t[2] as i64, 1, 1]
                } else {
                    std::iter::once(0)
                        .chain(t.iter().map(|&d| d as i64))
                        .collect()
                };
                let shape = b.init_i64(&format!("{name}/shape"), &dims);
                b.node("Reshape", &name, &[&x.name, &shape], &name, vec![]);
                Val {
                    name: name.clone(),
                    rank: out_rank,
                    layout: if direct { Layout::Nchw } else { Layout::Spec },
                }
            }
            Op::Merge(m) => {
                // Every input in one layout: NCHW if any image already is.
                let want = if ins.iter().any(|v| v.rank == 4 && v.layout == Layout::Nchw) {
                    Layout::Nchw
                } else {
                    Layout::Spec
                };
                let xs: Vec<Val> = ins.iter().map(|v| b.to(v, want)).collect();
                let names: Vec<&str> = xs.iter().map(|v| v.name.as_str()).collect();
                match m.kind {
                    MergeKind::Add if names.len() == 2 => {
                        b.node("Add", &name, &names, &name, vec![])
                    }
                    MergeKind::Add => b.node("Sum", &name, &names, &name, vec![]),
                    MergeKind::Multiply => {
                        let mut acc = names[0].to_string();
                        for (i, n) in names[1..].iter().enumerate() {
                            let out = if i + 2 == names.len() {
                                name.clone()
                            } else {
                                format!("{name}/{}", i + 1)
                            };
                            b.node("Mul", &out, &[&acc, n], &out, vec![]);
                            acc = out;
                        }
                    }
                    MergeKind::Concatenate => {
                        let axis = if want == Layout::Nchw && out_rank == 4 {
                            1
                        } else {
                            -1
                        };
                        b.node("Concat", &name, &names, &name, vec![attr_int("axis", axis)])
                    }
                }
                Val {
                    name: name.clone(),
                    rank: out_rank,
                    layout: if out_rank == 4 { want } else { Layout::Spec },
                }
            }
        };
        vals[id.index()] = Some(val);
    }

    // The output in the input's layout convention, under a stable name.
    let out_id: NodeId = g.output;
    let last = vals[out_id.index()].clone().expect("output computed");
    let want = if opts.input_layout == Layout::Nchw {
        Layout::Nchw
    } else {
        Layout::Spec
    };
    let last = b.to(&last, want);
    let output_name = if ends_in_softmax(g) {
        "probabilities"
    } else {
        "output"
    };
    b.node("Identity", output_name, &[&last.name], output_name, vec![]);
    let out_shape = &g.node(out_id).shape;
    let mut out_dims: Vec<Option<usize>> = vec![batch_dim];
    if last.layout == Layout::Nchw && out_shape.len() == 3 {
        out_dims.extend([out_shape[2], out_shape[0], out_shape[1]].map(Some));
    } else {
        out_dims.extend(out_shape.iter().map(|&d| Some(d)));
    }

    let mut graph = GraphProto::new();
    graph.name = g.model.clone();
    graph.node = b.nodes;
    graph.initializer = b.inits;
    graph.input = vec![value_info(&input_name, &in_dims)];
    graph.output = vec![value_info(output_name, &out_dims)];

    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    let mut opset = OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = OPSET;
    model.opset_import = vec![opset];
    model.producer_name = "se-compile".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string = format!(
        "{} exported by se-compile {} from {}; input {} in [0, 1] (pixels / 255)",
        g.model,
        env!("CARGO_PKG_VERSION"),
        src.name,
        if want == Layout::Nchw { "NCHW" } else { "NHWC" }
    );
    model.graph = Some(graph).into();
    let meta = |k: &str, v: &str| {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v.into();
        e
    };
    model.metadata_props = vec![
        meta("model", &g.model),
        meta("se_compile_version", env!("CARGO_PKG_VERSION")),
        meta("spec_file", &src.name),
        meta("spec", &src.text),
        meta(
            "input_layout",
            if want == Layout::Nchw { "NCHW" } else { "NHWC" },
        ),
    ];
    let size = model.compute_size();
    if size > PROTOBUF_LIMIT {
        return Err(ExportError::TooLarge {
            bytes: size,
            limit: PROTOBUF_LIMIT,
        });
    }
    Ok(model)
}

/// The serialized model.
pub fn to_bytes(m: &ModelProto) -> Vec<u8> {
    m.write_to_bytes()
        .expect("a model under the size limit serializes")
}
