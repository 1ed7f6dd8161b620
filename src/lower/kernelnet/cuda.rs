//! The kernel network's operations on a GPU: `kernels.cu` compiled by NVRTC when the device
//! is opened, and cuBLAS for the matmuls (fp32; cuBLAS' default math mode leaves TF32 off).

use super::backend::{col_chunks, Backend, BnParams, BnScalars, Gemm, Geom, Update, UpdateCfg};
use cudarc::cublas::{
    sys::cublasOperation_t, CudaBlas, Gemm as _, GemmConfig, StridedBatchedConfig,
};
use cudarc::driver::{
    CudaDevice, CudaFunction, CudaSlice, DeviceRepr, DeviceSlice, LaunchAsync, LaunchConfig,
};
use std::sync::Arc;

const SOURCE: &str = include_str!("kernels.cu");
const MODULE: &str = "se_compile_kernelnet";
const KERNELS: &[&str] = &[
    "im2col",
    "col2im_acc",
    "taps_reduce",
    "taps_expand",
    "col_partial",
    "col_finish",
    "chan_affine",
    "bn_coeffs",
    "bn_back_coeffs",
    "act_fwd",
    "act_back_acc",
    "softmax_rows",
    "softmax_back_acc",
    "gate_mul",
    "bcast_rows_acc",
    "mul",
    "axpy",
    "add_bias",
    "col_copy",
    "update",
];

// SAFETY: plain #[repr(C)] structs of 32-bit scalars, laid out as in kernels.cu.
unsafe impl DeviceRepr for Geom {}
unsafe impl DeviceRepr for BnScalars {}
unsafe impl DeviceRepr for UpdateCfg {}

/// Compiles the kernels to PTX: needs only libnvrtc, no GPU (the tests do it).
pub fn compile() -> Result<cudarc::nvrtc::Ptx, String> {
    cudarc::nvrtc::compile_ptx(SOURCE)
        .map_err(|e| format!("compiling the kernel network's CUDA kernels: {e:?}"))
}

pub struct CudaKernels {
    dev: Arc<CudaDevice>,
    blas: CudaBlas,
    /// Passed where a kernel's optional input is absent.
    none: CudaSlice<f32>,
}

/// cudarc allocates from the device's stream-ordered memory pool, which by default hands freed
/// memory back to the driver at every synchronisation (once per step, when the loss is read),
/// so each step would map its activations afresh. Keep it in the pool instead. Best effort: a
/// device without pools allocates synchronously and this does nothing.
fn keep_freed_memory(dev: &CudaDevice) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep: u64 = u64::MAX;
    // SAFETY: plain driver calls on a device the context of which is current (CudaDevice::new
    // binds it), writing to locals that outlive them.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, *dev.cu_device())
            == sys::CUresult::CUDA_SUCCESS
        {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut keep as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}

