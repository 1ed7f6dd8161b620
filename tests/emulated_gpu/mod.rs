//! The kernel network's CUDA kernels (src/lower/kernelnet/kernels.cu) run on the CPU, launched
//! with the very argument lists the GPU gets (`launch.rs`). The file is compiled as C with a
//! loop standing in for the GPU's threads (every kernel is a grid-stride loop whose iterations
//! write disjoint outputs, so one thread visiting every index computes what the GPU computes).
//! For each kernel the test generates a wrapper that, like cuLaunchKernel, takes an array of
//! pointers to the argument values. Matmuls, cuBLAS on the GPU, are the host backend's.

use se_compile::lower::kernelnet::backend::{Backend, ConvDir, ConvLib, Gemm, Geom};
use se_compile::lower::kernelnet::host::{Host, RefConvLib};
use se_compile::lower::kernelnet::launch::{kernel_params, Arg, Device, Kernels};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_void, CString};

const SHIM: &str = "#include <math.h>\n#define KERNEL\n#define __global__\n#define __device__\nstatic const struct { long long x; } blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};\n";

const SOURCE: &str = include_str!("../../src/lower/kernelnet/kernels.cu");

/// Each `KERNEL void name(T1 a, T2 b, …)` of the source as (name, [T1, T2, …]).
fn signatures(src: &str) -> Vec<(String, Vec<String>)> {
    src.split("KERNEL void ")
        .skip(1)
        .map(|rest| {
            let open = rest.find('(').expect("kernel parameter list");
            let close = rest.find(')').expect("kernel parameter list");
            let types = rest[open + 1..close]
                .split(',')
                .map(|p| {
                    let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
                    let cut = p.rfind([' ', '*']).expect("type and name");
                    p[..=cut].trim().to_string()
                })
                .collect();
            (rest[..open].trim().to_string(), types)
        })
        .collect()
}

/// `void name_packed(void** a)`: calls `name` with `*(T_i*)a[i]`, as cuLaunchKernel does.
fn wrappers(sigs: &[(String, Vec<String>)]) -> String {
    sigs.iter()
        .map(|(name, types)| {
            let args: Vec<String> = types
                .iter()
                .enumerate()
                .map(|(i, t)| format!("*({t}*)a[{i}]"))
                .collect();
            format!(
                "void {name}_packed(void** a) {{ {name}({}); }}\n",
                args.join(", ")
            )
        })
        .collect()
}

pub struct Emulated {
    lib: *mut c_void,
    /// A convolution library standing in for cuDNN, when the test asks for one.
    conv: Option<RefConvLib>,
    /// Per kernel: launches, and the bytes of the buffers they were given (more than one
    /// element: not the stand-in for an absent input), which an elementwise kernel or a column
    /// sum reads or writes whole.
    pub traffic: RefCell<BTreeMap<&'static str, (u64, u64)>>,
}

pub type EmulatedKernels = Kernels<Emulated>;

/// Compiles kernels.cu and the wrappers with the C compiler (`CC`, else `cc`), once per test
/// process.
pub fn build() -> EmulatedKernels {
    build_with(None)
}

/// With a reference convolution library in cuDNN's place.
pub fn build_with(conv: Option<RefConvLib>) -> EmulatedKernels {
    static LIB: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let lib = *LIB.get_or_init(|| compile_and_open() as usize);
    Kernels::new(Emulated {
        lib: lib as *mut c_void,
        conv,
        traffic: RefCell::new(BTreeMap::new()),
    })
}

