//! Every lowered layer kind, checked numerically on random inputs: forward outputs against
//! direct loops written here, gradients (input and every parameter) against central finite
//! differences, in training and inference mode. Covers stride 2, padding, groups, dilation and
//! odd sizes.

use dfdx::prelude::*;
use se_compile::lower::autodiff::Act;
use se_compile::lower::layers::Net;
use se_compile::util::rng::Rng;

fn build(spec: &str) -> Net {
    let src = se_compile::SourceFile::new("t.yaml", spec);
    let vg = se_compile::compile(&src).unwrap_or_else(|d| {
        panic!(
            "{}",
            se_compile::diag::render(&d, &src, se_compile::diag::Style::Plain)
        )
    });
    Net::new(&vg, 11)
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal()).collect()
}

fn batch_shape(net: &Net, n: usize) -> Vec<usize> {
    std::iter::once(n)
        .chain(net.input_shape().iter().copied())
        .collect()
}

/// Forward in inference mode (no tape): output and its shape.
fn forward(net: &mut Net, x: &[f32], n: usize, train: bool) -> (Vec<f32>, Vec<usize>) {
    net.reseed_dropout(5);
    let t: Tensor<(usize,), f32, Cpu> = net.dev.tensor_from_vec(x.to_vec(), (x.len(),));
    let a = Act {
        t,
        shape: batch_shape(net, n),
        needs_grad: true,
        key: 0,
        host: None,
    };
    let y = net.forward(a, train);
    (y.values(), y.shape)
}

/// loss = sum(y * r); returns d loss / d x and d loss / d each parameter.
fn grads(net: &mut Net, x: &[f32], n: usize, r: &[f32], train: bool) -> (Vec<f32>, Vec<Vec<f32>>) {
    net.reseed_dropout(5);
    let t: Tensor<(usize,), f32, Cpu> = net.dev.tensor_from_vec(x.to_vec(), (x.len(),));
    let a = Act {
        t: t.retaped::<OwnedTape<f32, Cpu>>(),
        shape: batch_shape(net, n),
        needs_grad: true,
        key: 0,
        host: None,
    };
    let y = net.forward(a, train);
    let rt: Tensor<(usize,), f32, Cpu> = net.dev.tensor_from_vec(r.to_vec(), (r.len(),));
    let loss = (y.into_tensor() * rt).sum();
    let mut g = loss.backward();
    let dx = g.get_or_alloc_mut(&t).unwrap().to_vec();
    let dp = net
        .params
        .iter()
        .filter(|p| p.trainable)
        .map(|p| g.get_or_alloc_mut(&p.t).unwrap().to_vec())
        .collect();
    (dx, dp)
}

fn loss_at(net: &mut Net, x: &[f32], n: usize, r: &[f32], train: bool) -> f64 {
    let (y, _) = forward(net, x, n, train);
    y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

fn is_close(fd: f64, an: f64) -> bool {
    (fd - an).abs() <= 2e-2 * (fd.abs() + an.abs()) + 3e-3
}

/// Central differences at step `eps`, and at `eps / 8` when the first misses: a ReLU or max
/// kink within `eps` of the point bends the wide difference, never the analytic gradient.
fn check_fd(what: &str, an: f64, eps: f32, f: &mut dyn FnMut(f32) -> f64) {
    let wide = (f(eps) - f(-eps)) / (2.0 * eps as f64);
    if is_close(wide, an) {
        return;
    }
    let e = eps / 8.0;
    let narrow = (f(e) - f(-e)) / (2.0 * e as f64);
    assert!(
        is_close(narrow, an),
        "{what}: finite difference {wide} (eps {eps}) / {narrow} (eps {e}) vs analytic {an}"
    );
}

/// Checks the input gradient and every trainable parameter's gradient at sampled coordinates.
fn check_grads(spec: &str, n: usize, train: bool) {
    let mut net = build(spec);
    let numel: usize = batch_shape(&net, n).iter().product();
    let x = randn(numel, 1);
    let (y, _) = forward(&mut net, &x, n, train);
    let r = randn(y.len(), 2);
    let (dx, dp) = grads(&mut net, &x, n, &r, train);
    let eps = 1e-2f32;
    let mut rng = Rng::new(3);
    for _ in 0..12 {
        let i = rng.below(numel);
        check_fd(
            &format!("{spec}\n d/dx[{i}]"),
            dx[i] as f64,
            eps,
            &mut |e| {
                let mut xp = x.clone();
                xp[i] += e;
                loss_at(&mut net, &xp, n, &r, train)
            },
        );
    }
    let trainable: Vec<usize> = (0..net.params.len())
        .filter(|&k| net.params[k].trainable)
        .collect();
    for (slot, &k) in trainable.iter().enumerate() {
        let base = net.params[k].data().to_vec();
        for _ in 0..6 {
            let i = rng.below(base.len());
            let name = net.params[k].name.clone();
            check_fd(
                &format!("{spec}\n d/d{name}[{i}]"),
                dp[slot][i] as f64,
                eps,
                &mut |e| {
                    let mut v = base.clone();
                    v[i] += e;
                    net.params[k].set(v);
                    let l = loss_at(&mut net, &x, n, &r, train);
                    net.params[k].set(base.clone());
                    l
                },
            );
        }
    }
}

fn param(net: &Net, name: &str) -> Vec<f32> {
    net.params
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .data()
        .to_vec()
}

/// Direct-loop convolution, NHWC, Keras weight layout [kh, kw, cin/groups, cout].
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f32],
    [n, h, w, c]: [usize; 4],
    k: &[f32],
    b: Option<&[f32]>,
    [kh, kw]: [usize; 2],
    [sh, sw]: [usize; 2],
    [dh, dw]: [usize; 2],
    [pt, pl]: [usize; 2],
    [ho, wo]: [usize; 2],
    cout: usize,
    groups: usize,
) -> Vec<f32> {
    let (cig, cog) = (c / groups, cout / groups);
    let mut y = vec![0.0f32; n * ho * wo * cout];
    for bn in 0..n {
        for oy in 0..ho {
            for ox in 0..wo {
                for o in 0..cout {
                    let g = o / cog;
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * sh + ky * dh) as isize - pt as isize;
                            let ix = (ox * sw + kx * dw) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            for ci in 0..cig {
                                let xv = x
                                    [((bn * h + iy as usize) * w + ix as usize) * c + g * cig + ci];
                                acc += xv * k[((ky * kw + kx) * cig + ci) * cout + o];
                            }
                        }
                    }
                    y[((bn * ho + oy) * wo + ox) * cout + o] = acc;
                }
            }
        }
    }
    y
}

