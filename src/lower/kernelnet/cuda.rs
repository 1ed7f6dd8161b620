//! The kernel network on a GPU: `kernels.cu` compiled by NVRTC when the device is opened,
//! launched through cudarc, and cuBLAS for the matmuls (fp32; cuBLAS' default math mode leaves
//! TF32 off). What each launch passes is built in `launch.rs`, which the tests also run with the
//! kernels compiled for the host.

use super::backend::{ConvLib, Gemm};
use super::cudnn::{Cudnn, Policy};
use super::launch::{kernel_params, Arg, Device, Kernels};
use cudarc::cublas::{
    sys::cublasOperation_t, CudaBlas, Gemm as _, GemmConfig, StridedBatchedConfig,
};
use cudarc::driver::{
    CudaDevice, CudaSlice, DevicePtr, DeviceRepr, DeviceSlice, LaunchAsync, LaunchConfig,
};
use std::ffi::c_void;
use std::sync::Arc;

const SOURCE: &str = include_str!("kernels.cu");
const MODULE: &str = "se_compile_kernelnet";
/// The kernels defined in kernels.cu (`KERNEL void name(`), loaded by name; the tests launch
/// every one of them by the names `launch.rs` uses.
pub fn kernel_names() -> Vec<&'static str> {
    SOURCE
        .split("KERNEL void ")
        .skip(1)
        .filter_map(|rest| rest.find('(').map(|i| rest[..i].trim()))
        .collect()
}

/// Compiles the kernels to PTX: needs only libnvrtc, no GPU (the tests do it).
pub fn compile() -> Result<cudarc::nvrtc::Ptx, String> {
    cudarc::nvrtc::compile_ptx(format!("{}{SOURCE}", super::backend::kernel_defines()))
        .map_err(|e| format!("compiling the kernel network's CUDA kernels: {e:?}"))
}

pub struct Cuda {
    dev: Arc<CudaDevice>,
    blas: CudaBlas,
    /// Convolutions straight on NHWC tensors; None when libcudnn is missing or
    /// SE_COMPILE_CONV=gemm asks for im2col and cuBLAS.
    cudnn: Option<Cudnn>,
}

pub type CudaKernels = Kernels<Cuda>;

impl Kernels<Cuda> {
    /// Loads the kernels (once per device) and makes a cuBLAS handle on the device's stream.
    pub fn open(dev: Arc<CudaDevice>) -> Result<CudaKernels, String> {
        let names = kernel_names();
        if !dev.has_func(MODULE, names[0]) {
            let ptx = compile()?;
            dev.load_ptx(ptx, MODULE, &names)
                .map_err(|e| format!("loading the kernel network's CUDA kernels: {e:?}"))?;
        }
        keep_freed_memory(&dev);
        let blas = CudaBlas::new(dev.clone()).map_err(|e| format!("cuBLAS: {e:?}"))?;
        let policy = Policy::from_env()?;
        let cudnn = match policy.map(|p| Cudnn::open(dev.clone(), p)) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                eprintln!("note: {e}; convolutions run as im2col + cuBLAS");
                None
            }
            None => None,
        };
        Ok(Kernels::new(Cuda { dev, blas, cudnn }))
    }

    /// What runs the convolutions: "cuDNN 9.19.0" or "im2col + cuBLAS".
    pub fn conv_engine(&self) -> String {
        match &self.d.cudnn {
            Some(c) => c.describe(),
            None => "im2col + cuBLAS".into(),
        }
    }
}

/// cudarc allocates from the device's stream-ordered memory pool, which by default hands freed
/// memory back to the driver at every synchronisation (once per step, when the loss is read),
/// so each step would map its activations afresh. Keep it in the pool instead. Best effort: a
/// device without pools allocates synchronously and this does nothing.
fn keep_freed_memory(dev: &CudaDevice) {
    use cudarc::driver::sys;
    let Some(pool) = default_pool(dev) else {
        return;
    };
    let mut keep: u64 = u64::MAX;
    // SAFETY: a driver call on the device's pool, reading a local that outlives it.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut keep as *mut u64 as *mut c_void,
        );
    }
}

