//! TensorBoard event files (`RUN_DIR/tb/events.out.tfevents.*`): scalars, histograms, images.
//!
//! Why hand-encoded: the Rust TensorBoard writers on crates.io are `tensorboard-rs` (protobuf 2
//! and image 0.23, a second copy of each beside ours, no release since 2022) and
//! `syntaxdot-summary` (scalars only). The messages needed are five small ones of TensorFlow's
//! `event.proto` and `summary.proto`, so they are encoded here with the `protobuf` crate the
//! project already has (the ONNX export's runtime, `CodedOutputStream`) and framed as
//! TFRecords with the `crc32c` crate (hardware CRC-32C). `tests/train_cli.rs` reads the files
//! back with TensorBoard's own `EventAccumulator`.
//!
//! The fields written (numbers as in TensorFlow's protos):
//! - `Event`: `wall_time` 1 (double), `step` 2 (int64), `file_version` 3 (string), `summary` 5.
//! - `Summary`: `value` 1 (repeated); `Summary.Value`: `tag` 1, `simple_value` 2 (float),
//!   `image` 4, `histo` 5.
//! - `HistogramProto`: `min` 1, `max` 2, `num` 3, `sum` 4, `sum_squares` 5 (doubles),
//!   `bucket_limit` 6 and `bucket` 7 (packed doubles).
//! - `Summary.Image`: `height` 1, `width` 2, `colorspace` 3 (int32), `encoded_image_string` 4.

use super::data::Dataset;
use super::plot;
use super::run::EpochRecord;
use crate::lower::cpu::Net;
use crate::lower::model::Model;
use crate::report::excitation::{self, Analysis, Excitations, SeBlock};
use protobuf::CodedOutputStream;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Buckets of a weight histogram (equal widths from the minimum to the maximum).
const BUCKETS: usize = 30;

/// One event file, appended to as training goes.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

