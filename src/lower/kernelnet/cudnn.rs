//! cuDNN's convolutions for the kernel network on a GPU: forward, data gradient and filter
//! gradient straight on the NHWC tensors, with no im2col matrix. cuDNN is not linked: its C API
//! (the legacy convolution calls, still in cuDNN 9) is loaded at run time from `libcudnn.so.9`,
//! which GPU machines with PyTorch carry in the venv's `nvidia/cudnn/lib` (`run-on-gpu.sh` puts
//! it on the library path). Where it is missing, the network says so once and uses im2col and
//! cuBLAS.
//!
//! Algorithms are chosen per shape by cuDNN's own timing (`cudnnFind…`, what PyTorch does with
//! `cudnn.benchmark = True`), among those of fp32 FMA math only: no TF32, as cuBLAS here.

use super::backend::{ConvDir, ConvLib, Geom};
use cudarc::driver::{CudaDevice, CudaSlice, DevicePtr, DevicePtrMut, DeviceSlice};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::rc::Rc;
use std::sync::Arc;

type Status = c_int;
type Handle = *mut c_void;
type Desc = *mut c_void;

const NHWC: c_int = 1;
const FLOAT: c_int = 0;
const CROSS_CORRELATION: c_int = 1;
/// CUDNN_FMA_MATH: fp32 arithmetic only, no tensor-core (TF32) conversion.
const FMA_MATH: c_int = 3;
/// The most workspace one algorithm may take.
const WORKSPACE_LIMIT: usize = 1 << 30;

/// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t`: the three share this layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct AlgoPerf {
    algo: c_int,
    status: Status,
    time: f32,
    memory: usize,
    determinism: c_int,
    math_type: c_int,
    reserved: [c_int; 3],
}

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The entry points used, looked up by name in libcudnn.
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }
        impl Api {
            /// SAFETY: each name must have the C signature written here (cudnn_*.h, cuDNN 9).
            unsafe fn load(lib: &libloading::Library) -> Result<Api, String> {
                Ok(Api {
                    $($name: *lib
                        .get(concat!(stringify!($name), "\0").as_bytes())
                        .map_err(|e| format!("libcudnn has no {}: {e}", stringify!($name)))?,)*
                })
            }
        }
    };
}

