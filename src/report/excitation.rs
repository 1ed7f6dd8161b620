//! The SE paper's Section 7 (Hu et al., *Squeeze-and-Excitation Networks*, Fig. 6 and 7) for
//! any network: where its SE blocks are, and what their gates do on a data set. The statistics
//! are gathered here from gate values that a caller computes (`se-compile analyze` runs the CPU
//! network with `Net::probe`); this module finds the blocks in the graph, accumulates the sums
//! in f64 and writes the CSV and JSON.

use crate::ir::ops::{MergeKind, Op};
use crate::ir::{Graph, NodeId};
use serde_json::{json, Value};

/// What is measured, in the words `--help`, the README and `excitations.json` use.
pub const EXCITATION: &str =
    "the excitation s_c of an SE block is its gate's output for channel c: \
the (1, 1, C) input of the block's Multiply (after the gate activation, e.g. the sigmoid), \
computed in inference mode (BatchNorm moving statistics, no dropout)";
pub const MEANS: &str = "m_c is the mean of s_c over all images of the split; m_kc the mean over \
the images of class k";
pub const SPECIFICITY: &str = "class specificity = sqrt(mean over the chosen classes k and the \
channels c of (m_kc - m_c)^2): the root-mean-square distance of the per-class mean excitations \
from the mean over all images, in excitation units; 0 means the block treats every class alike";
pub const CHANNEL_SPREAD: &str = "channel spread = the standard deviation over channels c of m_c \
(population, divided by C); 0 means the same mean excitation on every channel (a uniform gate)";

/// One SE block of a graph: a Multiply of a feature map (H, W, C) by a gate (1, 1, C) that is
/// computed from that feature map.
#[derive(Clone, Debug, PartialEq)]
pub struct SeBlock {
    /// The Multiply node's name.
    pub name: String,
    /// `stage2.block1` (the block instance), else the stage, else empty (top level).
    pub scope: String,
    pub multiply: NodeId,
    /// The (1, 1, C) input: the excitation.
    pub gate: NodeId,
    /// The (H, W, C) input: the feature map the gate scales.
    pub features: NodeId,
    pub channels: usize,
}

impl SeBlock {
    /// `stage2.block1 multiply_3`, or the name alone at the top level.
    pub fn label(&self) -> String {
        if self.scope.is_empty() {
            self.name.clone()
        } else {
            format!("{} {}", self.scope, self.name)
        }
    }

    /// `stage2.block1/multiply_3`: the block's name in TensorBoard tags (`excitation/...`),
    /// the same in both engines (train.py reads it from recipe.json's `se_blocks`).
    pub fn tag(&self) -> String {
        self.label().replace(' ', "/")
    }
}

/// Whether `from` reads `on`, directly or through other nodes (node ids are topological).
fn depends_on(g: &Graph, from: NodeId, on: NodeId) -> bool {
    let mut seen = vec![false; g.nodes.len()];
    let mut stack = vec![from];
    while let Some(id) = stack.pop() {
        if id == on {
            return true;
        }
        if id < on || std::mem::replace(&mut seen[id.index()], true) {
            continue;
        }
        stack.extend(g.node(id).inputs.iter().copied());
    }
    false
}

/// Every SE block of `g`, in graph order.
pub fn se_blocks(g: &Graph) -> Vec<SeBlock> {
    let mut out = vec![];
    for id in g.ids() {
        let node = g.node(id);
        let Op::Merge(m) = &node.op else { continue };
        if m.kind != MergeKind::Multiply || node.inputs.len() != 2 || node.shape.len() != 3 {
            continue;
        }
        let c = node.shape[2];
        let is_map = |i: NodeId| g.node(i).shape == node.shape;
        let is_gate = |i: NodeId| g.node(i).shape == [1, 1, c];
        let (a, b) = (node.inputs[0], node.inputs[1]);
        // The gate is the (1, 1, C) input computed from the other one; where the feature map is
        // 1 × 1 too, that dependence alone tells them apart.
        let pair = [(a, b), (b, a)]
            .into_iter()
            .find(|&(x, s)| is_map(x) && is_gate(s) && depends_on(g, s, x));
        if let Some((features, gate)) = pair {
            let scope = node
                .scope
                .block
                .as_ref()
                .or(node.scope.stage.as_ref())
                .map(|s| s.0.clone())
                .unwrap_or_default();
            out.push(SeBlock {
                name: node.name.clone(),
                scope,
                multiply: id,
                gate,
                features,
                channels: c,
            });
        }
    }
    out
}

