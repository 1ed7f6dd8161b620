//! The training loop (the seed's `model.fit`), evaluation, prediction and the speed benchmark.

use super::checkpoint::{self, OPT_M, OPT_V};
use super::config::{Optimizer, TrainConfig};
use super::data::{Dataset, Split};
use crate::lower::autodiff::cross_entropy;
use crate::lower::layers::{input_act, Net};
use crate::lower::rng::Rng;
use dfdx::prelude::*;
use dfdx::tensor::Storage;
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
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// Everything a run directory records about how it was started, for `--resume`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub spec: String,
    pub data: String,
    pub classes: Vec<String>,
    pub train: TrainConfig,
}

/// Optimizer state: moments per trainable parameter and Adam's step count.
pub struct OptState {
    pub step: i32,
    m: Vec<<Cpu as Storage<f32>>::Vec>,
    v: Vec<<Cpu as Storage<f32>>::Vec>,
}

impl OptState {
    pub fn new(net: &Net) -> OptState {
        let alloc = |n: usize| net.dev.try_alloc_len(n).expect("CPU allocation");
        let m = net
            .params
            .iter()
            .map(|p| alloc(if p.trainable { p.len() } else { 0 }))
            .collect();
        let v = net
            .params
            .iter()
            .map(|p| alloc(if p.trainable { p.len() } else { 0 }))
            .collect();
        OptState { step: 0, m, v }
    }

    fn tensors(&self, net: &Net) -> Vec<(String, Vec<f32>)> {
        let mut out = vec![];
        for (i, p) in net.params.iter().enumerate().filter(|(_, p)| p.trainable) {
            out.push((format!("{OPT_M}{}", p.name), self.m[i].to_vec()));
            out.push((format!("{OPT_V}{}", p.name), self.v[i].to_vec()));
        }
        out
    }

    fn restore(&mut self, net: &Net, ck: &checkpoint::Loaded) -> Result<(), String> {
        for (i, p) in net.params.iter().enumerate().filter(|(_, p)| p.trainable) {
            for (prefix, dst) in [(OPT_M, &mut self.m[i]), (OPT_V, &mut self.v[i])] {
                let v = ck
                    .tensors
                    .get(&format!("{prefix}{}", p.name))
                    .ok_or_else(|| format!("checkpoint has no optimizer state for `{}`", p.name))?;
                if v.len() != dst.len() {
                    return Err(format!(
                        "optimizer state for `{}` has the wrong size",
                        p.name
                    ));
                }
                dst.copy_from_slice(v);
            }
        }
        self.step = ck
            .meta
            .get("optimizer_step")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(())
    }

    /// One optimizer step with dfdx's Adam or SGD kernels.
    fn apply(
        &mut self,
        net: &mut Net,
        grads: &mut dfdx::tensor::Gradients<f32, Cpu>,
        cfg: &TrainConfig,
        lr: f64,
    ) {
        use dfdx::optim::{Momentum, WeightDecay};
        self.step += 1;
        let wd = (cfg.weight_decay > 0.0).then_some(WeightDecay::L2(cfg.weight_decay));
        for (i, p) in net.params.iter_mut().enumerate() {
            if !p.trainable {
                continue;
            }
            let g = grads.get_or_alloc_mut(&p.t).expect("CPU allocation");
            match cfg.optimizer {
                Optimizer::Adam => {
                    let c = dfdx::optim::AdamConfig {
                        lr,
                        weight_decay: wd,
                        ..Default::default()
                    };
                    c.try_update(self.step, &mut p.t, &mut self.m[i], &mut self.v[i], g)
                        .expect("CPU kernel");
                }
                Optimizer::Sgd => {
                    let c = dfdx::optim::SgdConfig {
                        lr,
                        momentum: Some(Momentum::Classic(cfg.momentum)),
                        weight_decay: wd,
                    };
                    c.try_update(&mut p.t, &mut self.m[i], g)
                        .expect("CPU kernel");
                }
            }
            p.refresh();
        }
    }
}

/// Options of one `train` call.
pub struct TrainOptions {
    pub spec_path: String,
    pub spec_text: String,
    pub data: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    /// Print a live progress line (stderr is a terminal).
    pub progress: bool,
}

fn bar(done: usize, total: usize) -> String {
    let width = 30;
    let filled = (done * width) / total.max(1);
    if done >= total {
        "=".repeat(width)
    } else {
        format!("{}>{}", "=".repeat(filled), ".".repeat(width - filled - 1))
    }
}

/// Loss and accuracy of `split` in inference mode (moving BN statistics), with the confusion
/// matrix (rows: true class, columns: predicted) when `classes` is given.
pub fn evaluate(
    net: &mut Net,
    ds: &Dataset,
    split: &Split,
    batch: usize,
    classes: usize,
) -> (f64, f64, Vec<Vec<usize>>) {
    let mut conf = vec![vec![0usize; classes]; classes];
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let idx: Vec<usize> = (0..split.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, y) = ds.batch(split, chunk, None);
        let shape = vec![chunk.len(), ds.h, ds.w, ds.c];
        let logits = net.forward(input_act::<NoneTape>(&net.dev, x, shape), false);
        let (l, probs) = cross_entropy(logits, &y);
        loss += l.array() as f64 * chunk.len() as f64;
        for (p, &t) in probs.iter().zip(&y) {
            let pred = argmax(p);
            correct += usize::from(pred == t);
            if t < classes && pred < classes {
                conf[t][pred] += 1;
            }
        }
    }
    let n = split.len().max(1) as f64;
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
        checkpoint::write_atomic(&dir.join(name), bytes)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    w("history.csv", csv.as_bytes())?;
    w(
        "history.json",
        serde_json::to_string_pretty(hist)
            .expect("plain data")
            .as_bytes(),
    )?;
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

