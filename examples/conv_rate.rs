//! Times `kernels::conv2d_forward` and `conv2d_backward` on the 3x3 and 1x1 stride-1 convs of
//! SE-ResNet-50 (batch 8 at 224x224, batch 32 at 64x64), in ms and GFLOP/s (2 x MACs forward,
//! 4 x MACs backward: the input and the kernel gradient): `cargo run --release --example
//! conv_rate`. `SE_COMPILE_WINOGRAD=0` times the im2col path instead of Winograd's.
use se_compile::lower::kernels::{conv2d_backward, conv2d_forward, ConvShape, Window};
use std::io::Write;
use std::time::Instant;

fn main() {
    let mut out = std::io::stdout().lock();
    // (kernel side, batch, spatial side, channels in, channels out)
    let mut shapes = vec![];
    for (n, sides) in [(8, [56, 28, 14, 7]), (32, [16, 8, 4, 2])] {
        for (i, side) in sides.into_iter().enumerate() {
            let c = 64 << i;
            shapes.push((3, n, side, c, c));
        }
    }
    for (i, side) in [56, 28, 14, 7].into_iter().enumerate() {
        let c = 64 << i;
        shapes.push((1, 8, side, c, 4 * c));
        shapes.push((1, 8, side, 4 * c, c));
    }
    for (k, n, side, cin, cout) in shapes {
        let win = Window {
            n,
            h: side,
            w: side,
            c: cin,
            kh: k,
            kw: k,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pt: k / 2,
            pl: k / 2,
            ho: side,
            wo: side,
        };
        let s = ConvShape {
            win,
            cout,
            groups: 1,
        };
        let x: Vec<f32> = (0..n * side * side * cin)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let w: Vec<f32> = (0..k * k * cin * cout)
            .map(|i| (i % 5) as f32 * 0.01)
            .collect();
        let dy: Vec<f32> = (0..n * side * side * cout)
            .map(|i| (i % 3) as f32 * 0.1)
            .collect();
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
            std::hint::black_box(conv2d_forward(&x, &w, None, &s, None, None));
        });
        let mut dx = vec![0.0f32; x.len()];
        let mut dw = vec![0.0f32; w.len()];
        let bwd =
            time(&mut || conv2d_backward(&x, &w, &dy, &s, Some((&mut dx, false)), &mut dw, None));
        let macs = (n * side * side * k * k * cin * cout) as f64;
        let rate = |ms: f64, flops: f64| flops / ms / 1e6;
        let line = format!(
            "{k}x{k}, batch {n:>2}, {side:>2}x{side:<2}, {cin:>4} -> {cout:>4}: forward {fwd:7.2} ms \
             ({:5.1} GFLOP/s), backward {bwd:7.2} ms ({:5.1} GFLOP/s)",
            rate(fwd, 2.0 * macs),
            rate(bwd, 4.0 * macs)
        );
        // A closed stdout (`| head`) ends the run quietly.
        if writeln!(out, "{line}").is_err() {
            return;
        }
    }
}
