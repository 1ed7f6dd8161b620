//! BatchNorm folding for inference: a BatchNorm in inference mode is a per-channel affine map,
//! y = s (x − mean) + beta with s = gamma / sqrt(var + eps), so after a convolution it can be
//! moved into the convolution's kernel and bias: W' = W s (per output channel), b' = s (b −
//! mean) + beta. The folded network runs one pass less over every BN's output. It is for
//! inference only (eval, predict, bench's inference half): training needs the batch statistics,
//! so the training network is never folded.

use super::autodiff::Param;
use super::layers::{Layer, Net};
use super::plan::Plan;
use std::sync::Arc;

impl Net {
    /// A copy for inference with every BatchNorm folded into the convolution before it, where
    /// that convolution's output is read by the BatchNorm alone. Returns the copy and the
    /// number of BatchNorms folded. The folded BatchNorm's node stays in the graph as an
    /// identity (`Layer::Reshape` with the same shape), so node indices and names are unchanged.
    pub fn folded_for_inference(&self) -> (Net, usize) {
        let mut net = self.clone_for_device();
        let plan = &self.plan;
        let g = &plan.graph;
        let readers = g.consumers();
        let mut layers = plan.layers.clone();
        let mut folded = 0;
        for id in g.ids() {
            let Layer::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
                ..
            } = layers[id.index()].clone()
            else {
                continue;
            };
            let src = g.node(id).inputs[0];
            let Layer::Conv { op, w, b } = layers[src.index()].clone() else {
                continue;
            };
            // The conv's raw output must not be read anywhere else, nor be the graph output.
            if readers[src.index()].len() != 1 || src == g.output {
                continue;
            }
            let cout = op.filters;
            let param = |i: usize| net.params[i].data();
            let (mean, var) = (param(mean), param(var));
            let gamma = gamma.map(param);
            let beta = beta.map(param);
            let scale: Vec<f32> = (0..cout)
                .map(|c| gamma.as_ref().map_or(1.0, |g| g[c]) / (var[c] + eps).sqrt())
                .collect();
            // HWIO: the output channel is the fastest axis.
            let kernel: Vec<f32> = param(w)
                .iter()
                .enumerate()
                .map(|(i, v)| v * scale[i % cout])
                .collect();
            let old_bias = b.map(param);
            let bias: Vec<f32> = (0..cout)
                .map(|c| {
                    let b0 = old_bias.as_ref().map_or(0.0, |b| b[c]);
                    scale[c] * (b0 - mean[c]) + beta.as_ref().map_or(0.0, |b| b[c])
                })
                .collect();
            let name = net.params[w].name.clone();
            net.params[w] = Param::new(&net.dev, name, kernel, false);
            let b = match b {
                Some(b) => {
                    let name = net.params[b].name.clone();
                    net.params[b] = Param::new(&net.dev, name, bias, false);
                    b
                }
                None => {
                    let name = format!("{}/bias", g.node(src).name);
                    net.params.push(Param::new(&net.dev, name, bias, false));
                    net.params.len() - 1
                }
            };
            let mut op = op;
            op.use_bias = true;
            layers[src.index()] = Layer::Conv { op, w, b: Some(b) };
            // Same shape in and out: the folded BatchNorm passes its input through.
            layers[id.index()] = Layer::Reshape;
            folded += 1;
        }
        net.plan = Arc::new(Plan::new(g.clone(), layers));
        (net, folded)
    }
}