/// Trains `net` as the seed's `model.fit` does and fills the run directory. Returns the history.
pub fn train(
    net: &mut Net,
    ds: &Dataset,
    cfg: &TrainConfig,
    opts: &TrainOptions,
) -> Result<Vec<EpochRecord>, String> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("{}: cannot create: {e}", opts.out.display()))?;
    let mut opt = OptState::new(net);
    let mut history: Vec<EpochRecord> = vec![];
    let last = opts.out.join("last.safetensors");
    if opts.resume {
        let ck = checkpoint::read(&last)?;
        checkpoint::load_into(net, &ck, &last)?;
        opt.restore(net, &ck)?;
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
    checkpoint::write_atomic(
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
    checkpoint::write_atomic(
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
    for epoch in history.len()..cfg.epochs {
        let lr = cfg.lr_at(epoch);
        println!("Epoch {}/{}", epoch + 1, cfg.epochs);
        let t0 = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9)).shuffle(&mut order);
        let batches: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(|c| c.to_vec()).collect();
        // Batches are assembled and augmented on a worker thread while the step runs.
        let (loss_sum, correct, seen) = std::thread::scope(
            |s| -> Result<(f64, usize, usize), String> {
                // Both channel ends live in this closure: an early return drops the receiver,
                // which unblocks the worker's `send`, so the scope can end.
                let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<f32>, Vec<usize>, usize)>(2);
                let aug = &cfg.augment;
                let seed = cfg.seed;
                let batches = &batches;
                s.spawn(move || {
                    for (k, b) in batches.iter().enumerate() {
                        let (x, y) = ds.batch(
                            &ds.train,
                            b,
                            Some((aug, seed ^ ((epoch as u64) << 32) ^ k as u64)),
                        );
                        if tx.send((x, y, b.len())).is_err() {
                            return;
                        }
                    }
                });
                let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
                for step in 0..steps {
                    let (x, y, bs) = rx.recv().map_err(|_| "data worker stopped".to_string())?;
                    net.reseed_dropout(cfg.seed ^ ((epoch as u64) << 40) ^ step as u64);
                    let inp =
                        input_act::<OwnedTape<f32, Cpu>>(&net.dev, x, vec![bs, ds.h, ds.w, ds.c]);
                    let logits = net.forward(inp, true);
                    let (loss, probs) = cross_entropy(logits, &y);
                    let l = loss.array() as f64;
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
                    let mut grads = loss.backward();
                    opt.apply(net, &mut grads, cfg, lr);
                    loss_sum += l * bs as f64;
                    seen += bs;
                    correct += probs
                        .iter()
                        .zip(&y)
                        .filter(|(p, t)| argmax(p) == **t)
                        .count();
                    if opts.progress {
                        let el = t0.elapsed().as_secs_f64();
                        let eta = el / (step + 1) as f64 * (steps - step - 1) as f64;
                        eprint!(
                        "\r{:>5}/{} [{}] - loss: {:.4} - accuracy: {:.4} - {:.0} img/s - ETA: {:.0}s ",
                        step + 1,
                        steps,
                        bar(step + 1, steps),
                        loss_sum / seen as f64,
                        correct as f64 / seen as f64,
                        seen as f64 / el,
                        eta
                    );
                        let _ = std::io::stderr().flush();
                    }
                }
                Ok((loss_sum, correct, seen))
            },
        )?;
        if opts.progress {
            eprint!("\r{}\r", " ".repeat(110));
        }
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
            bar(steps, steps),
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
        meta.insert("model".into(), net.graph.model.clone());
        meta.insert("epoch".into(), (epoch + 1).to_string());
        meta.insert("optimizer_step".into(), opt.step.to_string());
        checkpoint::save(&last, net, &opt.tensors(net), meta.clone())?;
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
    }
    Ok(history)
}

/// Train and inference images per second for `steps` steps on random data.
pub fn bench(net: &mut Net, batch: usize, steps: usize, lr: f64) -> (f64, f64, f64, f64) {
    let s = net.input_shape().to_vec();
    let per: usize = s.iter().product();
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..batch * per).map(|_| rng.uniform()).collect();
    let classes = net
        .graph
        .node(net.logits_node().0)
        .shape
        .last()
        .copied()
        .unwrap_or(1);
    let y: Vec<usize> = (0..batch).map(|i| i % classes).collect();
    let shape = vec![batch, s[0], s[1], s[2]];
    let mut opt = OptState::new(net);
    let cfg = TrainConfig {
        lr,
        ..Default::default()
    };
    let mut train_step = |net: &mut Net| {
        let inp = input_act::<OwnedTape<f32, Cpu>>(&net.dev, x.clone(), shape.clone());
        let (loss, _) = cross_entropy(net.forward(inp, true), &y);
        let mut g = loss.backward();
        opt.apply(net, &mut g, &cfg, lr);
    };
    train_step(net);
    let t = Instant::now();
    for _ in 0..steps {
        train_step(net);
    }
    let train_s = t.elapsed().as_secs_f64() / steps as f64;
    let infer = |net: &mut Net| {
        let _ = net.forward(
            input_act::<NoneTape>(&net.dev, x.clone(), shape.clone()),
            false,
        );
    };
    infer(net);
    let t = Instant::now();
    for _ in 0..steps {
        infer(net);
    }
    let infer_s = t.elapsed().as_secs_f64() / steps as f64;
    (
        batch as f64 / train_s,
        batch as f64 / infer_s,
        train_s * 1e3,
        infer_s * 1e3,
    )
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
