//! The project's own CPU kernels on channels-last (NHWC) f32 slices: convolution as im2col +
//! gemm over rayon threads, fused BatchNorm, pooling. Pure functions, so tests compare them with
//! direct loops; `ops.rs` wires them into dfdx's tape.

use super::winograd;
pub use super::winograd::Epilogue;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per parallel task in row-wise loops: big enough to amortise scheduling.
const ROWS_PER_TASK: usize = 256;

/// Which gemm runs `matmul`, decided once per process: gemm 0.19 (AVX-512 kernels) on CPUs
/// with AVX-512F, gemm 0.15 elsewhere (README, CPU speed, has the measurements);
/// `SE_COMPILE_GEMM=0.15` or `=0.19` overrides it.
pub fn use_gemm019() -> bool {
    static CHOICE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("SE_COMPILE_GEMM").as_deref() {
        Ok("0.15") => false,
        Ok("0.19") => true,
        _ => {
            #[cfg(target_arch = "x86_64")]
            {
                std::is_x86_feature_detected!("avx512f")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        }
    })
}

/// `dst[m x n] (+)= a[m x k] * b[k x n]`, every operand with its own row and column stride,
/// on all of rayon's threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    d_s: (usize, usize),
    accumulate: bool,
    a: &[f32],
    a_s: (usize, usize),
    b: &[f32],
    b_s: (usize, usize),
) {
    let threads = rayon::current_num_threads();
    let d = (dst.as_mut_ptr(), dst.len());
    // SAFETY: `dst` is initialised, so accumulating reads only initialised values.
    unsafe { matmul_on(threads, m, n, k, d, d_s, accumulate, a, a_s, b, b_s) }
}

/// `matmul` on the calling thread alone, for kernels that run many small products in
/// parallel themselves.
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    d_s: (usize, usize),
    accumulate: bool,
    a: &[f32],
    a_s: (usize, usize),
    b: &[f32],
    b_s: (usize, usize),
) {
    let d = (dst.as_mut_ptr(), dst.len());
    // SAFETY: `dst` is initialised, so accumulating reads only initialised values.
    unsafe { matmul_on(1, m, n, k, d, d_s, accumulate, a, a_s, b, b_s) }
}

/// `matmul_serial` into memory not yet written: `dst = a * b`, every element of the m x n
/// result written once, nothing read, so an output buffer needs no zero-fill first.
#[allow(clippy::too_many_arguments)]
pub fn matmul_serial_uninit(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [std::mem::MaybeUninit<f32>],
    d_s: (usize, usize),
    a: &[f32],
    a_s: (usize, usize),
    b: &[f32],
    b_s: (usize, usize),
) {
    let d = (dst.as_mut_ptr().cast::<f32>(), dst.len());
    // SAFETY: with `accumulate` false gemm only writes `dst`, and writing any f32 into a
    // MaybeUninit<f32> is sound.
    unsafe { matmul_on(1, m, n, k, d, d_s, false, a, a_s, b, b_s) }
}

/// The one call into gemm. `dst` is a pointer and its length in elements.
///
/// # Safety
/// `dst` must be valid for writes of `dst.1` elements, and initialised where `accumulate`
/// reads it.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_on(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    (dst, dst_len): (*mut f32, usize),
    (d_rs, d_cs): (usize, usize),
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| {
        if r == 0 || c == 0 {
            0
        } else {
            (r - 1) * rs + (c - 1) * cs
        }
    };
    assert!(
        last(d_rs, d_cs, m, n) < dst_len.max(1),
        "matmul: dst too small"
    );
    assert!(
        k == 0 || last(a_rs, a_cs, m, k) < a.len(),
        "matmul: lhs too small"
    );
    assert!(
        k == 0 || last(b_rs, b_cs, k, n) < b.len(),
        "matmul: rhs too small"
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside `dst` by the assert above.
                    unsafe { dst.add(i * d_rs + j * d_cs).write(0.0) };
                }
            }
        }
        return;
    }
    // The two gemm versions share one signature; only the crate differs.
    macro_rules! run {
        ($gemm:ident) => {
            // SAFETY: the asserts above keep every strided access inside the slices.
            unsafe {
                $gemm::gemm(
                    m,
                    n,
                    k,
                    dst,
                    d_cs as isize,
                    d_rs as isize,
                    accumulate,
                    a.as_ptr(),
                    a_cs as isize,
                    a_rs as isize,
                    b.as_ptr(),
                    b_cs as isize,
                    b_rs as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    if threads > 1 {
                        $gemm::Parallelism::Rayon(threads)
                    } else {
                        $gemm::Parallelism::None
                    },
                )
            }
        };
    }
    if use_gemm019() {
        run!(gemm019)
    } else {
        run!(gemm)
    }
}