fn launch_cfg(total: usize) -> LaunchConfig {
    const THREADS: usize = 256;
    let blocks = total.div_ceil(THREADS).clamp(1, 1 << 20);
    LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn op(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl CudaKernels {
    pub fn new(dev: Arc<CudaDevice>) -> Result<CudaKernels, String> {
        if !dev.has_func(MODULE, KERNELS[0]) {
            let ptx = compile()?;
            dev.load_ptx(ptx, MODULE, KERNELS)
                .map_err(|e| format!("loading the kernel network's CUDA kernels: {e:?}"))?;
        }
        keep_freed_memory(&dev);
        let blas = CudaBlas::new(dev.clone()).map_err(|e| format!("cuBLAS: {e:?}"))?;
        let none = dev
            .alloc_zeros::<f32>(1)
            .map_err(|e| format!("CUDA: {e:?}"))?;
        Ok(CudaKernels { dev, blas, none })
    }

    fn f(&self, name: &str) -> CudaFunction {
        self.dev
            .get_func(MODULE, name)
            .unwrap_or_else(|| panic!("kernel {name} is loaded in CudaKernels::new"))
    }

    fn alloc(&self, n: usize) -> CudaSlice<f32> {
        check_size(n);
        // SAFETY: every caller writes all n elements before reading them.
        unsafe { self.dev.alloc::<f32>(n.max(1)) }.expect("GPU allocation")
    }
}

/// The kernels index with 32-bit integers (see kernels.cu).
fn check_size(n: usize) {
    if n > i32::MAX as usize {
        panic!(
            "a tensor of {n} elements: the kernel network's CUDA kernels take at most 2^31 - 1; use a smaller --batch-size"
        );
    }
}

fn done(r: Result<(), cudarc::driver::DriverError>, what: &str) {
    if let Err(e) = r {
        panic!("CUDA kernel {what}: {e:?}");
    }
}

/// Launches kernel `$name` over `$total` elements, `$total` passed last as a long long.
macro_rules! run {
    ($s:expr, $name:literal, $total:expr, ($($arg:expr),* $(,)?)) => {{
        let total: usize = $total;
        if total > 0 {
            // SAFETY: the argument list matches the kernel's signature in kernels.cu, and
            // every buffer holds the elements the kernel indexes for this `total`.
            let r = unsafe { $s.f($name).launch(launch_cfg(total), ($($arg,)* total as i32)) };
            done(r, $name);
        }
    }};
}

impl Backend for CudaKernels {
    type Buf = CudaSlice<f32>;
    fn upload(&self, v: &[f32]) -> CudaSlice<f32> {
        if v.is_empty() {
            return self.zeros(0);
        }
        check_size(v.len());
        self.dev.htod_sync_copy(v).expect("copy to the GPU")
    }
    fn download(&self, b: &CudaSlice<f32>) -> Vec<f32> {
        if b.len() == 0 {
            return vec![];
        }
        self.dev.dtoh_sync_copy(b).expect("copy from the GPU")
    }
    fn zeros(&self, n: usize) -> CudaSlice<f32> {
        check_size(n);
        if n == 0 {
            // No allocation of zero bytes (the driver refuses those).
            return self.dev.null().expect("CUDA null slice");
        }
        self.dev.alloc_zeros::<f32>(n).expect("GPU allocation")
    }
    fn len(&self, b: &CudaSlice<f32>) -> usize {
        b.len()
    }
    fn synchronize(&self) {
        self.dev.synchronize().expect("CUDA synchronize");
    }

    fn gemm(&self, g: &Gemm, a: &CudaSlice<f32>, b: &CudaSlice<f32>, c: &mut CudaSlice<f32>) {
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands.
        let cfg = GemmConfig {
            transa: op(g.tb),
            transb: op(g.ta),
            m: g.n as i32,
            n: g.m as i32,
            k: g.k as i32,
            alpha: g.alpha,
            lda: g.ldb as i32,
            ldb: g.lda as i32,
            beta: g.beta,
            ldc: g.ldc as i32,
        };
        // SAFETY: the layouts described by `g` lie within the buffers (the host backend
        // indexes the same elements and is bounds-checked in the tests).
        let r = unsafe {
            if g.batch == 1 {
                self.blas.gemm(cfg, b, a, c)
            } else {
                self.blas.gemm_strided_batched(
                    StridedBatchedConfig {
                        gemm: cfg,
                        batch_size: g.batch as i32,
                        stride_a: g.sb as i64,
                        stride_b: g.sa as i64,
                        stride_c: g.sc as i64,
                    },
                    b,
                    a,
                    c,
                )
            }
        };
        r.unwrap_or_else(|e| panic!("cuBLAS sgemm {g:?}: {e:?}"));
    }

    fn im2col(&self, x: &CudaSlice<f32>, g: &Geom, fill: f32) -> CudaSlice<f32> {
        let total = g.out_rows() * g.cols();
        let mut out = self.alloc(total);
        run!(self, "im2col", total, (x, &mut out, *g, fill));
        out
    }
    fn col2im_acc(&self, dcols: &CudaSlice<f32>, g: &Geom, dx: &mut CudaSlice<f32>) {
        run!(self, "col2im_acc", g.in_len(), (dcols, dx, *g));
    }
    fn taps_reduce(
        &self,
        cols: &CudaSlice<f32>,
        g: &Geom,
        max: bool,
    ) -> (CudaSlice<f32>, CudaSlice<f32>) {
        let total = g.out_rows() * g.c as usize;
        let mut y = self.alloc(total);
        let mut arg = if max {
            self.alloc(total)
        } else {
            self.zeros(0)
        };
        let argp = if max { &mut arg } else { &mut self.alloc(1) };
        run!(
            self,
            "taps_reduce",
            total,
            (cols, &mut y, argp, *g, i32::from(max))
        );
        (y, arg)
    }
    fn taps_expand(
        &self,
        dy: &CudaSlice<f32>,
        arg: &CudaSlice<f32>,
        g: &Geom,
        max: bool,
    ) -> CudaSlice<f32> {
        let total = g.out_rows() * g.taps() * g.c as usize;
        let mut d = self.alloc(total);
        let argp = if max { arg } else { &self.none };
        run!(
            self,
            "taps_expand",
            total,
            (dy, argp, &mut d, *g, i32::from(max))
        );
        d
    }
    fn col_sums(
        &self,
        a: &CudaSlice<f32>,
        b: Option<&CudaSlice<f32>>,
        groups: usize,
        rows: usize,
        c: usize,
        scale: f32,
    ) -> CudaSlice<f32> {
        let mut out = self.zeros(groups * c);
        if rows == 0 {
            return out;
        }
        let (chunks, chunk_rows) = col_chunks(groups, rows, c);
        let mut part = self.alloc(groups * chunks * c);
        let (bp, has_b) = match b {
            Some(b) => (b, 1i32),
            None => (&self.none, 0),
        };
        run!(
            self,
            "col_partial",
            groups * chunks * c,
            (
                a,
                bp,
                has_b,
                rows as i32,
                c as i32,
                chunks as i32,
                chunk_rows as i32,
                &mut part
            )
        );
        run!(
            self,
            "col_finish",
            groups * c,
            (&part, chunks as i32, c as i32, scale, &mut out)
        );
        out
    }
    fn chan_affine(
        &self,
        u: &CudaSlice<f32>,
        s: &CudaSlice<f32>,
        vt: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
        d: &CudaSlice<f32>,
        c: usize,
        out: &mut CudaSlice<f32>,
        accumulate: bool,
    ) {
        let (v, t, has_v) = match vt {
            Some((v, t)) => (v, t, 1i32),
            None => (&self.none, &self.none, 0),
        };
        run!(
            self,
            "chan_affine",
            u.len(),
            (u, s, v, t, has_v, d, c as i32, out, i32::from(accumulate))
        );
    }
    fn bn_coeffs(
        &self,
        stats: Option<(&CudaSlice<f32>, &CudaSlice<f32>, usize)>,
        p: &BnParams<CudaSlice<f32>>,
        mm: &mut CudaSlice<f32>,
        mv: &mut CudaSlice<f32>,
        c: usize,
    ) -> [CudaSlice<f32>; 4] {
        let mut o = [self.alloc(c), self.alloc(c), self.alloc(c), self.alloc(c)];
        let (s1, s2, rows) = match stats {
            Some((a, b, r)) => (a, b, r),
            None => (&self.none, &self.none, 0),
        };
        let sc = BnScalars::forward(stats.is_some(), rows, p);
        let [m, is, s, sh] = &mut o;
        // SAFETY: as in `run!`; this kernel takes the channel count last, as an int.
        let r = unsafe {
            self.f("bn_coeffs").launch(
                launch_cfg(c),
                (
                    s1,
                    s2,
                    p.gamma.unwrap_or(&self.none),
                    p.beta.unwrap_or(&self.none),
                    mm,
                    mv,
                    m,
                    is,
                    s,
                    sh,
                    sc,
                    c as i32,
                ),
            )
        };
        done(r, "bn_coeffs");
        o
    }
    fn bn_back_coeffs(
        &self,
        sum_dy: &CudaSlice<f32>,
        sum_dyx: &CudaSlice<f32>,
        mean: &CudaSlice<f32>,
        inv_std: &CudaSlice<f32>,
        gamma: Option<&CudaSlice<f32>>,
        dgamma: Option<&mut CudaSlice<f32>>,
        dbeta: Option<&mut CudaSlice<f32>>,
        rows: usize,
    ) -> [CudaSlice<f32>; 3] {
        let c = mean.len();
        let mut o = [self.alloc(c), self.alloc(c), self.alloc(c)];
        let sc = BnScalars::backward(rows, gamma.is_some() && dgamma.is_some(), dbeta.is_some());
        // Absent outputs are never written (their flag is off); any buffer will do.
        let mut spare = (self.alloc(1), self.alloc(1));
        let dg = dgamma.unwrap_or(&mut spare.0);
        let db = dbeta.unwrap_or(&mut spare.1);
        let [s, t, d] = &mut o;
        // SAFETY: as in `run!`; this kernel takes the channel count last, as an int.
        let r = unsafe {
            self.f("bn_back_coeffs").launch(
                launch_cfg(c),
                (
                    sum_dy,
                    sum_dyx,
                    mean,
                    inv_std,
                    gamma.unwrap_or(&self.none),
                    dg,
                    db,
                    s,
                    t,
                    d,
                    sc,
                    c as i32,
                ),
            )
        };
        done(r, "bn_back_coeffs");
        o
    }
    fn act(&self, x: &CudaSlice<f32>, code: i32) -> CudaSlice<f32> {
        let mut y = self.alloc(x.len());
        run!(self, "act_fwd", x.len(), (x, &mut y, code));
        y
    }
    fn act_back_acc(
        &self,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        code: i32,
        dx: &mut CudaSlice<f32>,
    ) {
        run!(self, "act_back_acc", x.len(), (x, y, dy, dx, code));
    }
    fn softmax(&self, x: &CudaSlice<f32>, c: usize) -> CudaSlice<f32> {
        let mut y = self.alloc(x.len());
        run!(
            self,
            "softmax_rows",
            x.len() / c.max(1),
            (x, &mut y, c as i32)
        );
        y
    }
    fn softmax_back_acc(
        &self,
        y: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        c: usize,
        dx: &mut CudaSlice<f32>,
    ) {
        run!(
            self,
            "softmax_back_acc",
            y.len() / c.max(1),
            (y, dy, dx, c as i32)
        );
    }
    fn gate_mul(
        &self,
        x: &CudaSlice<f32>,
        g: &CudaSlice<f32>,
        n: usize,
        c: usize,
        out: &mut CudaSlice<f32>,
        accumulate: bool,
    ) {
        let per = (x.len() / n.max(1)) as i32;
        run!(
            self,
            "gate_mul",
            x.len(),
            (x, g, out, per, c as i32, i32::from(accumulate))
        );
    }
    fn bcast_rows_acc(
        &self,
        g: &CudaSlice<f32>,
        n: usize,
        c: usize,
        scale: f32,
        out: &mut CudaSlice<f32>,
    ) {
        let total = out.len();
        let per = (total / n.max(1)) as i32;
        run!(
            self,
            "bcast_rows_acc",
            total,
            (g, out, per, c as i32, scale)
        );
    }
    fn mul(
        &self,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        accumulate: bool,
    ) {
        run!(self, "mul", a.len(), (a, b, out, i32::from(accumulate)));
    }
    fn axpy(&self, x: &CudaSlice<f32>, alpha: f32, out: &mut CudaSlice<f32>) {
        run!(self, "axpy", x.len(), (x, alpha, out));
    }
    fn add_bias(&self, y: &mut CudaSlice<f32>, b: &CudaSlice<f32>) {
        let total = y.len();
        run!(self, "add_bias", total, (y, b, b.len() as i32));
    }
    fn col_copy(
        &self,
        src: &CudaSlice<f32>,
        src_c: usize,
        src_off: usize,
        dst: &mut CudaSlice<f32>,
        dst_c: usize,
        dst_off: usize,
        width: usize,
        rows: usize,
        accumulate: bool,
    ) {
        run!(
            self,
            "col_copy",
            rows * width,
            (
                src,
                src_c as i32,
                src_off as i32,
                dst,
                dst_c as i32,
                dst_off as i32,
                width as i32,
                i32::from(accumulate)
            )
        );
    }
    fn update(
        &self,
        u: &Update,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
    ) {
        let cfg = UpdateCfg::of(u);
        let total = p.len();
        run!(self, "update", total, (p, g, m, v, cfg));
    }
}

#[cfg(test)]
mod tests {
    /// NVRTC (no GPU needed) accepts kernels.cu: run with `--features cuda` where libnvrtc is
    /// on the library path (scripts/build-cuda.sh's environment).
    #[test]
    fn kernels_compile_with_nvrtc() {
        let ptx = super::compile().unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        for k in super::KERNELS {
            assert!(
                text.contains(&format!(".entry {k}(")),
                "no entry point for {k}"
            );
        }
    }
}
