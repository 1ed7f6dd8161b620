//! The kernel network's operations as plain loops on host vectors: the meaning of every
//! kernel in `kernels.cu`, written the same way, so that the network's wiring (shapes,
//! matmul layouts, gradient flow) is checked against the CPU network without a GPU.

use super::backend::{Backend, BnParams, Gemm, Geom, Update, UpdateCfg};
use crate::ir::ops::ActFn;
use crate::lower::layers::{softmax_backward, softmax_rows};

pub struct Host;

/// Visits the im2col matrix in order, one block of C/groups channels at a time: the block's
/// offset in the matrix, and the offset of the input channels it copies (None in padding).
fn for_each_tap(g: &Geom, mut f: impl FnMut(usize, Option<usize>)) {
    let (c, cg) = (g.c as usize, (g.c / g.groups) as usize);
    let mut col = 0;
    for n in 0..g.n {
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                for grp in 0..g.groups as usize {
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let src = g.src(oy, ox, ky, kx).map(|(iy, ix)| {
                                (((n * g.h + iy) * g.w + ix) as usize) * c + grp * cg
                            });
                            f(col, src);
                            col += cg;
                        }
                    }
                }
            }
        }
    }
}

/// Where element `i` of an (N, per / C, C) tensor finds its image's and channel's value in an
/// (N, C) gate.
fn gate_at(i: usize, per: usize, c: usize) -> usize {
    (i / per) * c + i % c
}

/// dy[i], or dy[i] times the derivative of activation f read off its output y (`through` =
/// (y, f); f's `grad_from_output`).
fn through_grad(dy: &[f32], through: Option<(&Vec<f32>, ActFn)>, i: usize) -> f32 {
    match through {
        None => dy[i],
        Some((y, f)) => dy[i] * f.grad(y[i], y[i]),
    }
}

fn act_of(code: i32) -> crate::ir::ops::ActFn {
    crate::ir::ops::ActFn::from_code(code)
        .unwrap_or_else(|| panic!("activation code {code}: not in ActFn::ALL"))
}

impl Backend for Host {
    type Buf = Vec<f32>;
    fn upload(&self, v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
    fn download(&self, b: &Vec<f32>) -> Vec<f32> {
        b.clone()
    }
    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn alloc(&self, n: usize) -> Vec<f32> {
        // NaN, so that an element a kernel should have written but did not shows.
        vec![f32::NAN; n]
    }
    fn len(&self, b: &Vec<f32>) -> usize {
        b.len()
    }
    fn synchronize(&self) {}

    fn gemm(&self, g: &Gemm, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>) {
        // The CPU network's matmul (strided operands, bounds-checked), one per batch entry.
        assert!(g.alpha == 1.0 && (g.beta == 0.0 || g.beta == 1.0), "{g:?}");
        let a_st = if g.ta { (1, g.lda) } else { (g.lda, 1) };
        let b_st = if g.tb { (1, g.ldb) } else { (g.ldb, 1) };
        for bt in 0..g.batch {
            let (oa, ob, oc) = (bt * g.sa, bt * g.sb, bt * g.sc);
            crate::lower::kernels::matmul(
                g.m,
                g.n,
                g.k,
                &mut c[oc..],
                (g.ldc, 1),
                g.beta == 1.0,
                &a[oa..],
                a_st,
                &b[ob..],
                b_st,
            );
        }
    }

    fn im2col(&self, x: &Vec<f32>, g: &Geom, fill: f32) -> Vec<f32> {
        let cg = (g.c / g.groups) as usize;
        let mut out = Vec::with_capacity(g.out_rows() * g.cols());
        for_each_tap(g, |_, src| match src {
            Some(base) => out.extend_from_slice(&x[base..base + cg]),
            None => out.extend(std::iter::repeat_n(fill, cg)),
        });
        out
    }

    fn col2im(&self, dcols: &Vec<f32>, g: &Geom, dx: &mut Vec<f32>, accumulate: bool) {
        if !accumulate {
            dx.iter_mut().for_each(|v| *v = 0.0);
        }
        let cg = (g.c / g.groups) as usize;
        for_each_tap(g, |col, src| {
            if let Some(base) = src {
                for j in 0..cg {
                    dx[base + j] += dcols[col + j];
                }
            }
        });
    }

    fn taps_reduce(&self, cols: &Vec<f32>, g: &Geom, max: bool) -> (Vec<f32>, Vec<f32>) {
        let (c, kk) = (g.c as usize, g.taps());
        let rows = g.out_rows();
        let mut y = vec![0.0f32; rows * c];
        let mut arg = vec![0.0f32; if max { rows * c } else { 0 }];
        for r in 0..rows {
            let inside = g.taps_inside(r);
            for j in 0..c {
                let tap = |t: usize| cols[(r * kk + t) * c + j];
                if max {
                    let (mut best, mut at) = (tap(0), 0);
                    for t in 1..kk {
                        if tap(t) > best {
                            best = tap(t);
                            at = t;
                        }
                    }
                    y[r * c + j] = best;
                    arg[r * c + j] = at as f32;
                } else {
                    y[r * c + j] = (0..kk).map(tap).sum::<f32>() / inside as f32;
                }
            }
        }
        (y, arg)
    }

    fn taps_expand(&self, dy: &Vec<f32>, arg: &Vec<f32>, g: &Geom, max: bool) -> Vec<f32> {
        let (c, kk) = (g.c as usize, g.taps());
        let rows = g.out_rows();
        let mut d = vec![0.0f32; rows * kk * c];
        for r in 0..rows {
            let inside = g.taps_inside(r);
            for j in 0..c {
                for t in 0..kk {
                    d[(r * kk + t) * c + j] = if max {
                        if arg[r * c + j] as usize == t {
                            dy[r * c + j]
                        } else {
                            0.0
                        }
                    } else {
                        dy[r * c + j] / inside as f32
                    };
                }
            }
        }
        d
    }

    fn col_sums(
        &self,
        a: &Vec<f32>,
        b: Option<&Vec<f32>>,
        groups: usize,
        rows: usize,
        c: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; groups * c];
        for gi in 0..groups {
            for j in 0..c {
                let mut s = 0.0f64;
                for r in 0..rows {
                    let i = (gi * rows + r) * c + j;
                    s += (a[i] * b.map_or(1.0, |b| b[i])) as f64;
                }
                out[gi * c + j] = (s * scale as f64) as f32;
            }
        }
        out
    }

