//! The training loop (the seed's `model.fit`), evaluation, prediction and the speed benchmark.

use super::callbacks::Callbacks;
use super::checkpoint::{self, OPT_M, OPT_V};
use super::data::{prefetch, Dataset, Split};
use super::tensorboard::RunBoard;
use crate::lower::model::{Batch, Model, OptSettings};
use crate::spec::recipe::TrainConfig;
use crate::util::atomic::write_atomic;
use crate::util::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// NaN without validation data (`null` in history.json, as serde_json writes a NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub val_accuracy: f64,
    pub lr: f64,
    pub seconds: f64,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Everything a run directory records about how it was started, for `--resume`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub spec: String,
    pub data: String,
    pub classes: Vec<String>,
    pub train: TrainConfig,
}

/// The optimizer moments as named checkpoint tensors.
fn opt_tensors(model: &dyn Model) -> (i32, Vec<(String, Vec<f32>)>) {
    let (step, m, v) = model.opt_state();
    let mut out = vec![];
    for ((p, m), v) in model.param_info().iter().zip(m).zip(v) {
        if p.trainable && !m.is_empty() {
            out.push((format!("{OPT_M}{}", p.name), m));
            out.push((format!("{OPT_V}{}", p.name), v));
        }
    }
    (step, out)
}

fn restore_opt(model: &mut dyn Model, ck: &checkpoint::Loaded) -> Result<(), String> {
    let (mut ms, mut vs) = (vec![], vec![]);
    for p in model.param_info() {
        if !p.trainable {
            ms.push(vec![]);
            vs.push(vec![]);
            continue;
        }
        for (prefix, dst) in [(OPT_M, &mut ms), (OPT_V, &mut vs)] {
            let v = ck
                .tensors
                .get(&format!("{prefix}{}", p.name))
                .ok_or_else(|| format!("checkpoint has no optimizer state for `{}`", p.name))?;
            if v.len() != p.len {
                return Err(format!(
                    "optimizer state for `{}` has the wrong size",
                    p.name
                ));
            }
            dst.push(v.clone());
        }
    }
    let step = ck
        .meta
        .get("optimizer_step")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    model.set_opt_state(step, ms, vs);
    Ok(())
}

/// Options of one `train` call.
pub struct TrainOptions {
    pub spec_path: String,
    pub spec_text: String,
    pub data: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    /// Draw a live progress bar on stderr (stderr is a terminal).
    pub progress: bool,
    /// Write TensorBoard event files to `out/tb/` ([`RunBoard`]).
    pub tensorboard: bool,
    /// A CPU network of the same graph for the SE excitations logged to TensorBoard (given the
    /// trained weights each epoch); none: no excitations.
    pub excitation_net: Option<crate::lower::cpu::Net>,
}

/// The Keras-like bar of the end-of-epoch line on stdout.
const FULL_BAR: &str = "==============================";

/// The live progress bar of one epoch on stderr (a hidden one when stderr is not a terminal):
/// steps, running loss and accuracy, images/s, ETA. Dropping it clears its line, so an error
/// return or a panic mid-epoch leaves no half-drawn line behind.
struct Progress(indicatif::ProgressBar);

impl Progress {
    fn new(steps: usize, visible: bool) -> Progress {
        if !visible {
            return Progress(indicatif::ProgressBar::hidden());
        }
        let pb = indicatif::ProgressBar::new(steps as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{pos:>5}/{len} [{bar:30}] - {msg} - ETA: {eta}",
            )
            .expect("a valid template")
            .progress_chars("=>."),
        );
        Progress(pb)
    }

    fn step(&self, loss: f64, accuracy: f64, images_per_s: f64) {
        self.0.set_message(format!(
            "loss: {loss:.4} - accuracy: {accuracy:.4} - {images_per_s:.0} img/s"
        ));
        self.0.inc(1);
    }

    /// Runs `f` (which prints to stderr) with the bar out of the way.
    fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.suspend(f)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Loss and accuracy of `split` in inference mode (moving BN statistics), with the confusion