/// The device's default (stream-ordered) memory pool, which cudarc allocates from; None on a
/// device without pools.
fn default_pool(dev: &CudaDevice) -> Option<cudarc::driver::sys::CUmemoryPool> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: a plain driver query on a device whose context is current (CudaDevice::new binds
    // it), writing to a local.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, *dev.cu_device()) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(pool)
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

/// A kernel parameter given as the pointer cuLaunchKernel wants (to the argument's value).
#[derive(Clone, Copy)]
struct Param(*mut c_void);

// SAFETY: `as_kernel_param` hands over a pointer to a value laid out as the kernel expects
// (built by `kernel_params`); it is only read during the launch call.
unsafe impl DeviceRepr for Param {
    fn as_kernel_param(&self) -> *mut c_void {
        self.0
    }
}

/// cudarc launches take a tuple: one per parameter count.
macro_rules! launch_n {
    ($f:expr, $cfg:expr, $p:expr, $($i:literal),*) => {
        $f.launch($cfg, ($(Param($p[$i]),)*))
    };
}

impl Device for Cuda {
    type Buf = CudaSlice<f32>;
    fn alloc(&self, n: usize) -> CudaSlice<f32> {
        // SAFETY: every caller writes all n elements before reading them.
        unsafe { self.dev.alloc::<f32>(n.max(1)) }.expect("GPU allocation")
    }
    fn zeros(&self, n: usize) -> CudaSlice<f32> {
        if n == 0 {
            // No allocation of zero bytes (the driver refuses those).
            return self.dev.null().expect("CUDA null slice");
        }
        self.dev.alloc_zeros::<f32>(n).expect("GPU allocation")
    }
    fn upload(&self, v: &[f32]) -> CudaSlice<f32> {
        if v.is_empty() {
            return self.zeros(0);
        }
        self.dev.htod_sync_copy(v).expect("copy to the GPU")
    }
    fn download(&self, b: &CudaSlice<f32>) -> Vec<f32> {
        if b.len() == 0 {
            return vec![];
        }
        self.dev.dtoh_sync_copy(b).expect("copy from the GPU")
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
        // indexes the same elements, bounds-checked, in the tests).
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

    fn memory_peak(&self) -> Option<(u64, u64)> {
        use cudarc::driver::sys;
        let pool = default_pool(&self.dev)?;
        let (mut used, mut reserved) = (0u64, 0u64);
        // SAFETY: driver queries on the device's default pool, writing to locals.
        unsafe {
            for (attr, out) in [
                (
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    &mut used,
                ),
                (
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
                    &mut reserved,
                ),
            ] {
                let r = sys::cuMemPoolGetAttribute(pool, attr, out as *mut u64 as *mut c_void);
                if r != sys::CUresult::CUDA_SUCCESS {
                    return None;
                }
            }
        }
        Some((used, reserved))
    }

    fn conv_lib(&self) -> Option<&dyn ConvLib<CudaSlice<f32>>> {
        self.cudnn
            .as_ref()
            .map(|c| c as &dyn ConvLib<CudaSlice<f32>>)
    }

    fn launch(&self, name: &'static str, total: usize, args: &mut [Arg<CudaSlice<f32>>]) {
        let f = self
            .dev
            .get_func(MODULE, name)
            .unwrap_or_else(|| panic!("kernel {name} is loaded in Kernels::open"));
        let mut t = total as i32;
        let p = kernel_params(args, &mut t, |b| {
            b.device_ptr() as *const u64 as *mut c_void
        });
        let cfg = launch_cfg(total);
        // SAFETY: `kernel_params` lists the arguments in the order and types of the kernel's
        // signature in kernels.cu (the tests call the same kernels, compiled for the host, with
        // the same list), and every pointer in it lives until this call returns.
        let r = unsafe {
            match p.len() {
                2 => launch_n!(f, cfg, p, 0, 1),
                3 => launch_n!(f, cfg, p, 0, 1, 2),
                4 => launch_n!(f, cfg, p, 0, 1, 2, 3),
                5 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4),
                6 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4, 5),
                7 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4, 5, 6),
                8 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4, 5, 6, 7),
                9 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4, 5, 6, 7, 8),
                10 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
                11 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
                12 => launch_n!(f, cfg, p, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
                n => panic!("kernel {name}: {n} parameters, cudarc launches at most 12"),
            }
        };
        if let Err(e) = r {
            panic!("CUDA kernel {name}: {e:?}");
        }
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
        let names = super::kernel_names();
        assert!(names.len() >= 20, "{names:?}");
        for k in names {
            assert!(
                text.contains(&format!(".entry {k}(")),
                "no entry point for {k}"
            );
        }
    }
}
