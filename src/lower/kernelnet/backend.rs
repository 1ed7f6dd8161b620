//! What the kernel network asks of a device: buffers, cuBLAS-style matmuls and the project's
//! own kernels, with one meaning shared by every implementation. `host::Host` runs them as
//! plain loops (the reference the network's wiring is tested with); `launch::Kernels` runs
//! the kernels of `kernels.cu` on a device that can launch them (`cuda::Cuda`, or in the
//! tests the same kernels compiled for the host).

use crate::ir::ops::ActFn;

/// A window over an NHWC tensor: convolution taps, pooling, zero padding (a 1×1 window with
/// an offset). The im2col matrix has one row per output position and its columns ordered
/// (group, ky, kx, channel in group), which for one group is Keras' kernel row order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geom {
    pub n: i32,
    pub h: i32,
    pub w: i32,
    pub c: i32,
    pub kh: i32,
    pub kw: i32,
    pub sh: i32,
    pub sw: i32,
    pub dh: i32,
    pub dw: i32,
    pub pt: i32,
    pub pl: i32,
    pub ho: i32,
    pub wo: i32,
    pub groups: i32,
}

impl Geom {
    pub fn of(w: &crate::lower::kernels::Window, groups: usize) -> Geom {
        let i = |v: usize| v as i32;
        Geom {
            n: i(w.n),
            h: i(w.h),
            w: i(w.w),
            c: i(w.c),
            kh: i(w.kh),
            kw: i(w.kw),
            sh: i(w.sh),
            sw: i(w.sw),
            dh: i(w.dh),
            dw: i(w.dw),
            pt: i(w.pt),
            pl: i(w.pl),
            ho: i(w.ho),
            wo: i(w.wo),
            groups: i(groups),
        }
    }
    /// Whether a library that pads both sides equally (cuDNN) gives this window's output size:
    /// its padding is `pt`/`pl` on both sides, or the far side's shortfall is rows the window
    /// never reaches.
    pub fn equal_padding(&self) -> bool {
        let size =
            |len: i32, k: i32, s: i32, d: i32, p: i32| (len + 2 * p - d * (k - 1) - 1) / s + 1;
        size(self.h, self.kh, self.sh, self.dh, self.pt) == self.ho
            && size(self.w, self.kw, self.sw, self.dw, self.pl) == self.wo
    }
    pub fn out_rows(&self) -> usize {
        (self.n * self.ho * self.wo) as usize
    }
    pub fn taps(&self) -> usize {
        (self.kh * self.kw) as usize
    }
    /// Columns of the im2col matrix: taps × channels.
    pub fn cols(&self) -> usize {
        self.taps() * self.c as usize
    }
    pub fn in_len(&self) -> usize {
        (self.n * self.h * self.w * self.c) as usize
    }
    /// How many taps of im2col row `row` fall inside the image (at least 1): an average
    /// pool's divisor, as Keras leaves the padding out.
    pub fn taps_inside(&self, row: usize) -> usize {
        let (oy, ox) = (
            ((row / self.wo as usize) % self.ho as usize) as i32,
            (row % self.wo as usize) as i32,
        );
        (0..self.kh * self.kw)
            .filter(|t| self.src(oy, ox, t / self.kw, t % self.kw).is_some())
            .count()
            .max(1)
    }
    /// Input (y, x) of output (oy, ox) and tap (ky, kx), or None in the padding.
    pub fn src(&self, oy: i32, ox: i32, ky: i32, kx: i32) -> Option<(i32, i32)> {
        let iy = oy * self.sh + ky * self.dh - self.pt;
        let ix = ox * self.sw + kx * self.dw - self.pl;
        (iy >= 0 && ix >= 0 && iy < self.h && ix < self.w).then_some((iy, ix))
    }
}