/// matrix (rows: true class, columns: predicted) when `classes` is given.
pub fn evaluate(
    net: &mut dyn Model,
    ds: &Dataset,
    split: &Split,
    batch: usize,
    classes: usize,
) -> (f64, f64, Vec<Vec<usize>>) {
    let mut conf = vec![vec![0usize; classes]; classes];
    let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    ds.each_batch(split, batch, |b| {
        let bs = b.len();
        let r = net.infer(Batch {
            x: b.x,
            shape: vec![bs, ds.h, ds.w, ds.c],
            labels: &b.labels,
        });
        loss += r.loss as f64 * bs as f64;
        seen += bs;
        for (p, &t) in r.probs.iter().zip(&b.labels) {
            let pred = argmax(p);
            correct += usize::from(pred == t);
            if t < classes && pred < classes {
                conf[t][pred] += 1;
            }
        }
    });
    let n = seen.max(1) as f64;
    (loss / n, correct as f64 / n, conf)
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv {
                (i, x)
            } else {
                (bi, bv)
            }
        })
        .0
}

fn write_history(dir: &Path, hist: &[EpochRecord]) -> Result<(), String> {
    let mut csv = String::from("epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n");
    for r in hist {
        csv.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:e},{:.3}\n",
            r.epoch, r.loss, r.accuracy, r.val_loss, r.val_accuracy, r.lr, r.seconds
        ));
    }
    let w = |name: &str, bytes: &[u8]| {
        write_atomic(&dir.join(name), bytes)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    w("history.csv", csv.as_bytes())?;
    w(
        "history.json",
        serde_json::to_string_pretty(hist)
            .expect("plain data")
            .as_bytes(),
    )?;
    plot_history(dir, hist)
}

/// `accuracy.png` and `loss.png` of a history (also drawn for runs trained by train.py).
pub fn plot_history(dir: &Path, hist: &[EpochRecord]) -> Result<(), String> {
    let col = |f: fn(&EpochRecord) -> f64| hist.iter().map(f).collect::<Vec<_>>();
    super::plot::curves(
        &dir.join("accuracy.png"),
        "accuracy",
        &col(|r| r.accuracy),
        &col(|r| r.val_accuracy),
    )?;
    super::plot::curves(
        &dir.join("loss.png"),
        "loss",
        &col(|r| r.loss),
        &col(|r| r.val_loss),
    )
}

