//! Winograd F(2x2, 3x3) convolution on NHWC f32 slices, for 3x3, stride-1, undilated,
//! ungrouped convolutions (every 3x3 conv of a ResNet bottleneck). Each 2x2 block of outputs
//! (a "tile") comes from a 4x4 input patch with 16 multiplies per (input, output) channel pair
//! instead of 36: the patch and the kernel are transformed (V = Bᵀ d B, U = G g Gᵀ), the 16
//! transformed positions ξ become 16 gemms over channels (M_ξ = V_ξ U_ξ), and the output
//! transform gives the tile (Y = Aᵀ M A). Lavin and Gray, *Fast Algorithms for Convolutional
//! Neural Networks*, CVPR 2016.
//!
//! - Forward: tiles are processed in blocks that stay in cache; one thread transforms,
//!   multiplies and writes back a block, and blocks (images x rows of tiles) run in parallel.
//!   The output transform applies the bias and the caller's epilogue (a fused activation).
//! - Input gradient: the forward pass itself, with the kernel rotated by 180° and its channel
//!   axes swapped, and padding 2 − p, accumulated into dx.
//! - Kernel gradient: the adjoint of the forward map, dg = Gᵀ [(A dY Aᵀ) ⊙ (Bᵀ d B)] G, summed
//!   over tiles: 16 gemms D_ξ = V_ξᵀ Z_ξ with Z = A dY Aᵀ (in parallel over ξ), then Gᵀ D G.
//!
//! Every sum runs in a fixed order, so a seeded run gives the same numbers every time.
//! Tiles are laid out tile-major, [tile][ξ][channel], so each tile's 16 rows are contiguous
//! and the gemms read ξ's rows with a stride of 16 rows.

use super::kernels::{even_count, finish_row, matmul_serial, ConvShape};
use rayon::prelude::*;
use std::cell::RefCell;

/// Transformed positions per tile (4 x 4).
const XI: usize = 16;
/// Tiles per block of the forward pass and of the kernel gradient: a block's V (tiles x 16 x
/// cin) and M or Z (tiles x 16 x cout) stay within a core's L2 cache for the widths of a ResNet.
const TILES_PER_BLOCK: usize = 96;

/// An elementwise pass over one output row of `cout` values, run as the output transform
/// writes it (a fused activation).
pub type Epilogue<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

/// Tiles (images x 2x2 output blocks) from which Winograd beats im2col + gemm, measured with
/// `examples/conv_rate.rs` on SE-ResNet-50's 3x3 convs (2-core Xeon, AVX-512): forward and
/// backward win from 392 tiles up (14x14 at batch 8: 7.3 against 11.2 ms forward) and lose at
/// 128 and fewer (7x7 at batch 8, 4x4 at batch 32), where transforming the kernel (16 x cin x
/// cout per call) and the padding of odd sides outweigh the saved multiplies.
const MIN_TILES: usize = 256;

/// Whether the convolution takes the Winograd path: it `fits`, has enough tiles to pay
/// (`MIN_TILES`), and `SE_COMPILE_WINOGRAD=0` (to compare the two) is not set.
pub fn applies(s: &ConvShape) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var("SE_COMPILE_WINOGRAD").as_deref() != Ok("0"));
    let (th, tw) = tiles(s);
    on && fits(s) && s.win.n * th * tw >= MIN_TILES
}

/// `kernels::conv2d_workspace` for a convolution that takes this path: the forward's
/// transformed kernel and each thread's `SCRATCH`; the backward's kernel gradient (a D of
/// 16 x cin x cout per group of tiles, with the group's V and Z blocks) or, after it, the input
/// gradient (the rotated and transformed kernel, then a forward of its own).
pub fn workspace(s: &ConvShape, backward: bool, dx: bool) -> super::kernels::Workspace {
    let f = std::mem::size_of::<f32>();
    let fwd = |s: &ConvShape| {
        let (cin, cout) = (s.win.c, s.cout);
        let (th, tw) = tiles(s);
        let nt = (TILES_PER_BLOCK / tw).clamp(1, th) * tw;
        let scratch = nt * XI * (cin + cout) + XI * cin + 12 * cout;
        super::kernels::Workspace {
            transient: (XI * cin * cout + cin) * f,
            per_thread: scratch * f,
        }
    };
    if !backward {
        return fwd(s);
    }
    let (cin, cout) = (s.win.c, s.cout);
    let (th, tw) = tiles(s);
    let groups = super::kernels::even_count((s.win.n * th * tw / 128).clamp(1, 8));
    let group = XI * cin * cout + TILES_PER_BLOCK * XI * (cin + cout) + XI * cin + 8 * cout;
    let kernel = (groups * group + cin + cout) * f;
    let mut back = *s;
    (back.win.h, back.win.w, back.win.c) = (s.win.ho, s.win.wo, cout);
    (back.win.ho, back.win.wo, back.cout) = (s.win.h, s.win.w, cin);
    let input = if dx {
        let w = fwd(&back);
        (9 + XI) * cin * cout * f + w.transient
    } else {
        0
    };
    super::kernels::Workspace {
        transient: kernel.max(input),
        per_thread: if dx { fwd(&back).per_thread } else { 0 },
    }
}