    fn col_sums2(
        &self,
        a: &Vec<f32>,
        b: &Vec<f32>,
        through: Option<(&Vec<f32>, ActFn)>,
        rows: usize,
        c: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        // In f64, as `col_sums`.
        let (mut s1, mut s2) = (vec![0.0f64; c], vec![0.0f64; c]);
        for k in 0..rows * c {
            let g = through_grad(a, through, k);
            s1[k % c] += g as f64;
            s2[k % c] += (g * b[k]) as f64;
        }
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
        (f32s(s1), f32s(s2))
    }
    fn bn_back_apply(
        &self,
        dy: &Vec<f32>,
        through: Option<(&Vec<f32>, ActFn)>,
        [s, t, d]: [&Vec<f32>; 3],
        x: &Vec<f32>,
        c: usize,
        dx: &mut Vec<f32>,
        accumulate: bool,
    ) {
        for i in 0..dy.len() {
            let j = i % c;
            let v = s[j] * through_grad(dy, through, i) + t[j] * x[i] + d[j];
            dx[i] = if accumulate { dx[i] + v } else { v };
        }
    }
    fn chan_affine(
        &self,
        u: &Vec<f32>,
        s: &Vec<f32>,
        d: &Vec<f32>,
        c: usize,
        out: &mut Vec<f32>,
        act: ActFn,
    ) {
        for i in 0..u.len() {
            out[i] = act.value(s[i % c] * u[i] + d[i % c]);
        }
    }

