//! The kernel network's operations as launches of the kernels in `kernels.cu`, written once for
//! any `Device` that can hold buffers, multiply matrices and launch a kernel by name with a
//! list of arguments: the GPU (`cuda.rs`: cudarc, cuBLAS) and, in the tests, the same kernels
//! compiled as C and called on the host (`tests/emulated_gpu/`), so that the sizes, flags and
//! argument lists built here are checked without a GPU.

use super::backend::{
    Backend, BnParams, BnScalars, ConvLib, Gemm, Geom, Update, UpdateCfg, SUM_ROWS,
};
use crate::ir::ops::ActFn;
use std::ffi::c_void;

/// One kernel argument, in the kernel's parameter order.
pub enum Arg<'a, B> {
    Buf(&'a B),
    BufMut(&'a mut B),
    I32(i32),
    F32(f32),
    Geom(Geom),
    Bn(BnScalars),
    Upd(UpdateCfg),
}

pub trait Device {
    type Buf;
    /// A buffer of `n` elements that the caller fills completely.
    fn alloc(&self, n: usize) -> Self::Buf;
    fn zeros(&self, n: usize) -> Self::Buf;
    fn upload(&self, v: &[f32]) -> Self::Buf;
    fn download(&self, b: &Self::Buf) -> Vec<f32>;
    fn len(&self, b: &Self::Buf) -> usize;
    fn synchronize(&self);
    fn gemm(&self, g: &Gemm, a: &Self::Buf, b: &Self::Buf, c: &mut Self::Buf);
    /// Runs kernel `name` over `total` work items with `args` followed by `total` as an int.
    fn launch(&self, name: &'static str, total: usize, args: &mut [Arg<Self::Buf>]);
    /// The device's convolution library (cuDNN), if it has one.
    fn conv_lib(&self) -> Option<&dyn ConvLib<Self::Buf>> {
        None
    }
    /// The allocator's high-water marks (in use, reserved) in bytes, where it keeps them.
    fn memory_peak(&self) -> Option<(u64, u64)> {
        None
    }
}

/// The kernel parameter list CUDA's launch takes: one pointer per argument, to the argument's
/// value. `buf` gives the pointer for a buffer argument (to its device address); scalars point
/// into `args`, and the trailing `total` into `total`.
pub fn kernel_params<B>(
    args: &mut [Arg<B>],
    total: &mut i32,
    mut buf: impl FnMut(&B) -> *mut c_void,
) -> Vec<*mut c_void> {
    let mut p: Vec<*mut c_void> = args
        .iter_mut()
        .map(|a| match a {
            Arg::Buf(b) => buf(b),
            Arg::BufMut(b) => buf(b),
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
            Arg::Geom(v) => v as *mut Geom as *mut c_void,
            Arg::Bn(v) => v as *mut BnScalars as *mut c_void,
            Arg::Upd(v) => v as *mut UpdateCfg as *mut c_void,
        })
        .collect();
    p.push(total as *mut i32 as *mut c_void);
    p
}

/// The kernels index with 32-bit integers (see kernels.cu).
pub fn check_size(n: usize) {
    if n > i32::MAX as usize {
        panic!(
            "a tensor of {n} elements: the kernel network's CUDA kernels take at most 2^31 - 1; use a smaller --batch-size"
        );
    }
}

pub struct Kernels<D: Device> {
    pub d: D,
    /// Passed where a kernel's optional input is absent.
    none: D::Buf,
}

impl<D: Device> Kernels<D> {
    pub fn new(d: D) -> Kernels<D> {
        let none = d.zeros(1);
        Kernels { d, none }
    }

    /// The first pass of a column sum (see `col_partial` in kernels.cu): partial sums over
    /// chunks of SUM_ROWS rows, of a (mode 0), a·b (1) or both (2); a through an activation's
    /// derivative read off its output (`through`).
    #[allow(clippy::too_many_arguments)]
    fn first_pass(
        &self,
        a: &D::Buf,
        b: Option<&D::Buf>,
        through: Option<(&D::Buf, ActFn)>,
        mode: i32,
        groups: usize,
        rows: usize,
        c: usize,
    ) -> (D::Buf, Option<D::Buf>) {
        let chunks = rows.div_ceil(SUM_ROWS);
        let mut part = self.alloc(groups * chunks * c);
        let mut part2 = (mode == 2).then(|| self.alloc(groups * chunks * c));
        let mut spare = self.alloc(1);
        let [y, f] = self.through_args(through);
        self.run(
            "col_partial",
            groups * chunks * c,
            &mut [
                In(a),
                In(b.unwrap_or(&self.none)),
                y,
                f,
                I32(mode),
                I32(rows as i32),
                I32(c as i32),
                I32(chunks as i32),
                I32(SUM_ROWS as i32),
                Out(&mut part),
                Out(part2.as_mut().unwrap_or(&mut spare)),
            ],
        );
        (part, part2)
    }

    /// Further passes over (groups, left, C) partial sums until at most SUM_ROWS are left per
    /// column, then their scaled sum: many threads in every pass.
    fn finish_sums(
        &self,
        mut part: D::Buf,
        groups: usize,
        mut left: usize,
        c: usize,
        scale: f32,
    ) -> D::Buf {
        while left > SUM_ROWS {
            let (next, _) = self.first_pass(&part, None, None, 0, groups, left, c);
            part = next;
            left = left.div_ceil(SUM_ROWS);
        }
        let mut out = self.alloc(groups * c);
        self.run(
            "col_finish",
            groups * c,
            &mut [
                In(&part),
                I32(left as i32),
                I32(c as i32),
                F32(scale),
                Out(&mut out),
            ],
        );
        out
    }

    /// The (y, f) arguments of a kernel that reads dy through an activation's derivative
    /// (`through`: the activation's output and the activation), or the stand-in for an absent
    /// input and ACT_LINEAR.
    fn through_args<'a>(&'a self, through: Option<(&'a D::Buf, ActFn)>) -> [Arg<'a, D::Buf>; 2] {
        let (y, f) = through.unwrap_or((&self.none, ActFn::Linear));
        [In(y), I32(f.code())]
    }

    fn run(&self, name: &'static str, total: usize, args: &mut [Arg<D::Buf>]) {
        check_size(total);
        if total > 0 {
            self.d.launch(name, total, args);
        }
    }
}

use Arg::{Buf as In, BufMut as Out, F32, I32};

/// A boolean kernel argument.
fn fl<'a, B>(b: bool) -> Arg<'a, B> {
    I32(i32::from(b))
}

impl<D: Device> Backend for Kernels<D> {
    type Buf = D::Buf;
    fn upload(&self, v: &[f32]) -> D::Buf {
        check_size(v.len());
        self.d.upload(v)
    }
    fn download(&self, b: &D::Buf) -> Vec<f32> {
        self.d.download(b)
    }
    fn zeros(&self, n: usize) -> D::Buf {
        check_size(n);
        self.d.zeros(n)
    }
    fn alloc(&self, n: usize) -> D::Buf {
        check_size(n);
        self.d.alloc(n)
    }
    fn len(&self, b: &D::Buf) -> usize {
        self.d.len(b)
    }
    fn synchronize(&self) {
        self.d.synchronize()
    }
    fn gemm(&self, g: &Gemm, a: &D::Buf, b: &D::Buf, c: &mut D::Buf) {
        self.d.gemm(g, a, b, c)
    }

    fn im2col(&self, x: &D::Buf, g: &Geom, fill: f32) -> D::Buf {
        let total = g.out_rows() * g.cols();
        let mut out = self.alloc(total);
        self.run(
            "im2col",
            total,
            &mut [In(x), Out(&mut out), Arg::Geom(*g), F32(fill)],
        );
        out
    }
    fn col2im(&self, dcols: &D::Buf, g: &Geom, dx: &mut D::Buf, acc: bool) {
        self.run(
            "col2im",
            g.in_len(),
            &mut [In(dcols), Out(dx), Arg::Geom(*g), fl(acc)],
        );
    }
    fn taps_reduce(&self, cols: &D::Buf, g: &Geom, max: bool) -> (D::Buf, D::Buf) {
        let total = g.out_rows() * g.c as usize;
        let mut y = self.alloc(total);
        // The average writes no winners: a one-element stand-in, returned empty.
        let mut arg = self.alloc(if max { total } else { 1 });
        self.run(
            "taps_reduce",
            total,
            &mut [In(cols), Out(&mut y), Out(&mut arg), Arg::Geom(*g), fl(max)],
        );
        (y, if max { arg } else { self.zeros(0) })
    }
    fn taps_expand(&self, dy: &D::Buf, arg: &D::Buf, g: &Geom, max: bool) -> D::Buf {
        let total = g.out_rows() * g.taps() * g.c as usize;
        let mut d = self.alloc(total);
        let argp = if max { arg } else { &self.none };
        self.run(
            "taps_expand",
            total,
            &mut [In(dy), In(argp), Out(&mut d), Arg::Geom(*g), fl(max)],
        );
        d
    }
    fn col_sums(
        &self,
        a: &D::Buf,
        b: Option<&D::Buf>,
        groups: usize,
        rows: usize,
        c: usize,
        scale: f32,
    ) -> D::Buf {
        if rows == 0 {
            return self.zeros(groups * c);
        }
        let (part, _) = self.first_pass(a, b, None, i32::from(b.is_some()), groups, rows, c);
        self.finish_sums(part, groups, rows.div_ceil(SUM_ROWS), c, scale)
    }
    fn col_sums2(
        &self,
        a: &D::Buf,
        b: &D::Buf,
        through: Option<(&D::Buf, ActFn)>,
        rows: usize,
        c: usize,
    ) -> (D::Buf, D::Buf) {
        if rows == 0 {
            return (self.zeros(c), self.zeros(c));
        }
        let (p1, p2) = self.first_pass(a, Some(b), through, 2, 1, rows, c);
        let left = rows.div_ceil(SUM_ROWS);
        (
            self.finish_sums(p1, 1, left, c, 1.0),
            self.finish_sums(p2.expect("mode 2 writes both"), 1, left, c, 1.0),
        )
    }
    fn bn_back_apply(
        &self,
        dy: &D::Buf,
        through: Option<(&D::Buf, ActFn)>,
        [s, t, d]: [&D::Buf; 3],
        x: &D::Buf,
        c: usize,
        dx: &mut D::Buf,
        accumulate: bool,
    ) {
        let [y, f] = self.through_args(through);
        self.run(
            "bn_back_apply",
            self.d.len(dy),
            &mut [
                In(dy),
                y,
                f,
                In(s),
                In(x),
                In(t),
                In(d),
                I32(c as i32),
                Out(dx),
                fl(accumulate),
            ],
        );
    }
    fn chan_affine(
        &self,
        u: &D::Buf,
        s: &D::Buf,
        d: &D::Buf,
        c: usize,
        out: &mut D::Buf,
        act: ActFn,
    ) {
        self.run(
            "chan_affine",
            self.d.len(u),
            &mut [
                In(u),
                In(s),
                In(d),
                I32(c as i32),
                Out(out),
                I32(act.code()),
            ],
        );
    }
    fn bn_coeffs(
        &self,
        stats: Option<(&D::Buf, &D::Buf, usize)>,
        p: &BnParams<D::Buf>,
        mm: &mut D::Buf,
        mv: &mut D::Buf,
        c: usize,
    ) -> [D::Buf; 4] {
        let mut o = [self.alloc(c), self.alloc(c), self.alloc(c), self.alloc(c)];
        let (s1, s2, rows) = stats.unwrap_or((&self.none, &self.none, 0));
        let sc = BnScalars::forward(stats.is_some(), rows, p);
        let [m, is, s, sh] = &mut o;
        self.run(
            "bn_coeffs",
            c,
            &mut [
                In(s1),
                In(s2),
                In(p.gamma.unwrap_or(&self.none)),
                In(p.beta.unwrap_or(&self.none)),
                Out(mm),
                Out(mv),
                Out(m),
                Out(is),
                Out(s),
                Out(sh),
                Arg::Bn(sc),
            ],
        );
        if let Some(b) = p.conv_bias {
            let [_, _, s, sh] = &mut o;
            self.run(
                "bn_conv_bias",
                c,
                &mut [In(b), Out(mm), In(s), Out(sh), Arg::Bn(sc)],
            );
        }
        o
    }
    fn bn_back_coeffs(
        &self,
        sum_dy: &D::Buf,
        sum_dyx: &D::Buf,
        mean: &D::Buf,
        inv_std: &D::Buf,
        gamma: Option<&D::Buf>,
        dgamma: Option<&mut D::Buf>,
        dbeta: Option<&mut D::Buf>,
        rows: usize,
    ) -> [D::Buf; 3] {
        let c = self.d.len(mean);
        let mut o = [self.alloc(c), self.alloc(c), self.alloc(c)];
        let sc = BnScalars::backward(rows, gamma.is_some() && dgamma.is_some(), dbeta.is_some());
        // Absent outputs are never written (their flag is off); any buffer will do.
        let mut spare = (self.alloc(1), self.alloc(1));
        let dg = dgamma.unwrap_or(&mut spare.0);
        let db = dbeta.unwrap_or(&mut spare.1);
        let [s, t, d] = &mut o;
        self.run(
            "bn_back_coeffs",
            c,
            &mut [
                In(sum_dy),
                In(sum_dyx),
                In(mean),
                In(inv_std),
                In(gamma.unwrap_or(&self.none)),
                Out(dg),
                Out(db),
                Out(s),
                Out(t),
                Out(d),
                Arg::Bn(sc),
            ],
        );
        o
    }
    fn act(&self, x: &D::Buf, code: i32) -> D::Buf {
        let n = self.d.len(x);
        let mut y = self.alloc(n);
        self.run("act_fwd", n, &mut [In(x), Out(&mut y), I32(code)]);
        y
    }
    fn act_back(&self, x: &D::Buf, y: &D::Buf, dy: &D::Buf, code: i32, dx: &mut D::Buf, acc: bool) {
        let n = self.d.len(x);
        self.run(
            "act_back",
            n,
            &mut [In(x), In(y), In(dy), Out(dx), I32(code), fl(acc)],
        );
    }
    fn softmax(&self, x: &D::Buf, c: usize) -> D::Buf {
        let n = self.d.len(x);
        let mut y = self.alloc(n);
        self.run(
            "softmax_rows",
            n / c.max(1),
            &mut [In(x), Out(&mut y), I32(c as i32)],
        );
        y
    }
    fn softmax_back(&self, y: &D::Buf, dy: &D::Buf, c: usize, dx: &mut D::Buf, acc: bool) {
        let rows = self.d.len(y) / c.max(1);
        self.run(
            "softmax_back",
            rows,
            &mut [In(y), In(dy), Out(dx), I32(c as i32), fl(acc)],
        );
    }
    fn gate_mul(&self, x: &D::Buf, g: &D::Buf, n: usize, c: usize, out: &mut D::Buf, acc: bool) {
        let total = self.d.len(x);
        let per = (total / n.max(1)) as i32;
        self.run(
            "gate_mul",
            total,
            &mut [In(x), In(g), Out(out), I32(per), I32(c as i32), fl(acc)],
        );
    }
    fn bcast_rows(&self, g: &D::Buf, n: usize, c: usize, scale: f32, out: &mut D::Buf, acc: bool) {
        let total = self.d.len(out);
        let per = (total / n.max(1)) as i32;
        self.run(
            "bcast_rows",
            total,
            &mut [
                In(g),
                Out(out),
                I32(per),
                I32(c as i32),
                F32(scale),
                fl(acc),
            ],
        );
    }
    fn mul(&self, a: &D::Buf, b: &D::Buf, out: &mut D::Buf, acc: bool) {
        self.run("mul", self.d.len(a), &mut [In(a), In(b), Out(out), fl(acc)]);
    }
    fn axpy(&self, x: &D::Buf, alpha: f32, out: &mut D::Buf) {
        let linear = I32(ActFn::Linear.code());
        self.run(
            "axpy",
            self.d.len(x),
            &mut [In(x), F32(alpha), Out(out), linear],
        );
    }
    fn add_act(&self, x: &D::Buf, out: &mut D::Buf, act: ActFn) {
        let f = I32(act.code());
        self.run("axpy", self.d.len(x), &mut [In(x), F32(1.0), Out(out), f]);
    }
    fn add_bias(&self, y: &mut D::Buf, b: &D::Buf, act: ActFn) {
        let (total, c) = (self.d.len(y), self.d.len(b));
        let f = I32(act.code());
        self.run("add_bias", total, &mut [Out(y), In(b), I32(c as i32), f]);
    }
    fn gated_add(
        &self,
        x: &D::Buf,
        g: &D::Buf,
        r: &D::Buf,
        n: usize,
        c: usize,
        out: &mut D::Buf,
        act: ActFn,
    ) {
        let total = self.d.len(x);
        let per = (total / n.max(1)) as i32;
        self.run(
            "gated_add",
            total,
            &mut [
                In(x),
                In(g),
                In(r),
                Out(out),
                I32(per),
                I32(c as i32),
                I32(act.code()),
            ],
        );
    }
    fn col_copy(
        &self,
        src: &D::Buf,
        src_c: usize,
        src_off: usize,
        dst: &mut D::Buf,
        dst_c: usize,
        dst_off: usize,
        width: usize,
        rows: usize,
        acc: bool,
    ) {
        self.run(
            "col_copy",
            rows * width,
            &mut [
                In(src),
                I32(src_c as i32),
                I32(src_off as i32),
                Out(dst),
                I32(dst_c as i32),
                I32(dst_off as i32),
                I32(width as i32),
                fl(acc),
            ],
        );
    }
    fn transpose(&self, a: &D::Buf, rows: usize, cols: usize, out: &mut D::Buf, acc: bool) {
        self.run(
            "transpose",
            rows * cols,
            &mut [In(a), Out(out), I32(rows as i32), I32(cols as i32), fl(acc)],
        );
    }
    fn conv_lib(&self) -> Option<&dyn ConvLib<D::Buf>> {
        self.d.conv_lib()
    }
    fn memory_peak(&self) -> Option<(u64, u64)> {
        self.d.memory_peak()
    }
    fn update(&self, u: &Update, p: &mut D::Buf, g: &D::Buf, m: &mut D::Buf, v: &mut D::Buf) {
        let n = self.d.len(p);
        self.run(
            "update",
            n,
            &mut [Out(p), In(g), Out(m), Out(v), Arg::Upd(UpdateCfg::of(u))],
        );
    }
}
