//! `se-compile diff A B`: the summary's rows of two graphs side by side (params, MACs and
//! activation memory of both, the delta and the percentage), aligned by their stage/block/layer
//! path; rows found in one graph only are added or removed. The footer gives each spec's SE
//! overhead: what its SE layers add over the same spec without them.

use super::summary::{self, human, Depth, Format, Row};
use super::thousands;
use crate::validate::ValidGraph;
use serde_json::{json, Value};

/// Params, MACs and activation memory (bytes per image, float32) of a row or a whole graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Measures {
    pub params: u64,
    pub macs: u64,
    pub activation_bytes: u64,
}

impl Measures {
    fn of_row(r: &Row) -> Self {
        Measures {
            params: r.params.total(),
            macs: r.macs,
            activation_bytes: r.elements * 4,
        }
    }
    pub fn of_graph(vg: &ValidGraph) -> Self {
        let t = vg.totals();
        Measures {
            params: t.params.total(),
            macs: t.macs,
            activation_bytes: t.elements * 4,
        }
    }
    fn values(&self) -> [u64; 3] {
        [self.params, self.macs, self.activation_bytes]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Same,
    Changed,
    /// Only in B.
    Added,
    /// Only in A.
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Same => "same",
            Status::Changed => "changed",
            Status::Added => "added",
            Status::Removed => "removed",
        }
    }
    fn mark(self) -> &'static str {
        match self {
            Status::Same => " ",
            Status::Changed => "~",
            Status::Added => "+",
            Status::Removed => "-",
        }
    }
}

#[derive(Clone, Debug)]
pub struct DiffRow {
    /// A's name (B's for an added row).
    pub name: String,
    /// B's name where a matched row is named differently (auto-numbered layers shift when
    /// layers are added before them).
    pub name_b: Option<String>,
    pub class: String,
    pub a: Option<Measures>,
    pub b: Option<Measures>,
    pub status: Status,
}

/// One spec of the comparison.
pub struct Side<'a> {
    /// The file (or zoo name) it was read from.
    pub file: String,
    pub vg: &'a ValidGraph,
    /// The same spec with every SE layer left out; `Err` holds why that does not compile
    /// (e.g. a spec that is only an SE block).
    pub without_se: Result<&'a ValidGraph, String>,
}

/// What SE adds to one spec.
#[derive(Clone, Debug)]
pub struct SeOverhead {
    pub model: String,
    pub with_se: Measures,
    /// `Err`: why the spec without SE does not compile.
    pub without_se: Result<Measures, String>,
}

pub struct Diff {
    pub depth: Depth,
    pub a: (String, String),
    pub b: (String, String),
    pub rows: Vec<DiffRow>,
    pub totals: (Measures, Measures),
    pub se: (SeOverhead, SeOverhead),
}

/// Rows match when they are the same group (`stage2`, `stage2.block1`), or layers of the same
/// type in the same block (or stage, or the top level).
fn same_key(x: &Row, y: &Row) -> bool {
    let group = |r: &Row| r.path == r.name;
    match (group(x), group(y)) {
        (true, true) => x.name == y.name,
        (false, false) => x.path == y.path && x.class == y.class,
        _ => false,
    }
}

/// Beyond this many cells the alignment is by name only (a 100,000-layer spec).
const MAX_ALIGN_CELLS: usize = 20_000_000;