fn assert_all_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

/// (conv args, input HWC, kernel, stride, dilation, (top, left) pad, filters, groups, bias)
type ConvCase = (
    &'static str,
    [usize; 3],
    [usize; 2],
    [usize; 2],
    [usize; 2],
    [usize; 2],
    usize,
    usize,
    bool,
);

const CONVS: &[ConvCase] = &[
    ("{filters: 4, kernel: 3, stride: 2, padding: same}", [7, 9, 3], [3, 3], [2, 2], [1, 1], [1, 1], 4, 1, true),
    ("{filters: 6, kernel: 3, stride: [1, 2], dilation: 2, groups: 2, padding: [[1, 2], [0, 1]], use_bias: false}", [8, 7, 4], [3, 3], [1, 2], [2, 2], [1, 0], 6, 2, false),
    ("{filters: 5, kernel: 1, use_bias: false}", [5, 6, 3], [1, 1], [1, 1], [1, 1], [0, 0], 5, 1, false),
    ("{filters: 4, kernel: 1, stride: 2}", [5, 5, 6], [1, 1], [2, 2], [1, 1], [0, 0], 4, 1, true),
    ("{filters: 3, kernel: [2, 3], padding: valid, groups: 3}", [6, 5, 3], [2, 3], [1, 1], [1, 1], [0, 0], 3, 3, true),
    ("{filters: 8, kernel: 7, stride: 2, padding: 3}", [11, 11, 3], [7, 7], [2, 2], [1, 1], [3, 3], 8, 1, true),
    // Shapes Winograd fits but, with this few tiles, leaves to im2col.
    ("{filters: 8, kernel: 3, padding: same}", [7, 6, 8], [3, 3], [1, 1], [1, 1], [1, 1], 8, 1, true),
    ("{filters: 9, kernel: 3, padding: valid, use_bias: false}", [6, 7, 10], [3, 3], [1, 1], [1, 1], [0, 0], 9, 1, false),
];

/// Convolutions large enough to run in row blocks (rows x filters >= 2^20 at batch 2,
/// `kernels::conv_blocked`): direct 1x1 and im2col; and a 3x3 with enough tiles (1,104) for
/// Winograd (`winograd::applies`).
const BIG_CONVS: &[ConvCase] = &[
    (
        "{filters: 128, kernel: 1}",
        [64, 64, 8],
        [1, 1],
        [1, 1],
        [1, 1],
        [0, 0],
        128,
        1,
        true,
    ),
    (
        "{filters: 128, kernel: 3, stride: 2, padding: same, use_bias: false}",
        [127, 128, 3],
        [3, 3],
        [2, 2],
        [1, 1],
        [1, 0],
        128,
        1,
        false,
    ),
    (
        "{filters: 8, kernel: 3, padding: same}",
        [45, 47, 8],
        [3, 3],
        [1, 1],
        [1, 1],
        [1, 1],
        8,
        1,
        true,
    ),
];

#[test]
fn conv2d_forward_matches_direct_loops() {
    for &(args, [h, w, c], k, s, d, p, f, g, bias) in CONVS.iter().chain(BIG_CONVS) {
        let spec = format!("model: t\ninput: [{h}, {w}, {c}]\nlayers:\n  - conv2d: {args}\n");
        let mut net = build(&spec);
        let n = 2;
        let x = randn(n * h * w * c, 9);
        let (y, shape) = forward(&mut net, &x, n, true);
        let kern = param(&net, "conv2d/kernel");
        let b = bias.then(|| param(&net, "conv2d/bias"));
        let want = conv_ref(
            &x,
            [n, h, w, c],
            &kern,
            b.as_deref(),
            k,
            s,
            d,
            p,
            [shape[1], shape[2]],
            f,
            g,
        );
        assert_all_close(args, &y, &want);
    }
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    // The big cases take the row-blocked kernel gradient (and Winograd's with many tiles).
    for &(args, [h, w, c], ..) in CONVS.iter().chain(BIG_CONVS) {
        check_grads(
            &format!("model: t\ninput: [{h}, {w}, {c}]\nlayers:\n  - conv2d: {args}\n"),
            2,
            true,
        );
    }
}