/// Whether Winograd can compute the convolution: 3x3, stride 1, undilated, ungrouped, at most
/// 2 padding on each side, and at least 8 channels in and out.
pub fn fits(s: &ConvShape) -> bool {
    let w = &s.win;
    // Bottom and right padding: what the output needs beyond the input.
    let (pb, pr) = (
        (w.ho + 2).checked_sub(w.h + w.pt),
        (w.wo + 2).checked_sub(w.w + w.pl),
    );
    (w.kh, w.kw, w.sh, w.sw, w.dh, w.dw) == (3, 3, 1, 1, 1, 1)
        && s.groups == 1
        && w.pt <= 2
        && w.pl <= 2
        && pb.is_some_and(|p| p <= 2)
        && pr.is_some_and(|p| p <= 2)
        && w.c >= 8
        && s.cout >= 8
}

/// o = f(a, b) elementwise.
#[inline(always)]
fn map2(o: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
        *o = f(*a, *b);
    }
}

/// o = f(a, b, c) elementwise.
#[inline(always)]
fn map3(o: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((o, a), b), c) in o.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(*a, *b, *c);
    }
}

/// Row `k` of length `n` of a flat buffer.
#[inline(always)]
fn row(buf: &[f32], k: usize, n: usize) -> &[f32] {
    &buf[k * n..(k + 1) * n]
}

/// The 4-point transform Bᵀ on rows of `c`: [d0 − d2, d1 + d2, d2 − d1, d1 − d3], from the
/// rows `d` into the four consecutive rows of `out` (4 x c).
#[inline(always)]
fn bt4(d: [&[f32]; 4], out: &mut [f32], c: usize) {
    let (o01, o23) = out.split_at_mut(2 * c);
    let (o0, o1) = o01.split_at_mut(c);
    let (o2, o3) = o23.split_at_mut(c);
    map2(o0, d[0], d[2], |a, b| a - b);
    map2(o1, d[1], d[2], |a, b| a + b);
    map2(o2, d[2], d[1], |a, b| a - b);
    map2(o3, d[1], d[3], |a, b| a - b);
}

/// U = G g Gᵀ for every (ci, co), G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]: `w` is
/// Keras' [3, 3, cin, cout]; the result is [16, cin, cout], ξ-major.
pub fn kernel_transform(w: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let plane = cin * cout;
    let mut u = vec![0.0f32; XI * plane];
    u.par_chunks_mut(plane).enumerate().for_each(|(xi, ux)| {
        let (i, j) = (xi / 4, xi % 4);
        // Row i of G, then column j of Gᵀ: the weights of the 3 taps along each axis.
        let gw = |k: usize| -> [f32; 3] {
            match k {
                0 => [1.0, 0.0, 0.0],
                1 => [0.5, 0.5, 0.5],
                2 => [0.5, -0.5, 0.5],
                _ => [0.0, 0.0, 1.0],
            }
        };
        let (wy, wx) = (gw(i), gw(j));
        for ky in 0..3 {
            for kx in 0..3 {
                let f = wy[ky] * wx[kx];
                if f == 0.0 {
                    continue;
                }
                let tap = &w[(ky * 3 + kx) * plane..][..plane];
                ux.iter_mut().zip(tap).for_each(|(o, v)| *o += f * v);
            }
        }
    });
    u
}

/// The kernel of the input gradient: rotated by 180°, channel axes swapped: [3, 3, cout, cin]
/// from [3, 3, cin, cout].
fn rotated(w: &[f32], cin: usize, cout: usize) -> Vec<f32> {
    let mut r = vec![0.0f32; w.len()];
    for ky in 0..3 {
        for kx in 0..3 {
            let src = &w[(ky * 3 + kx) * cin * cout..][..cin * cout];
            let dst = &mut r[((2 - ky) * 3 + (2 - kx)) * cin * cout..][..cin * cout];
            for ci in 0..cin {
                for co in 0..cout {
                    dst[co * cin + ci] = src[ci * cout + co];
                }
            }
        }
    }
    r
}

