//! The training recipe: the spec's `train:` section, checked like every other part of the spec
//! (unknown keys get "did you mean"), then command-line overrides.

use super::eval::{eval, Vars};
use crate::diag::{Diagnostic, Result};
use crate::ir::args::{ArgVal, Args, Value};
use crate::source::Span;
use crate::spec::ast::Spec;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// lr * gamma^(number of milestones passed), the seed's 1e-4 → 1e-5 (epoch 40) → 1e-6 (80).
    Step,
    /// Cosine decay from lr to 0 over all epochs.
    Cosine,
}

/// Keras `ImageDataGenerator` settings; the defaults are the seed's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    pub enabled: bool,
    /// Degrees, uniform in [-rotation, rotation].
    pub rotation: f32,
    /// Fractions of the width / height.
    pub width_shift: f32,
    pub height_shift: f32,
    /// Shear angle in degrees.
    pub shear: f32,
    /// Zoom factors in [1 - zoom, 1 + zoom], sampled per axis.
    pub zoom: f32,
    pub horizontal_flip: bool,
    /// Brightness factor range.
    pub brightness: [f32; 2],
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            enabled: false,
            rotation: 20.0,
            width_shift: 0.1,
            height_shift: 0.1,
            shear: 10.0,
            zoom: 0.1,
            horizontal_flip: true,
            brightness: [0.7, 1.3],
        }
    }
}

/// The metric that early stopping and reduce-on-plateau watch (Keras' `monitor`). Losses
/// improve downwards, accuracies upwards. Without validation data a `val_` metric falls back
/// to the training one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    ValLoss,
    ValAccuracy,
    Loss,
    Accuracy,
}

impl Monitor {
    pub const NAMES: [&'static str; 4] = ["val_loss", "val_accuracy", "loss", "accuracy"];
    pub fn parse(s: &str) -> Option<Monitor> {
        Some(match s {
            "val_loss" => Monitor::ValLoss,
            "val_accuracy" => Monitor::ValAccuracy,
            "loss" => Monitor::Loss,
            "accuracy" => Monitor::Accuracy,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        Monitor::NAMES[self as usize]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub optimizer: Optimizer,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub milestones: Vec<usize>,
    pub gamma: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub augment: Augment,
    pub seed: u64,
    /// Fraction of train/ held out for validation when DIR has no test/.
    pub val_split: f32,
    /// Label smoothing of the training loss: targets (1 - e) one_hot + e / K. Validation and
    /// `eval` use the plain loss (as timm does).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Linear warm-up: 0-based epoch e < W trains at lr_at(e) * (e + 1) / W.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// Early stopping patience in epochs (Keras' `EarlyStopping`); 0 is off.
    #[serde(default)]
    pub early_stopping: usize,
    /// Reduce-on-plateau patience in epochs (Keras' `ReduceLROnPlateau`); 0 is off.
    #[serde(default)]
    pub reduce_lr_on_plateau: usize,
    /// The factor each plateau multiplies the learning rate by.
    #[serde(default = "default_plateau_factor")]
    pub plateau_factor: f64,
    /// The floor for a reduced learning rate.
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "default_monitor")]
    pub monitor: Monitor,
    /// An improvement smaller than this does not count.
    #[serde(default)]
    pub min_delta: f64,
}

fn default_plateau_factor() -> f64 {
    0.1
}

fn default_monitor() -> Monitor {
    Monitor::ValLoss
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            optimizer: Optimizer::Adam,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            milestones: vec![],
            gamma: 0.1,
            epochs: 10,
            batch_size: 32,
            augment: Augment::default(),
            seed: 42,
            val_split: 0.2,
            label_smoothing: 0.0,
            warmup_epochs: 0,
            early_stopping: 0,
            reduce_lr_on_plateau: 0,
            plateau_factor: default_plateau_factor(),
            min_lr: 0.0,
            monitor: default_monitor(),
            min_delta: 0.0,
        }
    }
}