#[test]
fn batch_norm_train_and_eval() {
    let spec =
        "model: t\ninput: [3, 5, 4]\nlayers:\n  - batch_norm: {epsilon: 0.001, momentum: 0.5}\n";
    let mut net = build(spec);
    let n = 3;
    let x: Vec<f32> = randn(n * 60, 4).iter().map(|v| v * 2.0 + 1.0).collect();
    let (y, _) = forward(&mut net, &x, n, true);
    // Training: each channel normalised with the batch statistics.
    for ch in 0..4 {
        let col: Vec<f64> = x.iter().skip(ch).step_by(4).map(|v| *v as f64).collect();
        let m = col.iter().sum::<f64>() / col.len() as f64;
        let var = col.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / col.len() as f64;
        for (i, v) in col.iter().enumerate() {
            let want = (v - m) / (var + 1e-3).sqrt();
            assert!((y[i * 4 + ch] as f64 - want).abs() < 1e-4);
        }
        // Moving statistics: Keras' update with momentum 0.5, unbiased variance.
        let mm = param(&net, "batch_normalization/moving_mean")[ch] as f64;
        let mv = param(&net, "batch_normalization/moving_variance")[ch] as f64;
        let nn = col.len() as f64;
        assert!((mm - 0.5 * m).abs() < 1e-5, "moving mean");
        assert!(
            (mv - (0.5 + 0.5 * var * nn / (nn - 1.0))).abs() < 1e-4,
            "moving variance"
        );
    }
    // Inference uses the moving statistics.
    let (ye, _) = forward(&mut net, &x, n, false);
    let (mm, mv) = (
        param(&net, "batch_normalization/moving_mean"),
        param(&net, "batch_normalization/moving_variance"),
    );
    for (i, v) in x.iter().enumerate() {
        let ch = i % 4;
        let want = (v - mm[ch]) / (mv[ch] + 1e-3).sqrt();
        assert!((ye[i] - want).abs() < 1e-4);
    }
    check_grads(spec, 3, true);
    check_grads(spec, 3, false);
    check_grads(
        "model: t\ninput: [4, 3, 5]\nlayers:\n  - batch_norm: {center: false}\n",
        2,
        true,
    );
}

#[test]
fn pooling_forward_and_gradients() {
    let cases = [
        (
            "max_pool2d: {size: 3, stride: 2, padding: same}",
            true,
            [3, 3],
            [2, 2],
        ),
        ("max_pool2d: {size: 2}", true, [2, 2], [2, 2]),
        (
            "avg_pool2d: {size: 2, stride: 1, padding: 1}",
            false,
            [2, 2],
            [1, 1],
        ),
        (
            "avg_pool2d: {size: 3, stride: 2, padding: same}",
            false,
            [3, 3],
            [2, 2],
        ),
    ];
    for (layer, max, [kh, kw], [sh, sw]) in cases {
        let spec = format!("model: t\ninput: [7, 6, 3]\nlayers:\n  - {layer}\n");
        let mut net = build(&spec);
        let (h, w, c, n) = (7usize, 6usize, 3usize, 2usize);
        let x = randn(n * h * w * c, 6);
        let (y, shape) = forward(&mut net, &x, n, true);
        let (ho, wo) = (shape[1], shape[2]);
        // Padding from the IR, as Keras computes it.
        let g = &net.plan.graph;
        let pads = match &g.node(g.output).op {
            se_compile::ir::Op::Pool2d(p) => p.pads([h, w]),
            _ => unreachable!(),
        };
        for b in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for ch in 0..c {
                        let mut vals = vec![];
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky) as isize - pads[0][0] as isize;
                                let ix = (ox * sw + kx) as isize - pads[1][0] as isize;
                                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                    vals.push(
                                        x[((b * h + iy as usize) * w + ix as usize) * c + ch],
                                    );
                                }
                            }
                        }
                        let want = if max {
                            vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
                        } else {
                            vals.iter().sum::<f32>() / vals.len() as f32
                        };
                        let got = y[((b * ho + oy) * wo + ox) * c + ch];
                        assert!((got - want).abs() < 1e-5, "{layer}: {got} vs {want}");
                    }
                }
            }
        }
        check_grads(&spec, 2, true);
    }
    for layer in [
        "global_avg_pool",
        "global_max_pool",
        "global_avg_pool: {keepdims: true}",
    ] {
        let spec = format!("model: t\ninput: [5, 3, 4]\nlayers:\n  - {layer}\n");
        let mut net = build(&spec);
        let x = randn(2 * 60, 8);
        let (y, _) = forward(&mut net, &x, 2, true);
        for b in 0..2 {
            for ch in 0..4 {
                let col: Vec<f32> = (0..15).map(|p| x[(b * 15 + p) * 4 + ch]).collect();
                let want = if layer.contains("max") {
                    col.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
                } else {
                    col.iter().sum::<f32>() / 15.0
                };
                assert!((y[b * 4 + ch] - want).abs() < 1e-5, "{layer}");
            }
        }
        check_grads(&spec, 2, true);
    }
}

