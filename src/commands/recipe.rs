//! The `train:` recipe keys that `se-compile train` can override on the command line.

use se_compile::spec::recipe::{Monitor, Optimizer, Schedule, TrainConfig};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct RecipeFlags {
    #[arg(long)]
    pub epochs: Option<usize>,
    /// The global batch size (with --engine torchrun it is split over the processes).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_parser = ["adam", "sgd"])]
    pub optimizer: Option<String>,
    #[arg(long, value_parser = ["constant", "step", "cosine"])]
    pub schedule: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Hold out this fraction of train/ for validation when DIR has no test/.
    #[arg(long)]
    pub val_split: Option<f32>,
    /// Turn augmentation on or off (the spec's `augment`).
    #[arg(long)]
    pub augment: Option<bool>,
    /// Label smoothing of the training loss, e.g. 0.1 (the spec's `label_smoothing`).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Linear learning-rate warm-up over the first N epochs (`warmup_epochs`).
    #[arg(long, value_name = "N")]
    pub warmup_epochs: Option<usize>,
    /// Stop when --monitor has not improved for N epochs (`early_stopping`; 0 is off).
    #[arg(long, value_name = "PATIENCE")]
    pub early_stopping: Option<usize>,
    /// Multiply the learning rate by `plateau_factor` when --monitor has not improved for N
    /// epochs (`reduce_lr_on_plateau`; 0 is off).
    #[arg(long, value_name = "PATIENCE")]
    pub reduce_lr_on_plateau: Option<usize>,
    /// The metric early stopping and reduce-on-plateau watch (`monitor`).
    #[arg(long, value_parser = Monitor::NAMES)]
    pub monitor: Option<String>,
    /// A change of --monitor smaller than this is no improvement (`min_delta`).
    #[arg(long)]
    pub min_delta: Option<f64>,
    /// The learning-rate factor of each plateau (`plateau_factor`, default 0.1).
    #[arg(long)]
    pub plateau_factor: Option<f64>,
    /// The floor of a reduced learning rate (`min_lr`).
    #[arg(long)]
    pub min_lr: Option<f64>,
}

impl RecipeFlags {
    pub fn apply(&self, cfg: &mut TrainConfig) {
        if let Some(v) = self.epochs {
            cfg.epochs = v.max(1);
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v.max(1);
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.val_split {
            cfg.val_split = v.clamp(0.0, 0.9);
        }
        if let Some(v) = self.augment {
            cfg.augment.enabled = v;
        }
        if let Some(o) = &self.optimizer {
            cfg.optimizer = if o == "sgd" {
                Optimizer::Sgd
            } else {
                Optimizer::Adam
            };
        }
        if let Some(s) = &self.schedule {
            cfg.schedule = match s.as_str() {
                "step" => Schedule::Step,
                "cosine" => Schedule::Cosine,
                _ => Schedule::Constant,
            };
        }
        if let Some(v) = self.label_smoothing {
            cfg.label_smoothing = v.clamp(0.0, 0.99);
        }
        if let Some(v) = self.warmup_epochs {
            cfg.warmup_epochs = v;
        }
        if let Some(v) = self.early_stopping {
            cfg.early_stopping = v;
        }
        if let Some(v) = self.reduce_lr_on_plateau {
            cfg.reduce_lr_on_plateau = v;
        }
        if let Some(v) = self.min_delta {
            cfg.min_delta = v.max(0.0);
        }
        if let Some(v) = self.plateau_factor {
            cfg.plateau_factor = v.clamp(0.0, 1.0);
        }
        if let Some(v) = self.min_lr {
            cfg.min_lr = v.max(0.0);
        }
        if let Some(m) = &self.monitor {
            cfg.monitor = Monitor::parse(m).expect("clap checked the name");
        }
    }
}