/// The alignment of two row lists, in order: (Some(i), Some(j)) matched, (Some(i), None) only
/// in A, (None, Some(j)) only in B. The longest common subsequence of matching rows; among the
/// longest, the one with the most equal names.
fn align(a: &[Row], b: &[Row]) -> Vec<(Option<usize>, Option<usize>)> {
    let (n, m) = (a.len(), b.len());
    let score = |i: usize, j: usize| -> u32 {
        if same_key(&a[i], &b[j]) {
            4 + u32::from(a[i].name == b[j].name)
        } else {
            0
        }
    };
    if n.saturating_mul(m) > MAX_ALIGN_CELLS {
        let mut out: Vec<_> = (0..n)
            .map(|i| (Some(i), b.iter().position(|r| r.name == a[i].name)))
            .collect();
        out.extend(
            (0..m)
                .filter(|&j| !a.iter().any(|r| r.name == b[j].name))
                .map(|j| (None, Some(j))),
        );
        return out;
    }
    // best[i][j]: the best score of a[i..] against b[j..].
    let w = m + 1;
    let mut best = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            let s = score(i, j);
            let mut v = best[(i + 1) * w + j].max(best[i * w + j + 1]);
            if s > 0 {
                v = v.max(s + best[(i + 1) * w + j + 1]);
            }
            best[i * w + j] = v;
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = vec![];
    while i < n && j < m {
        let s = score(i, j);
        if s > 0 && best[i * w + j] == s + best[(i + 1) * w + j + 1] {
            out.push((Some(i), Some(j)));
            i += 1;
            j += 1;
        } else if best[i * w + j] == best[(i + 1) * w + j] {
            out.push((Some(i), None));
            i += 1;
        } else {
            out.push((None, Some(j)));
            j += 1;
        }
    }
    out.extend((i..n).map(|i| (Some(i), None)));
    out.extend((j..m).map(|j| (None, Some(j))));
    out
}

fn overhead(s: &Side) -> SeOverhead {
    SeOverhead {
        model: s.vg.graph().model.clone(),
        with_se: Measures::of_graph(s.vg),
        without_se: s.without_se.clone().map(Measures::of_graph),
    }
}

pub fn diff(a: &Side, b: &Side, depth: Depth) -> Diff {
    // In spec order, where SE layers keep their place in the block (the summary's Keras order
    // sorts by depth, which SE changes).
    let in_spec_order = |vg: &ValidGraph| {
        let mut r = summary::rows(vg, depth);
        r.sort_by_key(|r| r.first);
        r
    };
    let (ra, rb) = (in_spec_order(a.vg), in_spec_order(b.vg));
    let rows = align(&ra, &rb)
        .into_iter()
        .map(|(i, j)| {
            let (x, y) = (i.map(|i| &ra[i]), j.map(|j| &rb[j]));
            let (ma, mb) = (x.map(Measures::of_row), y.map(Measures::of_row));
            let first = x.or(y).expect("one side of every aligned row");
            DiffRow {
                name: first.name.clone(),
                name_b: match (x, y) {
                    (Some(x), Some(y)) if x.name != y.name => Some(y.name.clone()),
                    _ => None,
                },
                class: first.class.clone(),
                a: ma,
                b: mb,
                status: match (ma, mb) {
                    (Some(p), Some(q)) if p == q => Status::Same,
                    (Some(_), Some(_)) => Status::Changed,
                    (Some(_), None) => Status::Removed,
                    _ => Status::Added,
                },
            }
        })
        .collect();
    Diff {
        depth,
        a: (a.vg.graph().model.clone(), a.file.clone()),
        b: (b.vg.graph().model.clone(), b.file.clone()),
        rows,
        totals: (Measures::of_graph(a.vg), Measures::of_graph(b.vg)),
        se: (overhead(a), overhead(b)),
    }
}

fn signed(d: i128, f: impl Fn(u64) -> String) -> String {
    match d.signum() {
        0 => "0".into(),
        1 => format!("+{}", f(d as u64)),
        _ => format!("-{}", f(d.unsigned_abs() as u64)),
    }
}

fn delta(a: u64, b: u64) -> i128 {
    b as i128 - a as i128
}

/// The change relative to A, in percent; `None` where A is 0.
fn pct(a: u64, b: u64) -> Option<f64> {
    (a > 0).then(|| delta(a, b) as f64 * 100.0 / a as f64)
}

/// A percentage with `decimals` places, two where that would print a small change as 0
/// (and `+<0.01%` below that).
fn pct_text(p: Option<f64>, decimals: usize) -> String {
    match p {
        None => String::new(),
        Some(0.0) => "0%".into(),
        Some(p) if p.abs() < 0.005 => format!("{}<0.01%", if p > 0.0 { '+' } else { '-' }),
        Some(p) if p.abs() < 0.95 => format!("{p:+.2}%"),
        Some(p) => format!("{p:+.decimals$}%"),
    }
}

/// MACs as the summary's totals line prints them ("3.86 G"); 0 as "0".
fn macs(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        human(n)
    }
}

/// Bytes in B, KB, MB or GB (decimal, as the summary's "170.80 MB").
fn bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.2} KB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