/// Row-major C[b] = alpha · op(A[b]) · op(B[b]) + beta · C[b] for b < batch, where op(A) is
/// m×k (stored k×m when `ta`), op(B) is k×n (stored n×k when `tb`), and matrix b starts
/// `sa`, `sb`, `sc` elements after matrix b-1.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub sa: usize,
    pub sb: usize,
    pub sc: usize,
}

impl Gemm {
    /// One plain product (m×k)·(k×n) into C, overwriting it.
    pub fn plain(m: usize, n: usize, k: usize) -> Gemm {
        Gemm {
            m,
            n,
            k,
            ta: false,
            tb: false,
            lda: k,
            ldb: n,
            ldc: n,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            sa: 0,
            sb: 0,
            sc: 0,
        }
    }
}

/// The constants `kernels.cu` is compiled with, generated from the IR's lists so that the two
/// cannot disagree: `ACT_<NAME>` for each activation's code. A kernel that meets a code it has
/// no case for returns `NOT_A_CASE` (NaN), which parity and the training loop's loss check
/// report, instead of computing something.
pub fn kernel_defines() -> String {
    let mut s = String::from("#define NOT_A_CASE nanf(\"\")\n");
    for f in crate::ir::ops::ActFn::ALL {
        s.push_str(&format!(
            "#define ACT_{} {}\n",
            f.name().to_uppercase(),
            f.code()
        ));
    }
    s
}

/// A BatchNorm layer's γ and β (absent: 1 and 0), ε, and the moving averages' momentum.
pub struct BnParams<'a, Buf> {
    pub gamma: Option<&'a Buf>,
    pub beta: Option<&'a Buf>,
    pub eps: f32,
    pub momentum: f32,
    /// The bias of the convolution before it, which the convolution left out for the
    /// BatchNorm to take in (`KernelNet`'s `bias_in_bn`): the statistics are those of the
    /// input without it, the moving mean and the output those of the input with it.
    pub conv_bias: Option<&'a Buf>,
}

/// Adam (dfdx's formula, L2 weight decay added to the gradient) or SGD with classic momentum.
#[derive(Clone, Copy, Debug)]
pub enum Update {
    Adam {
        step: i32,
        lr: f32,
        b1: f32,
        b2: f32,
        eps: f32,
        wd: f32,
    },
    Sgd {
        lr: f32,
        momentum: f32,
        wd: f32,
    },
}

/// `BnScalars` of kernels.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BnScalars {
    pub rows: f32,
    pub eps: f32,
    pub momentum: f32,
    /// Bit 0: training (batch statistics), bit 1: gamma, bit 2: beta.
    pub flags: i32,
}

impl BnScalars {
    pub fn forward<Buf>(train: bool, rows: usize, p: &BnParams<Buf>) -> BnScalars {
        BnScalars {
            rows: rows as f32,
            eps: p.eps,
            momentum: p.momentum,
            flags: i32::from(train)
                | i32::from(p.gamma.is_some()) << 1
                | i32::from(p.beta.is_some()) << 2,
        }
    }
    pub fn backward(rows: usize, gamma: bool, beta: bool) -> BnScalars {
        BnScalars {
            rows: rows as f32,
            eps: 0.0,
            momentum: 0.0,
            flags: i32::from(gamma) << 1 | i32::from(beta) << 2,
        }
    }
}

/// `UpdateCfg` of kernels.cu: Adam's bias corrections 1 - beta^step are computed here.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UpdateCfg {
    pub lr: f32,
    pub b1: f32,
    pub b2: f32,
    pub eps: f32,
    pub wd: f32,
    pub momentum: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub kind: i32,
}

impl UpdateCfg {
    pub fn of(u: &Update) -> UpdateCfg {
        match *u {
            Update::Adam {
                step,
                lr,
                b1,
                b2,
                eps,
                wd,
            } => UpdateCfg {
                lr,
                b1,
                b2,
                eps,
                wd,
                momentum: 0.0,
                bc1: 1.0 - b1.powi(step),
                bc2: 1.0 - b2.powi(step),
                kind: 0,
            },
            Update::Sgd { lr, momentum, wd } => UpdateCfg {
                lr,
                b1: 0.0,
                b2: 0.0,
                eps: 0.0,
                wd,
                momentum,
                bc1: 1.0,
                bc2: 1.0,
                kind: 1,
            },
        }
    }
}