    fn bn_coeffs(
        &self,
        stats: Option<(&Vec<f32>, &Vec<f32>, usize)>,
        p: &BnParams<Vec<f32>>,
        mm: &mut Vec<f32>,
        mv: &mut Vec<f32>,
        c: usize,
    ) -> [Vec<f32>; 4] {
        let mut out = [vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]];
        for j in 0..c {
            let (mean, var) = match stats {
                Some((s1, s2, rows)) => {
                    let r = rows as f32;
                    let mean = s1[j] / r;
                    let var = (s2[j] / r - mean * mean).max(0.0);
                    let unbias = if rows > 1 { r / (r - 1.0) } else { 1.0 };
                    mm[j] = p.momentum * mm[j] + (1.0 - p.momentum) * mean;
                    mv[j] = p.momentum * mv[j] + (1.0 - p.momentum) * unbias * var;
                    (mean, var)
                }
                None => (mm[j], mv[j]),
            };
            let inv_std = 1.0 / (var + p.eps).sqrt();
            let scale = p.gamma.map_or(1.0, |g| g[j]) * inv_std;
            out[0][j] = mean;
            out[1][j] = inv_std;
            out[2][j] = scale;
            out[3][j] = p.beta.map_or(0.0, |b| b[j]) - mean * scale;
            // The convolution's bias it takes in (kernels.cu, bn_conv_bias).
            if let Some(b) = p.conv_bias {
                if stats.is_some() {
                    mm[j] += (1.0 - p.momentum) * b[j];
                } else {
                    out[3][j] += scale * b[j];
                }
            }
        }
        out
    }

    fn bn_back_coeffs(
        &self,
        sum_dy: &Vec<f32>,
        sum_dyx: &Vec<f32>,
        mean: &Vec<f32>,
        inv_std: &Vec<f32>,
        gamma: Option<&Vec<f32>>,
        mut dgamma: Option<&mut Vec<f32>>,
        mut dbeta: Option<&mut Vec<f32>>,
        rows: usize,
    ) -> [Vec<f32>; 3] {
        let c = mean.len();
        let r = rows as f32;
        let mut out = [vec![0.0; c], vec![0.0; c], vec![0.0; c]];
        for j in 0..c {
            let is = inv_std[j];
            let sxh = is * (sum_dyx[j] - mean[j] * sum_dy[j]);
            if let Some(dg) = dgamma.as_deref_mut() {
                dg[j] += sxh;
            }
            if let Some(db) = dbeta.as_deref_mut() {
                db[j] += sum_dy[j];
            }
            let gm = gamma.map_or(1.0, |g| g[j]);
            let t = -gm * is * is * sxh / r;
            out[0][j] = gm * is;
            out[1][j] = t;
            out[2][j] = -gm * is * sum_dy[j] / r - t * mean[j];
        }
        out
    }

    fn act(&self, x: &Vec<f32>, code: i32) -> Vec<f32> {
        let f = act_of(code);
        x.iter().map(|v| f.value(*v)).collect()
    }
    fn act_back(
        &self,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        code: i32,
        dx: &mut Vec<f32>,
        acc: bool,
    ) {
        let f = act_of(code);
        for i in 0..x.len() {
            let v = dy[i] * f.grad(x[i], y[i]);
            dx[i] = if acc { dx[i] + v } else { v };
        }
    }
    fn softmax(&self, x: &Vec<f32>, c: usize) -> Vec<f32> {
        softmax_rows(x, c)
    }
    fn softmax_back(&self, y: &Vec<f32>, dy: &Vec<f32>, c: usize, dx: &mut Vec<f32>, acc: bool) {
        softmax_backward(y, dy, c, dx, acc)
    }
    fn gate_mul(
        &self,
        x: &Vec<f32>,
        g: &Vec<f32>,
        n: usize,
        c: usize,
        out: &mut Vec<f32>,
        acc: bool,
    ) {
        let per = x.len() / n.max(1);
        for i in 0..x.len() {
            let v = x[i] * g[gate_at(i, per, c)];
            out[i] = if acc { out[i] + v } else { v };
        }
    }
    fn bcast_rows(
        &self,
        g: &Vec<f32>,
        n: usize,
        c: usize,
        scale: f32,
        out: &mut Vec<f32>,
        acc: bool,
    ) {
        let per = out.len() / n.max(1);
        for i in 0..out.len() {
            let v = scale * g[gate_at(i, per, c)];
            out[i] = if acc { out[i] + v } else { v };
        }
    }
    fn mul(&self, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>, acc: bool) {
        for i in 0..a.len() {
            out[i] = if acc {
                out[i] + a[i] * b[i]
            } else {
                a[i] * b[i]
            };
        }
    }
    fn axpy(&self, x: &Vec<f32>, alpha: f32, out: &mut Vec<f32>) {
        out.iter_mut().zip(x).for_each(|(o, v)| *o += alpha * v);
    }
    fn add_act(&self, x: &Vec<f32>, out: &mut Vec<f32>, act: ActFn) {
        out.iter_mut()
            .zip(x)
            .for_each(|(o, v)| *o = act.value(*o + v));
    }
    fn add_bias(&self, y: &mut Vec<f32>, b: &Vec<f32>, act: ActFn) {
        let c = b.len();
        y.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = act.value(*v + b[i % c]));
    }
    fn gated_add(
        &self,
        x: &Vec<f32>,
        g: &Vec<f32>,
        r: &Vec<f32>,
        n: usize,
        c: usize,
        out: &mut Vec<f32>,
        act: ActFn,
    ) {
        let per = x.len() / n.max(1);
        for i in 0..x.len() {
            out[i] = act.value(x[i] * g[gate_at(i, per, c)] + r[i]);
        }
    }
    fn col_copy(
        &self,
        src: &Vec<f32>,
        src_c: usize,
        src_off: usize,
        dst: &mut Vec<f32>,
        dst_c: usize,
        dst_off: usize,
        width: usize,
        rows: usize,
        acc: bool,
    ) {
        for r in 0..rows {
            for j in 0..width {
                let v = src[r * src_c + src_off + j];
                let o = &mut dst[r * dst_c + dst_off + j];
                *o = if acc { *o + v } else { v };
            }
        }
    }
    fn transpose(&self, a: &Vec<f32>, rows: usize, cols: usize, out: &mut Vec<f32>, acc: bool) {
        for r in 0..rows {
            for c in 0..cols {
                let v = a[r * cols + c];
                let o = &mut out[c * rows + r];
                *o = if acc { *o + v } else { v };
            }
        }
    }
    fn update(
        &self,
        u: &Update,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) {
        // The kernel's arithmetic, from the same per-step constants.
        let u = UpdateCfg::of(u);
        for i in 0..p.len() {
            let gi = g[i] + u.wd * p[i];
            if u.kind == 0 {
                m[i] = m[i] * u.b1 + gi * (1.0 - u.b1);
                v[i] = v[i] * u.b2 + gi * gi * (1.0 - u.b2);
                p[i] -= u.lr * (m[i] / u.bc1) / ((v[i] / u.bc2).sqrt() + u.eps);
            } else {
                m[i] = gi + u.momentum * m[i];
                p[i] -= u.lr * m[i];
            }
        }
    }
}

