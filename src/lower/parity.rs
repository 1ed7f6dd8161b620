//! Device parity: every layer kind, run by the CPU network (the project's own kernels, the
//! reference checked against direct loops and finite differences in tests/numerics.rs) and by
//! another network on random inputs, compared on the loss, the class probabilities and every
//! parameter's gradient, in training and inference mode. `se-compile parity --device cuda`
//! runs it on the GPU; the tests run it on the kernel network with host loops and with the
//! CUDA kernels compiled as C (tests/device_parity.rs), the same wiring as the GPU's.

use super::layers::Net;
use super::model::{Batch, Model};
use crate::ir::ops::ActFn;
use crate::util::rng::Rng;

/// The written cases: (name, layers between a 1×1 conv `pre` and the flatten + dense head).
/// The conv in front carries gradients through each kind's backward into parameters. Every
/// activation gets a case of its own from the IR's list (`cases`), and a test checks that
/// every layer kind the IR knows appears in some case.
const WRITTEN: &[(&str, &str)] = &[
    ("conv2d 3x3 same", "- conv2d: {filters: 6, kernel: 3, padding: same}"),
    ("conv2d 3x3/2 valid, no bias", "- conv2d: {filters: 5, kernel: 3, stride: 2, use_bias: false}"),
    ("conv2d 5x5/2 same (asymmetric pad)", "- conv2d: {filters: 4, kernel: 5, stride: 2, padding: same}"),
    ("conv2d 3x3 dilation 2", "- conv2d: {filters: 4, kernel: 3, dilation: 2, padding: same}"),
    ("conv2d 3x3 groups 2", "- conv2d: {filters: 6, kernel: 3, groups: 2, padding: same}"),
    ("conv2d 1x1/2", "- conv2d: {filters: 8, kernel: 1, stride: 2}"),
    ("conv2d 1x1", "- conv2d: {filters: 8, kernel: 1}"),
    ("batch_norm", "- batch_norm"),
    ("zero_padding2d", "- zero_padding2d: [[1, 2], [0, 3]]"),
    ("max_pool2d 3x3/2 same", "- max_pool2d: {size: 3, stride: 2, padding: same}"),
    ("max_pool2d 2x2", "- max_pool2d: {size: 2}"),
    ("avg_pool2d 3x3/2 same", "- avg_pool2d: {size: 3, stride: 2, padding: same}"),
    ("global_avg_pool", "- global_avg_pool"),
    ("global_max_pool", "- global_max_pool: {keepdims: true}"),
    ("dense + relu", "- dense: {units: 7, activation: relu}"),
    ("dropout", "- dropout: 0.4"),
    ("reshape", "- reshape: [30, 4]"),
    ("add", "- conv2d: {filters: 4, kernel: 3, padding: same}\n    id: b\n  - add: {}\n    from: [pre, b]"),
    ("multiply (SE gate)", "- global_avg_pool: {keepdims: true}\n    id: g\n  - multiply: {}\n    from: [pre, g]"),
    ("multiply (elementwise)", "- sigmoid: {}\n    id: s\n  - multiply: {}\n    from: [pre, s, pre]"),
    ("concatenate", "- conv2d: {filters: 3, kernel: 1}\n    id: b\n  - concatenate: {}\n    from: [pre, b, pre]"),
    ("SE block, 1x1 convs", "- se: {r: 2, form: conv1x1}"),
    ("SE block, dense", "- se: {r: 2, form: dense}"),
    ("SE block, max squeeze, tanh gate", "- se: {r: 2, squeeze: max, gate: tanh}"),
    ("SE block, relu gate, timm divisor", "- se: {r: 2, gate: relu, divisor: 3}"),
    ("SE block, hard_sigmoid gate, 3 channels", "- se: {form: dense, gate: hard_sigmoid, channels: 3}"),
    ("conv2d 3x3 no bias + relu", "- conv2d: {filters: 5, kernel: 3, padding: same, use_bias: false}\n  - relu"),
    ("batch_norm + relu", "- batch_norm\n  - relu"),
    ("batch_norm + swish", "- batch_norm\n  - activation: swish"),
    ("add + relu", "- conv2d: {filters: 4, kernel: 3, padding: same, use_bias: false}\n    id: b\n  - add: {}\n    from: [pre, b]\n  - relu"),
    ("SE tail: BN, SE, add, relu", "- batch_norm\n  - se: {r: 2}\n    id: s\n  - add: {}\n    from: [pre, s]\n  - relu"),
];

/// Every case: the written ones, then one per activation of `ActFn::ALL` (in the shorthand
/// form where the activation is also a layer kind, e.g. `- relu`).
pub fn cases() -> Vec<(String, String)> {
    let written = WRITTEN.iter().map(|(n, l)| (n.to_string(), l.to_string()));
    let acts = ActFn::ALL.iter().filter(|f| **f != ActFn::Linear).map(|f| {
        let n = f.name();
        let layer = if crate::ir::ops::LAYER_KINDS.contains(&n) {
            format!("- {n}")
        } else {
            format!("- activation: {n}")
        };
        (n.to_string(), layer)
    });
    written.chain(acts).collect()
}

/// The spec text of one case: input 6×5×4, batch 3 in the check.
pub fn case_spec(layers: &str) -> String {
    format!(
        "model: parity\ninput: [6, 5, 4]\nlayers:\n  - conv2d: {{filters: 4, kernel: 1}}\n    id: pre\n  {layers}\n  - flatten\n  - dense: {{units: 5}}\n"
    )
}