#[test]
fn dense_zero_padding_and_reshapes() {
    let spec = "model: t\ninput: [2, 3, 5]\nlayers:\n  - flatten\n  - dense: {units: 4}\n";
    let mut net = build(spec);
    let x = randn(3 * 30, 12);
    let (y, _) = forward(&mut net, &x, 3, true);
    let (k, b) = (param(&net, "dense/kernel"), param(&net, "dense/bias"));
    for r in 0..3 {
        for u in 0..4 {
            let want: f32 = (0..30).map(|i| x[r * 30 + i] * k[i * 4 + u]).sum::<f32>() + b[u];
            assert!((y[r * 4 + u] - want).abs() < 1e-4);
        }
    }
    check_grads(spec, 3, true);
    check_grads("model: t\ninput: [3, 3, 6]\nlayers:\n  - dense: {units: 2, use_bias: false, activation: relu}\n  - flatten\n", 2, true);
    let zp = "model: t\ninput: [3, 4, 2]\nlayers:\n  - zero_padding2d: [[1, 2], [0, 3]]\n";
    let mut net = build(zp);
    let x = randn(2 * 24, 13);
    let (y, shape) = forward(&mut net, &x, 2, true);
    assert_eq!(shape, vec![2, 6, 7, 2]);
    for b in 0..2 {
        for r in 0..6 {
            for cidx in 0..7 {
                for ch in 0..2 {
                    let inside = (1..4).contains(&r) && cidx < 4;
                    let want = if inside {
                        x[((b * 3 + r - 1) * 4 + cidx) * 2 + ch]
                    } else {
                        0.0
                    };
                    assert_eq!(y[((b * 6 + r) * 7 + cidx) * 2 + ch], want);
                }
            }
        }
    }
    check_grads(zp, 2, true);
    check_grads("model: t\ninput: [2, 2, 4]\nlayers:\n  - reshape: [4, 4]\n  - dense: {units: 3}\n  - flatten\n", 2, true);
}

#[test]
fn activations_forward_and_gradients() {
    use se_compile::ir::ops::ActFn;
    // Every activation the IR knows; the reference below is an exhaustive match, so a new
    // activation does not compile here until its f64 formula is written.
    for &f in ActFn::ALL {
        let name = f.name();
        // A trailing flatten keeps the softmax from being fused into the loss.
        let spec =
            format!("model: t\ninput: [2, 3, 5]\nlayers:\n  - activation: {name}\n  - flatten\n");
        let mut net = build(&spec);
        let x: Vec<f32> = randn(2 * 30, 14).iter().map(|v| v * 3.0).collect();
        let (y, _) = forward(&mut net, &x, 2, true);
        for (i, v) in x.iter().enumerate() {
            let v = *v as f64;
            let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
            let want = match f {
                ActFn::Relu => v.max(0.0),
                ActFn::Relu6 => v.clamp(0.0, 6.0),
                ActFn::Sigmoid => sig(v),
                ActFn::HardSigmoid => (0.2 * v + 0.5).clamp(0.0, 1.0),
                ActFn::Tanh => v.tanh(),
                ActFn::Swish => v * sig(v),
                ActFn::Gelu => 0.5 * v * (1.0 + (0.7978845608 * (v + 0.044715 * v.powi(3))).tanh()),
                ActFn::Elu => {
                    if v > 0.0 {
                        v
                    } else {
                        v.exp() - 1.0
                    }
                }
                ActFn::Mish => v * (1.0 + v.exp()).ln().tanh(),
                ActFn::Linear => v,
                ActFn::Softmax => {
                    let row = &x[i / 5 * 5..i / 5 * 5 + 5];
                    let z: f64 = row.iter().map(|r| (*r as f64).exp()).sum();
                    v.exp() / z
                }
            };
            assert!(
                (y[i] as f64 - want).abs() < 1e-4,
                "{name}({v}) = {} not {want}",
                y[i]
            );
        }
        check_grads(&spec, 2, true);
    }
}

#[test]
fn merges_and_the_se_broadcast() {
    let add = "model: t\ninput: [3, 3, 4]\nlayers:\n  - conv2d: {filters: 4, kernel: 1}\n    id: a\n  - add: {}\n    from: [a, input]\n";
    check_grads(add, 2, true);
    let cat = "model: t\ninput: [3, 5, 2]\nlayers:\n  - conv2d: {filters: 3, kernel: 1}\n    id: a\n  - concatenate: {}\n    from: [input, a, input]\n";
    let mut net = build(cat);
    let x = randn(2 * 30, 15);
    let (y, shape) = forward(&mut net, &x, 2, true);
    assert_eq!(shape, vec![2, 3, 5, 7]);
    for p in 0..30 {
        assert_eq!(y[p * 7..p * 7 + 2], x[p * 2..p * 2 + 2]);
        assert_eq!(y[p * 7 + 5..p * 7 + 7], x[p * 2..p * 2 + 2]);
    }
    check_grads(cat, 2, true);
    // x * gate with the gate (N, 1, 1, C): the SE multiply; and a plain elementwise product.
    let se = "model: t\ninput: [4, 3, 6]\nlayers:\n  - global_avg_pool: {keepdims: true}\n    id: g\n  - multiply: {}\n    from: [input, g]\n";
    let mut net = build(se);
    let x = randn(2 * 72, 16);
    let (y, _) = forward(&mut net, &x, 2, true);
    for b in 0..2 {
        for ch in 0..6 {
            let gate: f32 = (0..12).map(|p| x[(b * 12 + p) * 6 + ch]).sum::<f32>() / 12.0;
            for p in 0..12 {
                let i = (b * 12 + p) * 6 + ch;
                assert!((y[i] - x[i] * gate).abs() < 1e-5);
            }
        }
    }
    check_grads(se, 2, true);
    check_grads("model: t\ninput: [3, 2, 3]\nlayers:\n  - sigmoid: {}\n    id: s\n  - multiply: {}\n    from: [input, s, input]\n", 2, true);
    check_grads(
        "model: t\ninput: [2, 2, 3]\nlayers:\n  - add: {}\n    from: [input, input]\n",
        2,
        true,
    );
}