/// Into how many row chunks a weight gradient colsᵀ·dy over `k` rows is split: a matmul with
/// a small output and a long inner dimension leaves most of the GPU idle, so it is run as a
/// batch of matmuls over chunks of at least 1024 rows (a divisor of `k`, at most 64), whose
/// results are then summed.
pub fn split_k(k: usize) -> usize {
    (1..=64usize)
        .rev()
        .find(|s| k.is_multiple_of(*s) && k / s >= 1024)
        .unwrap_or(1)
}

/// Rows per thread in each pass of a column sum.
pub const SUM_ROWS: usize = 32;

/// The three computations of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvDir {
    Forward,
    /// The input gradient.
    Data,
    /// The filter gradient.
    Filter,
}

/// Which convolutions a convolution library (cuDNN) runs, `SE_COMPILE_CONV`. One rule for the
/// library (`cudnn::Cudnn`), its stand-in in the tests (`host::RefConvLib`) and the memory
/// model (`memory::kernelnet::auto_lib`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// What measured faster on the H200 in fp32 (NHWC): the forward of convolutions with more
    /// than one tap (3×3, 7×7); 1×1 convolutions and every gradient run as gemm, the backward
    /// making its im2col matrix afresh instead of keeping it from the forward.
    Auto,
    /// Every convolution and gradient the library has an algorithm for.
    All,
}

impl Policy {
    /// `SE_COMPILE_CONV` as the network reads it: `auto` (or unset) and `cudnn` give a policy,
    /// `gemm` none (im2col + cuBLAS only); another value is an error that says what to set.
    pub fn from_env() -> Result<Option<Policy>, String> {
        match std::env::var("SE_COMPILE_CONV").as_deref() {
            Ok("gemm") => Ok(None),
            Ok("auto") | Err(_) => Ok(Some(Policy::Auto)),
            Ok("cudnn") => Ok(Some(Policy::All)),
            Ok(other) => Err(format!(
                "SE_COMPILE_CONV={other}: use auto (the default: cuDNN where it measured faster), cudnn (cuDNN wherever it can) or gemm (im2col + cuBLAS only)"
            )),
        }
    }

    /// Whether the policy sends this computation to the library (which must also express the
    /// window: `Geom::equal_padding`).
    pub fn wants(self, g: &Geom, dir: ConvDir) -> bool {
        match self {
            Policy::All => true,
            Policy::Auto => dir == ConvDir::Forward && g.kh * g.kw > 1,
        }
    }
}

/// A library that runs convolutions straight on NHWC tensors (cuDNN on a GPU), with the
/// filter in (Cout, kh, kw, C/G) order: no im2col matrix.
pub trait ConvLib<Buf> {
    /// Whether it runs `dir` of the convolution `g` with `cout` outputs: it computes exactly
    /// that convolution (cuDNN pads both sides alike, so not every padding is one it has), has
    /// an algorithm for it, and is the faster way by its policy. The network runs the others
    /// as im2col and gemm.
    fn supports(&self, g: &Geom, cout: usize, dir: ConvDir) -> bool;
    /// y = x ⋆ w, overwritten.
    fn forward(&self, g: &Geom, cout: usize, x: &Buf, w: &Buf, y: &mut Buf);
    /// dx (+)= the input gradient of dy.
    fn backward_data(
        &self,
        g: &Geom,
        cout: usize,
        dy: &Buf,
        w: &Buf,
        dx: &mut Buf,
        accumulate: bool,
    );
    /// dw = the filter gradient, overwritten.
    fn backward_filter(&self, g: &Geom, cout: usize, x: &Buf, dy: &Buf, dw: &mut Buf);
}

