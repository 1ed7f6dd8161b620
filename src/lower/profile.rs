//! `SE_COMPILE_PROFILE=1`: time per phase and per layer kind. On the GPU networks each
//! measured span is closed by a device synchronization (which itself slows the run a little).
//! On the CPU network, the forward of each layer is timed where it runs, and each backward op
//! (run later, by dfdx's tape) under the label its layer had when it was recorded
//! (`record_backward`), collected per thread and drained into the profile after the backward.

use super::plan::Layer;
use std::cell::RefCell;
use std::time::Instant;

thread_local! {
    /// The layer kind whose forward is running, while profiling the CPU network.
    static LABEL: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Backward time per layer kind since the last drain.
    static BACKWARD: RefCell<Vec<(String, f64)>> = const { RefCell::new(Vec::new()) };
}

/// Sets (or clears) the layer kind that backward ops recorded from now on belong to.
pub fn set_label(label: Option<String>) {
    LABEL.with(|l| *l.borrow_mut() = label);
}

/// The current layer kind, if profiling: what a backward op records at forward time.
pub fn current_label() -> Option<String> {
    LABEL.with(|l| l.borrow().clone())
}

/// Adds one backward op's time under its layer kind.
pub fn record_backward(label: &str, secs: f64) {
    BACKWARD.with(|b| b.borrow_mut().push((label.to_string(), secs)));
}

/// Moves the backward times gathered on this thread into `p`, as `  backward: KIND`.
pub fn drain_backward(p: &mut Profile) {
    for (label, secs) in BACKWARD.with(|b| std::mem::take(&mut *b.borrow_mut())) {
        p.add(&format!("  backward: {label}"), secs);
    }
}

#[derive(Default)]
pub struct Profile {
    entries: Vec<(String, f64, usize)>,
}

impl Profile {
    pub fn add(&mut self, what: &str, secs: f64) {
        match self.entries.iter_mut().find(|e| e.0 == what) {
            Some(e) => {
                e.1 += secs;
                e.2 += 1;
            }
            None => self.entries.push((what.to_string(), secs, 1)),
        }
    }

    pub fn report(&self) -> String {
        let total: f64 = self
            .entries
            .iter()
            .filter(|e| !e.0.starts_with("  "))
            .map(|e| e.1)
            .sum();
        let head = "phase / layer kind";
        let w = self
            .entries
            .iter()
            .map(|e| e.0.chars().count())
            .fold(head.len(), usize::max);
        let mut s = format!(
            "{head:<w$} {:>10} {:>7} {:>7}\n",
            "ms total", "calls", "share"
        );
        for (what, secs, calls) in &self.entries {
            s.push_str(&format!(
                "{what:<w$} {:>10.1} {calls:>7} {:>6.1}%\n",
                secs * 1e3,
                100.0 * secs / total.max(1e-12)
            ));
        }
        s
    }
}

/// Starts timing a span when profiling: `sync` waits for the device's queued work first, so
/// the span does not pay for it.
pub fn span_start(p: &Option<Profile>, sync: impl FnOnce()) -> Option<Instant> {
    p.as_ref().map(|_| {
        sync();
        Instant::now()
    })
}

/// Ends a span begun by `span_start`, after the device has finished its work, and adds it to
/// the profile under `what`.
pub fn span_end(
    p: &mut Option<Profile>,
    t: Option<Instant>,
    sync: impl FnOnce(),
    what: impl FnOnce() -> String,
) {
    if let (Some(t), Some(p)) = (t, p.as_mut()) {
        sync();
        p.add(&what(), t.elapsed().as_secs_f64());
    }
}

impl Profile {
    /// A profile when SE_COMPILE_PROFILE=1.
    pub fn from_env() -> Option<Profile> {
        (std::env::var("SE_COMPILE_PROFILE").as_deref() == Ok("1")).then(Profile::default)
    }
}

/// The profile's name for a layer.
pub fn kind_label(l: &Layer) -> String {
    let kind = base_label(l);
    match l.epilogue() {
        // A fused activation's time is its layer's: say so.
        Some(f) => format!("{kind} + {}", f.name()),
        None => kind,
    }
}

fn base_label(l: &Layer) -> String {
    match l {
        Layer::Input => "input".into(),
        Layer::Conv { op, .. } if op.groups > 1 => "conv (grouped)".into(),
        Layer::Conv { op, .. } if op.kernel == [1, 1] && op.stride == [1, 1] => "conv 1x1".into(),
        Layer::Conv { op, .. } if op.kernel == [1, 1] => "conv 1x1 strided".into(),
        Layer::Conv { op, .. } => format!("conv {}x{}", op.kernel[0], op.kernel[1]),
        Layer::BatchNorm { .. } => "batch_norm".into(),
        Layer::Activation(f) => format!("activation {f:?}").to_lowercase(),
        Layer::ZeroPad(_) => "zero_padding2d".into(),
        Layer::Pool { max: true, .. } => "max_pool2d".into(),
        Layer::Pool { .. } => "avg_pool2d".into(),
        Layer::GlobalPool { .. } => "global pool".into(),
        Layer::Dense { .. } => "dense".into(),
        Layer::Dropout(_) => "dropout".into(),
        Layer::Reshape => "reshape".into(),
        Layer::Merge { kind, .. } => format!("{kind:?}").to_lowercase(),
        Layer::GatedAdd { .. } => "se multiply + add".into(),
    }
}