/// Tiles along each axis: ceil(ho / 2) x ceil(wo / 2) per image.
fn tiles(s: &ConvShape) -> (usize, usize) {
    (s.win.ho.div_ceil(2), s.win.wo.div_ceil(2))
}

/// V = Bᵀ d B of the 4x4 patch under tile (ty, tx) of one image (h x w x c), into the tile's
/// 16 rows `v` (16 x c); `t` is scratch of the same size. The padding reads as zeros.
fn input_tile(
    img: &[f32],
    s: &ConvShape,
    (ty, tx): (usize, usize),
    zeros: &[f32],
    t: &mut [f32],
    v: &mut [f32],
) {
    let w = &s.win;
    let c = w.c;
    let d = |i: usize, j: usize| -> &[f32] {
        let iy = (2 * ty + i) as isize - w.pt as isize;
        let ix = (2 * tx + j) as isize - w.pl as isize;
        if iy < 0 || ix < 0 || iy >= w.h as isize || ix >= w.w as isize {
            zeros
        } else {
            &img[(iy as usize * w.w + ix as usize) * c..][..c]
        }
    };
    // t = Bᵀ d along the patch's columns: t's row 4j + i is (Bᵀ d)[i][j].
    for (j, tj) in t.chunks_exact_mut(4 * c).enumerate() {
        bt4([d(0, j), d(1, j), d(2, j), d(3, j)], tj, c);
    }
    // V = t B along the rows: V's row 4i + j.
    for (i, vi) in v.chunks_exact_mut(4 * c).enumerate() {
        bt4(std::array::from_fn(|j| row(t, 4 * j + i, c)), vi, c);
    }
}

/// Y = Aᵀ M A of one tile, Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]: `m` is the tile's 16 rows
/// (16 x cout), the result the 2x2 output rows in `y` (4 x cout, row-major); `s` is scratch
/// (8 x cout).
fn output_tile(m: &[f32], cout: usize, s: &mut [f32], y: &mut [f32]) {
    let r = |k: usize| row(m, k, cout);
    // s = Aᵀ M: 2 x 4 rows.
    for j in 0..4 {
        let (s0, s1) = s.split_at_mut(4 * cout);
        map3(
            &mut s0[j * cout..][..cout],
            r(j),
            r(4 + j),
            r(8 + j),
            |a, b, c| a + b + c,
        );
        map3(
            &mut s1[j * cout..][..cout],
            r(4 + j),
            r(8 + j),
            r(12 + j),
            |a, b, c| a - b - c,
        );
    }
    for i in 0..2 {
        let si = |j: usize| row(s, 4 * i + j, cout);
        let (y0, y1) = y[2 * i * cout..(2 * i + 2) * cout].split_at_mut(cout);
        map3(y0, si(0), si(1), si(2), |a, b, c| a + b + c);
        map3(y1, si(1), si(2), si(3), |a, b, c| a - b - c);
    }
}

/// Z = A g Aᵀ of the 2x2 output gradient under tile (ty, tx) of one image (ho x wo x cout),
/// A = [[1, 0], [1, 1], [1, −1], [0, −1]], into the tile's 16 rows `zt` (16 x cout); `q` is
/// scratch (8 x cout). Outputs past the edge read as zeros.
fn grad_tile(
    dy: &[f32],
    s: &ConvShape,
    (ty, tx): (usize, usize),
    zeros: &[f32],
    q: &mut [f32],
    zt: &mut [f32],
) {
    let (win, cout) = (s.win, s.cout);
    let g = |i: usize, j: usize| -> &[f32] {
        let (oy, ox) = (2 * ty + i, 2 * tx + j);
        if oy >= win.ho || ox >= win.wo {
            zeros
        } else {
            &dy[(oy * win.wo + ox) * cout..][..cout]
        }
    };
    // q = A g (4 x 2, i-major).
    for j in 0..2 {
        let (g0, g1) = (g(0, j), g(1, j));
        q[j * cout..][..cout].copy_from_slice(g0);
        map2(&mut q[(2 + j) * cout..][..cout], g0, g1, |a, b| a + b);
        map2(&mut q[(4 + j) * cout..][..cout], g0, g1, |a, b| a - b);
        map2(&mut q[(6 + j) * cout..][..cout], g1, g1, |a, _| -a);
    }
    // Z = q Aᵀ (4 x 4).
    for i in 0..4 {
        let (q0, q1) = (row(q, 2 * i, cout), row(q, 2 * i + 1, cout));
        let zi = &mut zt[4 * i * cout..4 * (i + 1) * cout];
        zi[..cout].copy_from_slice(q0);
        map2(&mut zi[cout..2 * cout], q0, q1, |a, b| a + b);
        map2(&mut zi[2 * cout..3 * cout], q0, q1, |a, b| a - b);
        map2(&mut zi[3 * cout..], q1, q1, |a, _| -a);
    }
}