#[test]
fn se_blocks_in_both_forms() {
    for form in ["conv1x1", "dense"] {
        let spec = format!("model: t\ninput: [5, 4, 8]\nse: {{r: 4, form: {form}}}\nlayers:\n  - conv2d: {{filters: 8, kernel: 3, padding: same}}\n  - batch_norm\n  - se\n");
        check_grads(&spec, 3, true);
    }
}

#[test]
fn se_ablations_squeeze_and_gates_match_direct_loops() {
    // The paper's Tables 6 and 7: average or max squeeze, sigmoid, hard sigmoid, tanh or ReLU
    // gate. Dense form (no bias): gate = f(W2 relu(W1 pool(x))), y = x * gate per channel.
    let (h, w, c, red, n) = (4, 3, 6, 3, 2);
    for squeeze in ["avg", "max"] {
        for &gate in se_compile::expand::se::GATES {
            let spec = format!("model: t\ninput: [{h}, {w}, {c}]\nse: {{r: 2, form: dense, squeeze: {squeeze}, gate: {gate}}}\nlayers:\n  - se\n");
            let mut net = build(&spec);
            let x: Vec<f32> = randn(n * h * w * c, 21).iter().map(|v| v * 2.0).collect();
            let (y, _) = forward(&mut net, &x, n, false);
            let (w1, w2) = (param(&net, "dense/kernel"), param(&net, "dense_1/kernel"));
            let f = se_compile::ir::ops::ActFn::from_name(gate).unwrap();
            for b in 0..n {
                let at = |p: usize, ch: usize| x[(b * h * w + p) * c + ch];
                let z: Vec<f32> = (0..c)
                    .map(|ch| match squeeze {
                        "avg" => (0..h * w).map(|p| at(p, ch)).sum::<f32>() / (h * w) as f32,
                        _ => (0..h * w).map(|p| at(p, ch)).fold(f32::MIN, f32::max),
                    })
                    .collect();
                let s: Vec<f32> = (0..red)
                    .map(|j| (0..c).map(|i| z[i] * w1[i * red + j]).sum::<f32>().max(0.0))
                    .collect();
                for ch in 0..c {
                    let e: f32 = (0..red).map(|j| s[j] * w2[j * c + ch]).sum();
                    let g = match gate {
                        "sigmoid" => 1.0 / (1.0 + (-e).exp()),
                        "hard_sigmoid" => (0.2 * e + 0.5).clamp(0.0, 1.0),
                        "tanh" => e.tanh(),
                        "relu" => e.max(0.0),
                        other => panic!("untested gate {other}"),
                    };
                    assert_eq!(f.name(), gate);
                    for p in 0..h * w {
                        let i = (b * h * w + p) * c + ch;
                        assert!(
                            (y[i] - at(p, ch) * g).abs() < 1e-5,
                            "{squeeze}/{gate}: y[{i}] = {} not {}",
                            y[i],
                            at(p, ch) * g
                        );
                    }
                }
            }
            // Gradients through the pool, both FC layers and the gate, in both forms.
            check_grads(&spec, n, true);
            check_grads(&spec.replace("form: dense", "form: conv1x1"), n, true);
        }
    }
}

#[test]
fn dropout_masks_in_training_only() {
    let spec = "model: t\ninput: [4, 4, 8]\nlayers:\n  - dropout: 0.5\n";
    let mut net = build(spec);
    let x: Vec<f32> = (0..2 * 128).map(|i| 1.0 + i as f32).collect();
    let (y, _) = forward(&mut net, &x, 2, false);
    assert_eq!(y, x, "inference is the identity");
    let (y, _) = forward(&mut net, &x, 2, true);
    let dropped = y.iter().filter(|v| **v == 0.0).count();
    assert!(
        dropped > 80 && dropped < 176,
        "about half dropped, got {dropped}"
    );
    for (a, b) in y.iter().zip(&x) {
        assert!(
            *a == 0.0 || (a - 2.0 * b).abs() < 1e-4,
            "kept values are scaled by 1/(1-rate)"
        );
    }
    check_grads(spec, 2, true);
}

/// The loss -sum_j t_j log p_j and its gradient (p - t) / N, with the one-hot target and with
/// label smoothing's t = (1 - e) one_hot + e / K.
#[test]
fn cross_entropy_matches_its_definition() {
    for eps in [0.0f32, 0.1, 0.3] {
        let spec = "model: t\ninput: [1, 1, 5]\nlayers:\n  - flatten\n";
        let mut net = build(spec);
        let x = randn(3 * 5, 17);
        let labels = [2usize, 0, 4];
        let t: Tensor<(usize,), f32, Cpu> = net.dev.tensor_from_vec(x.clone(), (15,));
        let a = Act {
            t: t.retaped::<OwnedTape<f32, Cpu>>(),
            shape: vec![3, 1, 1, 5],
            needs_grad: true,
            key: 0,
            host: None,
        };
        let logits = net.forward(a, true);
        let (loss, probs) = se_compile::lower::autodiff::cross_entropy(logits, &labels, eps);
        let target = |r: usize, j: usize| {
            (1.0 - eps as f64) * if j == labels[r] { 1.0 } else { 0.0 } + eps as f64 / 5.0
        };
        let mut want = 0.0f64;
        for r in 0..3 {
            let row = &x[r * 5..r * 5 + 5];
            let z: f64 = row.iter().map(|v| (*v as f64).exp()).sum();
            for j in 0..5 {
                let p = (row[j] as f64).exp() / z;
                want -= target(r, j) * p.ln();
                assert!((probs[r][j] as f64 - p).abs() < 1e-5);
            }
        }
        want /= 3.0;
        assert!(
            (loss.array() as f64 - want).abs() < 1e-5,
            "eps {eps}: {} vs {want}",
            loss.array()
        );
        let g = loss.backward().get(&t).as_vec();
        for r in 0..3 {
            for j in 0..5 {
                let want = (probs[r][j] as f64 - target(r, j)) / 3.0;
                assert!((g[r * 5 + j] as f64 - want).abs() < 1e-5, "eps {eps}");
            }
        }
    }
}