const FORMATS: [fn(u64) -> String; 3] = [thousands, macs, bytes];
const KINDS: [&str; 3] = ["params", "MACs", "activation memory"];

/// The twelve number cells of a row: A, B, delta and percentage of each measure.
fn cells(a: Option<Measures>, b: Option<Measures>) -> Vec<String> {
    let mut out = vec![];
    for (k, f) in FORMATS.into_iter().enumerate() {
        let x = a.map(|m| m.values()[k]);
        let y = b.map(|m| m.values()[k]);
        out.push(x.map(f).unwrap_or_default());
        out.push(y.map(f).unwrap_or_default());
        let (x0, y0) = (x.unwrap_or(0), y.unwrap_or(0));
        out.push(signed(delta(x0, y0), f));
        out.push(pct_text(pct(x0, y0), 1));
    }
    out
}

fn row_name(r: &DiffRow) -> String {
    match &r.name_b {
        Some(nb) => format!("{} / {} ({})", r.name, nb, r.class),
        None => format!("{} ({})", r.name, r.class),
    }
}

fn depth_word(d: Depth) -> &'static str {
    match d {
        Depth::Stage => "stage",
        Depth::Block => "block",
        Depth::Layer => "layer",
    }
}

fn overhead_line(which: &str, o: &SeOverhead) -> String {
    let head = format!("SE overhead of {which} ({})", o.model);
    match &o.without_se {
        Err(why) => format!("{head}: not available; without SE the spec does not compile ({why})"),
        Ok(w) if *w == o.with_se => format!("{head}: none (the spec has no SE layers)"),
        Ok(w) => {
            let parts: Vec<String> = (0..3)
                .map(|k| {
                    let (x, y) = (w.values()[k], o.with_se.values()[k]);
                    let d = format!("{} {}", signed(delta(x, y), FORMATS[k]), KINDS[k]);
                    match pct(x, y) {
                        Some(_) => format!("{d} ({})", pct_text(pct(x, y), 2)),
                        None => d,
                    }
                })
                .collect();
            format!(
                "{head}: {} over the same spec with se: off",
                parts.join(", ")
            )
        }
    }
}

fn header_lines(d: &Diff) -> Vec<String> {
    vec![
        format!("A: {} ({})", d.a.0, d.a.1),
        format!("B: {} ({})", d.b.0, d.b.1),
    ]
}

fn counts_line(d: &Diff) -> String {
    let n = |s: Status| d.rows.iter().filter(|r| r.status == s).count();
    format!(
        "{} rows per {}: {} same, {} changed (~), {} only in B (+ added), {} only in A (- removed)",
        d.rows.len(),
        depth_word(d.depth),
        n(Status::Same),
        n(Status::Changed),
        n(Status::Added),
        n(Status::Removed)
    )
}