pub struct Row {
    pub name: String,
    /// Largest difference of the probabilities in inference mode.
    pub infer_err: f32,
    /// Largest difference of the probabilities and the loss in training mode.
    pub train_err: f32,
    /// Largest gradient difference, relative to the largest gradient of that parameter (at
    /// least 1% of the network's largest gradient).
    pub grad_err: f32,
    pub params: usize,
}

impl Row {
    pub fn passes(&self, tol: f32) -> bool {
        self.infer_err <= tol && self.train_err <= tol && self.grad_err <= tol
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

fn flat(p: &[Vec<f32>]) -> Vec<f32> {
    p.iter().flatten().copied().collect()
}

/// Compares `other` (built from the same spec and seed) with the CPU network `reference`.
pub fn compare(name: &str, reference: &mut Net, other: &mut dyn Model, batch: usize) -> Row {
    let shape: Vec<usize> = std::iter::once(batch)
        .chain(reference.input_shape().iter().copied())
        .collect();
    let mut rng = Rng::new(42);
    let x: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| rng.normal())
        .collect();
    let classes = Model::classes(reference);
    let labels: Vec<usize> = (0..batch).map(|_| rng.below(classes)).collect();
    let b = || Batch {
        x: x.clone(),
        shape: shape.clone(),
        labels: &labels,
    };
    // Training mode first: it also moves the BN statistics the inference pass then uses.
    let (rt, gr) = reference.gradients(b(), 9);
    let (ot, go) = other.gradients(b(), 9);
    let train_err = max_diff(&flat(&rt.probs), &flat(&ot.probs)).max((rt.loss - ot.loss).abs());
    let mut grad_err = 0.0f32;
    // A parameter whose true gradient is zero (a conv bias before BatchNorm) has rounding noise
    // for a gradient: its scale is floored at 1% of the network's largest gradient.
    let largest = |g: &[f32]| g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let floor = gr.iter().map(|g| largest(g)).fold(0.0f32, f32::max) * 1e-2;
    for (a, o) in gr.iter().zip(&go) {
        let scale = largest(a).max(floor).max(f32::MIN_POSITIVE);
        grad_err = grad_err.max(max_diff(a, o) / scale);
    }
    if gr.len() != go.len() {
        grad_err = f32::INFINITY;
    }
    let ri = reference.infer(b());
    let oi = other.infer(b());
    let infer_err = max_diff(&flat(&ri.probs), &flat(&oi.probs)).max((ri.loss - oi.loss).abs());
    Row {
        name: name.to_string(),
        infer_err,
        train_err,
        grad_err,
        params: gr.iter().filter(|g| !g.is_empty()).count(),
    }
}

/// Runs every case; `make` builds the network to compare from the CPU one.
pub fn run_all(make: &mut dyn FnMut(&Net) -> Box<dyn Model>) -> Vec<Row> {
    cases()
        .iter()
        .map(|(name, layers)| {
            let spec = case_spec(layers);
            let src = crate::SourceFile::new("parity.yaml", &spec);
            let vg = crate::compile(&src).unwrap_or_else(|d| {
                panic!(
                    "parity case `{name}` does not compile:\n{}",
                    crate::diag::render(&d, &src, crate::diag::Style::Plain)
                )
            });
            let mut reference = Net::new(&vg, 3);
            let mut other = make(&reference);
            compare(name, &mut reference, other.as_mut(), 3)
        })
        .collect()
}

/// The table `se-compile parity` prints.
pub fn table(rows: &[Row], device: &str, tol: f32) -> String {
    let mut s = format!(
        "{:<36} {:>12} {:>12} {:>12} {:>7}  {}\n",
        "layer kind (cpu vs ".to_string() + device + ")",
        "infer err",
        "train err",
        "grad err",
        "grads",
        "result"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<36} {:>12.2e} {:>12.2e} {:>12.2e} {:>7}  {}\n",
            r.name,
            r.infer_err,
            r.train_err,
            r.grad_err,
            r.params,
            if r.passes(tol) { "ok" } else { "FAIL" }
        ));
    }
    let bad = rows.iter().filter(|r| !r.passes(tol)).count();
    s.push_str(&format!(
        "{} of {} layer kinds agree within {tol:e} (probabilities and loss; gradients relative to each parameter's largest, floored at 1% of the network's largest)\n",
        rows.len() - bad,
        rows.len()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::{case_spec, cases};
    use crate::ir::ops::{ActFn, LAYER_KINDS};

    /// The kinds a spec's text uses: `- kind` or `- kind: …` items.
    fn kinds_in(spec: &str) -> Vec<String> {
        spec.lines()
            .filter_map(|l| l.trim().strip_prefix("- "))
            .map(|item| item.split(':').next().unwrap_or("").trim().to_string())
            .collect()
    }

    #[test]
    fn every_layer_kind_and_activation_has_a_case() {
        let all = cases();
        let used: Vec<String> = all
            .iter()
            .flat_map(|(_, l)| kinds_in(&case_spec(l)))
            .collect();
        for k in LAYER_KINDS {
            assert!(
                used.iter().any(|u| u == k),
                "no parity case uses the layer kind `{k}`: add one to parity.rs's WRITTEN"
            );
        }
        for f in ActFn::ALL.iter().filter(|f| **f != ActFn::Linear) {
            assert!(all.iter().any(|(n, _)| n == f.name()), "{f:?}");
        }
        let mut names: Vec<&String> = all.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "case names are unique");
    }

    #[test]
    fn the_kind_check_sees_a_missing_kind() {
        assert!(!kinds_in(&case_spec("- relu")).contains(&"concatenate".to_string()));
        assert!(kinds_in(&case_spec("- concatenate: {}")).contains(&"concatenate".to_string()));
    }
}