thread_local! {
    /// Per-thread scratch of the forward blocks: V, M, and the small transform buffers.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// y (=|+=) conv(x, w) + bias, then `epilogue` on every output row, for a shape where
/// `applies` holds. `w` is Keras' [3, 3, cin, cout]; `y` is N x ho x wo x cout.
pub fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    epilogue: Option<Epilogue>,
    y: &mut [f32],
    accumulate: bool,
) {
    let u = kernel_transform(w, s.win.c, s.cout);
    forward_with(x, &u, bias, s, epilogue, y, accumulate);
}

/// `forward` with the kernel already transformed (`kernel_transform`).
fn forward_with(
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    epilogue: Option<Epilogue>,
    y: &mut [f32],
    accumulate: bool,
) {
    let win = s.win;
    let (cin, cout) = (win.c, s.cout);
    let (th, tw) = tiles(s);
    let tile_rows = (TILES_PER_BLOCK / tw).clamp(1, th);
    let img_in = win.h * win.w * cin;
    let img_out = win.ho * win.wo * cout;
    let zeros = vec![0.0f32; cin];
    y.par_chunks_mut(img_out).enumerate().for_each(|(b, yimg)| {
        let ximg = &x[b * img_in..(b + 1) * img_in];
        yimg.par_chunks_mut(2 * tile_rows * win.wo * cout)
            .enumerate()
            .for_each(|(g, yrows)| {
                let ty0 = g * tile_rows;
                let nty = tile_rows.min(th - ty0);
                let nt = nty * tw;
                SCRATCH.with(|cell| {
                    let mut buf = cell.borrow_mut();
                    let need = nt * XI * (cin + cout) + XI * cin + 12 * cout;
                    if buf.len() < need {
                        buf.resize(need, 0.0);
                    }
                    let (v, rest) = buf.split_at_mut(nt * XI * cin);
                    let (m, rest) = rest.split_at_mut(nt * XI * cout);
                    let (t, rest) = rest.split_at_mut(XI * cin);
                    let (sbuf, ybuf) = rest.split_at_mut(8 * cout);
                    let ybuf = &mut ybuf[..4 * cout];
                    for (k, vt) in v.chunks_exact_mut(XI * cin).enumerate() {
                        input_tile(ximg, s, (ty0 + k / tw, k % tw), &zeros, t, vt);
                    }
                    for xi in 0..XI {
                        matmul_serial(
                            nt,
                            cout,
                            cin,
                            &mut m[xi * cout..],
                            (XI * cout, 1),
                            false,
                            &v[xi * cin..],
                            (XI * cin, 1),
                            &u[xi * cin * cout..],
                            (cout, 1),
                        );
                    }
                    for (k, mt) in m.chunks_exact(XI * cout).enumerate() {
                        output_tile(mt, cout, sbuf, ybuf);
                        let (ty, tx) = (k / tw, k % tw);
                        for p in 0..4 {
                            let (oy, ox) = (2 * ty + p / 2, 2 * tx + p % 2);
                            if 2 * ty0 + oy >= win.ho || ox >= win.wo {
                                continue;
                            }
                            let yr = &mut ybuf[p * cout..(p + 1) * cout];
                            finish_row(yr, bias, epilogue);
                            let dst = &mut yrows[(oy * win.wo + ox) * cout..][..cout];
                            if accumulate {
                                dst.iter_mut().zip(yr.iter()).for_each(|(d, v)| *d += v);
                            } else {
                                dst.copy_from_slice(yr);
                            }
                        }
                    }
                });
            });
    });
}