impl TrainConfig {
    /// The learning rate of the schedule and the warm-up for a 0-based epoch (before any
    /// reduce-on-plateau, which depends on the history: see `callbacks`).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let warm = if epoch < self.warmup_epochs {
            (epoch + 1) as f64 / self.warmup_epochs as f64
        } else {
            1.0
        };
        warm * self.schedule_lr(epoch)
    }

    fn schedule_lr(&self, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            // Keras' LearningRateScheduler in the seed gets the 0-based epoch and switches after
            // `epoch <= 40`, so 1-based epochs 1..=41 use 1e-4.
            Schedule::Step => {
                self.lr
                    * self
                        .gamma
                        .powi(self.milestones.iter().filter(|&&m| epoch > m).count() as i32)
            }
            Schedule::Cosine => {
                0.5 * self.lr
                    * (1.0
                        + (std::f64::consts::PI * epoch as f64 / self.epochs.max(1) as f64).cos())
            }
        }
    }

    /// Reads the spec's `train:` section.
    pub fn from_spec(spec: &Spec) -> Result<TrainConfig> {
        let vars = Vars::default();
        let vals: Vec<ArgVal> = spec
            .train
            .iter()
            .map(|a| {
                Ok(ArgVal {
                    key: a.key.as_ref().map(|k| (k.name.clone(), k.span)),
                    value: eval(&a.value, &vars)?,
                    span: a.value.span,
                    scope_names: vec![],
                })
            })
            .collect::<Result<_>>()?;
        let span = spec.train_span.unwrap_or(spec.span);
        TrainConfig::from_args(&mut Args::new("train", span, vals))
    }

    /// Reads the `train:` arguments (also run in schema mode by `se-compile schema`).
    pub fn from_args(a: &mut Args) -> Result<TrainConfig> {
        let mut c = TrainConfig::default();
        a.positional(&[])?;
        if let Some((o, _)) = a.word("optimizer", &["adam", "sgd"])? {
            c.optimizer = if o == "sgd" {
                Optimizer::Sgd
            } else {
                Optimizer::Adam
            };
        }
        if let Some(v) = a.float("lr", 0.0, 10.0)? {
            c.lr = v;
        }
        if let Some(v) = a.float("momentum", 0.0, 1.0)? {
            c.momentum = v;
        }
        if let Some(v) = a.float("weight_decay", 0.0, 1.0)? {
            c.weight_decay = v;
        }
        if let Some((s, _)) = a.word("schedule", &["constant", "step", "cosine"])? {
            c.schedule = match s.as_str() {
                "step" => Schedule::Step,
                "cosine" => Schedule::Cosine,
                _ => Schedule::Constant,
            };
        }
        if let Some((v, span)) = a.get("milestones") {
            c.milestones = int_list(&v, span, "milestones")?;
        }
        if let Some(v) = a.float("gamma", 0.0, 1.0)? {
            c.gamma = v;
        }
        if let Some(v) = a.int("epochs", 1)? {
            c.epochs = v as usize;
        }
        if let Some(v) = a.int("batch_size", 1)? {
            c.batch_size = v as usize;
        }
        if let Some(v) = a.int("seed", 0)? {
            c.seed = v as u64;
        }
        if let Some(v) = a.float("val_split", 0.0, 0.9)? {
            c.val_split = v as f32;
        }
        if let Some(v) = a.float("label_smoothing", 0.0, 0.99)? {
            c.label_smoothing = v;
        }
        if let Some(v) = a.int("warmup_epochs", 0)? {
            c.warmup_epochs = v as usize;
        }
        if let Some(v) = a.int("early_stopping", 0)? {
            c.early_stopping = v as usize;
        }
        if let Some(v) = a.int("reduce_lr_on_plateau", 0)? {
            c.reduce_lr_on_plateau = v as usize;
        }
        if let Some(v) = a.float("plateau_factor", 0.0, 0.999)? {
            c.plateau_factor = v;
        }
        if let Some(v) = a.float("min_lr", 0.0, 10.0)? {
            c.min_lr = v;
        }
        if let Some((m, _)) = a.word("monitor", &Monitor::NAMES)? {
            c.monitor = Monitor::parse(&m).expect("one of NAMES");
        }
        if let Some(v) = a.float("min_delta", 0.0, 1e6)? {
            c.min_delta = v;
        }
        let aug = &mut c.augment;
        if let Some(v) = a.bool("augment")? {
            aug.enabled = v;
        }
        if let Some(v) = a.float("rotation", 0.0, 180.0)? {
            aug.rotation = v as f32;
        }
        if let Some(v) = a.float("width_shift", 0.0, 1.0)? {
            aug.width_shift = v as f32;
        }
        if let Some(v) = a.float("height_shift", 0.0, 1.0)? {
            aug.height_shift = v as f32;
        }
        if let Some(v) = a.float("shear", 0.0, 80.0)? {
            aug.shear = v as f32;
        }
        if let Some(v) = a.float("zoom", 0.0, 0.9)? {
            aug.zoom = v as f32;
        }
        if let Some(v) = a.bool("horizontal_flip")? {
            aug.horizontal_flip = v;
        }
        if let Some((v, span)) = a.get("brightness") {
            aug.brightness = match &v {
                Value::List(l) if l.len() == 2 => {
                    let f = |x: &Value| match x {
                        Value::Float(f) => Some(*f as f32),
                        Value::Int(i) => Some(*i as f32),
                        _ => None,
                    };
                    match (f(&l[0]), f(&l[1])) {
                        (Some(lo), Some(hi)) if lo > 0.0 && lo <= hi => [lo, hi],
                        _ => {
                            return Err(bad(span, "brightness", "[low, high] with 0 < low <= high"))
                        }
                    }
                }
                _ => return Err(bad(span, "brightness", "[low, high] with 0 < low <= high")),
            };
        }
        a.finish()?;
        Ok(c)
    }
}

fn bad(span: Span, key: &str, want: &str) -> Diagnostic {
    Diagnostic::new("spec::type", format!("`{key}` in `train` must be {want}"))
        .at(span, "here")
        .help(format!("write {want}"))
}

fn int_list(v: &Value, span: Span, key: &str) -> Result<Vec<usize>> {
    match v {
        Value::List(l) => l
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(bad(span, key, "a list of epochs, e.g. [40, 80]")),
            })
            .collect(),
        Value::Int(i) if *i >= 0 => Ok(vec![*i as usize]),
        _ => Err(bad(span, key, "a list of epochs, e.g. [40, 80]")),
    }
}
