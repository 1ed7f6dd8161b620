//! The kernel network's CUDA kernels (src/lower/kernelnet/kernels.cu) run on the CPU: the
//! file is compiled as C with a loop standing in for the GPU's threads (every kernel is a
//! grid-stride loop whose iterations write disjoint outputs, so one thread visiting every
//! index computes what the GPU computes) and called through `dlopen`. Matmuls, which are
//! cuBLAS on the GPU, are the host backend's.

use se_compile::lower::kernelnet::backend::{
    col_chunks, Backend, BnParams, BnScalars, Gemm, Geom, Update, UpdateCfg,
};
use se_compile::lower::kernelnet::host::Host;
use std::ffi::{c_void, CString};

const SHIM: &str = "#include <math.h>\n#define KERNEL\n#define __global__\n#define __device__\nstatic const struct { long long x; } blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};\n";

type P = *const f32;
type M = *mut f32;

pub struct Emulated {
    lib: *mut c_void,
}

/// Compiles kernels.cu with the C compiler (`CC`, else `cc`) into a shared library.
pub fn build() -> Emulated {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let shim = dir.join("kernelnet_shim.h");
    std::fs::write(&shim, SHIM).expect("write shim");
    let so = dir.join(format!("libkernelnet_emulated_{}.so", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(&cc)
        .args([
            "-x", "c", "-std=c99", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-include",
        ])
        .arg(&shim)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/lower/kernelnet/kernels.cu"
        ))
        .arg("-o")
        .arg(&so)
        .arg("-lm")
        .output()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "kernels.cu does not compile as C:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = CString::new(so.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: dlopen of a library just built from our own source.
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!lib.is_null(), "dlopen {}", so.display());
    Emulated { lib }
}

impl Emulated {
    fn sym(&self, name: &str) -> *mut c_void {
        let n = CString::new(name).expect("no NUL");
        // SAFETY: looking up a symbol in a library we opened.
        let p = unsafe { libc::dlsym(self.lib, n.as_ptr()) };
        assert!(!p.is_null(), "kernel {name} missing from kernels.cu");
        p
    }
}

/// Calls kernel `$name` with the C signature `$ty`.
macro_rules! k {
    ($s:expr, $name:literal, $ty:ty, ($($arg:expr),* $(,)?)) => {{
        // SAFETY: `$ty` is the kernel's signature in kernels.cu, and the buffers hold what it
        // indexes (the same sizes the CUDA backend launches with).
        unsafe {
            let f: $ty = std::mem::transmute::<*mut c_void, $ty>($s.sym($name));
            f($($arg),*)
        }
    }};
}

fn total(n: usize) -> i32 {
    i32::try_from(n).expect("fits the kernels' 32-bit indices")
}