/// Sums of the excitations per block, class and channel, over the images seen so far.
#[derive(Clone, Debug)]
pub struct Excitations {
    channels: Vec<usize>,
    /// Per block: class-major sums (class k's channel c at `k * C + c`).
    sums: Vec<Vec<f64>>,
    /// Images per class.
    counts: Vec<u64>,
}

impl Excitations {
    /// For blocks with these channel counts and `classes` classes.
    pub fn new(channels: Vec<usize>, classes: usize) -> Excitations {
        Excitations {
            sums: channels.iter().map(|&c| vec![0.0; c * classes]).collect(),
            channels,
            counts: vec![0; classes],
        }
    }

    /// One batch: `gates[b]` is block b's gate for the batch (N × C, image-major), `labels` the
    /// images' classes.
    pub fn add(&mut self, gates: &[Vec<f32>], labels: &[usize]) {
        assert_eq!(gates.len(), self.channels.len(), "one gate per block");
        for (b, g) in gates.iter().enumerate() {
            let c = self.channels[b];
            assert_eq!(g.len(), labels.len() * c, "block {b}: N × C gate values");
            for (row, &k) in g.chunks(c).zip(labels) {
                let sums = &mut self.sums[b][k * c..(k + 1) * c];
                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
            }
        }
        for &k in labels {
            self.counts[k] += 1;
        }
    }

