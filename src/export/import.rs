//! `import-weights`: a PyTorch state dict (safetensors) into a se-compile checkpoint.
//!
//! Mappings:
//! - `timm`: timm's ResNet family (`seresnet50`, `seresnext50_32x4d`, `resnet50`, ...):
//!   `conv1`/`bn1` for the stem, `layer{s}.{b}.conv{k}`/`bn{k}` for a block's branch,
//!   `layer{s}.{b}.downsample.0/1` for its projection shortcut, `layer{s}.{b}.se.fc1/fc2` for its
//!   SE convolutions, `fc` for the classifier. Kernels are converted from OIHW to HWIO and linear
//!   weights from `[out, in]` to `[in, out]`.
//! - `keras`: se-compile's own names and layouts (`conv2d_3/kernel`), e.g. a checkpoint
//!   written by another tool.
//!
//! Every tensor is checked by name and shape before anything is written.

use super::{in_channels, oihw_to_hwio, place, transpose2, ExportError};
use crate::ir::ops::{MergeKind, Op};
use crate::ir::{Graph, NodeId};
use crate::lower::plan::ParamInit;
use crate::source::SourceFile;
use crate::validate::ValidGraph;
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    Auto,
    Timm,
    Keras,
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Mapping::Auto => "auto",
            Mapping::Timm => "timm",
            Mapping::Keras => "keras",
        })
    }
}

/// How a file tensor becomes one of our parameters.
#[derive(Clone, Copy, Debug)]
enum Convert {
    Same,
    /// OIHW `[o, i, kh, kw]` → HWIO.
    Oihw {
        o: usize,
        i: usize,
        kh: usize,
        kw: usize,
    },
    /// `[out, in]` → `[in, out]`.
    Linear {
        out: usize,
        inp: usize,
    },
}

struct Entry {
    /// Our parameter's index in the network.
    param: usize,
    key: String,
    shape: Vec<usize>,
    convert: Convert,
    layer: NodeId,
}

pub struct Imported {
    /// Values for every parameter of the network, in its order.
    pub values: Vec<Vec<f32>>,
    pub count: usize,
    pub mapping: Mapping,
}

