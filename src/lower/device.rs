//! `--device cpu | cuda[:N]`: parsing, opening the device, and building the network on it.
//! `cuda` is the kernel network (`kernelnet`: the project's CUDA kernels, cuBLAS and cuDNN).
//! The same network with host loops for kernels (`cpu-kernelnet`) is a check without a GPU,
//! for `parity` and the tests; `--help` does not offer it.

#[cfg(feature = "cuda")]
use super::kernelnet::cuda::CudaKernels;
use super::kernelnet::{self, host::Host, KernelNet};
use super::layers::Net;
use super::model::Model;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The project's own CPU kernels.
    Cpu,
    /// The kernel network on GPU N: the project's own CUDA kernels, cuBLAS and cuDNN.
    Cuda(usize),
    /// The kernel network's wiring run with host loops: its GPU kernels' reference (checks).
    KernelNetHost,
}

/// Why a device cannot be used; `Usage` errors are the caller's to fix on the command line.
#[derive(Debug)]
pub enum DeviceError {
    Usage(String),
    Unavailable(String),
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Usage(m) | DeviceError::Unavailable(m) => f.write_str(m),
        }
    }
}

pub fn parse(s: &str) -> Result<DeviceSpec, DeviceError> {
    let bad = || {
        DeviceError::Usage(format!(
            "--device {s}: unknown device; use cpu, cuda or cuda:N (N = GPU index)"
        ))
    };
    match s {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cpu-kernelnet" => Ok(DeviceSpec::KernelNetHost),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(bad()),
        },
    }
}

/// Whether this binary was built with `--features cuda`.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

fn not_built(flag: &str) -> DeviceError {
    DeviceError::Usage(format!(
        "--device {flag}: this se-compile was built without CUDA; rebuild with `cargo build --release --features cuda` (scripts/build-cuda.sh does it without a local GPU; see docs, \"GPU\")"
    ))
}

/// Checks that the device can exist in this build, and the settings the kernel network reads
/// from the environment (`SE_COMPILE_CONV`, `SE_COMPILE_FUSE`), before any work is done.
pub fn check(spec: DeviceSpec, flag: &str) -> Result<(), DeviceError> {
    match spec {
        DeviceSpec::Cuda(_) if !CUDA_BUILT => Err(not_built(flag)),
        DeviceSpec::Cuda(_) | DeviceSpec::KernelNetHost => {
            kernelnet::backend::Policy::from_env().map_err(DeviceError::Usage)?;
            kernelnet::runs_its_passes().map_err(DeviceError::Usage)?;
            Ok(())
        }
        DeviceSpec::Cpu => Ok(()),
    }
}

/// A device opened once, on which any number of networks are placed.
pub enum Opened {
    Cpu,
    KernelNetHost,
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<cudarc::driver::CudaDevice>, usize),
}

/// Opens the device; an unavailable GPU is an error here, before any work starts.
pub fn open(spec: DeviceSpec) -> Result<Opened, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(Opened::Cpu),
        DeviceSpec::KernelNetHost => Ok(Opened::KernelNetHost),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => {
            // dfdx opens the GPU (and reports a missing one in words); the kernel network
            // keeps its own buffers on the same CUDA context and stream.
            let d = open_cuda(i)?;
            let buf = <dfdx::tensor::Cuda as dfdx::tensor::Storage<f32>>::try_alloc_len(&d, 1)
                .map_err(|e| DeviceError::Unavailable(format!("--device cuda:{i}: {e:?}")))?;
            Ok(Opened::Cuda(buf.device(), i))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(i) => Err(not_built(&format!("cuda:{i}"))),
    }
}

