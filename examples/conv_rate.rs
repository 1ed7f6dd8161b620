//! Times `kernels::conv2d_forward` and `conv2d_backward` on the 3x3 convs of SE-ResNet-50
//! (batch 8 at 224x224, batch 32 at 64x64): `cargo run --release --example conv_rate`.
//! `SE_COMPILE_WINOGRAD=0` times the im2col path instead of Winograd's.
use se_compile::lower::kernels::{conv2d_backward, conv2d_forward, ConvShape, Window};
use std::io::Write;
use std::time::Instant;

fn main() {
    let mut out = std::io::stdout().lock();
    // (batch, side, channels)
    let shapes = [
        (8, 56, 64),
        (8, 28, 128),
        (8, 14, 256),
        (8, 7, 512),
        (32, 16, 64),
        (32, 8, 128),
        (32, 4, 256),
        (32, 2, 512),
    ];
    for (n, side, c) in shapes {
        let win = Window {
            n,
            h: side,
            w: side,
            c,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pt: 1,
            pl: 1,
            ho: side,
            wo: side,
        };
        let s = ConvShape {
            win,
            cout: c,
            groups: 1,
        };
        let x: Vec<f32> = (0..n * side * side * c)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let w: Vec<f32> = (0..9 * c * c).map(|i| (i % 5) as f32 * 0.01).collect();
        let dy = x.clone();
        let time = |f: &mut dyn FnMut()| {
            f();
            let reps = 5;
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        let fwd = time(&mut || {
            std::hint::black_box(conv2d_forward(&x, &w, None, &s, None));
        });
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; w.len()];
        let bwd =
            time(&mut || conv2d_backward(&x, &w, &dy, &s, Some((&mut dx, true)), &mut dw, None));
        // A closed stdout (`| head`) ends the run quietly.
        if writeln!(out, "batch {n:>2}, {side:>2}x{side:<2} x {c:>3}: forward {fwd:7.2} ms, backward {bwd:7.2} ms").is_err() {
            return;
        }
    }
}