/// Geometry of a 2-D convolution or pooling window over an NHWC tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Top and left padding (bottom/right padding only shows in `ho`, `wo`).
    pub pt: usize,
    pub pl: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Window {
    /// The window of a layer between batch shapes `ins` and `outs` (N, H, W, C): kernel,
    /// stride and dilation per axis (H, W), and the top and left padding.
    pub fn between(
        ins: &[usize],
        outs: &[usize],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        pad_top_left: [usize; 2],
    ) -> Window {
        Window {
            n: ins[0],
            h: ins[1],
            w: ins[2],
            c: ins[3],
            kh: kernel[0],
            kw: kernel[1],
            sh: stride[0],
            sw: stride[1],
            dh: dilation[0],
            dw: dilation[1],
            pt: pad_top_left[0],
            pl: pad_top_left[1],
            ho: outs[1],
            wo: outs[2],
        }
    }

    /// Input (y, x) for output (oy, ox) and tap (ky, kx), or None in the padding.
    #[inline]
    pub fn src(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.sh + ky * self.dh) as isize - self.pt as isize;
        let ix = (ox * self.sw + kx * self.dw) as isize - self.pl as isize;
        if iy < 0 || ix < 0 || iy >= self.h as isize || ix >= self.w as isize {
            None
        } else {
            Some((iy as usize, ix as usize))
        }
    }
    pub fn out_rows(&self) -> usize {
        self.n * self.ho * self.wo
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvShape {
    pub win: Window,
    pub cout: usize,
    pub groups: usize,
}

impl ConvShape {
    fn cin_g(&self) -> usize {
        self.win.c / self.groups
    }
    fn cout_g(&self) -> usize {
        self.cout / self.groups
    }
    /// Columns of one group's im2col matrix: kh * kw * cin/groups.
    fn kdim(&self) -> usize {
        self.win.kh * self.win.kw * self.cin_g()
    }
    /// A 1x1, stride-1, unpadded, ungrouped conv reads the input as its im2col matrix.
    pub fn direct(&self) -> bool {
        let w = &self.win;
        w.kh == 1
            && w.kw == 1
            && w.sh == 1
            && w.sw == 1
            && w.pt == 0
            && w.pl == 0
            && self.groups == 1
            && w.ho == w.h
            && w.wo == w.w
    }
}

/// One group's im2col matrix: row = output position, columns = (ky, kx, ci).
fn im2col(x: &[f32], s: &ConvShape, group: usize, cols: &mut [f32]) {
    let w = s.win;
    let (cig, kdim) = (s.cin_g(), s.kdim());
    let c0 = group * cig;
    cols.par_chunks_mut(kdim * w.wo)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, oy) = (row / w.ho, row % w.ho);
            for ox in 0..w.wo {
                let dst = &mut out[ox * kdim..(ox + 1) * kdim];
                for ky in 0..w.kh {
                    for kx in 0..w.kw {
                        let d = &mut dst[(ky * w.kw + kx) * cig..(ky * w.kw + kx + 1) * cig];
                        match w.src(oy, ox, ky, kx) {
                            Some((iy, ix)) => {
                                let base = ((b * w.h + iy) * w.w + ix) * w.c + c0;
                                d.copy_from_slice(&x[base..base + cig]);
                            }
                            None => d.fill(0.0),
                        }
                    }
                }
            }
        });
}