impl Opened {
    /// The network `net` on this device: the CPU network itself, or the kernel network
    /// (which fails for a broadcast it has no kernel for).
    pub fn place(&self, net: Net) -> Result<Box<dyn Model>, DeviceError> {
        Ok(match self {
            // The CPU network runs activations after BatchNorms and Adds inside them, and
            // each SE tail (multiply, Add) as one op.
            Opened::Cpu => Box::new(net.for_cpu_network()),
            // The kernel network runs activations inside the kernels before them, and each SE
            // tail as one op.
            Opened::KernelNetHost => {
                let net = kernelnet::placed(&net).map_err(DeviceError::Usage)?;
                Box::new(
                    KernelNet::from_net(&net, Host, "cpu-kernelnet".into())
                        .map_err(DeviceError::Unavailable)?,
                )
            }
            #[cfg(feature = "cuda")]
            Opened::Cuda(dev, i) => {
                let be = CudaKernels::open(dev.clone()).map_err(DeviceError::Unavailable)?;
                let name = format!("cuda:{i}, convolutions by {}", be.conv_engine());
                let net = kernelnet::placed(&net).map_err(DeviceError::Usage)?;
                Box::new(KernelNet::from_net(&net, be, name).map_err(DeviceError::Unavailable)?)
            }
        })
    }
}

/// Opens GPU `i` with dfdx's allocation cache on, after making sure NVRTC finds its headers.
#[cfg(feature = "cuda")]
pub fn open_cuda(i: usize) -> Result<dfdx::tensor::Cuda, DeviceError> {
    use dfdx::tensor::Cache;
    nvrtc::ensure_headers().map_err(DeviceError::Unavailable)?;
    // cudarc 0.9 unwraps cuInit's result inside CudaDevice::new: a machine without a usable
    // driver panics there. Catch it quietly and say what to check instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| dfdx::tensor::Cuda::try_build(i, 0));
    std::panic::set_hook(hook);
    let dev = match opened {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            // Not `{e:?}`: cudarc's Debug asks the driver for a message and panics if it can't.
            let why = match &e {
                dfdx::tensor::CudaError::Driver(d) => format!("CUDA driver: {:?}", d.0),
                dfdx::tensor::CudaError::Blas(b) => format!("cuBLAS: {:?}", b.0),
                dfdx::tensor::CudaError::Cpu(c) => format!("{c:?}"),
            };
            return Err(DeviceError::Unavailable(format!(
                "--device cuda:{i}: cannot open the GPU ({why}). Check `nvidia-smi`, the GPU index, and that the CUDA 13 libraries (libcublas, libnvrtc) are on LD_LIBRARY_PATH (scripts/run-on-gpu.sh sets them)"
            )))
        }
        Err(_) => {
            return Err(DeviceError::Unavailable(format!(
                "--device cuda:{i}: cannot open GPU {i}: no such GPU (they are numbered from 0), or no working CUDA driver; check `nvidia-smi`"
            )))
        }
    };
    dev.enable_cache();
    Ok(dev)
}

#[cfg(feature = "cuda")]
pub mod nvrtc {
    //! The headers dfdx's run-time kernels include, embedded at build time (see build.rs).

    const HEADERS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/nvrtc_headers.rs"));

    /// The directory dfdx looks in: `SE_COMPILE_NVRTC_INCLUDE` at build time.
    pub const BAKED_DIR: &str = env!("SE_COMPILE_NVRTC_INCLUDE");

    /// Writes any missing header to the baked directory.
    pub fn ensure_headers() -> Result<(), String> {
        let dir = std::path::Path::new(BAKED_DIR);
        for (name, bytes) in HEADERS {
            let p = dir.join(name);
            if p.is_file() {
                continue;
            }
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&p, bytes))
                .map_err(|e| {
                    format!(
                        "cannot write the NVRTC header {}: {e}. dfdx looks for its run-time kernel headers in {BAKED_DIR} (fixed when this binary was built); make that directory writable, or rebuild with CUDA_ROOT set to a writable place (scripts/build-cuda.sh)",
                        p.display()
                    )
                })?;
        }
        Ok(())
    }
}