#[test]
fn lowered_parameter_counts_equal_the_summary() {
    for (name, text) in se_compile::zoo::MODELS {
        let src = se_compile::SourceFile::new(*name, *text);
        let vg = se_compile::compile(&src).unwrap();
        let net = Net::new(&vg, 0);
        let (t, nt) = net.param_counts();
        assert_eq!(
            (t as u64, nt as u64),
            (
                vg.totals().params.trainable,
                vg.totals().params.non_trainable
            ),
            "{name}"
        );
    }
}

/// Inference with every BatchNorm folded into its convolution (`Net::folded_for_inference`)
/// and activations fused into the convolutions (`with_fused_activations`), what eval, predict
/// and bench's inference run on the CPU, against the unfolded network, with BN
/// statistics and affine parameters far from their initial values: within 1e-5 relative.
#[test]
fn folded_batch_norms_match_the_unfolded_network() {
    let cases: &[(&str, Option<usize>, usize)] = &[
        // (spec, input side, BatchNorms the fold must take)
        ("models/se_resnet_mini.yaml", None, 0),
        ("models/se_resnet50.yaml", Some(32), 53), // convs with bias (the seed's Keras code)
        ("models/se_resnet50_timm.yaml", Some(32), 53), // convs without bias (timm)
        ("tests/ok/se_ablation_settings.yaml", None, 0),
        // A conv read by its BatchNorm and by an Add keeps its BatchNorm; a BatchNorm after a
        // Dense or after the input is not folded.
        (
            "model: t\ninput: [6, 6, 3]\nlayers:\n  - batch_norm\n  - conv2d: {filters: 4, kernel: 3, padding: same}\n    id: conv_a\n  - batch_norm: {}\n    id: bn_a\n  - add: {}\n    from: [conv_a, bn_a]\n  - conv2d: {filters: 4, kernel: 1, use_bias: false}\n  - batch_norm\n  - flatten\n  - dense: {units: 3}\n  - batch_norm\n",
            None,
            1,
        ),
    ];
    for &(path, side, want_folded) in cases {
        let src = if path.starts_with("model:") {
            se_compile::SourceFile::new("t.yaml", path)
        } else {
            se_compile::load(path).expect("spec")
        };
        let vg = se_compile::compile_full(&src, side.map(|s| (s, s)))
            .map(|(_, vg)| vg)
            .unwrap_or_else(|d| panic!("{path}: {d:?}"));
        let mut net = Net::new(&vg, 5);
        let mut rng = Rng::new(17);
        for k in 0..net.params.len() {
            let p = &net.params[k];
            let (n, name) = (p.len(), p.name.clone());
            // Statistics a trained network could have; wider ranges make the 50-BN networks'
            // activations grow until float rounding alone exceeds the tolerance.
            let v: Vec<f32> = if name.ends_with("/moving_variance") {
                (0..n).map(|_| 0.5 + rng.uniform()).collect()
            } else if name.ends_with("/moving_mean") || name.ends_with("/beta") {
                (0..n).map(|_| 0.4 * (rng.uniform() - 0.5)).collect()
            } else if name.ends_with("/gamma") {
                (0..n).map(|_| 0.7 + 0.6 * rng.uniform()).collect()
            } else if name.ends_with("/bias") {
                (0..n).map(|_| 0.2 * (rng.uniform() - 0.5)).collect()
            } else {
                continue;
            };
            net.params[k].set(v);
        }
        let (folded, count) = net.folded_for_inference();
        // What the CPU runs for inference: folded, then activations fused into the convs.
        let (mut folded, fused) = folded.with_fused_activations();
        let relus_after_convs = vg
            .graph()
            .nodes
            .iter()
            .filter(|n| matches!(&n.op, se_compile::ir::Op::Activation(a) if a.function == se_compile::ir::ops::ActFn::Relu))
            .count();
        assert!(
            fused <= relus_after_convs && (fused > 0 || relus_after_convs == 0),
            "{path}: {fused} of {relus_after_convs} ReLUs fused"
        );
        let bns = vg
            .graph()
            .nodes
            .iter()
            .filter(|n| matches!(n.op, se_compile::ir::Op::BatchNorm(_)))
            .count();
        let want = if want_folded == 0 { bns } else { want_folded };
        assert_eq!(count, want, "{path}: {count} of {bns} BatchNorms folded");
        let mut shape = vec![2];
        shape.extend(vg.graph().input_shape());
        let x: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| rng.uniform())
            .collect();
        let a = net.outputs(x.clone(), shape.clone());
        let b = folded.outputs(x.clone(), shape.clone());
        // Compare the logits before any softmax too: the final softmax can hide differences.
        let logits = |n: &mut Net| {
            let inp =
                se_compile::lower::layers::input_act::<NoneTape>(&n.dev, x.clone(), shape.clone());
            n.forward(inp, false).values()
        };
        let (la, lb) = (logits(&mut net), logits(&mut folded));
        for (what, a, b) in [("logits", &la, &lb), ("outputs", &a, &b)] {
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                err <= 1e-5 * scale,
                "{path} {what}: folded differs by {err} (scale {scale})"
            );
            eprintln!(
                "{path} {what}: max difference {err:.2e}, {:.2e} relative",
                err / scale
            );
        }
    }
}