pub fn text(d: &Diff) -> String {
    let header: Vec<String> = [
        "",
        "Name",
        "Params A",
        "Params B",
        "Δ",
        "%",
        "MACs A",
        "MACs B",
        "Δ",
        "%",
        "Act. mem A",
        "B",
        "Δ",
        "%",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut table: Vec<Vec<String>> = vec![];
    for r in &d.rows {
        let mut line = vec![r.status.mark().to_string(), row_name(r)];
        line.extend(cells(r.a, r.b));
        table.push(line);
    }
    let mut total = vec![String::new(), "Total".to_string()];
    total.extend(cells(Some(d.totals.0), Some(d.totals.1)));
    let all = std::iter::once(&header)
        .chain(table.iter())
        .chain(std::iter::once(&total));
    let mut widths = vec![0usize; header.len()];
    for line in all {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |line: &[String]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            if i > 0 {
                s.push_str(if i == 2 || i == 6 || i == 10 {
                    "   "
                } else {
                    "  "
                });
            }
            if i <= 1 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    };
    let width = fmt(&header)
        .chars()
        .count()
        .max(fmt(&total).chars().count());
    let mut out: Vec<String> = header_lines(d);
    out.push("=".repeat(width));
    out.push(fmt(&header));
    out.push("=".repeat(width));
    out.extend(table.iter().map(|l| fmt(l)));
    out.push("=".repeat(width));
    out.push(fmt(&total));
    out.push("_".repeat(width));
    out.push(counts_line(d));
    out.push(overhead_line("A", &d.se.0));
    out.push(overhead_line("B", &d.se.1));
    out.push("Activation memory: the outputs of all layers, float32, per image.".to_string());
    out.push(summary::MACS_CONVENTION.to_string());
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn measures_json(m: Option<Measures>) -> Value {
    match m {
        None => Value::Null,
        Some(m) => {
            json!({"params": m.params, "macs": m.macs, "activation_bytes": m.activation_bytes})
        }
    }
}

/// delta and pct of B against A (a missing side counts as 0).
fn change_json(a: Option<Measures>, b: Option<Measures>) -> (Value, Value) {
    let (x, y) = (a.unwrap_or_default(), b.unwrap_or_default());
    let mut dv = serde_json::Map::new();
    let mut pv = serde_json::Map::new();
    for (k, key) in ["params", "macs", "activation_bytes"]
        .into_iter()
        .enumerate()
    {
        let (p, q) = (x.values()[k], y.values()[k]);
        dv.insert(key.into(), json!(delta(p, q) as i64));
        let r = pct(p, q).map(|v| (v * 1e4).round() / 1e4);
        pv.insert(key.into(), json!(r));
    }
    (Value::Object(dv), Value::Object(pv))
}

fn overhead_json(o: &SeOverhead) -> Value {
    match &o.without_se {
        Err(why) => {
            json!({"model": o.model, "with_se": measures_json(Some(o.with_se)), "without_se": null, "error": why})
        }
        Ok(w) => {
            let (d, p) = change_json(Some(*w), Some(o.with_se));
            json!({"model": o.model, "with_se": measures_json(Some(o.with_se)), "without_se": measures_json(Some(*w)), "delta": d, "pct": p})
        }
    }
}

pub fn json(d: &Diff) -> Value {
    let rows: Vec<Value> = d
        .rows
        .iter()
        .map(|r| {
            let (dv, pv) = change_json(r.a, r.b);
            json!({
                "name": r.name,
                "name_b": r.name_b,
                "type": r.class,
                "status": r.status.as_str(),
                "a": measures_json(r.a),
                "b": measures_json(r.b),
                "delta": dv,
                "pct": pv,
            })
        })
        .collect();
    let (dv, pv) = change_json(Some(d.totals.0), Some(d.totals.1));
    json!({
        "a": {"model": d.a.0, "file": d.a.1},
        "b": {"model": d.b.0, "file": d.b.1},
        "depth": depth_word(d.depth),
        "rows": rows,
        "totals": {"a": measures_json(Some(d.totals.0)), "b": measures_json(Some(d.totals.1)), "delta": dv, "pct": pv},
        "se_overhead": {"a": overhead_json(&d.se.0), "b": overhead_json(&d.se.1)},
        "macs_convention": summary::MACS_CONVENTION,
    })
}

pub fn markdown(d: &Diff) -> String {
    let mut out = format!("### Diff: `{}` (A) vs `{}` (B)\n\n", d.a.0, d.b.0);
    for l in header_lines(d) {
        out.push_str(&format!("- {l}\n"));
    }
    out.push_str("\n| | Name | Params A | Params B | Δ | % | MACs A | MACs B | Δ | % | Act. mem A | B | Δ | % |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut line = |mark: &str, name: String, c: Vec<String>| {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            mark,
            name.replace('|', "\\|"),
            c.join(" | ")
        ));
    };
    for r in &d.rows {
        let mark = if r.status == Status::Same {
            ""
        } else {
            r.status.mark()
        };
        line(mark, row_name(r), cells(r.a, r.b));
    }
    line(
        "",
        "**Total**".into(),
        cells(Some(d.totals.0), Some(d.totals.1)),
    );
    out.push_str(&format!(
        "\n- {}\n- {}\n- {}\n\n{}\n",
        counts_line(d),
        overhead_line("A", &d.se.0),
        overhead_line("B", &d.se.1),
        summary::MACS_CONVENTION
    ));
    out
}

pub fn render(d: &Diff, format: Format) -> String {
    match format {
        Format::Text => text(d),
        Format::Markdown => markdown(d),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json(d)).expect("JSON of plain values");
            s.push('\n');
            s
        }
    }
}
