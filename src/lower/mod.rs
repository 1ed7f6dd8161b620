//! The back ends that run a network: the CPU network (the project's own kernels on dfdx's
//! tape) and the kernel network (the project's CUDA kernels, cuBLAS and cuDNN), the plan both
//! execute, devices.

pub mod autodiff;
pub mod cpu;
pub mod device;
pub mod kernelnet;
pub mod kernels;
pub mod layers;
pub mod memory;
pub mod model;
pub mod parity;
pub mod plan;
pub mod profile;
pub mod winograd;

/// Keeps freed activation buffers in the process instead of returning them to the kernel:
/// every training step allocates the same large buffers again, and fresh pages from `mmap`
/// cost a page fault each (a fifth of a step before this).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