/// Adds one group's im2col gradient back into the input gradient; images run in parallel.
fn col2im(dcols: &[f32], s: &ConvShape, group: usize, dx: &mut [f32]) {
    let w = s.win;
    let (cig, kdim) = (s.cin_g(), s.kdim());
    let c0 = group * cig;
    dx.par_chunks_mut(w.h * w.w * w.c)
        .enumerate()
        .for_each(|(b, img)| {
            for oy in 0..w.ho {
                for ox in 0..w.wo {
                    let row = (b * w.ho + oy) * w.wo + ox;
                    let src = &dcols[row * kdim..(row + 1) * kdim];
                    for ky in 0..w.kh {
                        for kx in 0..w.kw {
                            if let Some((iy, ix)) = w.src(oy, ox, ky, kx) {
                                let base = (iy * w.w + ix) * w.c + c0;
                                let g = &src[(ky * w.kw + kx) * cig..(ky * w.kw + kx + 1) * cig];
                                for (d, v) in img[base..base + cig].iter_mut().zip(g) {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// The im2col buffer for one group; empty when the input is read directly.
fn cols_buffer(s: &ConvShape) -> Vec<f32> {
    if s.direct() {
        vec![]
    } else {
        vec![0.0f32; s.win.out_rows() * s.kdim()]
    }
}

/// Group `g`'s im2col matrix: the input itself for a direct conv, else filled into `cols`.
fn group_columns<'a>(x: &'a [f32], s: &ConvShape, g: usize, cols: &'a mut [f32]) -> &'a [f32] {
    if s.direct() {
        x
    } else {
        im2col(x, s, g, cols);
        cols
    }
}

/// Adds `b` to every row of a [rows, b.len()] matrix, rows in parallel.
pub fn add_row_bias(y: &mut [f32], b: &[f32]) {
    finish_rows(y, b.len(), Some(b), None, None);
}

/// Adds `bias` (when given) to every row of a [rows, c] matrix and runs `epilogue` on it, in
/// one pass, rows in parallel; `sums` (when given) takes each chunk of finished rows.
fn finish_rows(
    y: &mut [f32],
    c: usize,
    bias: Option<&[f32]>,
    epilogue: Option<Epilogue>,
    sums: Option<&ImageSums>,
) {
    if bias.is_none() && epilogue.is_none() && sums.is_none() {
        return;
    }
    y.par_chunks_mut(c * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(i, chunk)| {
            for row in chunk.chunks_mut(c) {
                finish_row(row, bias, epilogue);
            }
            if let Some(s) = sums {
                s.add(i * ROWS_PER_TASK, chunk);
            }
        });
}

/// One output row of a conv: `bias` added, then `epilogue` (a fused activation) run on it.
pub(crate) fn finish_row(row: &mut [f32], bias: Option<&[f32]>, epilogue: Option<Epilogue>) {
    if let Some(b) = bias {
        row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
    }
    if let Some(f) = epilogue {
        f(row);
    }
}

/// Outputs (rows x channels) from which an ungrouped conv runs in row blocks (`conv_blocked`)
/// rather than as one gemm over all rows: below it the output stays in cache between the gemm
/// and the bias pass anyway, and one large gemm packs the kernel once instead of per block.
const BLOCKED_MIN: usize = 1 << 20;
/// Output rows per block of `conv_blocked`.
const BLOCK_ROWS: usize = 256;

thread_local! {
    /// Per-thread im2col rows of `conv_blocked`.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The im2col rows r0.. of an ungrouped conv (as many as `cols` holds): row = output
/// position, columns = (ky, kx, ci).
fn im2col_rows(x: &[f32], s: &ConvShape, r0: usize, cols: &mut [f32]) {
    let w = s.win;
    let (c, kdim) = (w.c, s.kdim());
    for (k, dst) in cols.chunks_exact_mut(kdim).enumerate() {
        let r = r0 + k;
        let (b, oy, ox) = (r / (w.ho * w.wo), (r / w.wo) % w.ho, r % w.wo);
        for ky in 0..w.kh {
            for kx in 0..w.kw {
                let d = &mut dst[(ky * w.kw + kx) * c..(ky * w.kw + kx + 1) * c];
                match w.src(oy, ox, ky, kx) {
                    Some((iy, ix)) => {
                        let base = ((b * w.h + iy) * w.w + ix) * c;
                        d.copy_from_slice(&x[base..base + c]);
                    }
                    None => d.fill(0.0),
                }
            }
        }
    }
}

/// The im2col matrix of output rows r0..r0 + rows of an ungrouped conv: the input itself for a
/// direct 1x1 conv, else made in `buf` (grown as needed).
fn block_columns<'a>(
    x: &'a [f32],
    s: &ConvShape,
    r0: usize,
    rows: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let kdim = s.kdim();
    if s.direct() {
        return &x[r0 * kdim..(r0 + rows) * kdim];
    }
    if buf.len() < rows * kdim {
        buf.resize(rows * kdim, 0.0);
    }
    im2col_rows(x, s, r0, &mut buf[..rows * kdim]);
    &buf[..rows * kdim]
}

/// An ungrouped conv in blocks of output rows, blocks in parallel: each block's im2col rows
/// (none for a direct 1x1 conv), its gemm, and its bias and epilogue run on one thread while
/// the block is in cache, straight into the unfilled output.
fn conv_blocked(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    epilogue: Option<Epilogue>,
    sums: Option<&ImageSums>,
) -> Vec<f32> {
    let (m, kdim, cout) = (s.win.out_rows(), s.kdim(), s.cout);
    // SAFETY: each block's gemm writes every element of it.
    unsafe {
        par_filled(m * cout, BLOCK_ROWS * cout, |bi, out| {
            let (r0, rows) = (bi * BLOCK_ROWS, out.len() / cout);
            COLS.with(|cell| {
                let mut buf = cell.borrow_mut();
                let a = block_columns(x, s, r0, rows, &mut buf);
                matmul_serial_uninit(
                    rows,
                    cout,
                    kdim,
                    out,
                    (cout, 1),
                    a,
                    (kdim, 1),
                    weight,
                    (cout, 1),
                );
            });
            // SAFETY: the gemm above wrote every element of `out`.
            let out = assume_init(out);
            for row in out.chunks_exact_mut(cout) {
                finish_row(row, bias, epilogue);
            }
            if let Some(sums) = sums {
                sums.add(r0, out);
            }
        })
    }
}

/// A vector of `n` values made in parallel blocks of `block` elements (the last one shorter)
/// by `fill(block index, block)`, with no zero-fill first.
///
/// # Safety
/// `fill` must write every element of the block it is given.
pub(crate) unsafe fn par_filled(
    n: usize,
    block: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(n);
    y.spare_capacity_mut()[..n]
        .par_chunks_mut(block.max(1))
        .enumerate()
        .for_each(|(bi, out)| fill(bi, out));
    // SAFETY: the blocks cover all n elements, and the caller's `fill` wrote each.
    unsafe { y.set_len(n) };
    y
}

/// A block of `par_filled` as values, once every element of it is written.
///
/// # Safety
/// Every element of `out` must be written.
pub(crate) unsafe fn assume_init(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller says all are initialised.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// y = epilogue(conv(x, weight) + bias), `epilogue` (a fused activation) run on each output
/// row of `cout` values. Weight layout is Keras': [kh, kw, cin/groups, cout]. 3x3 stride-1
/// convs take the Winograd path (`winograd::applies`), the others im2col + gemm. `sums`
/// (when given) takes the output's blocks as they are finished, except on the Winograd path,
/// which leaves it incomplete.
pub fn conv2d_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    s: &ConvShape,
    epilogue: Option<Epilogue>,
    sums: Option<&ImageSums>,
) -> Vec<f32> {
    let m = s.win.out_rows();
    let (kdim, cog) = (s.kdim(), s.cout_g());
    if winograd::applies(s) {
        let mut y = vec![0.0f32; m * s.cout];
        winograd::forward(x, weight, bias, s, epilogue, &mut y, false);
        return y;
    }
    if s.groups == 1 && m * s.cout >= BLOCKED_MIN {
        return conv_blocked(x, weight, bias, s, epilogue, sums);
    }
    let mut y = vec![0.0f32; m * s.cout];
    let mut cols = cols_buffer(s);
    for g in 0..s.groups {
        let a = group_columns(x, s, g, &mut cols);
        matmul(
            m,
            cog,
            kdim,
            &mut y[g * cog..],
            (s.cout, 1),
            false,
            a,
            (kdim, 1),
            &weight[g * cog..],
            (s.cout, 1),
        );
    }
    finish_rows(&mut y, s.cout, bias, epilogue, sums);
    y
}

/// Zeros `d`, in chunks on every core.
pub fn zero(d: &mut [f32]) {
    d.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
}

/// `d[i] += v[i]` with `add`, else `d[i] = v[i]`: a gradient kernel's store into a buffer it
/// adds to or writes (`autodiff::InGrad::dst`), one loop each so that both vectorise.
#[inline(always)]
pub fn store(d: &mut [f32], add: bool, v: impl Iterator<Item = f32>) {
    if add {
        d.iter_mut().zip(v).for_each(|(d, v)| *d += v);
    } else {
        d.iter_mut().zip(v).for_each(|(d, v)| *d = v);
    }
}

/// Accumulates d(weight), d(bias) and, when `dx` is given, d(input): added into the buffer
/// with its flag true, written over it with false.
pub fn conv2d_backward(
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    s: &ConvShape,
    dx: Option<(&mut [f32], bool)>,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    let m = s.win.out_rows();
    let (kdim, cog) = (s.kdim(), s.cout_g());
    if let Some(db) = db {
        column_sums(dy, s.cout, db);
    }
    if winograd::applies(s) {
        winograd::backward_kernel(x, dy, s, dw);
        if let Some((dx, add)) = dx {
            winograd::backward_input(dy, weight, s, dx, add);
        }
        return;
    }
    // A small kernel gradient over many rows: in row blocks (see `kernel_grad_blocked`).
    let blocks = kernel_grad_blocks(s);
    if let Some(blocks) = blocks {
        kernel_grad_blocked(x, dy, s, blocks, dw);
        if dx.is_none() {
            return;
        }
    }
    let mut cols = if blocks.is_some() && s.direct() {
        vec![]
    } else {
        cols_buffer(s)
    };
    let mut dx = dx.map(|(dx, add)| {
        // col2im adds each column into place.
        if !add && !s.direct() {
            zero(dx);
        }
        (dx, add)
    });
    for g in 0..s.groups {
        if blocks.is_none() {
            let a = group_columns(x, s, g, &mut cols);
            // dW_g (kdim x cog) += cols^T (kdim x m) * dY_g (m x cog)
            matmul(
                kdim,
                cog,
                m,
                &mut dw[g * cog..],
                (s.cout, 1),
                true,
                a,
                (1, kdim),
                &dy[g * cog..],
                (s.cout, 1),
            );
        }
        if let Some((dx, add)) = dx.as_mut() {
            // dcols (m x kdim) = dY_g (m x cog) * W_g^T (cog x kdim)
            if s.direct() {
                matmul(
                    m,
                    kdim,
                    cog,
                    dx,
                    (kdim, 1),
                    *add,
                    &dy[g * cog..],
                    (s.cout, 1),
                    &weight[g * cog..],
                    (1, s.cout),
                );
            } else {
                matmul(
                    m,
                    kdim,
                    cog,
                    &mut cols,
                    (kdim, 1),
                    false,
                    &dy[g * cog..],
                    (s.cout, 1),
                    &weight[g * cog..],
                    (1, s.cout),
                );
                col2im(&cols, s, g, dx);
            }
        }
    }
}

/// What a convolution allocates besides its output and the gradients it is handed, in bytes:
/// `transient`, the largest amount alive at once and freed before it returns, and
/// `per_thread`, scratch each thread keeps between calls (`COLS`, Winograd's `SCRATCH`), grown
/// to the largest shape it has run. `se-compile memory` models the CPU network with these
/// (`lower::memory::cpu`); they follow the allocations of `conv2d_forward` (`backward`
/// false) and `conv2d_backward` (with the input's gradient when `dx`) branch for branch, and
/// tests/memory.rs checks the model against a counting allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workspace {
    pub transient: usize,
    pub per_thread: usize,
}

pub fn conv2d_workspace(s: &ConvShape, backward: bool, dx: bool) -> Workspace {
    let f = std::mem::size_of::<f32>();
    let cols = if s.direct() {
        0
    } else {
        s.win.out_rows() * s.kdim() * f
    };
    if winograd::applies(s) {
        return winograd::workspace(s, backward, dx);
    }
    if !backward {
        if s.groups == 1 && s.win.out_rows() * s.cout >= BLOCKED_MIN {
            let per_thread = if s.direct() {
                0
            } else {
                BLOCK_ROWS * s.kdim() * f
            };
            return Workspace {
                transient: 0,
                per_thread,
            };
        }
        return Workspace {
            transient: cols,
            per_thread: 0,
        };
    }
    match kernel_grad_blocks(s) {
        Some(blocks) => {
            let partials = blocks * s.kdim() * s.cout * f;
            let per = s.win.out_rows().div_ceil(blocks);
            let per_thread = if s.direct() { 0 } else { per * s.kdim() * f };
            let cols = if !dx || s.direct() { 0 } else { cols };
            Workspace {
                transient: partials.max(cols),
                per_thread,
            }
        }
        None => Workspace {
            transient: cols,
            per_thread: 0,
        },
    }
}

/// A count of fixed blocks made even (down) from 2 up, so that two cores share the blocks
/// evenly; it depends on the count alone, never on the thread count.
pub(crate) fn even_count(blocks: usize) -> usize {
    if blocks > 1 {
        blocks & !1
    } else {
        blocks
    }
}

/// Output rows per block of `kernel_grad_blocked`.
const GRAD_BLOCK_ROWS: usize = 2048;

/// How many row blocks the kernel gradient of an ungrouped conv takes, when it pays: gemm
/// splits only the kdim x cout result over threads, so a small result over many rows (the
/// 7x7 stem: 147 x 64 over 100,352 rows at 224x224, batch 8) leaves a core idle. The count
/// depends on the shape alone, never on the thread count, so the sums are the same everywhere.
fn kernel_grad_blocks(s: &ConvShape) -> Option<usize> {
    let (m, kdim) = (s.win.out_rows(), s.kdim());
    let blocks = even_count((m / GRAD_BLOCK_ROWS).min(16));
    (s.groups == 1 && blocks >= 2 && blocks * kdim * s.cout <= 1 << 22).then_some(blocks)
}

/// dW += colsᵀ dY as `blocks` partial products over consecutive rows, each block's im2col
/// rows made on its thread (none for a direct 1x1 conv), the partials added in block order.
fn kernel_grad_blocked(x: &[f32], dy: &[f32], s: &ConvShape, blocks: usize, dw: &mut [f32]) {
    let (m, kdim, cout) = (s.win.out_rows(), s.kdim(), s.cout);
    let per = m.div_ceil(blocks);
    let partials: Vec<Vec<f32>> = (0..blocks)
        .into_par_iter()
        .map(|bi| {
            let (r0, r1) = (bi * per, ((bi + 1) * per).min(m));
            let rows = r1.saturating_sub(r0);
            let mut part = vec![0.0f32; kdim * cout];
            if rows == 0 {
                return part;
            }
            COLS.with(|cell| {
                let mut buf = cell.borrow_mut();
                let a = block_columns(x, s, r0, rows, &mut buf);
                matmul_serial(
                    kdim,
                    cout,
                    rows,
                    &mut part,
                    (cout, 1),
                    false,
                    a,
                    (1, kdim),
                    &dy[r0 * cout..r1 * cout],
                    (cout, 1),
                );
            });
            part
        })
        .collect();
    for p in partials {
        dw.iter_mut().zip(&p).for_each(|(d, v)| *d += v);
    }
}

/// Partial sums are combined in chunk order, never in the order threads finish, so a seeded
/// run gives the same numbers every time (the resume test depends on it).
fn add_partial(mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    a
}

/// out[c] += sum over rows of x[row, c], rows in parallel.
pub fn column_sums(x: &[f32], c: usize, out: &mut [f32]) {
    for (o, p) in out.iter_mut().zip(channel_reduce(x, c, |v, _| v as f64)) {
        *o += p as f32;
    }
}

/// Per-channel sums of f(row value, channel) over rows, in f64.
fn channel_reduce(x: &[f32], c: usize, f: impl Fn(f32, usize) -> f64 + Sync) -> Vec<f64> {
    x.par_chunks(c * ROWS_PER_TASK)
        .map(|chunk| {
            let mut s = vec![0.0f64; c];
            for row in chunk.chunks(c) {
                for (j, v) in row.iter().enumerate() {
                    s[j] += f(*v, j);
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f64; c], add_partial)
}

/// Batch statistics of an [rows, c] tensor: mean and biased variance per channel, in one pass.
/// Each chunk of rows (256 at most) sums its deviations from its first row, d and d², in f32
/// (vectorised), and gives its count, mean and sum of squared deviations in f64; the chunks are
/// combined in order (Chan et al.'s parallel update). Shifting by a row of the data keeps the
/// variance exact where a mean much larger than the spread would cancel in E[x²] − E[x]².
pub fn batch_moments(x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / c.max(1);
    if rows == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let parts: Vec<(f64, Vec<f64>, Vec<f64>)> = x
        .par_chunks(c * ROWS_PER_TASK)
        .map(|chunk| {
            let n = (chunk.len() / c) as f64;
            let shift = &chunk[..c];
            let (mut s1, mut s2) = (vec![0.0f32; c], vec![0.0f32; c]);
            for row in chunk.chunks_exact(c) {
                for (((a, q), v), k) in s1.iter_mut().zip(s2.iter_mut()).zip(row).zip(shift) {
                    let d = v - k;
                    *a += d;
                    *q += d * d;
                }
            }
            let mean = (0..c).map(|j| shift[j] as f64 + s1[j] as f64 / n).collect();
            let m2 = (0..c)
                .map(|j| (s2[j] as f64 - (s1[j] as f64).powi(2) / n).max(0.0))
                .collect();
            (n, mean, m2)
        })
        .collect();
    let mut it = parts.into_iter();
    let (mut n, mut mean, mut m2) = it.next().expect("rows > 0");
    for (nb, mb, qb) in it {
        let tot = n + nb;
        for j in 0..c {
            let d = mb[j] - mean[j];
            mean[j] += d * nb / tot;
            m2[j] += qb[j] + d * d * n * nb / tot;
        }
        n = tot;
    }
    (
        mean.iter().map(|m| *m as f32).collect(),
        m2.iter().map(|q| (q / n) as f32).collect(),
    )
}

/// The per-channel affine map of a BatchNorm, y = x * scale + shift: scale = gamma * inv_std,
/// shift = beta − mean * scale.
pub fn bn_affine(
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(inv_std).map(|(g, s)| g * s).collect();
    let shift: Vec<f32> = (0..scale.len())
        .map(|j| beta[j] - mean[j] * scale[j])
        .collect();
    (scale, shift)
}

/// y = epilogue(gamma * (x - mean) * inv_std + beta), per channel (`bn_affine`), the
/// epilogue (a fused activation) run on each chunk of rows while it is in cache, and `sums`
/// (when given) taking the chunk after it.
pub fn bn_apply(
    x: &[f32],
    c: usize,
    (scale, shift): (&[f32], &[f32]),
    epilogue: Option<Epilogue>,
    sums: Option<&ImageSums>,
) -> Vec<f32> {
    // SAFETY: each block's rows are written in full before the epilogue reads them.
    unsafe {
        par_filled(x.len(), c * ROWS_PER_TASK, |bi, yo| {
            let xi = &x[bi * c * ROWS_PER_TASK..][..yo.len()];
            for (yr, xr) in yo.chunks_mut(c).zip(xi.chunks(c)) {
                for j in 0..c {
                    yr[j].write(xr[j] * scale[j] + shift[j]);
                }
            }
            let yo = assume_init(yo);
            if let Some(f) = epilogue {
                f(yo);
            }
            if let Some(s) = sums {
                s.add(bi * ROWS_PER_TASK, yo);
            }
        })
    }
}

/// BatchNorm backward in training mode (batch statistics): accumulates dgamma, dbeta, and dx
/// (added into the buffer with its flag true, written over it with false).
/// `dz(z, dy)` gives the gradient at the BatchNorm's output z = x * scale + shift (the
/// forward's own expression, `bn_affine`) from the one after a fused activation (`|_, g| g`
/// without one); z is recomputed from x in both passes instead of stored. Every per-channel
/// loop runs over zipped slices of length c, so it has no bounds checks and vectorises.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    x: &[f32],
    dy: &[f32],
    c: usize,
    (mean, inv_std): (&[f32], &[f32]),
    (scale, shift): (&[f32], &[f32]),
    dx: Option<(&mut [f32], bool)>,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dz: impl Fn(f32, f32) -> f32 + Sync,
) {
    let rows = (x.len() / c).max(1) as f32;
    let (mean, inv_std) = (&mean[..c], &inv_std[..c]);
    let affine = || scale[..c].iter().zip(&shift[..c]);
    // Each chunk of rows sums in f32 (vectorised; 256 rows at most), the chunks in f64, in
    // chunk order.
    let sums = x
        .par_chunks(c * ROWS_PER_TASK)
        .zip(dy.par_chunks(c * ROWS_PER_TASK))
        .map(|(xc, gc)| {
            let (mut s1, mut s2) = (vec![0.0f32; c], vec![0.0f32; c]);
            for (xr, gr) in xc.chunks_exact(c).zip(gc.chunks_exact(c)) {
                let per_channel = s1.iter_mut().zip(s2.iter_mut()).zip(xr.iter().zip(gr));
                for (((a, q), (x, g)), ((m, is), (sc, sh))) in
                    per_channel.zip(mean.iter().zip(inv_std).zip(affine()))
                {
                    let g = dz(x * sc + sh, *g);
                    *a += g;
                    *q += g * ((x - m) * is);
                }
            }
            s1.iter()
                .chain(&s2)
                .map(|v| *v as f64)
                .collect::<Vec<f64>>()
        })
        .collect::<Vec<_>>()
        .into_iter()
        .fold(vec![0.0f64; 2 * c], add_partial);
    let sum_dy: Vec<f32> = sums[..c].iter().map(|v| *v as f32).collect();
    let sum_dy_xhat: Vec<f32> = sums[c..].iter().map(|v| *v as f32).collect();
    for j in 0..c {
        dbeta[j] += sum_dy[j];
        dgamma[j] += sum_dy_xhat[j];
    }
    if let Some((dx, add)) = dx {
        // dx = a g − b x − k per channel: a = gamma inv_std (the forward's scale),
        // b = a inv_std Σ(g xhat) / rows, k = a Σg / rows − b mean.
        let a = &scale[..c];
        let b: Vec<f32> = (0..c)
            .map(|j| a[j] * inv_std[j] * sum_dy_xhat[j] / rows)
            .collect();
        let k: Vec<f32> = (0..c)
            .map(|j| a[j] * sum_dy[j] / rows - b[j] * mean[j])
            .collect();
        dx.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(
                x.par_chunks(c * ROWS_PER_TASK)
                    .zip(dy.par_chunks(c * ROWS_PER_TASK)),
            )
            .for_each(|(dxc, (xc, gc))| {
                for (dr, (xr, gr)) in dxc
                    .chunks_exact_mut(c)
                    .zip(xc.chunks_exact(c).zip(gc.chunks_exact(c)))
                {
                    let coef = a.iter().zip(&b).zip(&k).zip(affine());
                    let v = xr
                        .iter()
                        .zip(gr)
                        .zip(coef)
                        .map(|((x, g), (((a, b), k), (sc, sh)))| {
                            a * dz(x * sc + sh, *g) - b * x - k
                        });
                    store(dr, add, v);
                }
            });
    }
}

/// Max or average pooling. Max returns the argmax input index per output; padding never wins a
/// max and is left out of an average (Keras' `same` behaviour).
/// `keep_arg` false (no backward) skips the argmax: a max is then a plain vectorised maximum.
pub fn pool_forward(x: &[f32], w: &Window, max: bool, keep_arg: bool) -> (Vec<f32>, Vec<u32>) {
    let c = w.c;
    let mut y = vec![0.0f32; w.out_rows() * c];
    let mut arg = vec![u32::MAX; if max && keep_arg { y.len() } else { 0 }];
    let row_len = w.wo * c;
    // One output row (oy) per task; for each output position the taps are visited in order
    // and each tap's C channels compared or summed as one contiguous run.
    let fill = |row: usize, yo: &mut [f32], ao: &mut [u32]| {
        let (b, oy) = (row / w.ho, row % w.ho);
        for ox in 0..w.wo {
            let yv = &mut yo[ox * c..(ox + 1) * c];
            let mut count = 0usize;
            for ky in 0..w.kh {
                for kx in 0..w.kw {
                    let Some((iy, ix)) = w.src(oy, ox, ky, kx) else {
                        continue;
                    };
                    let base = ((b * w.h + iy) * w.w + ix) * c;
                    let xv = &x[base..base + c];
                    if max && !keep_arg {
                        if count == 0 {
                            yv.copy_from_slice(xv);
                        } else {
                            yv.iter_mut().zip(xv).for_each(|(s, v)| *s = s.max(*v));
                        }
                    } else if max {
                        let av = &mut ao[ox * c..(ox + 1) * c];
                        if count == 0 {
                            yv.copy_from_slice(xv);
                            for (ch, a) in av.iter_mut().enumerate() {
                                *a = (base + ch) as u32;
                            }
                        } else {
                            for ch in 0..c {
                                if xv[ch] > yv[ch] {
                                    yv[ch] = xv[ch];
                                    av[ch] = (base + ch) as u32;
                                }
                            }
                        }
                    } else {
                        yv.iter_mut().zip(xv).for_each(|(s, v)| *s += v);
                    }
                    count += 1;
                }
            }
            if max && count == 0 {
                yv.fill(f32::NEG_INFINITY);
            } else if !max {
                let inv = 1.0 / count.max(1) as f32;
                yv.iter_mut().for_each(|s| *s *= inv);
            }
        }
    };
    if max && keep_arg {
        y.par_chunks_mut(row_len)
            .zip(arg.par_chunks_mut(row_len))
            .enumerate()
            .for_each(|(row, (yo, ao))| fill(row, yo, ao));
    } else {
        y.par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(row, yo)| fill(row, yo, &mut []));
    }
    (y, arg)
}

/// Per-image channel sums of an output of N images × P rows × C channels, taken by the kernel
/// that writes the output, from each block of rows while it is in cache, so that an average
/// global pool needs no pass of its own over the output. Blocks come in any order, from any
/// thread; each block's sums per image are kept apart and added in row order at the end, so
/// the result does not depend on the threads.
pub struct ImageSums {
    rows_per_image: usize,
    c: usize,
    /// (first row, the sums of C channels over rows first.. up to an image's end or the
    /// block's), one per block and image it covers.
    parts: std::sync::Mutex<Vec<(usize, usize, Vec<f32>)>>,
}

impl ImageSums {
    /// For an output of images of `rows_per_image` rows of `c` channels.
    pub fn new(rows_per_image: usize, c: usize) -> ImageSums {
        ImageSums {
            rows_per_image,
            c,
            parts: Default::default(),
        }
    }

    /// Takes the finished rows `r0..` of the output (`block` holds whole rows).
    pub fn add(&self, r0: usize, block: &[f32]) {
        let (c, per) = (self.c, self.rows_per_image.max(1));
        let rows = block.len() / c.max(1);
        let mut local = vec![];
        let mut k = 0;
        while k < rows {
            let r = r0 + k;
            let end = ((r / per + 1) * per - r0).min(rows);
            let mut s = vec![0.0f32; c];
            for row in block[k * c..end * c].chunks_exact(c) {
                s.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            local.push((r, end - k, s));
            k = end;
        }
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(local);
    }

    /// The means (N, C) over each image's rows, or None when the blocks taken do not cover
    /// the N images' rows exactly once (a kernel that does not feed it).
    pub fn means(self, n: usize) -> Option<Vec<f32>> {
        let (c, per) = (self.c, self.rows_per_image);
        let mut parts = self.parts.into_inner().unwrap_or_else(|e| e.into_inner());
        parts.sort_unstable_by_key(|p| p.0);
        let mut next = 0;
        let mut acc = vec![0.0f64; n * c];
        for (r, rows, s) in &parts {
            if *r != next {
                return None;
            }
            next += rows;
            let b = r / per;
            acc[b * c..(b + 1) * c]
                .iter_mut()
                .zip(s)
                .for_each(|(a, v)| *a += *v as f64);
        }
        if per == 0 || next != n * per {
            return None;
        }
        let inv = 1.0 / per as f64;
        Some(acc.iter().map(|a| (a * inv) as f32).collect())
    }
}

/// Global average or max pooling of (N, P, C) into (N, C), images in parallel, each image read
/// once front to back (rows of C channels), so the inner loops run over contiguous channels.
/// Max also returns the argmax position p per output (as `u32`), for the backward.
pub fn global_pool_forward(x: &[f32], n: usize, c: usize, max: bool) -> (Vec<f32>, Vec<u32>) {
    let p = x.len().checked_div(n * c).unwrap_or(0);
    let mut y = vec![0.0f32; n * c];
    let mut arg = if max { vec![0u32; n * c] } else { vec![] };
    if p == 0 {
        return (y, arg);
    }
    if max {
        y.par_chunks_mut(c)
            .zip(arg.par_chunks_mut(c))
            .enumerate()
            .for_each(|(b, (yo, ao))| {
                let img = &x[b * p * c..(b + 1) * p * c];
                yo.copy_from_slice(&img[..c]);
                for (pos, row) in img.chunks_exact(c).enumerate().skip(1) {
                    for ch in 0..c {
                        if row[ch] > yo[ch] {
                            yo[ch] = row[ch];
                            ao[ch] = pos as u32;
                        }
                    }
                }
            });
    } else {
        let inv = 1.0 / p as f32;
        y.par_chunks_mut(c).enumerate().for_each(|(b, yo)| {
            let img = &x[b * p * c..(b + 1) * p * c];
            for row in img.chunks_exact(c) {
                for (s, v) in yo.iter_mut().zip(row) {
                    *s += v;
                }
            }
            yo.iter_mut().for_each(|s| *s *= inv);
        });
    }
    (y, arg)
}

/// dx += the gradient of `global_pool_forward`: dy / P to every position (average), or dy to
/// the argmax position (max). Images in parallel.
pub fn global_pool_backward(dy: &[f32], c: usize, max: bool, arg: &[u32], dx: &mut [f32]) {
    let n = dy.len().checked_div(c).unwrap_or(0);
    if n == 0 {
        return;
    }
    let p = dx.len() / (n * c);
    let inv = 1.0 / p.max(1) as f32;
    dx.par_chunks_mut(p * c).enumerate().for_each(|(b, img)| {
        let g = &dy[b * c..(b + 1) * c];
        if max {
            let a = &arg[b * c..(b + 1) * c];
            for ch in 0..c {
                img[a[ch] as usize * c + ch] += g[ch];
            }
        } else {
            for row in img.chunks_exact_mut(c) {
                for (d, v) in row.iter_mut().zip(g) {
                    *d += v * inv;
                }
            }
        }
    });
}

pub fn pool_backward(dy: &[f32], w: &Window, max: bool, arg: &[u32], dx: &mut [f32]) {
    let c = w.c;
    if max {
        // Windows overlap, so scatter sequentially per image: each image owns its slice.
        let per_img_out = w.ho * w.wo * c;
        let per_img_in = w.h * w.w * c;
        dx.par_chunks_mut(per_img_in)
            .enumerate()
            .for_each(|(b, img)| {
                for o in b * per_img_out..(b + 1) * per_img_out {
                    let i = arg[o] as usize;
                    if i != u32::MAX as usize {
                        img[i - b * per_img_in] += dy[o];
                    }
                }
            });
        return;
    }
    dx.par_chunks_mut(w.h * w.w * c)
        .enumerate()
        .for_each(|(b, img)| {
            for oy in 0..w.ho {
                for ox in 0..w.wo {
                    let taps: Vec<(usize, usize)> = (0..w.kh)
                        .flat_map(|ky| (0..w.kw).map(move |kx| (ky, kx)))
                        .filter_map(|(ky, kx)| w.src(oy, ox, ky, kx))
                        .collect();
                    let inv = 1.0 / taps.len().max(1) as f32;
                    for ch in 0..c {
                        let g = dy[((b * w.ho + oy) * w.wo + ox) * c + ch] * inv;
                        for &(iy, ix) in &taps {
                            img[(iy * w.w + ix) * c + ch] += g;
                        }
                    }
                }
            }
        });
}