/// A convolution's fused activation, run as the kernel's epilogue in inference (im2col, row
/// blocks and Winograd), gives the outputs of the convolution followed by the activation.
#[test]
fn fused_conv_epilogues_match_the_unfused_network() {
    let spec = "model: t\ninput: [64, 64, 8]\nlayers:\n  - conv2d: {filters: 16, kernel: 3, padding: same}\n  - relu\n  - conv2d: {filters: 128, kernel: 1}\n  - activation: tanh\n  - conv2d: {filters: 8, kernel: 3, stride: 2, padding: same}\n  - relu\n  - conv2d: {filters: 4, kernel: 3, padding: same}\n  - activation: sigmoid\n  - flatten\n  - dense: {units: 3}\n";
    let mut net = build(spec);
    let (mut fused, n) = net.with_fused_activations();
    assert_eq!(n, 4);
    let x = randn(2 * 64 * 64 * 8, 41);
    let (a, _) = forward(&mut net, &x, 2, false);
    let (b, _) = forward(&mut fused, &x, 2, false);
    assert_all_close("fused epilogues", &b, &a);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(diff <= 1e-5, "fused epilogues differ by {diff}");
}

/// One training step's loss and gradients of a network on a batch of two 6x5x3 images.
fn gradients_6x5x3(
    net: &mut Net,
    x: &[f32],
    labels: &[usize],
) -> (se_compile::lower::model::StepResult, Vec<Vec<f32>>) {
    use se_compile::lower::model::{Batch, Model};
    let batch = Batch {
        x: x.to_vec(),
        shape: vec![2, 6, 5, 3],
        labels,
    };
    net.gradients(batch, 0)
}

/// Activations fused into the BatchNorms and the Add before them (the CPU network) give the
/// same outputs, loss and gradients as the separate layers: ReLU and tanh after BatchNorms, a
/// ReLU after a residual Add.
#[test]
fn fused_batch_norm_and_add_activations_match_the_separate_layers() {
    let spec = "model: t\ninput: [6, 5, 3]\nlayers:\n  - conv2d: {filters: 4, kernel: 3, padding: same}\n  - batch_norm\n  - activation: relu\n    id: r1\n  - conv2d: {filters: 4, kernel: 1}\n  - batch_norm: {scale: false}\n  - activation: tanh\n    id: t1\n  - add: {}\n    from: [r1, t1]\n  - relu\n  - flatten\n  - dense: {units: 3}\n";
    let mut net = build(spec);
    let (mut fused, n) = net.with_fused_bn_and_add_activations();
    assert_eq!(n, 3);
    let x = randn(2 * 90, 33);
    assert_same_network(&mut net, &mut fused, &x, &[1, 2]);
}

/// Two networks on a batch of two 6x5x3 images: the same loss and gradients in a training
/// step, and the same outputs in inference and training mode.
fn assert_same_network(net: &mut Net, fused: &mut Net, x: &[f32], labels: &[usize]) {
    let (ra, ga) = gradients_6x5x3(net, x, labels);
    let (rb, gb) = gradients_6x5x3(fused, x, labels);
    assert!(
        (ra.loss - rb.loss).abs() < 1e-6,
        "{} vs {}",
        ra.loss,
        rb.loss
    );
    assert_eq!(ga.len(), gb.len());
    for (a, b) in ga.iter().zip(&gb) {
        assert_all_close("gradient", b, a);
    }
    for train in [false, true] {
        let (ya, _) = forward(net, x, 2, train);
        let (yb, _) = forward(fused, x, 2, train);
        assert_all_close("outputs", &yb, &ya);
    }
}

/// A convolution with a fused activation also trains: its gradients equal those of the
/// convolution followed by the activation layer.
#[test]
fn fused_conv_activations_have_the_unfused_gradients() {
    let spec = "model: t\ninput: [6, 5, 3]\nlayers:\n  - conv2d: {filters: 4, kernel: 3, padding: same}\n  - relu\n  - conv2d: {filters: 5, kernel: 1}\n  - activation: tanh\n  - flatten\n  - dense: {units: 3}\n";
    let mut net = build(spec);
    let (mut fused, n) = net.with_fused_activations();
    assert_eq!(n, 2);
    let x = randn(2 * 90, 31);
    let (ra, ga) = gradients_6x5x3(&mut net, &x, &[0, 2]);
    let (rb, gb) = gradients_6x5x3(&mut fused, &x, &[0, 2]);
    assert!((ra.loss - rb.loss).abs() < 1e-6);
    for (a, b) in ga.iter().zip(&gb) {
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() < 1e-6, "{p} vs {q}");
        }
    }
}