/// dx (+)= the input gradient of `forward` (without bias or epilogue) for output gradient `dy`:
/// added with `add`, else written over `dx`.
pub fn backward_input(dy: &[f32], w: &[f32], s: &ConvShape, dx: &mut [f32], add: bool) {
    let win = s.win;
    let (cin, cout) = (win.c, s.cout);
    let back = ConvShape {
        win: super::kernels::Window {
            h: win.ho,
            w: win.wo,
            c: cout,
            pt: 2 - win.pt,
            pl: 2 - win.pl,
            ho: win.h,
            wo: win.w,
            ..win
        },
        cout: cin,
        groups: 1,
    };
    let u = kernel_transform(&rotated(w, cin, cout), cout, cin);
    forward_with(dy, &u, None, &back, None, dx, add);
}

/// dw += the kernel gradient of `forward` for input `x` and output gradient `dy`; `dw` is
/// Keras' [3, 3, cin, cout].
pub fn backward_kernel(x: &[f32], dy: &[f32], s: &ConvShape, dw: &mut [f32]) {
    let win = s.win;
    let (cin, cout) = (win.c, s.cout);
    let (th, tw) = tiles(s);
    let per_img = th * tw;
    let total = win.n * per_img;
    let (img_in, img_out) = (win.h * win.w * cin, win.ho * win.wo * cout);
    let (zeros_in, zeros_out) = (vec![0.0f32; cin], vec![0.0f32; cout]);
    // Tile k's V (Bᵀ d B of its input patch) and Z (A dY Aᵀ of its output gradient).
    let v_tile = |k: usize, t: &mut [f32], vt: &mut [f32]| {
        let (b, r) = (k / per_img, k % per_img);
        let img = &x[b * img_in..(b + 1) * img_in];
        input_tile(img, s, (r / tw, r % tw), &zeros_in, t, vt);
    };
    let z_tile = |k: usize, q: &mut [f32], zt: &mut [f32]| {
        let (b, r) = (k / per_img, k % per_img);
        grad_tile(
            &dy[b * img_out..(b + 1) * img_out],
            s,
            (r / tw, r % tw),
            &zeros_out,
            q,
            zt,
        );
    };
    let plane = cin * cout;
    // Fixed groups of consecutive tiles (one per 128, at most 8, an even count from 2 up:
    // `even_count`; the count depends on the shape alone), each group in
    // equal cache-sized blocks on one thread (transforms, then 16 gemms accumulating into the
    // group's D), the groups' D added in group order.
    let groups = even_count((total / 128).clamp(1, 8));
    let d: Vec<f32> = {
        let per = total.div_ceil(groups);
        let parts: Vec<Vec<f32>> = (0..groups)
            .into_par_iter()
            .map(|gi| {
                let mut dg = vec![0.0f32; XI * plane];
                let mut vb = vec![0.0f32; TILES_PER_BLOCK * XI * cin];
                let mut zb = vec![0.0f32; TILES_PER_BLOCK * XI * cout];
                let (mut t, mut q) = (vec![0.0f32; XI * cin], vec![0.0f32; 8 * cout]);
                let (start, end) = ((gi * per).min(total), ((gi + 1) * per).min(total));
                // Blocks of equal size, none above TILES_PER_BLOCK (no small last block).
                let len = end - start;
                let step = len.div_ceil(len.div_ceil(TILES_PER_BLOCK).max(1)).max(1);
                for k0 in (start..end).step_by(step) {
                    let nt = step.min(end - k0);
                    for k in 0..nt {
                        v_tile(k0 + k, &mut t, &mut vb[k * XI * cin..(k + 1) * XI * cin]);
                        z_tile(k0 + k, &mut q, &mut zb[k * XI * cout..(k + 1) * XI * cout]);
                    }
                    for xi in 0..XI {
                        matmul_serial(
                            cin,
                            cout,
                            nt,
                            &mut dg[xi * plane..(xi + 1) * plane],
                            (cout, 1),
                            true,
                            &vb[xi * cin..],
                            (1, XI * cin),
                            &zb[xi * cout..],
                            (XI * cout, 1),
                        );
                    }
                }
                dg
            })
            .collect();
        let mut it = parts.into_iter();
        let mut d = it.next().expect("at least one group");
        for p in it {
            d.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        d
    };
    // dw[ky][kx] += Gᵀ D G, Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]]: the weight of
    // transformed position k for tap t along one axis.
    let gt = |t: usize, k: usize| -> f32 {
        [
            [1.0, 0.5, 0.5, 0.0],
            [0.0, 0.5, -0.5, 0.0],
            [0.0, 0.5, 0.5, 1.0],
        ][t][k]
    };
    dw.par_chunks_mut(plane).enumerate().for_each(|(tap, out)| {
        let (ky, kx) = (tap / 3, tap % 3);
        for xi in 0..XI {
            let f = gt(ky, xi / 4) * gt(kx, xi % 4);
            if f == 0.0 {
                continue;
            }
            let dxi = &d[xi * plane..(xi + 1) * plane];
            out.iter_mut().zip(dxi).for_each(|(o, v)| *o += f * v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower::kernels::Window;

    /// Direct loops: y[o] = Σ x[o + k − p] w[k], and the two gradients of Σ y·dy.
    fn reference(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        s: &ConvShape,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let win = s.win;
        let (cin, cout) = (win.c, s.cout);
        let mut y = vec![0.0f32; win.n * win.ho * win.wo * cout];
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; w.len()];
        for b in 0..win.n {
            for oy in 0..win.ho {
                for ox in 0..win.wo {
                    let o = ((b * win.ho + oy) * win.wo + ox) * cout;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let Some((iy, ix)) = win.src(oy, ox, ky, kx) else {
                                continue;
                            };
                            let i = ((b * win.h + iy) * win.w + ix) * cin;
                            for ci in 0..cin {
                                for co in 0..cout {
                                    let k = ((ky * 3 + kx) * cin + ci) * cout + co;
                                    y[o + co] += x[i + ci] * w[k];
                                    dx[i + ci] += dy[o + co] * w[k];
                                    dw[k] += x[i + ci] * dy[o + co];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2654435761).rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn close(what: &str, got: &[f32], want: &[f32]) {
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= 2e-5 * scale, "{what}[{i}]: {a} vs {b}");
        }
    }

    #[test]
    fn matches_direct_loops_in_all_three_passes() {
        // (n, h, w, cin, cout, (pt, pl), (ho, wo)): same padding with odd and even sides,
        // valid padding, uneven padding, more tiles than one block, and enough tiles for the
        // grouped kernel gradient.
        let cases = [
            (2, 7, 6, 8, 9, (1, 1), (7, 6)),
            (1, 6, 7, 10, 8, (0, 0), (4, 5)),
            (2, 5, 5, 8, 12, (2, 0), (6, 3)),
            (1, 23, 21, 9, 8, (1, 1), (23, 21)),
            // 720 tiles: the kernel gradient in several groups of blocks.
            (2, 40, 36, 8, 8, (1, 1), (40, 36)),
        ];
        for (n, h, w, cin, cout, (pt, pl), (ho, wo)) in cases {
            let win = Window {
                n,
                h,
                w,
                c: cin,
                kh: 3,
                kw: 3,
                sh: 1,
                sw: 1,
                dh: 1,
                dw: 1,
                pt,
                pl,
                ho,
                wo,
            };
            let s = ConvShape {
                win,
                cout,
                groups: 1,
            };
            assert!(fits(&s), "{s:?}");
            let x = values(n * h * w * cin, 1);
            let k = values(9 * cin * cout, 2);
            let dy = values(n * ho * wo * cout, 3);
            let (y0, dx0, dw0) = reference(&x, &k, &dy, &s);
            let mut y = vec![0.0f32; y0.len()];
            forward(&x, &k, None, &s, None, &mut y, false);
            close("y", &y, &y0);
            // The input gradient accumulates, or is written over what the buffer held, and
            // the kernel gradient accumulates.
            let mut dx = vec![1.0f32; x.len()];
            backward_input(&dy, &k, &s, &mut dx, true);
            dx.iter_mut().for_each(|v| *v -= 1.0);
            close("dx", &dx, &dx0);
            let mut dx = vec![f32::NAN; x.len()];
            backward_input(&dy, &k, &s, &mut dx, false);
            close("dx written", &dx, &dx0);
            let mut dw = vec![0.5f32; k.len()];
            backward_kernel(&x, &dy, &s, &mut dw);
            dw.iter_mut().for_each(|v| *v -= 0.5);
            close("dw", &dw, &dw0);
            // Bias and epilogue: relu(y + b).
            let b = values(cout, 4);
            let relu = |r: &mut [f32]| r.iter_mut().for_each(|v| *v = v.max(0.0));
            forward(&x, &k, Some(&b), &s, Some(&relu), &mut y, false);
            let want: Vec<f32> = y0
                .iter()
                .enumerate()
                .map(|(i, v)| (v + b[i % cout]).max(0.0))
                .collect();
            close("relu(y + b)", &y, &want);
        }
    }
}