impl ConvLib<HostBuf> for RefConvLib {
    fn supports(&self, g: &Geom, cout: usize, dir: ConvDir) -> bool {
        RefConvLib::supports(self, g, cout, dir)
    }
    fn forward(&self, g: &Geom, cout: usize, x: &HostBuf, w: &HostBuf, y: &mut HostBuf) {
        RefConvLib::forward(g, cout, &x.data, &w.data, &mut y.data)
    }
    fn backward_data(
        &self,
        g: &Geom,
        cout: usize,
        dy: &HostBuf,
        w: &HostBuf,
        dx: &mut HostBuf,
        acc: bool,
    ) {
        RefConvLib::backward_data(g, cout, &dy.data, &w.data, &mut dx.data, acc)
    }
    fn backward_filter(&self, g: &Geom, cout: usize, x: &HostBuf, dy: &HostBuf, dw: &mut HostBuf) {
        RefConvLib::backward_filter(g, cout, &x.data, &dy.data, &mut dw.data)
    }
}

fn compile_and_open() -> *mut c_void {
    let sigs = signatures(SOURCE);
    assert!(
        sigs.len() >= 20,
        "found {} kernels in kernels.cu",
        sigs.len()
    );
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let c_file = dir.join(format!("kernelnet_emulated_{}.c", std::process::id()));
    let defines = se_compile::lower::kernelnet::backend::kernel_defines();
    std::fs::write(
        &c_file,
        format!("{SHIM}\n{defines}{SOURCE}\n{}", wrappers(&sigs)),
    )
    .expect("write C");
    let so = dir.join(format!("libkernelnet_emulated_{}.so", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(&cc)
        .args([
            "-x", "c", "-std=c99", "-O2", "-Wall", "-Werror", "-shared", "-fPIC",
        ])
        .arg(&c_file)
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
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!lib.is_null(), "dlopen {}", so.display());
    lib
}

/// A host buffer and the address the kernels get for it (what a device pointer is on a GPU).
pub struct HostBuf {
    data: Vec<f32>,
    addr: *mut f32,
}

impl HostBuf {
    fn new(data: Vec<f32>) -> HostBuf {
        let mut b = HostBuf {
            data,
            addr: std::ptr::null_mut(),
        };
        b.addr = b.data.as_mut_ptr();
        b
    }
}

impl Device for Emulated {
    type Buf = HostBuf;
    fn alloc(&self, n: usize) -> HostBuf {
        // NaN, so that an element a kernel should have written but did not shows.
        HostBuf::new(vec![f32::NAN; n.max(1)])
    }
    fn zeros(&self, n: usize) -> HostBuf {
        HostBuf::new(vec![0.0; n])
    }
    fn upload(&self, v: &[f32]) -> HostBuf {
        HostBuf::new(v.to_vec())
    }
    fn download(&self, b: &HostBuf) -> Vec<f32> {
        b.data.clone()
    }
    fn len(&self, b: &HostBuf) -> usize {
        b.data.len()
    }
    fn synchronize(&self) {}
    fn gemm(&self, g: &Gemm, a: &HostBuf, b: &HostBuf, c: &mut HostBuf) {
        Host.gemm(g, &a.data, &b.data, &mut c.data)
    }
    fn conv_lib(&self) -> Option<&dyn ConvLib<HostBuf>> {
        self.conv.as_ref().map(|c| c as &dyn ConvLib<HostBuf>)
    }
    fn launch(&self, name: &'static str, total: usize, args: &mut [Arg<HostBuf>]) {
        let sym = CString::new(format!("{name}_packed")).expect("no NUL");
        // SAFETY: looking up a symbol in a library we opened.
        let f = unsafe { libc::dlsym(self.lib, sym.as_ptr()) };
        assert!(!f.is_null(), "kernel {name} missing from kernels.cu");
        let bytes: usize = args
            .iter()
            .map(|a| match a {
                Arg::Buf(b) => b.data.len(),
                Arg::BufMut(b) => b.data.len(),
                _ => 0,
            })
            .filter(|n| *n > 1)
            .sum();
        let mut traffic = self.traffic.borrow_mut();
        let e = traffic.entry(name).or_default();
        *e = (e.0 + 1, e.1 + 4 * bytes as u64);
        drop(traffic);
        let mut t = i32::try_from(total).expect("32-bit total");
        // A buffer argument is a pointer to its address, as a device pointer is on a GPU.
        let mut p = kernel_params(args, &mut t, |b| &b.addr as *const *mut f32 as *mut c_void);
        // SAFETY: the wrapper reads each argument as the type the kernel declares; `p` and what
        // it points to live until the call returns. A wrong list fails the parity tests.
        unsafe {
            let f: extern "C" fn(*mut *mut c_void) = std::mem::transmute(f);
            f(p.as_mut_ptr());
        }
    }
}

#[test]
fn kernel_signatures_are_read() {
    let sigs = signatures("KERNEL void k(const float* x, float *y, Geom g, int  n) {");
    assert_eq!(
        sigs,
        vec![(
            "k".to_string(),
            vec!["const float*", "float *", "Geom", "int"]
                .into_iter()
                .map(String::from)
                .collect()
        )]
    );
}

#[test]
fn every_kernel_fits_a_cudarc_launch() {
    // cudarc launches take at most 12 parameters, and `launch.rs` appends the work-item count
    // as the last one, an int.
    let sigs = signatures(SOURCE);
    assert!(sigs.len() >= 20);
    for (name, types) in &sigs {
        assert!(types.len() <= 12, "{name}: {} parameters", types.len());
        assert_eq!(types.last().map(String::as_str), Some("int"), "{name}");
    }
}

/// The body of `__device__ float NAME(` in kernels.cu, up to the next function.
fn device_fn(name: &str) -> &'static str {
    let start = SOURCE
        .find(&format!("__device__ float {name}("))
        .unwrap_or_else(|| panic!("kernels.cu has no {name}"));
    let rest = &SOURCE[start..];
    let end = rest[1..]
        .find("\n__device__")
        .or_else(|| rest[1..].find("\nKERNEL"));
    &rest[..end.map_or(rest.len(), |e| e + 1)]
}

