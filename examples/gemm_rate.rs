//! The rate of `kernels::matmul` (the gemm crate) on a square product and on the 1x1-conv
//! shapes of SE-ResNet-50 at batch 8, in GFLOP/s: `cargo run --release --example gemm_rate`.
//! `SE_COMPILE_GEMM=0.15|0.19` picks the gemm version; bench/compare.sh prints PyTorch's rate.
use se_compile::lower::kernels::matmul;
use std::io::Write;
use std::time::Instant;

fn main() {
    let mut out = std::io::stdout().lock();
    // (rows = output positions, k = input channels, n = output channels)
    let shapes = [
        (3072, 3072, 3072),
        (25088, 64, 256),
        (25088, 256, 64),
        (6272, 512, 128),
        (6272, 128, 512),
        (1568, 1024, 256),
        (1568, 256, 1024),
        (392, 2048, 512),
        (392, 512, 2048),
    ];
    for (m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        let reps = ((4e9 / flop).ceil() as usize).clamp(1, 50);
        matmul(m, n, k, &mut c, (n, 1), false, &a, (k, 1), &b, (n, 1));
        let t = Instant::now();
        for _ in 0..reps {
            matmul(m, n, k, &mut c, (n, 1), false, &a, (k, 1), &b, (n, 1));
        }
        let rate = flop * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
        // A closed stdout (`| head`) ends the run quietly.
        if writeln!(out, "{m:>6} x {k:>5} x {n:>5}: {rate:7.1} GFLOP/s").is_err() {
            return;
        }
    }
}