api! {
    cudnnGetVersion: fn() -> usize;
    cudnnGetErrorString: fn(Status) -> *const c_char;
    cudnnCreate: fn(*mut Handle) -> Status;
    cudnnDestroy: fn(Handle) -> Status;
    cudnnSetStream: fn(Handle, *mut c_void) -> Status;
    cudnnCreateTensorDescriptor: fn(*mut Desc) -> Status;
    cudnnDestroyTensorDescriptor: fn(Desc) -> Status;
    cudnnSetTensor4dDescriptor: fn(Desc, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    cudnnCreateFilterDescriptor: fn(*mut Desc) -> Status;
    cudnnDestroyFilterDescriptor: fn(Desc) -> Status;
    cudnnSetFilter4dDescriptor: fn(Desc, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    cudnnCreateConvolutionDescriptor: fn(*mut Desc) -> Status;
    cudnnDestroyConvolutionDescriptor: fn(Desc) -> Status;
    cudnnSetConvolution2dDescriptor:
        fn(Desc, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int) -> Status;
    cudnnSetConvolutionGroupCount: fn(Desc, c_int) -> Status;
    cudnnSetConvolutionMathType: fn(Desc, c_int) -> Status;
    cudnnGetConvolution2dForwardOutputDim:
        fn(Desc, Desc, Desc, *mut c_int, *mut c_int, *mut c_int, *mut c_int) -> Status;
    cudnnFindConvolutionForwardAlgorithm:
        fn(Handle, Desc, Desc, Desc, Desc, c_int, *mut c_int, *mut AlgoPerf) -> Status;
    cudnnFindConvolutionBackwardDataAlgorithm:
        fn(Handle, Desc, Desc, Desc, Desc, c_int, *mut c_int, *mut AlgoPerf) -> Status;
    cudnnFindConvolutionBackwardFilterAlgorithm:
        fn(Handle, Desc, Desc, Desc, Desc, c_int, *mut c_int, *mut AlgoPerf) -> Status;
    cudnnConvolutionForward: fn(
        Handle, *const c_void, Desc, *const c_void, Desc, *const c_void, Desc, c_int,
        *mut c_void, usize, *const c_void, Desc, *mut c_void
    ) -> Status;
    cudnnConvolutionBackwardData: fn(
        Handle, *const c_void, Desc, *const c_void, Desc, *const c_void, Desc, c_int,
        *mut c_void, usize, *const c_void, Desc, *mut c_void
    ) -> Status;
    cudnnConvolutionBackwardFilter: fn(
        Handle, *const c_void, Desc, *const c_void, Desc, *const c_void, Desc, c_int,
        *mut c_void, usize, *const c_void, Desc, *mut c_void
    ) -> Status;
}

/// An algorithm and the workspace it needs.
#[derive(Clone, Copy, Debug)]
struct Algo {
    algo: c_int,
    workspace: usize,
}

/// The descriptors of one convolution shape and the algorithms found for it, per direction.
struct Plan {
    x: Desc,
    w: Desc,
    y: Desc,
    conv: Desc,
    /// Per direction: not searched yet, or the search's result (None: no algorithm).
    fwd: Option<Option<Algo>>,
    bwd_data: Option<Option<Algo>>,
    bwd_filter: Option<Option<Algo>>,
}

pub use super::backend::Policy;

pub struct Cudnn {
    api: Api,
    handle: Handle,
    dev: Arc<CudaDevice>,
    plans: RefCell<HashMap<[i32; 16], Rc<RefCell<Plan>>>>,
    /// One workspace for every call: all run in order on the device's stream.
    workspace: RefCell<Option<CudaSlice<u8>>>,
    version: usize,
    policy: Policy,
    // Last, so that it is dropped after everything that calls into it.
    _lib: libloading::Library,
}

impl Cudnn {
    /// Loads libcudnn and makes a handle on the device's stream.
    pub fn open(dev: Arc<CudaDevice>, policy: Policy) -> Result<Cudnn, String> {
        let names = ["libcudnn.so.9", "libcudnn.so"];
        // SAFETY: loading cuDNN runs its initialisers, which only set up the library.
        let lib = names
            .iter()
            .find_map(|n| unsafe { libloading::Library::new(n) }.ok())
            .ok_or_else(|| {
                format!(
                    "{} not found on the library path (LD_LIBRARY_PATH): PyTorch's venv has it in \
                     site-packages/nvidia/cudnn/lib",
                    names[0]
                )
            })?;
        // SAFETY: the signatures in `api!` are those of cuDNN 9's headers.
        let api = unsafe { Api::load(&lib)? };
        let version = unsafe { (api.cudnnGetVersion)() };
        if version < 8000 {
            return Err(format!("cuDNN {version} is too old: 8 or newer is needed"));
        }
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: plain cuDNN calls writing to a local; the stream belongs to `dev`, which the
        // handle does not outlive (both live in the same `Cuda`).
        unsafe {
            status(&api, "cudnnCreate", (api.cudnnCreate)(&mut handle))?;
            let set = (api.cudnnSetStream)(handle, *dev.cu_stream() as *mut c_void);
            if let Err(e) = status(&api, "cudnnSetStream", set) {
                (api.cudnnDestroy)(handle);
                return Err(e);
            }
        }
        Ok(Cudnn {
            api,
            handle,
            dev,
            plans: RefCell::new(HashMap::new()),
            workspace: RefCell::new(None),
            version,
            policy,
            _lib: lib,
        })
    }

    /// "cuDNN 9.19.0".
    pub fn describe(&self) -> String {
        let v = self.version;
        let (major, minor, patch) = if v >= 90000 {
            (v / 10000, v % 10000 / 100, v % 100)
        } else {
            (v / 1000, v % 1000 / 100, v % 100)
        };
        let which = match self.policy {
            Policy::Auto => "the forward of convolutions with more than one tap",
            Policy::All => "all",
        };
        format!("cuDNN {major}.{minor}.{patch} ({which}; the rest im2col + cuBLAS)")
    }

    fn ok(&self, what: &str, s: Status) {
        if let Err(e) = status(&self.api, what, s) {
            panic!("cuDNN {e}");
        }
    }

    fn key(g: &Geom, cout: usize) -> [i32; 16] {
        [
            g.n,
            g.h,
            g.w,
            g.c,
            g.kh,
            g.kw,
            g.sh,
            g.sw,
            g.dh,
            g.dw,
            g.pt,
            g.pl,
            g.ho,
            g.wo,
            g.groups,
            cout as i32,
        ]
    }

    /// The descriptors for `g`, made once per shape; None when cuDNN's convolution is not this
    /// one (cuDNN pads both sides alike: its output size must be the network's).
    fn plan(&self, g: &Geom, cout: usize) -> Option<Rc<RefCell<Plan>>> {
        let key = Cudnn::key(g, cout);
        if let Some(p) = self.plans.borrow().get(&key) {
            return Some(p.clone());
        }
        let a = &self.api;
        let mut p = Plan {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
            fwd: None,
            bwd_data: None,
            bwd_filter: None,
        };
        let cout = cout as c_int;
        let (mut n, mut c, mut h, mut w) = (0, 0, 0, 0);
        // SAFETY: descriptor calls on descriptors made here, writing to locals.
        unsafe {
            self.ok("create", (a.cudnnCreateTensorDescriptor)(&mut p.x));
            self.ok("create", (a.cudnnCreateTensorDescriptor)(&mut p.y));
            self.ok("create", (a.cudnnCreateFilterDescriptor)(&mut p.w));
            self.ok("create", (a.cudnnCreateConvolutionDescriptor)(&mut p.conv));
            self.ok(
                "input descriptor",
                (a.cudnnSetTensor4dDescriptor)(p.x, NHWC, FLOAT, g.n, g.c, g.h, g.w),
            );
            self.ok(
                "output descriptor",
                (a.cudnnSetTensor4dDescriptor)(p.y, NHWC, FLOAT, g.n, cout, g.ho, g.wo),
            );
            self.ok(
                "filter descriptor",
                (a.cudnnSetFilter4dDescriptor)(p.w, FLOAT, NHWC, cout, g.c / g.groups, g.kh, g.kw),
            );
            self.ok(
                "convolution descriptor",
                (a.cudnnSetConvolution2dDescriptor)(
                    p.conv,
                    g.pt,
                    g.pl,
                    g.sh,
                    g.sw,
                    g.dh,
                    g.dw,
                    CROSS_CORRELATION,
                    FLOAT,
                ),
            );
            self.ok(
                "group count",
                (a.cudnnSetConvolutionGroupCount)(p.conv, g.groups),
            );
            self.ok(
                "math type",
                (a.cudnnSetConvolutionMathType)(p.conv, FMA_MATH),
            );
            let s = (a.cudnnGetConvolution2dForwardOutputDim)(
                p.conv, p.x, p.w, &mut n, &mut c, &mut h, &mut w,
            );
            self.ok("output size", s);
        }
        let p = Rc::new(RefCell::new(p));
        // Kept either way, so that the descriptors are freed with the rest.
        self.plans.borrow_mut().insert(key, p.clone());
        ((n, c, h, w) == (g.n, cout, g.ho, g.wo)).then_some(p)
    }

    /// The fastest algorithm by cuDNN's own timing whose workspace is within the limit.
    fn find(&self, p: &Plan, dir: ConvDir) -> Option<Algo> {
        let a = &self.api;
        let mut perf = [AlgoPerf::default(); 16];
        let mut got: c_int = 0;
        let max = perf.len() as c_int;
        // SAFETY: the descriptors are valid; cuDNN writes at most `max` results into `perf`
        // and allocates (and frees) the buffers it times with.
        let s = unsafe {
            match dir {
                ConvDir::Forward => (a.cudnnFindConvolutionForwardAlgorithm)(
                    self.handle,
                    p.x,
                    p.w,
                    p.conv,
                    p.y,
                    max,
                    &mut got,
                    perf.as_mut_ptr(),
                ),
                ConvDir::Data => (a.cudnnFindConvolutionBackwardDataAlgorithm)(
                    self.handle,
                    p.w,
                    p.y,
                    p.conv,
                    p.x,
                    max,
                    &mut got,
                    perf.as_mut_ptr(),
                ),
                ConvDir::Filter => (a.cudnnFindConvolutionBackwardFilterAlgorithm)(
                    self.handle,
                    p.x,
                    p.y,
                    p.conv,
                    p.w,
                    max,
                    &mut got,
                    perf.as_mut_ptr(),
                ),
            }
        };
        if s != 0 {
            return None;
        }
        perf[..got.clamp(0, max) as usize]
            .iter()
            .find(|r| r.status == 0 && r.memory <= WORKSPACE_LIMIT)
            .map(|best| Algo {
                algo: best.algo,
                workspace: best.memory,
            })
    }

    /// The shared workspace, grown to at least `bytes`, as a device pointer.
    fn workspace(&self, bytes: usize) -> *mut c_void {
        let mut ws = self.workspace.borrow_mut();
        if ws.as_ref().is_none_or(|w| w.len() < bytes) {
            *ws = None;
            // SAFETY: a workspace is scratch memory: cuDNN writes before it reads.
            let fresh = unsafe { self.dev.alloc::<u8>(bytes.max(1)) }.expect("GPU allocation");
            *ws = Some(fresh);
        }
        *ws.as_mut().expect("just made").device_ptr_mut() as *mut c_void
    }

    /// The algorithm for `dir`, searched for once per shape.
    fn algo(&self, p: &Rc<RefCell<Plan>>, dir: ConvDir) -> Option<Algo> {
        let known = match dir {
            ConvDir::Forward => p.borrow().fwd,
            ConvDir::Data => p.borrow().bwd_data,
            ConvDir::Filter => p.borrow().bwd_filter,
        };
        if let Some(a) = known {
            return a;
        }
        let a = self.find(&p.borrow(), dir);
        let mut pm = p.borrow_mut();
        match dir {
            ConvDir::Forward => pm.fwd = Some(a),
            ConvDir::Data => pm.bwd_data = Some(a),
            ConvDir::Filter => pm.bwd_filter = Some(a),
        }
        a
    }

    /// The plan and algorithm of a call the network made after `supports` said yes.
    fn chosen(&self, g: &Geom, cout: usize, dir: ConvDir) -> (Rc<RefCell<Plan>>, Algo) {
        let p = self
            .plan(g, cout)
            .unwrap_or_else(|| panic!("cuDNN asked for a convolution it does not support: {g:?}"));
        let a = self
            .algo(&p, dir)
            .unwrap_or_else(|| panic!("cuDNN has no {dir:?} algorithm for {g:?}"));
        (p, a)
    }
}

impl Cudnn {
    /// out = a ⋆ b + beta · out in direction `dir`. The three cuDNN calls share one C
    /// signature (handle, alpha, two operands, the convolution, its algorithm and workspace,
    /// beta, the output); the operands are, by direction: forward (x, w) → y, data (w, dy) →
    /// dx, filter (x, dy) → dw.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        g: &Geom,
        cout: usize,
        dir: ConvDir,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        beta: f32,
    ) {
        let (p, al) = self.chosen(g, cout, dir);
        let ws = self.workspace(al.workspace);
        let p = p.borrow();
        let api = &self.api;
        let (call, what, da, db, dout) = match dir {
            ConvDir::Forward => (api.cudnnConvolutionForward, "forward", p.x, p.w, p.y),
            ConvDir::Data => (
                api.cudnnConvolutionBackwardData,
                "data gradient",
                p.w,
                p.y,
                p.x,
            ),
            ConvDir::Filter => (
                api.cudnnConvolutionBackwardFilter,
                "filter gradient",
                p.x,
                p.y,
                p.w,
            ),
        };
        let one = 1.0f32;
        // SAFETY: the operands and the output have the sizes their descriptors describe (the
        // network's shapes), and the workspace has the algorithm's size.
        let s = unsafe {
            call(
                self.handle,
                &one as *const f32 as *const c_void,
                da,
                ptr(a),
                db,
                ptr(b),
                p.conv,
                al.algo,
                ws,
                al.workspace,
                &beta as *const f32 as *const c_void,
                dout,
                ptr_mut(out),
            )
        };
        self.ok(&format!("convolution {what}"), s);
    }
}

fn status(api: &Api, what: &str, s: Status) -> Result<(), String> {
    if s == 0 {
        return Ok(());
    }
    // SAFETY: cudnnGetErrorString returns a static string for any status.
    let msg = unsafe { CStr::from_ptr((api.cudnnGetErrorString)(s)) };
    Err(format!("{what}: {} ({s})", msg.to_string_lossy()))
}

fn ptr(b: &CudaSlice<f32>) -> *const c_void {
    *b.device_ptr() as *const c_void
}

fn ptr_mut(b: &mut CudaSlice<f32>) -> *mut c_void {
    *b.device_ptr_mut() as *mut c_void
}

impl ConvLib<CudaSlice<f32>> for Cudnn {
    fn supports(&self, g: &Geom, cout: usize, dir: ConvDir) -> bool {
        self.policy.wants(g, dir)
            && self
                .plan(g, cout)
                .is_some_and(|p| self.algo(&p, dir).is_some())
    }

    fn forward(
        &self,
        g: &Geom,
        cout: usize,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) {
        self.run(g, cout, ConvDir::Forward, x, w, y, 0.0);
    }

    fn backward_data(
        &self,
        g: &Geom,
        cout: usize,
        dy: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        accumulate: bool,
    ) {
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.run(g, cout, ConvDir::Data, w, dy, dx, beta);
    }

    fn backward_filter(
        &self,
        g: &Geom,
        cout: usize,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
    ) {
        self.run(g, cout, ConvDir::Filter, x, dy, dw, 0.0);
    }
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        let a = &self.api;
        for (_, p) in self.plans.borrow_mut().drain() {
            let p = p.borrow();
            // SAFETY: each descriptor was made by this API and is destroyed once.
            unsafe {
                (a.cudnnDestroyTensorDescriptor)(p.x);
                (a.cudnnDestroyTensorDescriptor)(p.y);
                (a.cudnnDestroyFilterDescriptor)(p.w);
                (a.cudnnDestroyConvolutionDescriptor)(p.conv);
            }
        }
        if !self.handle.is_null() {
            // SAFETY: the handle was made by cudnnCreate and is destroyed once.
            unsafe { (a.cudnnDestroy)(self.handle) };
        }
    }
}
