//! Line plots as PNG, drawn with `plotters` into an RGB buffer and written atomically with the
//! `image` encoder. Text uses DejaVu Sans, bundled in `assets/fonts/` and compiled into the binary
//! (no system font lookup).
//!
//! [`curves`] draws the train-vs-validation curves of a run (`accuracy.png`, `loss.png`);
//! [`lines`] draws any number of panels, each with named series, on one image.

use crate::report::excitation::{Analysis, BlockStats};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/LICENSE`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Size of one panel in pixels.
pub const PANEL_SIZE: (u32, u32) = (800, 500);

/// Matplotlib's default colour cycle (tab10), so the plots read like the seed's.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the `i`-th series of a panel, as RGB.
pub fn colour(i: usize) -> [u8; 3] {
    let RGBColor(r, g, b) = COLOURS[i % COLOURS.len()];
    [r, g, b]
}

/// One named line. Points whose x or y is not finite (NaN: no validation data) are left out and
/// break the line there.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// A colour of its own (RGB); `None` takes the next colour of the cycle (series with a
    /// colour of their own do not use one up).
    pub colour: Option<[u8; 3]>,
}

/// One chart: a title, axis labels and its series (coloured in order, with a legend).
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A marker on every point (epochs); isolated points always get one.
    pub markers: bool,
    /// Integer x ticks only (epochs, channel indices).
    pub integer_x: bool,
}

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the bundled font does not load".into())
    }
}

/// Draws `train` and `val` (one value per epoch, NaN where missing) against the epoch number,
/// as one 800×500 panel titled `title` with `title` on the y axis.
pub fn curves(path: &Path, title: &str, train: &[f64], val: &[f64]) -> Result<(), String> {
    let by_epoch = |name: &str, v: &[f64]| Series {
        name: name.into(),
        points: v
            .iter()
            .enumerate()
            .map(|(i, &y)| ((i + 1) as f64, y))
            .collect(),
        colour: None,
    };
    lines(
        path,
        &[Panel {
            title: title.into(),
            x_label: "epoch".into(),
            y_label: title.into(),
            series: vec![by_epoch("train", train), by_epoch("validation", val)],
            markers: true,
            integer_x: true,
        }],
    )
}

/// Draws `panels` on one PNG: one panel is [`PANEL_SIZE`]; more are laid out two per row, each
/// panel that size. Writes atomically (temporary file + rename).
pub fn lines(path: &Path, panels: &[Panel]) -> Result<(), String> {
    let png = render(panels)?;
    crate::util::atomic::write_atomic(path, &png)
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// The PNG bytes of [`lines`].
pub fn render(panels: &[Panel]) -> Result<Vec<u8>, String> {
    if panels.is_empty() {
        return Err("nothing to plot: no panels".into());
    }
    register_font()?;
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(cols);
    let (w, h) = (PANEL_SIZE.0 * cols as u32, PANEL_SIZE.1 * rows as u32);
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
            draw_panel(area, panel).map_err(|e| format!("plot `{}`: {e}", panel.title))?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or("plot buffer size")?;
    let mut bytes = std::io::Cursor::new(vec![]);
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(bytes.into_inner())
}

/// `lo..hi` covering `v` with a margin; a single value or none still gives a proper range.
fn range(v: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        let pad = (lo.abs() * 0.1).max(0.5);
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * margin;
    (lo - pad, hi + pad)
}

/// Runs of consecutive finite points.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|(x, y)| !x.is_finite() || !y.is_finite())
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect()
}

/// `3`, not `3.0`; other numbers with up to 4 decimals and no trailing zeros.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v.round() + 0.0)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').to_string()
    }
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    p: &Panel,
) -> Result<(), Box<dyn std::error::Error>> {
    let finite: Vec<(f64, f64)> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    // A little room on the x axis so the first and last markers are not cut in half; a single
    // epoch gets its tick in the middle.
    let (x0, x1) = range(finite.iter().map(|q| q.0), 0.03);
    let (y0, y1) = range(finite.iter().map(|q| q.1), 0.05);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FAMILY, 26))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let x_ticks = if p.integer_x {
        ((x1 - x0).floor() as usize + 1).clamp(2, 11)
    } else {
        10
    };
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .x_labels(x_ticks)
        .y_labels(8)
        .x_label_formatter(&|v| {
            if p.integer_x && (v - v.round()).abs() > 1e-9 {
                String::new()
            } else {
                tick(*v)
            }
        })
        .y_label_formatter(&|v| tick(*v))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .bold_line_style(RGBColor(200, 200, 200))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    let mut late_high = 0.0;
    let mut drawn = 0usize;
    let mut cycle = 0;
    for s in &p.series {
        let colour = match s.colour {
            Some([r, g, b]) => RGBColor(r, g, b),
            None => {
                cycle += 1;
                COLOURS[(cycle - 1) % COLOURS.len()]
            }
        };
        let segs = segments(&s.points);
        if segs.is_empty() {
            continue;
        }
        // Each piece between two points is a path of its own: plotters joins the pieces of
        // one thick path with unlimited miters, which spike far out of the chart where a
        // dense, jagged line (a thousand channels' excitations) turns sharply. A line with
        // more points than half the panel's pixels across is drawn 1 pixel wide.
        let width = if s.points.len() > PANEL_SIZE.0 as usize / 2 {
            1
        } else {
            2
        };
        for seg in &segs {
            chart.draw_series(
                seg.windows(2)
                    .map(|w| PathElement::new(w.to_vec(), colour.stroke_width(width))),
            )?;
        }
        let marked: Vec<(f64, f64)> = segs
            .iter()
            .filter(|seg| p.markers || seg.len() == 1)
            .flatten()
            .copied()
            .collect();
        let r = if p.markers { 4 } else { 0 };
        chart
            .draw_series(marked.iter().map(|&q| Circle::new(q, 4, colour.filled())))?
            .label(&s.name)
            .legend(move |(x, y)| {
                EmptyElement::at((x + 12, y))
                    + PathElement::new(vec![(-12, 0), (12, 0)], colour.stroke_width(2))
                    + Circle::new((0, 0), r, colour.filled())
            });
        // Where the series ends up (the last third of its points), to keep the legend off it.
        let last = segs.last().expect("not empty");
        let tail = &last[last.len() * 2 / 3..];
        late_high += tail.iter().map(|q| (q.1 - y0) / (y1 - y0)).sum::<f64>() / tail.len() as f64;
        drawn += 1;
    }
    if drawn > 0 {
        let position = if late_high / drawn as f64 > 0.5 {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        };
        chart
            .configure_series_labels()
            .position(position)
            .margin(10)
            .label_font((FAMILY, 16))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
}

/// `se-compile analyze`'s figure (the SE paper's Fig. 6), one panel per block: x the channel index, y the mean excitation; a line per chosen class and
/// a black one for all images.
pub fn excitation_panels(a: &Analysis, stats: &[BlockStats]) -> Vec<Panel> {
    let line = |m: &[f64]| -> Vec<(f64, f64)> {
        m.iter().enumerate().map(|(c, &v)| (c as f64, v)).collect()
    };
    a.blocks
        .iter()
        .zip(stats)
        .map(|(blk, st)| {
            let mut series: Vec<Series> = a
                .chosen
                .iter()
                .zip(&st.per_class)
                .map(|(&k, m)| Series {
                    name: a.class_names[k].clone(),
                    points: line(m),
                    colour: None,
                })
                .collect();
            series.push(Series {
                name: "all images".into(),
                points: line(&st.overall),
                colour: Some([0, 0, 0]),
            });
            Panel {
                title: format!("{} (specificity {:.4})", blk.label(), st.specificity),
                x_label: "channel index".into(),
                y_label: "mean excitation".into(),
                series,
                markers: false,
                integer_x: true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn decode(png: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(png, image::ImageFormat::Png)
            .expect("a PNG")
            .to_rgb8()
    }

    /// Pixels of exactly the `i`-th series colour.
    fn count(img: &image::RgbImage, i: usize) -> usize {
        img.pixels().filter(|p| p.0 == colour(i)).count()
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("se-compile-plot-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn curves_draws_both_series_text_and_grid() {
        let dir = tmp("curves");
        let path = dir.join("accuracy.png");
        curves(&path, "accuracy", &[0.2, 0.5, 0.7], &[0.25, 0.45, 0.6]).unwrap();
        let img = decode(&std::fs::read(&path).unwrap());
        assert_eq!(img.dimensions(), PANEL_SIZE);
        // Both lines are drawn (2 px wide over ~700 px each).
        assert!(count(&img, 0) > 500, "train pixels: {}", count(&img, 0));
        assert!(
            count(&img, 1) > 500,
            "validation pixels: {}",
            count(&img, 1)
        );
        // Anti-aliased text gives many grey levels; the old 3x5 glyphs had none.
        let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 100, "{} distinct colours", colours.len());
        // Grid lines.
        assert!(img.pixels().filter(|p| p.0 == [200, 200, 200]).count() > 1000);
        assert!(
            std::fs::read_dir(&dir).unwrap().count() == 1,
            "temporary file left"
        );
    }

    #[test]
    fn nan_values_are_skipped_and_one_epoch_plots() {
        let dir = tmp("nan");
        let path = dir.join("loss.png");
        curves(&path, "loss", &[1.5], &[f64::NAN]).unwrap();
        let img = decode(&std::fs::read(&path).unwrap());
        assert_eq!(img.dimensions(), PANEL_SIZE);
        // The single train value gets a marker (and a legend entry); no validation is drawn.
        assert!(count(&img, 0) > 20, "train pixels: {}", count(&img, 0));
        assert_eq!(count(&img, 1), 0);
        // A gap in the middle of a series does not stop the rest of it.
        let png = render(&[Panel {
            title: "gap".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "s".into(),
                points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (3.0, 2.0)],
                colour: None,
            }],
            markers: false,
            integer_x: false,
        }])
        .unwrap();
        assert!(count(&decode(&png), 0) > 200);
    }

    #[test]
    fn lines_lays_out_panels_two_per_row() {
        // The shape an analysis would draw: one panel per SE block, channel on x, one line per
        // class.
        let panels: Vec<Panel> = (0..3)
            .map(|b| Panel {
                title: format!("se block {b}"),
                x_label: "channel".into(),
                y_label: "mean excitation".into(),
                series: (0..4)
                    .map(|c| Series {
                        name: format!("class {c}"),
                        points: (0..32)
                            .map(|k| (k as f64, ((k * (c + 1) + b) as f64 * 0.3).sin()))
                            .collect(),
                        // The last line in a colour of its own: the cycle goes on without it.
                        colour: (c == 3).then_some([10, 20, 30]),
                    })
                    .collect(),
                markers: false,
                integer_x: true,
            })
            .collect();
        let dir = tmp("lines");
        let path = dir.join("panels.png");
        lines(&path, &panels).unwrap();
        let img = decode(&std::fs::read(&path).unwrap());
        assert_eq!(
            img.dimensions(),
            (2 * PANEL_SIZE.0, 2 * PANEL_SIZE.1),
            "3 panels: 2 rows of 2"
        );
        for c in 0..3 {
            assert!(count(&img, c) > 300, "class {c}: {} pixels", count(&img, c));
        }
        assert_eq!(
            count(&img, 3),
            0,
            "the own-coloured line takes no colour of the cycle"
        );
        let own = img.pixels().filter(|p| p.0 == [10, 20, 30]).count();
        assert!(own > 300, "own-coloured line: {own} pixels");
        // The fourth cell stays empty (white).
        let (w, h) = PANEL_SIZE;
        assert!((w + 10..2 * w - 10).all(|x| (h + 10..2 * h - 10)
            .step_by(7)
            .all(|y| img.get_pixel(x, y).0 == [255; 3])));
        // The third panel (bottom left) is drawn.
        let bottom_left: HashSet<[u8; 3]> = (0..w)
            .flat_map(|x| (h..2 * h).map(move |y| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .collect();
        assert!(bottom_left.len() > 20);
    }

    #[test]
    fn jagged_lines_stay_inside_the_chart() {
        // A line that turns back at every point (as excitations over channels do): no stroke
        // may spike out of the plotting area into the title or past the axes.
        for n in [60, 1000] {
            let png = render(&[Panel {
                title: "zig-zag".into(),
                x_label: "channel".into(),
                y_label: "excitation".into(),
                series: vec![Series {
                    name: "s".into(),
                    points: (0..n).map(|k| (k as f64, (k % 2) as f64)).collect(),
                    colour: None,
                }],
                markers: false,
                integer_x: true,
            }])
            .unwrap();
            let img = decode(&png);
            let drawn: Vec<(u32, u32)> = img
                .enumerate_pixels()
                .filter(|(_, _, p)| p.0 == colour(0))
                .map(|(x, y, _)| (x, y))
                .collect();
            assert!(drawn.len() > 2000, "{n} points: {} pixels", drawn.len());
            // The caption takes the top ~45 rows, the y labels the left ~80 columns (the legend
            // sample sits inside the chart).
            let out: Vec<_> = drawn.iter().filter(|(x, y)| *y < 40 || *x < 75).collect();
            assert!(
                out.is_empty(),
                "{n} points: {} pixels outside, e.g. {:?}",
                out.len(),
                out.first()
            );
        }
    }

    #[test]
    fn errors_are_messages() {
        let dir = tmp("errors");
        let e = curves(
            &dir.join("missing/accuracy.png"),
            "accuracy",
            &[0.1],
            &[0.2],
        )
        .unwrap_err();
        assert!(e.contains("missing/accuracy.png: cannot write"), "{e}");
        assert!(lines(&dir.join("x.png"), &[])
            .unwrap_err()
            .contains("no panels"));
    }
}