/// Direct-loop convolutions in a convolution library's layouts (NHWC tensors, the filter as
/// (Cout, kh, kw, C/G)), with cuDNN's rule of equal padding on both sides: a stand-in for
/// cuDNN that runs anywhere, so that the network's use of a `ConvLib` (filter transposes, what
/// the forward keeps, the backward's fresh im2col matrix) is tested without a GPU.
pub struct RefConvLib {
    /// Which directions it takes: like cuDNN's `Policy::All` (every direction) or
    /// `Policy::Auto` (the forward of convolutions with more than one tap).
    pub all: bool,
}

impl RefConvLib {
    /// Visits every (output index, input index, filter index) that the convolution multiplies.
    fn each(g: &Geom, cout: usize, mut f: impl FnMut(usize, usize, usize)) {
        let (c, cg) = (g.c as usize, (g.c / g.groups) as usize);
        let cog = cout / g.groups as usize;
        for n in 0..g.n {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let o_row = (((n * g.ho + oy) * g.wo + ox) as usize) * cout;
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let Some((iy, ix)) = g.src(oy, ox, ky, kx) else {
                                continue;
                            };
                            let i_row = (((n * g.h + iy) * g.w + ix) as usize) * c;
                            let tap = (ky * g.kw + kx) as usize;
                            for k in 0..cout {
                                let grp = k / cog;
                                for ci in 0..cg {
                                    let wi = (k * g.taps() + tap) * cg + ci;
                                    f(o_row + k, i_row + grp * cg + ci, wi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn supports(&self, g: &Geom, _cout: usize, dir: super::backend::ConvDir) -> bool {
        use super::backend::Policy;
        let policy = if self.all { Policy::All } else { Policy::Auto };
        g.equal_padding() && policy.wants(g, dir)
    }
    pub fn forward(g: &Geom, cout: usize, x: &[f32], w: &[f32], y: &mut [f32]) {
        y.fill(0.0);
        RefConvLib::each(g, cout, |o, i, k| y[o] += x[i] * w[k]);
    }
    pub fn backward_data(g: &Geom, cout: usize, dy: &[f32], w: &[f32], dx: &mut [f32], acc: bool) {
        if !acc {
            dx.fill(0.0);
        }
        RefConvLib::each(g, cout, |o, i, k| dx[i] += dy[o] * w[k]);
    }
    pub fn backward_filter(g: &Geom, cout: usize, x: &[f32], dy: &[f32], dw: &mut [f32]) {
        dw.fill(0.0);
        RefConvLib::each(g, cout, |o, i, k| dw[k] += dy[o] * x[i]);
    }
}
