//! Train-vs-validation curves as PNG, like the seed's matplotlib plot, drawn without a plotting
//! library: axes, ticks with numbers, two coloured lines and a legend.

use std::path::Path;

/// 3x5 glyphs for the characters the plots need.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        'a' => [0, 7, 1, 7, 7],
        'c' => [0, 7, 4, 4, 7],
        'e' => [7, 5, 7, 4, 7],
        'h' => [4, 4, 7, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'l' => [6, 2, 2, 2, 7],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 7, 5, 5, 7],
        'p' => [7, 5, 7, 4, 4],
        'r' => [0, 7, 4, 4, 4],
        's' => [7, 4, 7, 1, 7],
        't' => [2, 7, 2, 2, 3],
        'u' => [0, 5, 5, 5, 7],
        'v' => [0, 5, 5, 5, 2],
        'y' => [5, 5, 7, 1, 7],
        _ => [0; 5],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), rgb: [u8; 3], thick: i64) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            for dx in 0..thick {
                for dy in 0..thick {
                    self.set(x as i64 + dx - thick / 2, y as i64 + dy - thick / 2, rgb);
                }
            }
        }
    }
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for a in 0..scale {
                            for b in 0..scale {
                                self.set(
                                    x + (k as i64 * 4 + col) * scale + a,
                                    y + row as i64 * scale + b,
                                    [0, 0, 0],
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Draws `train` (blue) and `val` (orange) against the epoch number.
pub fn curves(path: &Path, title: &str, train: &[f64], val: &[f64]) -> Result<(), String> {
    let (w, h) = (640usize, 420usize);
    let mut c = Canvas {
        w,
        h,
        px: vec![255; w * h * 3],
    };
    let (l, r, t, b) = (70.0, 620.0, 40.0, 370.0);
    let all: Vec<f64> = train
        .iter()
        .chain(val)
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (mut lo, mut hi) = (
        all.iter().cloned().fold(f64::INFINITY, f64::min),
        all.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    );
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    let n = train.len().max(val.len()).max(2);
    let px = |i: usize| l + (r - l) * i as f64 / (n - 1) as f64;
    let py = |v: f64| b - (b - t) * (v - lo) / (hi - lo);
    c.line((l, b), (r, b), [0, 0, 0], 1);
    c.line((l, t), (l, b), [0, 0, 0], 1);
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        c.line((l - 5.0, py(v)), (l, py(v)), [0, 0, 0], 1);
        c.text(8, py(v) as i64 - 5, &format!("{v:.3}"), 2);
    }
    let ticks = (n - 1).min(10);
    for k in 0..=ticks {
        let i = k * (n - 1) / ticks.max(1);
        c.line((px(i), b), (px(i), b + 5.0), [0, 0, 0], 1);
        c.text(px(i) as i64 - 4, b as i64 + 10, &format!("{}", i + 1), 2);
    }
    c.text((l + r) as i64 / 2 - 20, b as i64 + 32, "epoch", 2);
    c.text(l as i64, 12, title, 3);
    for (series, rgb) in [(train, [31u8, 119, 180]), (val, [255u8, 127, 14])] {
        for i in 1..series.len() {
            if series[i - 1].is_finite() && series[i].is_finite() {
                c.line(
                    (px(i - 1), py(series[i - 1])),
                    (px(i), py(series[i])),
                    rgb,
                    2,
                );
            }
        }
        if series.len() == 1 && series[0].is_finite() {
            c.line(
                (px(0) - 2.0, py(series[0])),
                (px(0) + 2.0, py(series[0])),
                rgb,
                4,
            );
        }
    }
    // Legend.
    for (k, (name, rgb)) in [("train", [31u8, 119, 180]), ("val", [255u8, 127, 14])]
        .iter()
        .enumerate()
    {
        let y = 14.0 + 14.0 * k as f64;
        c.line((470.0, y + 4.0), (495.0, y + 4.0), *rgb, 3);
        c.text(502, y as i64, name, 2);
    }
    let img = image::RgbImage::from_raw(w as u32, h as u32, c.px).ok_or("plot buffer size")?;
    let mut bytes = std::io::Cursor::new(vec![]);
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    super::checkpoint::write_atomic(path, &bytes.into_inner())
        .map_err(|e| format!("{}: {e}", path.display()))
}