impl Backend for Emulated {
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
    fn len(&self, b: &Vec<f32>) -> usize {
        b.len()
    }
    fn synchronize(&self) {}
    fn gemm(&self, g: &Gemm, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>) {
        Host.gemm(g, a, b, c)
    }
    fn im2col(&self, x: &Vec<f32>, g: &Geom, fill: f32) -> Vec<f32> {
        let n = g.out_rows() * g.cols();
        let mut out = vec![f32::NAN; n];
        k!(
            self,
            "im2col",
            extern "C" fn(P, M, Geom, f32, i32),
            (x.as_ptr(), out.as_mut_ptr(), *g, fill, total(n))
        );
        out
    }
    fn col2im_acc(&self, dcols: &Vec<f32>, g: &Geom, dx: &mut Vec<f32>) {
        k!(
            self,
            "col2im_acc",
            extern "C" fn(P, M, Geom, i32),
            (dcols.as_ptr(), dx.as_mut_ptr(), *g, total(g.in_len()))
        );
    }
    fn taps_reduce(&self, cols: &Vec<f32>, g: &Geom, max: bool) -> (Vec<f32>, Vec<f32>) {
        let n = g.out_rows() * g.c as usize;
        let mut y = vec![f32::NAN; n];
        let mut arg = vec![f32::NAN; if max { n } else { 1 }];
        k!(
            self,
            "taps_reduce",
            extern "C" fn(P, M, M, Geom, i32, i32),
            (
                cols.as_ptr(),
                y.as_mut_ptr(),
                arg.as_mut_ptr(),
                *g,
                i32::from(max),
                total(n)
            )
        );
        if !max {
            arg.clear();
        }
        (y, arg)
    }
    fn taps_expand(&self, dy: &Vec<f32>, arg: &Vec<f32>, g: &Geom, max: bool) -> Vec<f32> {
        let n = g.out_rows() * g.taps() * g.c as usize;
        let mut d = vec![f32::NAN; n];
        let none = [0.0f32];
        let argp = if max { arg.as_ptr() } else { none.as_ptr() };
        k!(
            self,
            "taps_expand",
            extern "C" fn(P, P, M, Geom, i32, i32),
            (
                dy.as_ptr(),
                argp,
                d.as_mut_ptr(),
                *g,
                i32::from(max),
                total(n)
            )
        );
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
        if rows == 0 {
            return out;
        }
        let (chunks, chunk_rows) = col_chunks(groups, rows, c);
        let mut part = vec![f32::NAN; groups * chunks * c];
        let none = [0.0f32];
        let (bp, has_b) = b.map_or((none.as_ptr(), 0), |b| (b.as_ptr(), 1));
        k!(
            self,
            "col_partial",
            extern "C" fn(P, P, i32, i32, i32, i32, i32, M, i32),
            (
                a.as_ptr(),
                bp,
                has_b,
                rows as i32,
                c as i32,
                chunks as i32,
                chunk_rows as i32,
                part.as_mut_ptr(),
                total(part.len())
            )
        );
        k!(
            self,
            "col_finish",
            extern "C" fn(P, i32, i32, f32, M, i32),
            (
                part.as_ptr(),
                chunks as i32,
                c as i32,
                scale,
                out.as_mut_ptr(),
                total(groups * c)
            )
        );
        out
    }
    fn chan_affine(
        &self,
        u: &Vec<f32>,
        s: &Vec<f32>,
        vt: Option<(&Vec<f32>, &Vec<f32>)>,
        d: &Vec<f32>,
        c: usize,
        out: &mut Vec<f32>,
        accumulate: bool,
    ) {
        let none = [0.0f32];
        let (v, t, has_v) = vt.map_or((none.as_ptr(), none.as_ptr(), 0), |(v, t)| {
            (v.as_ptr(), t.as_ptr(), 1)
        });
        k!(
            self,
            "chan_affine",
            extern "C" fn(P, P, P, P, i32, P, i32, M, i32, i32),
            (
                u.as_ptr(),
                s.as_ptr(),
                v,
                t,
                has_v,
                d.as_ptr(),
                c as i32,
                out.as_mut_ptr(),
                i32::from(accumulate),
                total(u.len())
            )
        );
    }
    fn bn_coeffs(
        &self,
        stats: Option<(&Vec<f32>, &Vec<f32>, usize)>,
        p: &BnParams<Vec<f32>>,
        mm: &mut Vec<f32>,
        mv: &mut Vec<f32>,
        c: usize,
    ) -> [Vec<f32>; 4] {
        let mut o = [
            vec![f32::NAN; c],
            vec![f32::NAN; c],
            vec![f32::NAN; c],
            vec![f32::NAN; c],
        ];
        let none = [0.0f32];
        let (s1, s2, rows) = stats.map_or((none.as_ptr(), none.as_ptr(), 0), |(a, b, r)| {
            (a.as_ptr(), b.as_ptr(), r)
        });
        let sc = BnScalars::forward(stats.is_some(), rows, p);
        let [m, is, s, sh] = &mut o;
        k!(
            self,
            "bn_coeffs",
            extern "C" fn(P, P, P, P, M, M, M, M, M, M, BnScalars, i32),
            (
                s1,
                s2,
                p.gamma.map_or(none.as_ptr(), |g| g.as_ptr()),
                p.beta.map_or(none.as_ptr(), |b| b.as_ptr()),
                mm.as_mut_ptr(),
                mv.as_mut_ptr(),
                m.as_mut_ptr(),
                is.as_mut_ptr(),
                s.as_mut_ptr(),
                sh.as_mut_ptr(),
                sc,
                c as i32
            )
        );
        o
    }
    fn bn_back_coeffs(
        &self,
        sum_dy: &Vec<f32>,
        sum_dyx: &Vec<f32>,
        mean: &Vec<f32>,
        inv_std: &Vec<f32>,
        gamma: Option<&Vec<f32>>,
        dgamma: Option<&mut Vec<f32>>,
        dbeta: Option<&mut Vec<f32>>,
        rows: usize,
    ) -> [Vec<f32>; 3] {
        let c = mean.len();
        let mut o = [vec![f32::NAN; c], vec![f32::NAN; c], vec![f32::NAN; c]];
        let sc = BnScalars::backward(rows, gamma.is_some() && dgamma.is_some(), dbeta.is_some());
        let none = [0.0f32];
        let mut spare = ([0.0f32], [0.0f32]);
        let dg = dgamma.map_or(spare.0.as_mut_ptr(), |d| d.as_mut_ptr());
        let db = dbeta.map_or(spare.1.as_mut_ptr(), |d| d.as_mut_ptr());
        let [s, t, d] = &mut o;
        k!(
            self,
            "bn_back_coeffs",
            extern "C" fn(P, P, P, P, P, M, M, M, M, M, BnScalars, i32),
            (
                sum_dy.as_ptr(),
                sum_dyx.as_ptr(),
                mean.as_ptr(),
                inv_std.as_ptr(),
                gamma.map_or(none.as_ptr(), |g| g.as_ptr()),
                dg,
                db,
                s.as_mut_ptr(),
                t.as_mut_ptr(),
                d.as_mut_ptr(),
                sc,
                c as i32
            )
        );
        o
    }
    fn act(&self, x: &Vec<f32>, code: i32) -> Vec<f32> {
        let mut y = vec![f32::NAN; x.len()];
        k!(
            self,
            "act_fwd",
            extern "C" fn(P, M, i32, i32),
            (x.as_ptr(), y.as_mut_ptr(), code, total(x.len()))
        );
        y
    }
    fn act_back_acc(
        &self,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        code: i32,
        dx: &mut Vec<f32>,
    ) {
        k!(
            self,
            "act_back_acc",
            extern "C" fn(P, P, P, M, i32, i32),
            (
                x.as_ptr(),
                y.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                code,
                total(x.len())
            )
        );
    }
    fn softmax(&self, x: &Vec<f32>, c: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; x.len()];
        k!(
            self,
            "softmax_rows",
            extern "C" fn(P, M, i32, i32),
            (x.as_ptr(), y.as_mut_ptr(), c as i32, total(x.len() / c))
        );
        y
    }
    fn softmax_back_acc(&self, y: &Vec<f32>, dy: &Vec<f32>, c: usize, dx: &mut Vec<f32>) {
        k!(
            self,
            "softmax_back_acc",
            extern "C" fn(P, P, M, i32, i32),
            (
                y.as_ptr(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                c as i32,
                total(y.len() / c)
            )
        );
    }
    fn gate_mul(
        &self,
        x: &Vec<f32>,
        g: &Vec<f32>,
        n: usize,
        c: usize,
        out: &mut Vec<f32>,
        accumulate: bool,
    ) {
        let per = (x.len() / n) as i32;
        k!(
            self,
            "gate_mul",
            extern "C" fn(P, P, M, i32, i32, i32, i32),
            (
                x.as_ptr(),
                g.as_ptr(),
                out.as_mut_ptr(),
                per,
                c as i32,
                i32::from(accumulate),
                total(x.len())
            )
        );
    }
    fn bcast_rows_acc(&self, g: &Vec<f32>, n: usize, c: usize, scale: f32, out: &mut Vec<f32>) {
        let per = (out.len() / n) as i32;
        k!(
            self,
            "bcast_rows_acc",
            extern "C" fn(P, M, i32, i32, f32, i32),
            (
                g.as_ptr(),
                out.as_mut_ptr(),
                per,
                c as i32,
                scale,
                total(out.len())
            )
        );
    }
    fn mul(&self, a: &Vec<f32>, b: &Vec<f32>, out: &mut Vec<f32>, accumulate: bool) {
        k!(
            self,
            "mul",
            extern "C" fn(P, P, M, i32, i32),
            (
                a.as_ptr(),
                b.as_ptr(),
                out.as_mut_ptr(),
                i32::from(accumulate),
                total(a.len())
            )
        );
    }
    fn axpy(&self, x: &Vec<f32>, alpha: f32, out: &mut Vec<f32>) {
        k!(
            self,
            "axpy",
            extern "C" fn(P, f32, M, i32),
            (x.as_ptr(), alpha, out.as_mut_ptr(), total(x.len()))
        );
    }
    fn add_bias(&self, y: &mut Vec<f32>, b: &Vec<f32>) {
        let n = y.len();
        k!(
            self,
            "add_bias",
            extern "C" fn(M, P, i32, i32),
            (y.as_mut_ptr(), b.as_ptr(), b.len() as i32, total(n))
        );
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
        accumulate: bool,
    ) {
        k!(
            self,
            "col_copy",
            extern "C" fn(P, i32, i32, M, i32, i32, i32, i32, i32),
            (
                src.as_ptr(),
                src_c as i32,
                src_off as i32,
                dst.as_mut_ptr(),
                dst_c as i32,
                dst_off as i32,
                width as i32,
                i32::from(accumulate),
                total(rows * width)
            )
        );
    }
    fn update(
        &self,
        u: &Update,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) {
        let n = p.len();
        k!(
            self,
            "update",
            extern "C" fn(M, P, M, M, UpdateCfg, i32),
            (
                p.as_mut_ptr(),
                g.as_ptr(),
                m.as_mut_ptr(),
                v.as_mut_ptr(),
                UpdateCfg::of(u),
                total(n)
            )
        );
    }
}