#[test]
fn kernels_have_a_case_for_every_activation_and_no_default() {
    use se_compile::ir::ops::ActFn;
    for func in ["act_value", "act_grad"] {
        let body = device_fn(func);
        assert!(!body.contains("default:"), "{func} has a default branch");
        for f in ActFn::ALL {
            // Softmax is not elementwise: softmax_rows computes it.
            let case = format!("case ACT_{}:", f.name().to_uppercase());
            assert_eq!(
                body.contains(&case),
                *f != ActFn::Softmax,
                "{func}: `{case}` in kernels.cu (ActFn::{f:?})"
            );
        }
    }
}

#[test]
fn activation_kernels_match_the_cpu_for_every_activation() {
    use se_compile::ir::ops::ActFn;
    let k = build();
    let x: Vec<f32> = (0..41).map(|i| (i as f32 - 20.0) * 0.37).collect();
    let xb = k.upload(&x);
    let dy = k.upload(&vec![1.0; x.len()]);
    for f in ActFn::ALL.iter().copied().filter(|f| *f != ActFn::Softmax) {
        let y = k.act(&xb, f.code());
        let mut dx = k.alloc(x.len());
        k.act_back(&xb, &y, &dy, f.code(), &mut dx, false);
        let (y, dx) = (k.download(&y), k.download(&dx));
        for (i, &v) in x.iter().enumerate() {
            let (want_y, want_g) = (f.value(v), f.grad(v, f.value(v)));
            assert!(
                (y[i] - want_y).abs() <= 1e-5 * want_y.abs().max(1.0),
                "{f:?}({v}) = {} not {want_y}",
                y[i]
            );
            assert!(
                (dx[i] - want_g).abs() <= 1e-4 * want_g.abs().max(1.0),
                "{f:?}'({v}) = {} not {want_g}",
                dx[i]
            );
        }
    }
    // A code the kernels have no case for gives NaN, not a value.
    let y = k.download(&k.act(&xb, ActFn::ALL.len() as i32));
    assert!(y.iter().all(|v| v.is_nan()));
}