/// A message encoded by `fill`, which only writes to a vector (so cannot fail).
fn encode(fill: impl FnOnce(&mut CodedOutputStream) -> protobuf::Result<()>) -> Vec<u8> {
    let mut buf = vec![];
    let mut os = CodedOutputStream::vec(&mut buf);
    fill(&mut os)
        .and_then(|_| os.flush())
        .expect("encoding into a Vec");
    drop(os);
    buf
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length (u64 LE), its masked CRC, the data, the data's masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The `HistogramProto` of `values`: equal-width buckets between the minimum and the maximum,
/// each bucket given by its upper edge; one bucket when all values are equal. Non-finite values
/// are left out.
pub fn histogram(values: &[f32]) -> Vec<u8> {
    let finite = values.iter().filter(|v| v.is_finite()).map(|&v| v as f64);
    let (mut min, mut max, mut num, mut sum, mut ss) =
        (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0, 0.0);
    for v in finite.clone() {
        min = min.min(v);
        max = max.max(v);
        num += 1.0;
        sum += v;
        ss += v * v;
    }
    if num == 0.0 {
        (min, max) = (0.0, 0.0);
    }
    let buckets = if max > min { BUCKETS } else { 1 };
    let width = (max - min) / buckets as f64;
    let mut counts = vec![0.0f64; buckets];
    for v in finite {
        // With one bucket the width is 0 and the quotient NaN, which `as` makes 0.
        let k = (((v - min) / width) as usize).min(buckets - 1);
        counts[k] += 1.0;
    }
    let limits: Vec<f64> = (1..=buckets)
        .map(|k| {
            if k == buckets {
                max
            } else {
                min + k as f64 * width
            }
        })
        .collect();
    encode(|os| {
        os.write_double(1, min)?;
        os.write_double(2, max)?;
        os.write_double(3, num)?;
        os.write_double(4, sum)?;
        os.write_double(5, ss)?;
        os.write_repeated_packed_double(6, &limits)?;
        os.write_repeated_packed_double(7, &counts)
    })
}

impl EventWriter {
    /// A new event file in `dir` (created if missing), named as TensorFlow names them, starting
    /// with the `file_version` event every reader expects first.
    pub fn create(dir: &Path) -> Result<EventWriter, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.se-compile",
            now() as u64,
            std::process::id()
        ));
        let file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = EventWriter {
            path,
            file: BufWriter::new(file),
        };
        let first = encode(|os| {
            os.write_double(1, now())?;
            os.write_int64(2, 0)?;
            os.write_string(3, "brain.Event:2")
        });
        w.write(&first)?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `SessionLog` START at `step`: TensorBoard then drops the events of earlier files at
    /// this step and later (the steps of an interrupted epoch that a resumed run trains again).
    pub fn restart_at(&mut self, step: i64) -> Result<(), String> {
        let start = encode(|os| os.write_int32(1, 1));
        let event = encode(|os| {
            os.write_double(1, now())?;
            os.write_int64(2, step)?;
            os.write_bytes(7, &start)
        });
        self.write(&event)?;
        self.flush()
    }

    fn write(&mut self, event: &[u8]) -> Result<(), String> {
        self.file
            .write_all(&record(event))
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// An event holding one `Summary.Value` with `tag`, whose value `fill` writes.
    fn value(
        &mut self,
        tag: &str,
        step: i64,
        fill: impl FnOnce(&mut CodedOutputStream) -> protobuf::Result<()>,
    ) -> Result<(), String> {
        let value = encode(|os| {
            os.write_string(1, tag)?;
            fill(os)
        });
        let summary = encode(|os| os.write_bytes(1, &value));
        let event = encode(|os| {
            os.write_double(1, now())?;
            os.write_int64(2, step)?;
            os.write_bytes(5, &summary)
        });
        self.write(&event)
    }

    pub fn scalar(&mut self, tag: &str, step: i64, v: f64) -> Result<(), String> {
        self.value(tag, step, |os| os.write_float(2, v as f32))
    }

    pub fn histogram(&mut self, tag: &str, step: i64, values: &[f32]) -> Result<(), String> {
        let h = histogram(values);
        self.value(tag, step, |os| os.write_bytes(5, &h))
    }

    /// A PNG image (`rgb`: 3 channels) of `height` × `width`.
    pub fn image(
        &mut self,
        tag: &str,
        step: i64,
        png: &[u8],
        (height, width): (u32, u32),
    ) -> Result<(), String> {
        let img = encode(|os| {
            os.write_int32(1, height as i32)?;
            os.write_int32(2, width as i32)?;
            os.write_int32(3, 3)?;
            os.write_bytes(4, png)
        });
        self.value(tag, step, |os| os.write_bytes(4, &img))
    }

    /// Hands what is buffered to the file, so TensorBoard sees it.
    pub fn flush(&mut self) -> Result<(), String> {
        self.file
            .flush()
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

/// Images of the fixed batch whose SE excitations are logged each epoch.
pub const PROBE_IMAGES: usize = 32;

/// The SE excitations of a fixed batch: a CPU copy of the network, given the trained weights
/// each epoch, run in inference mode as `se-compile analyze` runs it.
struct Probe {
    net: Net,
    blocks: Vec<SeBlock>,
    x: Vec<f32>,
    shape: Vec<usize>,
    labels: Vec<usize>,
    class_names: Vec<String>,
}

/// What `train` writes to `RUN_DIR/tb/`. Tags:
/// - `step/loss`, `step/accuracy`, `step/lr`, `step/images_per_sec`: each training step's
///   batch, at the global step (1-based, counted over all epochs);
/// - `epoch/loss`, `epoch/accuracy`, `epoch/val_loss`, `epoch/val_accuracy`, `epoch/lr`
///   (history.csv's columns) and `epoch/images_per_sec` (training images over the epoch's
///   training time), at the epoch number (1-based, as in history.csv);
/// - `weights/<parameter>`: a histogram of each parameter (moving statistics included) per epoch;
/// - `excitation/<block>`: a histogram over channels of the mean excitation m_c of each SE block
///   on a fixed batch of validation images (up to [`PROBE_IMAGES`], classes in turn),
///   `excitation_specificity/<block>`: its class specificity, and `excitation_plot/<block>`:
///   `se-compile analyze`'s panel (the paper's Fig. 6: m_c per channel, per class and over all
///   images) as an image, one per epoch.
pub struct RunBoard {
    w: EventWriter,
    probe: Option<Probe>,
}

impl RunBoard {
    /// Opens a new event file in `dir`; `probe` is a CPU network of the trained graph for the
    /// excitations (none: no excitations are logged, as for a network without SE blocks).
    /// `resumed_at`: the first global step of a resumed run, from which the earlier files'
    /// events are dropped (see [`EventWriter::restart_at`]).
    pub fn open(
        dir: &Path,
        probe: Option<Net>,
        ds: &Dataset,
        resumed_at: Option<i64>,
    ) -> Result<RunBoard, String> {
        let mut w = EventWriter::create(dir)?;
        if let Some(step) = resumed_at {
            w.restart_at(step)?;
        }
        let probe = probe.and_then(|net| {
            let blocks = excitation::se_blocks(&net.plan.graph);
            let split = if ds.val.is_empty() {
                &ds.train
            } else {
                &ds.val
            };
            let classes = ds.classes.len();
            // Classes in turn, in the split's order, so every class is in the batch.
            let mut per_class: Vec<Vec<usize>> = vec![vec![]; classes];
            for (i, &k) in split.labels.iter().enumerate() {
                if k < classes {
                    per_class[k].push(i);
                }
            }
            let mut idx = vec![];
            for j in 0.. {
                let before = idx.len();
                idx.extend(per_class.iter().filter_map(|v| v.get(j)));
                if idx.len() == before || idx.len() >= PROBE_IMAGES {
                    break;
                }
            }
            idx.truncate(PROBE_IMAGES);
            let b = ds.batch(split, &idx, None);
            if blocks.is_empty() || b.is_empty() {
                return None;
            }
            Some(Probe {
                net,
                blocks,
                shape: vec![b.len(), ds.h, ds.w, ds.c],
                x: b.x,
                labels: b.labels,
                class_names: ds.classes.clone(),
            })
        });
        Ok(RunBoard { w, probe })
    }

    pub fn path(&self) -> &Path {
        self.w.path()
    }

    /// One training step's figures.
    pub fn step(
        &mut self,
        global_step: i64,
        loss: f64,
        accuracy: f64,
        lr: f64,
        images_per_sec: f64,
    ) -> Result<(), String> {
        self.w.scalar("step/loss", global_step, loss)?;
        self.w.scalar("step/accuracy", global_step, accuracy)?;
        self.w.scalar("step/lr", global_step, lr)?;
        self.w
            .scalar("step/images_per_sec", global_step, images_per_sec)
    }

    /// An epoch's scalars, the weights' histograms and the excitations; then flushed.
    pub fn epoch(
        &mut self,
        r: &EpochRecord,
        images_per_sec: f64,
        net: &dyn Model,
    ) -> Result<(), String> {
        let step = r.epoch as i64;
        for (tag, v) in [
            ("epoch/loss", r.loss),
            ("epoch/accuracy", r.accuracy),
            ("epoch/val_loss", r.val_loss),
            ("epoch/val_accuracy", r.val_accuracy),
            ("epoch/lr", r.lr),
            ("epoch/images_per_sec", images_per_sec),
        ] {
            // No validation data: no val_ scalars (history.csv has NaN there).
            if v.is_finite() {
                self.w.scalar(tag, step, v)?;
            }
        }
        let values = net.param_values();
        for (p, v) in net.param_info().iter().zip(&values) {
            self.w.histogram(&format!("weights/{}", p.name), step, v)?;
        }
        if let Some(pr) = self.probe.as_mut() {
            if pr.net.param_info().len() == values.len() {
                for (i, v) in values.into_iter().enumerate() {
                    pr.net.set_param(i, v);
                }
                let gates: Vec<_> = pr.blocks.iter().map(|b| b.gate).collect();
                let classes = pr.class_names.len();
                let mut ex =
                    Excitations::new(pr.blocks.iter().map(|b| b.channels).collect(), classes);
                ex.add(
                    &pr.net.probe(pr.x.clone(), pr.shape.clone(), &gates),
                    &pr.labels,
                );
                let chosen: Vec<usize> = (0..classes).filter(|&k| ex.class_images(k) > 0).collect();
                let an = Analysis {
                    model: &pr.net.plan.graph.model,
                    spec: "",
                    weights: "",
                    data: "",
                    split: "",
                    class_names: &pr.class_names,
                    chosen: &chosen,
                    blocks: &pr.blocks,
                    ex: &ex,
                };
                let stats = an.stats();
                let panels = plot::excitation_panels(&an, &stats);
                for ((blk, st), panel) in pr.blocks.iter().zip(&stats).zip(panels) {
                    let tag = blk.tag();
                    let m: Vec<f32> = st.overall.iter().map(|&v| v as f32).collect();
                    self.w.histogram(&format!("excitation/{tag}"), step, &m)?;
                    self.w.scalar(
                        &format!("excitation_specificity/{tag}"),
                        step,
                        st.specificity,
                    )?;
                    let png = plot::render(&[panel])?;
                    let (w, h) = plot::PANEL_SIZE;
                    self.w
                        .image(&format!("excitation_plot/{tag}"), step, &png, (h, w))?;
                }
            }
        }
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_framed_with_masked_crc32c() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        // The masked CRCs as TensorBoard's own record_writer.masked_crc32c computes them.
        assert_eq!(&r[8..12], &0x0e49_99b0u32.to_le_bytes());
        assert_eq!(&r[15..], &0x21f1_576eu32.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }

    #[test]
    fn histogram_buckets_hold_every_value() {
        // min 1 (field 1, double), max 4, num 4, sum 10, sum_squares 30, then the packed arrays.
        let h = histogram(&[1.0, 2.0, 4.0, 3.0, f32::NAN]);
        let num_at = 2 * 9 + 1;
        assert_eq!(
            f64::from_le_bytes(h[num_at..num_at + 8].try_into().unwrap()),
            4.0
        );
        let counts_at = h.len() - BUCKETS * 8;
        let counts: Vec<f64> = h[counts_at..]
            .chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(counts.iter().sum::<f64>(), 4.0);
        assert_eq!((counts[0], counts[BUCKETS - 1]), (1.0, 1.0));
        // All equal: one bucket.
        let one = histogram(&[0.5; 7]);
        let c = f64::from_le_bytes(one[one.len() - 8..].try_into().unwrap());
        assert_eq!(c, 7.0);
    }
}