/// timm's key for each parameter-holding node of `g`, or why the graph is not of the family.
fn timm_names(g: &Graph) -> HashMap<NodeId, String> {
    let mut names = HashMap::new();
    let mut stem = (0, 0);
    let mut fc = 0;
    let mut i = 0;
    let nodes = &g.nodes;
    while i < nodes.len() {
        let id = NodeId(i as u32);
        let n = &nodes[i];
        let Some((block, _)) = &n.scope.block else {
            match &n.op {
                Op::Conv2d(_) => {
                    stem.0 += 1;
                    names.insert(
                        id,
                        if stem.0 == 1 {
                            "conv1".into()
                        } else {
                            format!("conv1_{}", stem.0)
                        },
                    );
                }
                Op::BatchNorm(_) => {
                    stem.1 += 1;
                    names.insert(
                        id,
                        if stem.1 == 1 {
                            "bn1".into()
                        } else {
                            format!("bn1_{}", stem.1)
                        },
                    );
                }
                Op::Dense(_) => {
                    fc += 1;
                    names.insert(
                        id,
                        if fc == 1 {
                            "fc".into()
                        } else {
                            format!("fc{fc}")
                        },
                    );
                }
                _ => {}
            }
            i += 1;
            continue;
        };
        // One block instance: `stageS.blockB` → `layerS.(B-1)`.
        let mut j = i;
        while j < nodes.len() && nodes[j].scope.block.as_ref().map(|b| &b.0) == Some(block) {
            j += 1;
        }
        let prefix = match block
            .strip_prefix("stage")
            .and_then(|r| r.split_once(".block"))
        {
            Some((s, b)) => format!("layer{s}.{}", b.parse::<usize>().unwrap_or(1) - 1),
            None => block.clone(),
        };
        let ids: Vec<NodeId> = (i..j).map(|k| NodeId(k as u32)).collect();
        // The shortcut: what the block's Add reads besides the branch, back to the block input.
        let mut shortcut: HashSet<NodeId> = HashSet::new();
        if let Some(add) = ids
            .iter()
            .rev()
            .find(|&&k| matches!(&g.node(k).op, Op::Merge(m) if m.kind == MergeKind::Add))
        {
            let ins = &g.node(*add).inputs;
            // The shortcut is the input whose chain of one-input layers reaches the block's
            // input (the shorter one if both do); the branch passes the SE multiply.
            let chain = |mut k: NodeId| -> Option<Vec<NodeId>> {
                let mut v = vec![];
                while k.index() >= i && k.index() < j {
                    if g.node(k).inputs.len() != 1 {
                        return None;
                    }
                    v.push(k);
                    k = g.node(k).inputs[0];
                }
                Some(v)
            };
            let short = ins.iter().filter_map(|&k| chain(k)).min_by_key(|v| v.len());
            if let Some(short) = short {
                shortcut.extend(short);
            }
        }
        let (mut conv, mut bn, mut se, mut ds, mut other) = (0, 0, 0, 0, 0);
        for &k in &ids {
            let node = g.node(k);
            let is_se = match &node.op {
                Op::Conv2d(_) | Op::Dense(_) => g
                    .node(node.inputs[0])
                    .shape
                    .iter()
                    .rev()
                    .skip(1)
                    .all(|&d| d == 1),
                _ => false,
            };
            let name = match &node.op {
                Op::Conv2d(_) | Op::Dense(_) if is_se => {
                    se += 1;
                    format!("{prefix}.se.fc{se}")
                }
                Op::Conv2d(_) | Op::BatchNorm(_) if shortcut.contains(&k) => {
                    ds += 1;
                    format!("{prefix}.downsample.{}", ds - 1)
                }
                Op::Conv2d(_) => {
                    conv += 1;
                    format!("{prefix}.conv{conv}")
                }
                Op::BatchNorm(_) => {
                    bn += 1;
                    format!("{prefix}.bn{bn}")
                }
                Op::Dense(_) => {
                    other += 1;
                    format!("{prefix}.fc{other}")
                }
                _ => continue,
            };
            names.insert(k, name);
        }
        i = j;
    }
    names
}

/// Every parameter of the network with its key, shape and conversion under `map`.
fn entries(g: &Graph, params: &[ParamInit], map: Mapping) -> Vec<Entry> {
    let by_name: HashMap<String, usize> = params
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.clone(), i))
        .collect();
    let timm = (map == Mapping::Timm).then(|| timm_names(g));
    let mut out = vec![];
    for id in g.ids() {
        let node = g.node(id);
        let n = &node.name;
        let cin = in_channels(g, id);
        let mut add = |what: &str, key: String, shape: Vec<usize>, convert: Convert| {
            if let Some(&param) = by_name.get(&format!("{n}/{what}")) {
                out.push(Entry {
                    param,
                    key,
                    shape,
                    convert,
                    layer: id,
                });
            }
        };
        let keras = |what: &str| format!("{n}/{what}");
        match (&node.op, &timm) {
            (Op::Conv2d(c), Some(t)) => {
                let base = &t[&id];
                let (o, i, kh, kw) = (c.filters, cin / c.groups, c.kernel[0], c.kernel[1]);
                add(
                    "kernel",
                    format!("{base}.weight"),
                    vec![o, i, kh, kw],
                    Convert::Oihw { o, i, kh, kw },
                );
                add("bias", format!("{base}.bias"), vec![o], Convert::Same);
            }
            (Op::Dense(d), Some(t)) => {
                let base = &t[&id];
                add(
                    "kernel",
                    format!("{base}.weight"),
                    vec![d.units, cin],
                    Convert::Linear {
                        out: d.units,
                        inp: cin,
                    },
                );
                add("bias", format!("{base}.bias"), vec![d.units], Convert::Same);
            }
            (Op::BatchNorm(_), Some(t)) => {
                let base = &t[&id];
                for (what, k) in [
                    ("gamma", "weight"),
                    ("beta", "bias"),
                    ("moving_mean", "running_mean"),
                    ("moving_variance", "running_var"),
                ] {
                    add(what, format!("{base}.{k}"), vec![cin], Convert::Same);
                }
            }
            (Op::Conv2d(c), None) => {
                add(
                    "kernel",
                    keras("kernel"),
                    vec![c.kernel[0], c.kernel[1], cin / c.groups, c.filters],
                    Convert::Same,
                );
                add("bias", keras("bias"), vec![c.filters], Convert::Same);
            }
            (Op::Dense(d), None) => {
                add("kernel", keras("kernel"), vec![cin, d.units], Convert::Same);
                add("bias", keras("bias"), vec![d.units], Convert::Same);
            }
            (Op::BatchNorm(_), None) => {
                for what in ["gamma", "beta", "moving_mean", "moving_variance"] {
                    add(what, keras(what), vec![cin], Convert::Same);
                }
            }
            _ => {}
        }
    }
    out
}