/// BatchNorm's batch statistics against a two-pass f64 reference, over several chunks of rows,
/// also where the mean is 10⁵ times the spread (E[x²] − E[x]² in f32 would lose it all).
#[test]
fn batch_moments_match_a_two_pass_reference() {
    use se_compile::lower::kernels::batch_moments;
    let (rows, c) = (1000, 5);
    for (offset, scale) in [(0.0f32, 1.0f32), (1000.0, 0.01)] {
        let x: Vec<f32> = randn(rows * c, 7)
            .iter()
            .enumerate()
            .map(|(i, v)| offset + (i % c) as f32 + scale * v)
            .collect();
        let (mean, var) = batch_moments(&x, c);
        for j in 0..c {
            let col: Vec<f64> = x.iter().skip(j).step_by(c).map(|v| *v as f64).collect();
            let m = col.iter().sum::<f64>() / rows as f64;
            let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / rows as f64;
            let what = format!("offset {offset}, channel {j}");
            assert!(
                (mean[j] as f64 - m).abs() <= 1e-6 * m.abs().max(1.0),
                "{what}: mean {} against {m}",
                mean[j]
            );
            assert!(
                (var[j] as f64 - v).abs() <= 1e-5 * v,
                "{what}: variance {} against {v}",
                var[j]
            );
        }
    }
}

/// The SE tail, the multiply x · gate and the Add after it (with its fused ReLU or without),
/// run as one op by the CPU network (`with_fused_se_tails`), gives the same outputs, loss and
/// gradients as the separate layers; also with a third input to the Add.
#[test]
fn fused_se_tails_match_the_separate_layers() {
    let block = "  - conv2d: {filters: 3, kernel: 3, padding: same}\n    id: c\n  - batch_norm\n  - se: {}\n    id: s\n";
    let cases = [
        format!("{block}  - add: {{}}\n    from: [input, s]\n  - relu\n"),
        format!("{block}  - add: {{}}\n    from: [s, input]\n"),
        format!("{block}  - add: {{}}\n    from: [c, s, input]\n  - relu\n"),
    ];
    for body in cases {
        let spec = format!("model: t\ninput: [6, 5, 3]\nse: {{r: 2, form: dense}}\nlayers:\n{body}  - flatten\n  - dense: {{units: 3}}\n");
        let mut net = build(&spec);
        let (fused_acts, _) = net.with_fused_bn_and_add_activations();
        let (mut fused, n) = fused_acts.with_fused_se_tails();
        assert_eq!(n, 1, "{spec}");
        assert!(fused.plan.rewired());
        let x = randn(2 * 90, 35);
        assert_same_network(&mut net, &mut fused, &x, &[2, 0]);
    }
    // A multiply read by another layer too stays a multiply.
    let spec = "model: t\ninput: [6, 5, 3]\nse: {r: 2, form: dense}\nlayers:\n  - se: {}\n    id: s\n  - add: {}\n    from: [input, s]\n    id: a\n  - concatenate: {}\n    from: [a, s]\n  - flatten\n  - dense: {units: 3}\n";
    assert_eq!(build(spec).with_fused_se_tails().1, 0);
}

/// An average global pool reading a BatchNorm (training and inference) or, once folded, a
/// convolution takes its means from the sums that kernel took while writing its output
/// (`kernels::ImageSums`): the same outputs and gradients as the same network with a linear
/// activation between them, whose pool sums its input itself. Images of 1,023 rows, so that
/// the kernels' blocks of 256 rows straddle images; a conv large enough for row blocks, an
/// im2col conv, and a 3x3 conv that may take the Winograd path (which gives no sums).
#[test]
fn se_pools_from_the_producing_kernel_match_a_pool_of_their_own() {
    let spec = |between: &str| {
        format!("model: t\ninput: [33, 31, 4]\nse: {{r: 4, form: dense}}\nlayers:\n  - conv2d: {{filters: 512, kernel: 1}}\n  - batch_norm\n{between}  - se\n  - conv2d: {{filters: 8, kernel: 3, stride: 2, padding: same}}\n  - batch_norm\n{between}  - se\n  - conv2d: {{filters: 8, kernel: 3, padding: same}}\n  - batch_norm\n{between}  - se\n  - global_avg_pool\n  - dense: {{units: 3}}\n")
    };
    let mut own = build(&spec(""));
    let mut apart = build(&spec("  - activation: linear\n"));
    let pooled_kinds = |net: &Net| {
        let p = &net.plan;
        let kinds: Vec<&str> = (0..p.layers.len())
            .filter(|&i| p.pooled(i))
            .map(|i| match p.layers[i] {
                se_compile::lower::plan::Layer::BatchNorm { .. } => "bn",
                se_compile::lower::plan::Layer::Conv { .. } => "conv",
                _ => "other",
            })
            .collect();
        kinds.join(",")
    };
    assert_eq!(pooled_kinds(&own), "bn,bn,bn,other");
    assert_eq!(pooled_kinds(&apart), "other,other,other,other");
    let n = 3;
    let x = randn(n * 33 * 31 * 4, 43);
    for train in [true, false] {
        let (a, _) = forward(&mut own, &x, n, train);
        let (b, _) = forward(&mut apart, &x, n, train);
        assert_all_close("outputs", &a, &b);
    }
    let r = randn(n * 3, 44);
    let (dxa, dpa) = grads(&mut own, &x, n, &r, true);
    let (dxb, dpb) = grads(&mut apart, &x, n, &r, true);
    assert_all_close("input gradient", &dxa, &dxb);
    for (a, b) in dpa.iter().zip(&dpb) {
        assert_all_close("parameter gradient", a, b);
    }
    // Folded for inference: the pool reads the conv through the folded BatchNorm.
    let (mut own_f, _) = own.folded_for_inference();
    let (mut apart_f, _) = apart.folded_for_inference();
    assert_eq!(pooled_kinds(&own_f), "conv,conv,conv,other");
    let (a, _) = forward(&mut own_f, &x, n, false);
    let (b, _) = forward(&mut apart_f, &x, n, false);
    assert_all_close("folded outputs", &a, &b);
}