/// `steps.csv`: the training loss of every step, for comparing runs (CPU and GPU) step by step.
/// On resume, lines of epochs after `done_epochs` (an interrupted epoch) are dropped.
fn open_step_log(dir: &Path, done_epochs: usize) -> Result<std::fs::File, String> {
    let path = dir.join("steps.csv");
    let mut kept = String::from("epoch,step,loss\n");
    if done_epochs > 0 {
        if let Ok(old) = std::fs::read_to_string(&path) {
            for line in old.lines().skip(1) {
                let epoch: usize = line
                    .split(',')
                    .next()
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(usize::MAX);
                if epoch <= done_epochs {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
        }
    }
    write_atomic(&path, kept.as_bytes())
        .and_then(|_| std::fs::OpenOptions::new().append(true).open(&path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Trains `net` as the seed's `model.fit` does and fills the run directory. Returns the history.
pub fn train(
    net: &mut dyn Model,
    ds: &Dataset,
    cfg: &TrainConfig,
    mut opts: TrainOptions,
) -> Result<Vec<EpochRecord>, String> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("{}: cannot create: {e}", opts.out.display()))?;
    let mut history: Vec<EpochRecord> = vec![];
    let last = opts.out.join("last.safetensors");
    if opts.resume {
        let ck = checkpoint::read(&last)?;
        checkpoint::load_into(net, &ck, &last)?;
        restore_opt(net, &ck)?;
        let h = std::fs::read_to_string(opts.out.join("history.json"))
            .map_err(|e| format!("{}: {e}", opts.out.join("history.json").display()))?;
        history = serde_json::from_str(&h).map_err(|e| format!("history.json: {e}"))?;
        let done: usize = ck
            .meta
            .get("epoch")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        history.truncate(done);
    }
    let ext = if opts.spec_path.ends_with(".se") {
        "se"
    } else {
        "yaml"
    };
    write_atomic(
        &opts.out.join(format!("spec.{ext}")),
        opts.spec_text.as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let rc = RunConfig {
        spec: opts.spec_path.clone(),
        data: opts.data.display().to_string(),
        classes: ds.classes.clone(),
        train: cfg.clone(),
    };
    write_atomic(
        &opts.out.join("config.json"),
        serde_json::to_string_pretty(&rc)
            .expect("plain data")
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;

    let n = ds.train.len();
    let steps = n.div_ceil(cfg.batch_size);
    let classes = ds.classes.len();
    let mut best = history
        .iter()
        .map(|r| {
            if ds.val.is_empty() {
                -r.loss
            } else {
                r.val_accuracy
            }
        })
        .fold(f64::NEG_INFINITY, f64::max);
    let mut step_log = Some(open_step_log(&opts.out, history.len())?);
    let mut board = if opts.tensorboard {
        Some(RunBoard::open(
            &opts.out.join("tb"),
            opts.excitation_net.take(),
            ds,
            opts.resume
                .then_some((history.len() * n.div_ceil(cfg.batch_size)) as i64 + 1),
        )?)
    } else {
        None
    };
    let mut callbacks = Callbacks::replay(cfg, &history);
    let history_len_at_start = history.len();
    for epoch in history.len()..cfg.epochs {
        if callbacks.stop {
            if epoch == history_len_at_start {
                println!(
                    "early_stopping: this run stopped after epoch {epoch} ({} did not improve for {} epochs); nothing to resume",
                    cfg.monitor.name(),
                    cfg.early_stopping
                );
            }
            break;
        }
        let lr = callbacks.lr(cfg, epoch);
        println!("Epoch {}/{}", epoch + 1, cfg.epochs);
        let t0 = Instant::now();
        let order = ds.epoch_order(cfg.seed, epoch);
        let batches: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(|c| c.to_vec()).collect();
        // Batches are decoded, assembled and augmented on a worker thread while the step runs.
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let aug = &cfg.augment;
        let progress = Progress::new(batches.len(), opts.progress);
        let mut t_step = Instant::now();
        let fitted = prefetch(
            batches.len(),
            |k| {
                ds.batch(
                    &ds.train,
                    &batches[k],
                    Some((aug, cfg.seed ^ ((epoch as u64) << 32) ^ k as u64)),
                )
            },
            |step, b| {
                if !b.failed.is_empty() {
                    progress.suspend(|| ds.warn_once(&ds.train, &b.failed));
                }
                if b.is_empty() {
                    return Ok(());
                }
                let bs = b.len();
                let r = net.train_step(
                    Batch {
                        x: b.x,
                        shape: vec![bs, ds.h, ds.w, ds.c],
                        labels: &b.labels,
                    },
                    &OptSettings::new(cfg, lr),
                    cfg.seed ^ ((epoch as u64) << 40) ^ step as u64,
                );
                let l = r.loss as f64;
                if let Some(log) = step_log.as_mut() {
                    let _ = writeln!(log, "{},{},{l:.7}", epoch + 1, step + 1);
                }
                if !l.is_finite() {
                    return Err(format!(
                        "loss became {l} at epoch {} step {}: stopping. {} Lower the learning rate (now {lr:e}).",
                        epoch + 1,
                        step + 1,
                        if last.exists() {
                            format!("The last good checkpoint is kept at {}.", last.display())
                        } else {
                            "No epoch had finished, so there is no checkpoint (no last good checkpoint to keep).".to_string()
                        }
                    ));
                }
                loss_sum += l * bs as f64;
                seen += bs;
                let right = r
                    .probs
                    .iter()
                    .zip(&b.labels)
                    .filter(|(p, t)| argmax(p) == **t)
                    .count();
                correct += right;
                if let Some(board) = board.as_mut() {
                    let secs = std::mem::replace(&mut t_step, Instant::now())
                        .elapsed()
                        .as_secs_f64();
                    board.step(
                        (epoch * batches.len() + step + 1) as i64,
                        l,
                        right as f64 / bs as f64,
                        lr,
                        bs as f64 / secs,
                    )?;
                }
                progress.step(
                    loss_sum / seen as f64,
                    correct as f64 / seen as f64,
                    seen as f64 / t0.elapsed().as_secs_f64(),
                );
                Ok(())
            },
        );
        // The bar's line is cleared before the epoch's line (or the error) prints.
        drop(progress);
        fitted?;
        let train_images_per_sec = seen as f64 / t0.elapsed().as_secs_f64();
        let (val_loss, val_acc, _) = if ds.val.is_empty() {
            (f64::NAN, f64::NAN, vec![])
        } else {
            evaluate(net, ds, &ds.val, cfg.batch_size, classes)
        };
        let secs = t0.elapsed().as_secs_f64();
        let rec = EpochRecord {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_accuracy: val_acc,
            lr,
            seconds: secs,
        };
        println!(
            "{steps}/{steps} [{}] - {:.0}s {:.0}ms/step - loss: {:.4} - accuracy: {:.4} - val_loss: {:.4} - val_accuracy: {:.4} - lr: {:.3e}",
            FULL_BAR,
            secs,
            secs * 1e3 / steps as f64,
            rec.loss,
            rec.accuracy,
            rec.val_loss,
            rec.val_accuracy,
            lr
        );
        history.push(rec.clone());
        let mut meta = HashMap::new();
        meta.insert("format".into(), "se-compile-weights".into());
        meta.insert("model".into(), net.graph().model.clone());
        meta.insert("epoch".into(), (epoch + 1).to_string());
        let (opt_step, opt_state) = opt_tensors(net);
        meta.insert("optimizer_step".into(), opt_step.to_string());
        checkpoint::save(&last, net, &opt_state, meta.clone())?;
        let score = if ds.val.is_empty() {
            -rec.loss
        } else {
            rec.val_accuracy
        };
        if score > best {
            best = score;
            checkpoint::save(&opts.out.join("best.safetensors"), net, &[], meta)?;
        }
        write_history(&opts.out, &history)?;
        if let Some(board) = board.as_mut() {
            board.epoch(&rec, train_images_per_sec, net)?;
        }
        let scale = callbacks.lr_scale;
        callbacks.observe(cfg, &rec);
        if callbacks.lr_scale < scale {
            println!(
                "reduce_lr_on_plateau: {} did not improve for {} epochs; learning rate x{}",
                cfg.monitor.name(),
                cfg.reduce_lr_on_plateau,
                cfg.plateau_factor
            );
        }
        if callbacks.stop && epoch + 1 < cfg.epochs {
            println!(
                "early_stopping: {} did not improve for {} epochs; stopping after epoch {}",
                cfg.monitor.name(),
                cfg.early_stopping,
                epoch + 1
            );
        }
    }
    Ok(history)
}

/// Train and inference speed over `steps` timed steps on random data, after one warm-up step.
pub struct BenchResult {
    /// (images/s, ms per step) of the training steps, when timed.
    pub train: Option<(f64, f64)>,
    /// (images/s, ms per batch) of the inference batches, when timed.
    pub infer: Option<(f64, f64)>,
}

/// Images/s of `train`'s Adam steps and of `infer`'s inference batches (the same spec lowered
/// for inference: BatchNorms folded), each on the same random batch after one untimed warm-up.
pub fn bench(
    train: Option<&mut dyn Model>,
    infer: Option<&mut dyn Model>,
    batch: usize,
    steps: usize,
    lr: f64,
) -> BenchResult {
    let Some(first) = train.as_deref().or(infer.as_deref()) else {
        return BenchResult {
            train: None,
            infer: None,
        };
    };
    let s = first.input_shape();
    let per: usize = s.iter().product();
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..batch * per).map(|_| rng.uniform()).collect();
    let classes = first.classes();
    let y: Vec<usize> = (0..batch).map(|i| i % classes).collect();
    let shape = vec![batch, s[0], s[1], s[2]];
    let cfg = TrainConfig {
        lr,
        ..Default::default()
    };
    let opt = OptSettings::new(&cfg, lr);
    let batch_of = || Batch {
        x: x.clone(),
        shape: shape.clone(),
        labels: &y,
    };
    let time = |net: &mut dyn Model, step: &dyn Fn(&mut dyn Model, u64)| {
        step(net, 0);
        net.synchronize();
        net.profile_reset();
        let t = Instant::now();
        for k in 0..steps {
            step(net, k as u64);
        }
        net.synchronize();
        let per_step = t.elapsed().as_secs_f64() / steps as f64;
        (batch as f64 / per_step, per_step * 1e3)
    };
    let train = train.map(|net| {
        time(net, &|n, k| {
            n.train_step(batch_of(), &opt, k);
        })
    });
    let infer = infer.map(|net| {
        time(net, &|n, _| {
            n.infer(batch_of());
        })
    });
    BenchResult { train, infer }
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