/// Outputs are freshly made, or written into `out`, added to it when `accumulate`.
pub trait Backend {
    type Buf;
    fn upload(&self, v: &[f32]) -> Self::Buf;
    fn download(&self, b: &Self::Buf) -> Vec<f32>;
    fn zeros(&self, n: usize) -> Self::Buf;
    /// A buffer of `n` elements whose contents are unspecified, for a kernel to overwrite.
    fn alloc(&self, n: usize) -> Self::Buf;
    fn len(&self, b: &Self::Buf) -> usize;
    fn synchronize(&self);

    fn gemm(&self, g: &Gemm, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf);
    /// (out rows, taps·C) window taps of x; `fill` where a tap falls in the padding.
    fn im2col(&self, x: &Self::Buf, g: &Geom, fill: f32) -> Self::Buf;
    /// dx (+)= the im2col matrix's gradient summed back onto the input.
    fn col2im(&self, dcols: &Self::Buf, g: &Geom, dx: &mut Self::Buf, accumulate: bool);
    /// Max (with the winning tap) or average over the taps of an im2col matrix of one group;
    /// the average leaves out taps in the padding (Keras).
    fn taps_reduce(&self, cols: &Self::Buf, g: &Geom, max: bool) -> (Self::Buf, Self::Buf);
    /// The im2col-shaped gradient of `taps_reduce`.
    fn taps_expand(&self, dy: &Self::Buf, arg: &Self::Buf, g: &Geom, max: bool) -> Self::Buf;
    /// (groups, C): scale · Σ over each group's `rows` rows of a (times b).
    fn col_sums(
        &self,
        a: &Self::Buf,
        b: Option<&Self::Buf>,
        groups: usize,
        rows: usize,
        c: usize,
        scale: f32,
    ) -> Self::Buf;
    /// (Σa, Σa·b) over the rows of (rows, C), reading a and b once. With `through` = (y, f),
    /// a is first multiplied by the derivative of activation f read off its output y (f's
    /// `grad_from_output`): BatchNorm's backward through its fused activation.
    fn col_sums2(
        &self,
        a: &Self::Buf,
        b: &Self::Buf,
        through: Option<(&Self::Buf, ActFn)>,
        rows: usize,
        c: usize,
    ) -> (Self::Buf, Self::Buf);
    /// BatchNorm's backward: dx (+)= s[c]·g + t[c]·x + d[c] over (rows, C), where g is dy, or
    /// with `through` = (y, f) dy times the derivative of its fused activation f read off the
    /// output y.
    #[allow(clippy::too_many_arguments)]
    fn bn_back_apply(
        &self,
        dy: &Self::Buf,
        through: Option<(&Self::Buf, ActFn)>,
        std: [&Self::Buf; 3],
        x: &Self::Buf,
        c: usize,
        dx: &mut Self::Buf,
        accumulate: bool,
    );
    /// out = act(s[c]·u + d[c]) over (rows, C): BatchNorm's forward, with its fused
    /// activation (`ActFn::Linear` for none).
    fn chan_affine(
        &self,
        u: &Self::Buf,
        s: &Self::Buf,
        d: &Self::Buf,
        c: usize,
        out: &mut Self::Buf,
        act: ActFn,
    );
    /// mean, inv_std, scale, shift per channel. In training `stats` holds Σx and Σx² over
    /// `rows` rows and the moving statistics are updated; otherwise they are read.
    #[allow(clippy::too_many_arguments)]
    fn bn_coeffs(
        &self,
        stats: Option<(&Self::Buf, &Self::Buf, usize)>,
        p: &BnParams<Self::Buf>,
        moving_mean: &mut Self::Buf,
        moving_var: &mut Self::Buf,
        c: usize,
    ) -> [Self::Buf; 4];
    /// From Σdy and Σdy·x: accumulates dgamma and dbeta, returns the (s, t, d) of
    /// dx = s·dy + t·x + d.
    #[allow(clippy::too_many_arguments)]
    fn bn_back_coeffs(
        &self,
        sum_dy: &Self::Buf,
        sum_dyx: &Self::Buf,
        mean: &Self::Buf,
        inv_std: &Self::Buf,
        gamma: Option<&Self::Buf>,
        dgamma: Option<&mut Self::Buf>,
        dbeta: Option<&mut Self::Buf>,
        rows: usize,
    ) -> [Self::Buf; 3];
    fn act(&self, x: &Self::Buf, code: i32) -> Self::Buf;
    #[allow(clippy::too_many_arguments)]
    fn act_back(
        &self,
        x: &Self::Buf,
        y: &Self::Buf,
        dy: &Self::Buf,
        code: i32,
        dx: &mut Self::Buf,
        accumulate: bool,
    );
    fn softmax(&self, x: &Self::Buf, c: usize) -> Self::Buf;
    fn softmax_back(
        &self,
        y: &Self::Buf,
        dy: &Self::Buf,
        c: usize,
        dx: &mut Self::Buf,
        accumulate: bool,
    );
    /// y[n, p, c] = x[n, p, c] · g[n, c] (the SE gate), or accumulated into out.
    fn gate_mul(
        &self,
        x: &Self::Buf,
        g: &Self::Buf,
        n: usize,
        c: usize,
        out: &mut Self::Buf,
        accumulate: bool,
    );
    /// out[n, p, c] (+)= scale · g[n, c].
    #[allow(clippy::too_many_arguments)]
    fn bcast_rows(
        &self,
        g: &Self::Buf,
        n: usize,
        c: usize,
        scale: f32,
        out: &mut Self::Buf,
        accumulate: bool,
    );
    fn mul(&self, a: &Self::Buf, b: &Self::Buf, out: &mut Self::Buf, accumulate: bool);
    /// out += alpha · x.
    fn axpy(&self, x: &Self::Buf, alpha: f32, out: &mut Self::Buf);
    /// out = act(out + x): an Add's last operand, with the Add's fused activation.
    fn add_act(&self, x: &Self::Buf, out: &mut Self::Buf, act: ActFn);
    /// y[r, c] = act(y[r, c] + b[c]): a bias, with the layer's fused activation
    /// (`ActFn::Linear` for none).
    fn add_bias(&self, y: &mut Self::Buf, b: &Self::Buf, act: ActFn);
    /// out[n, p, c] = act(x[n, p, c] · g[n, c] + r[n, p, c]): an SE tail of one residual
    /// (`Layer::GatedAdd`) in one pass.
    #[allow(clippy::too_many_arguments)]
    fn gated_add(
        &self,
        x: &Self::Buf,
        g: &Self::Buf,
        r: &Self::Buf,
        n: usize,
        c: usize,
        out: &mut Self::Buf,
        act: ActFn,
    );
    /// dst[r, dst_off + j] (+)= src[r, src_off + j] for j < width, over `rows` rows.
    #[allow(clippy::too_many_arguments)]
    fn col_copy(
        &self,
        src: &Self::Buf,
        src_c: usize,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_c: usize,
        dst_off: usize,
        width: usize,
        rows: usize,
        accumulate: bool,
    );
    /// out (+)= aᵀ, for `a` of (rows, cols).
    fn transpose(
        &self,
        a: &Self::Buf,
        rows: usize,
        cols: usize,
        out: &mut Self::Buf,
        accumulate: bool,
    );
    fn update(
        &self,
        u: &Update,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    );
    /// The device's convolution library, if it has one; the network uses im2col and gemm for
    /// the convolutions it has not.
    fn conv_lib(&self) -> Option<&dyn ConvLib<Self::Buf>> {
        None
    }
    /// The allocator's high-water marks (in use, reserved) in bytes, where it keeps them.
    fn memory_peak(&self) -> Option<(u64, u64)> {
        None
    }
}
