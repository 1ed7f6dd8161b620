//! Early stopping and reduce-on-plateau, as Keras' `EarlyStopping` and `ReduceLROnPlateau`
//! (without cooldown), and the learning rate they give each epoch.
//!
//! Their state is a function of the history alone, so a resumed run replays `history.json`
//! instead of saving counters: the same history gives the same learning rates and the same
//! stop, in se-compile and in the exported `train.py` (which implements the same rules).

use super::run::EpochRecord;
use crate::spec::recipe::{Monitor, TrainConfig};

#[derive(Clone, Debug, PartialEq)]
pub struct Callbacks {
    /// The product of every plateau reduction so far.
    pub lr_scale: f64,
    /// The best monitored value seen (lower is better: accuracies are negated).
    best: f64,
    /// Epochs since `best` improved, for early stopping and for the plateau.
    wait: usize,
    plateau_wait: usize,
    /// Set when early stopping has fired.
    pub stop: bool,
}

impl Callbacks {
    pub fn new() -> Callbacks {
        Callbacks {
            lr_scale: 1.0,
            best: f64::INFINITY,
            wait: 0,
            plateau_wait: 0,
            stop: false,
        }
    }

    /// The state after `history`, epoch by epoch.
    pub fn replay(cfg: &TrainConfig, history: &[EpochRecord]) -> Callbacks {
        let mut c = Callbacks::new();
        for r in history {
            c.observe(cfg, r);
        }
        c
    }

    /// The monitored value of an epoch, as "lower is better"; a `val_` metric of a run without
    /// validation data (NaN) falls back to the training metric.
    pub fn value(m: Monitor, r: &EpochRecord) -> f64 {
        let (v, fallback, sign) = match m {
            Monitor::ValLoss => (r.val_loss, r.loss, 1.0),
            Monitor::ValAccuracy => (r.val_accuracy, r.accuracy, -1.0),
            Monitor::Loss => (r.loss, r.loss, 1.0),
            Monitor::Accuracy => (r.accuracy, r.accuracy, -1.0),
        };
        sign * if v.is_nan() { fallback } else { v }
    }

    /// Updates the counters with one finished epoch.
    pub fn observe(&mut self, cfg: &TrainConfig, r: &EpochRecord) {
        let v = Callbacks::value(cfg.monitor, r);
        if v < self.best - cfg.min_delta {
            self.best = v;
            self.wait = 0;
            self.plateau_wait = 0;
            return;
        }
        self.wait += 1;
        self.plateau_wait += 1;
        if cfg.early_stopping > 0 && self.wait >= cfg.early_stopping {
            self.stop = true;
        }
        if cfg.reduce_lr_on_plateau > 0 && self.plateau_wait >= cfg.reduce_lr_on_plateau {
            self.lr_scale *= cfg.plateau_factor;
            self.plateau_wait = 0;
        }
    }

    /// The learning rate of 0-based `epoch`: schedule and warm-up, times the plateau
    /// reductions, never below `min_lr` once reduced.
    pub fn lr(&self, cfg: &TrainConfig, epoch: usize) -> f64 {
        let lr = cfg.lr_at(epoch);
        if self.lr_scale < 1.0 {
            (lr * self.lr_scale).max(cfg.min_lr)
        } else {
            lr
        }
    }
}

impl Default for Callbacks {
    fn default() -> Self {
        Callbacks::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: usize, val_loss: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            loss: 1.0,
            accuracy: 0.5,
            val_loss,
            val_accuracy: 0.5,
            lr: 0.0,
            seconds: 0.0,
        }
    }

    #[test]
    fn plateau_and_early_stop_follow_keras_counting() {
        let cfg = TrainConfig {
            early_stopping: 3,
            reduce_lr_on_plateau: 2,
            plateau_factor: 0.5,
            min_lr: 0.3,
            lr: 1.0,
            ..Default::default()
        };
        // improves, improves, then flat: the plateau fires after 2 flat epochs, the stop after 3
        let h: Vec<EpochRecord> = [1.0, 0.9, 0.95, 0.92, 0.91]
            .iter()
            .enumerate()
            .map(|(i, &v)| rec(i + 1, v))
            .collect();
        let after = |n: usize| Callbacks::replay(&cfg, &h[..n]);
        assert_eq!(after(3).lr_scale, 1.0);
        assert!(!after(3).stop);
        assert_eq!(after(4).lr_scale, 0.5);
        assert_eq!(after(4).lr(&cfg, 4), 0.5);
        assert!(!after(4).stop);
        assert!(after(5).stop);
        // a second reduction would give 0.25: floored at min_lr
        let mut c = after(5);
        c.observe(&cfg, &rec(6, 0.99));
        assert_eq!(c.lr_scale, 0.25);
        assert_eq!(c.lr(&cfg, 5), 0.3);
    }

    #[test]
    fn warm_up_ramps_linearly_to_the_schedule() {
        let cfg = TrainConfig {
            warmup_epochs: 4,
            lr: 0.8,
            ..Default::default()
        };
        let want = [0.2, 0.4, 0.6, 0.8, 0.8, 0.8];
        for (e, w) in want.iter().enumerate() {
            assert!(
                (cfg.lr_at(e) - w).abs() < 1e-12,
                "epoch {e}: {}",
                cfg.lr_at(e)
            );
        }
    }
}