    /// Images seen, in all classes.
    pub fn images(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Images seen of class `k`.
    pub fn class_images(&self, k: usize) -> u64 {
        self.counts[k]
    }

    /// m_c of block `b`: the mean over all images.
    pub fn overall(&self, b: usize) -> Vec<f64> {
        let c = self.channels[b];
        let n = self.images() as f64;
        (0..c)
            .map(|j| {
                (0..self.counts.len())
                    .map(|k| self.sums[b][k * c + j])
                    .sum::<f64>()
                    / n
            })
            .collect()
    }

    /// m_kc of block `b` for class `k`.
    pub fn class_mean(&self, b: usize, k: usize) -> Vec<f64> {
        let c = self.channels[b];
        let n = self.counts[k] as f64;
        self.sums[b][k * c..(k + 1) * c]
            .iter()
            .map(|s| s / n)
            .collect()
    }
}

/// See [`SPECIFICITY`]; 0 without classes.
pub fn specificity(overall: &[f64], per_class: &[Vec<f64>]) -> f64 {
    let n = per_class.len() * overall.len();
    if n == 0 {
        return 0.0;
    }
    let ss: f64 = per_class
        .iter()
        .flat_map(|m| m.iter().zip(overall).map(|(a, b)| (a - b) * (a - b)))
        .sum();
    (ss / n as f64).sqrt()
}

/// See [`CHANNEL_SPREAD`].
pub fn channel_spread(m: &[f64]) -> f64 {
    if m.is_empty() {
        return 0.0;
    }
    let n = m.len() as f64;
    let mean = m.iter().sum::<f64>() / n;
    (m.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
}

/// One block's figures for the chosen classes.
#[derive(Clone, Debug)]
pub struct BlockStats {
    pub overall: Vec<f64>,
    /// In the order of the chosen classes.
    pub per_class: Vec<Vec<f64>>,
    pub specificity: f64,
    pub channel_spread: f64,
}

/// Everything `analyze` writes, for the chosen classes (indices into `class_names`).
pub struct Analysis<'a> {
    pub model: &'a str,
    pub spec: &'a str,
    pub weights: &'a str,
    pub data: &'a str,
    /// `test`, or `train` for a data folder without one.
    pub split: &'a str,
    pub class_names: &'a [String],
    pub chosen: &'a [usize],
    pub blocks: &'a [SeBlock],
    pub ex: &'a Excitations,
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl Analysis<'_> {
    pub fn stats(&self) -> Vec<BlockStats> {
        (0..self.blocks.len())
            .map(|b| {
                let overall = self.ex.overall(b);
                let per_class: Vec<Vec<f64>> = self
                    .chosen
                    .iter()
                    .map(|&k| self.ex.class_mean(b, k))
                    .collect();
                BlockStats {
                    specificity: specificity(&overall, &per_class),
                    channel_spread: channel_spread(&overall),
                    overall,
                    per_class,
                }
            })
            .collect()
    }

    /// `excitations.csv`: `block,scope,class,channel,mean,images`, one row per block, class
    /// (`all`, then the chosen classes) and channel.
    pub fn csv(&self, stats: &[BlockStats]) -> String {
        let mut out = String::from("block,scope,class,channel,mean,images\n");
        for (blk, st) in self.blocks.iter().zip(stats) {
            let rows = std::iter::once(("all", &st.overall, self.ex.images())).chain(
                self.chosen
                    .iter()
                    .zip(&st.per_class)
                    .map(|(&k, m)| (self.class_names[k].as_str(), m, self.ex.class_images(k))),
            );
            for (class, means, n) in rows {
                for (c, m) in means.iter().enumerate() {
                    out.push_str(&format!(
                        "{},{},{},{c},{m},{n}\n",
                        csv_field(&blk.name),
                        csv_field(&blk.scope),
                        csv_field(class)
                    ));
                }
            }
        }
        out
    }

    /// `excitations.json`, naming the PNG files that go with it.
    pub fn json(&self, stats: &[BlockStats], plots: &[String]) -> Value {
        let blocks: Vec<Value> = self
            .blocks
            .iter()
            .zip(stats)
            .map(|(blk, st)| {
                json!({
                    "name": blk.name,
                    "scope": blk.scope,
                    "label": blk.label(),
                    "channels": blk.channels,
                    "images": self.ex.images(),
                    "specificity": st.specificity,
                    "channel_spread": st.channel_spread,
                    "overall": st.overall,
                    "per_class": self.chosen.iter().zip(&st.per_class).map(|(&k, m)| json!({
                        "class": self.class_names[k],
                        "images": self.ex.class_images(k),
                        "mean": m,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "model": self.model,
            "spec": self.spec,
            "weights": self.weights,
            "data": self.data,
            "split": self.split,
            "images": self.ex.images(),
            "classes": self.chosen.iter().map(|&k| json!({
                "name": self.class_names[k],
                "index": k,
                "images": self.ex.class_images(k),
            })).collect::<Vec<_>>(),
            "definitions": {
                "excitation": EXCITATION,
                "means": MEANS,
                "specificity": SPECIFICITY,
                "channel_spread": CHANNEL_SPREAD,
            },
            "plots": plots,
            "blocks": blocks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_and_figures_by_hand() {
        // One block of 2 channels, 2 classes: class 0 sees (0.2, 0.8) and (0.4, 0.6), class 1
        // sees (0.9, 0.1), over two batches.
        let mut ex = Excitations::new(vec![2], 2);
        ex.add(&[vec![0.2, 0.8, 0.9, 0.1]], &[0, 1]);
        ex.add(&[vec![0.4, 0.6]], &[0]);
        assert_eq!(ex.images(), 3);
        assert_eq!((ex.class_images(0), ex.class_images(1)), (2, 1));
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        let m = ex.overall(0);
        assert!(close(&m, &[0.5, 0.5]), "{m:?}");
        assert!(close(&ex.class_mean(0, 0), &[0.3, 0.7]));
        assert!(close(&ex.class_mean(0, 1), &[0.9, 0.1]));
        let per = vec![ex.class_mean(0, 0), ex.class_mean(0, 1)];
        // Deviations: ±0.2 for class 0, ±0.4 for class 1: sqrt((2·0.04 + 2·0.16) / 4).
        assert!((specificity(&m, &per) - 0.1f64.sqrt()).abs() < 1e-6);
        assert!(channel_spread(&m) < 1e-6, "both channels average 0.5");
        assert!((channel_spread(&[0.1, 0.5]) - 0.2).abs() < 1e-12);
        assert_eq!(specificity(&m, &[]), 0.0);
    }

    #[test]
    fn csv_quotes_odd_class_names() {
        assert_eq!(csv_field("7_sneaker"), "7_sneaker");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