/// Reads `bytes` (a safetensors state dict) for the network of `vg`, whose parameters (names
/// and initial values, in order) are `params` (`plan::lower`).
pub fn import(
    vg: &ValidGraph,
    src: &SourceFile,
    params: &[ParamInit],
    bytes: &[u8],
    file: &str,
    map: Mapping,
) -> Result<Imported, ExportError> {
    let g = vg.graph();
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ExportError::Read(format!("{file}: not a safetensors file ({e:?}); save the state dict with safetensors.torch.save_file")))?;
    let names: Vec<String> = st.names().into_iter().cloned().collect();
    let map = match map {
        Mapping::Auto if names.iter().any(|n| n.contains('/')) => Mapping::Keras,
        Mapping::Auto => Mapping::Timm,
        m => m,
    };
    let entries = entries(g, params, map);
    let wanted: HashSet<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    // Every file tensor must feed a layer (BN's step counter is the one exception).
    let mut sorted = names.clone();
    sorted.sort();
    for n in &sorted {
        if !wanted.contains(n.as_str()) && !n.ends_with("num_batches_tracked") {
            return Err(ExportError::Unmatched {
                tensor: n.clone(),
                file: file.into(),
            });
        }
    }
    let mut values: Vec<Vec<f32>> = params.iter().map(|p| p.values.clone()).collect();
    for e in &entries {
        let layer = g.node(e.layer).name.clone();
        let at = place(g, e.layer, src);
        let t = st.tensor(&e.key).map_err(|_| ExportError::Missing {
            tensor: e.key.clone(),
            layer: layer.clone(),
            at: at.clone(),
            file: file.into(),
        })?;
        // se-compile's own checkpoints store every tensor flat.
        let flat = map == Mapping::Keras && t.shape() == [e.shape.iter().product::<usize>()];
        if t.shape() != e.shape.as_slice() && !flat {
            return Err(ExportError::Shape {
                tensor: e.key.clone(),
                found: t.shape().to_vec(),
                want: e.shape.clone(),
                layer,
                at,
            });
        }
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(ExportError::Read(format!(
                "{file}: tensor `{}` is {:?}; only float32 weights can be imported (convert with .float())",
                e.key,
                t.dtype()
            )));
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        values[e.param] = match e.convert {
            Convert::Same => v,
            Convert::Oihw { o, i, kh, kw } => oihw_to_hwio(&v, o, i, kh, kw),
            Convert::Linear { out, inp } => transpose2(&v, out, inp),
        };
    }
    // Every parameter of the network is covered by an entry.
    let covered: HashSet<usize> = entries.iter().map(|e| e.param).collect();
    if let Some((i, p)) = params
        .iter()
        .enumerate()
        .find(|(i, _)| !covered.contains(i))
    {
        return Err(ExportError::Read(format!(
            "parameter `{}` (#{i}) has no counterpart in the {map} mapping",
            p.name
        )));
    }
    Ok(Imported {
        values,
        count: entries.len(),
        mapping: map,
    })
}
