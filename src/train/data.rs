//! Image folders in Keras' `flow_from_directory` layout: `DIR/train/<class>/*` and
//! `DIR/test/<class>/*` (or a seeded `val_split` of train). Class indices are the sorted folder
//! names. Loading only lists the files and reads each header; images (PNG, JPEG; grey or colour)
//! are decoded when a batch needs them, resized to the spec's input, scaled by 1/255 and
//! augmented, on worker threads a few batches ahead of the consumer ([`prefetch`]). When the
//! whole decoded dataset fits a budget ([`Dataset::cache`]), each image's bytes are kept after
//! their first decode, so later epochs read memory instead of files.
//!
//! A file whose header reads but whose data does not decode is left out of every batch it falls
//! in; [`Dataset::warn_once`] reports it once.
//!
//! `--data` may also name WebDataset shards ([`super::shards`]): then each image is a member of
//! a tar file, read from it when a batch needs it, and an epoch's order is the shards' own
//! ([`Dataset::epoch_order`]).

use super::shards::{self, Member};
use crate::spec::recipe::Augment;
use crate::util::rng::Rng;
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Where an image's bytes are: a file, or a member of a shard.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    File(PathBuf),
    Shard(Member),
}

impl Source {
    /// The file, or `SHARD.tar:MEMBER`, for messages.
    pub fn display(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Shard(m) => format!("{}:{}", m.tar.display(), m.name),
        }
    }
}

/// The images of one split and their labels.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub labels: Vec<usize>,
    pub sources: Vec<Source>,
    /// For shards: each shard's range of indices in this split (an epoch visits them in a
    /// seeded order); empty for folders.
    pub shards: Vec<Range<usize>>,
    /// Each image's H x W x C bytes after its first decode, when the dataset is cached; empty
    /// when it is streamed.
    cache: Vec<OnceLock<Box<[u8]>>>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn pick(&self, ids: &[usize]) -> Split {
        Split {
            labels: ids.iter().map(|&i| self.labels[i]).collect(),
            sources: ids.iter().map(|&i| self.sources[i].clone()).collect(),
            shards: vec![],
            cache: vec![],
        }
    }
    /// Drops the samples labelled `n` or more, keeping the shard ranges; returns how many went
    /// and the first one, if any did.
    fn keep_labels_below(&mut self, n: usize) -> Option<(usize, String)> {
        let first = (0..self.len()).find(|&i| self.labels[i] >= n)?;
        let first = format!("{} = {}", self.sources[first].display(), self.labels[first]);
        let before = self.len();
        let mut kept = Split::default();
        for r in &self.shards {
            let start = kept.len();
            for i in r.clone().filter(|&i| self.labels[i] < n) {
                kept.labels.push(self.labels[i]);
                kept.sources.push(self.sources[i].clone());
            }
            kept.shards.push(start..kept.len());
        }
        *self = kept;
        Some((before - self.len(), first))
    }
    /// Appends the samples of one shard as one shard range.
    fn push_shard(&mut self, samples: Vec<(Member, usize)>) {
        let start = self.len();
        for (m, l) in samples {
            self.labels.push(l);
            self.sources.push(Source::Shard(m));
        }
        self.shards.push(start..self.len());
    }
}

#[derive(Debug)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub train: Split,
    pub val: Split,
    /// Files whose header could not be read: (path, reason). They are skipped, never fatal.
    pub skipped: Vec<(PathBuf, String)>,
    /// Damaged shards and unlabelled samples, one warning line each (shards only).
    pub warnings: Vec<String>,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// Files already reported by [`Dataset::warn_once`].
    warned: Mutex<HashSet<String>>,
}

/// One assembled batch.
#[derive(Debug, Default)]
pub struct Loaded {
    /// (N, H, W, C) scaled by 1/255, N = `labels.len()`.
    pub x: Vec<f32>,
    pub labels: Vec<usize>,
    /// The split index of each image in `x`.
    pub index: Vec<usize>,
    /// Images of the batch that could not be decoded, (split index, reason); not in `x`.
    pub failed: Vec<(usize, String)>,
}

impl Loaded {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg"];

/// How many assembled batches may wait for the consumer (one more is being assembled).
pub const PREFETCH: usize = 2;

/// Makes items `0..n` with `make` on a worker thread, at most [`PREFETCH`] ahead, and hands them
/// to `consume` in order on the calling thread. An error from `consume` stops the worker and is
/// returned.
pub fn prefetch<T: Send>(
    n: usize,
    make: impl Fn(usize) -> T + Sync,
    mut consume: impl FnMut(usize, T) -> Result<(), String>,
) -> Result<(), String> {
    std::thread::scope(|s| {
        // Both channel ends live in this closure: an early return drops the receiver, which
        // unblocks the worker's `send`, so the scope can end.
        let (tx, rx) = std::sync::mpsc::sync_channel::<T>(PREFETCH);
        let make = &make;
        s.spawn(move || {
            for k in 0..n {
                if tx.send(make(k)).is_err() {
                    return;
                }
            }
        });
        for k in 0..n {
            let item = rx.recv().map_err(|_| "data worker stopped".to_string())?;
            consume(k, item)?;
        }
        Ok(())
    })
}

/// The default cache budget in MB: a quarter of the available memory, at most 4096 MB (1024 MB
/// when /proc/meminfo cannot be read).
pub fn default_cache_mb() -> u64 {
    let avail_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    match avail_kb {
        Some(kb) => (kb / 1024 / 4).min(4096),
        None => 1024,
    }
}

fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
    let mut v: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    if v.len() < 2 {
        return Err(format!(
            "{}: found {} class folder(s); classification needs at least 2 (DIR/train/<class>/*.png)",
            dir.display(),
            v.len()
        ));
    }
    Ok(v)
}

fn list_images(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTS.contains(&e.to_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!(
            "{}: class folder holds no images (.png, .jpg, .jpeg); add images or remove the folder",
            dir.display()
        ));
    }
    Ok(files)
}

fn reader(path: &Path) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>, String> {
    image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())
}

/// Reads only the header: a file that is no image (or an empty one) fails here.
fn check_header(path: &Path) -> Result<(), String> {
    let (w, h) = reader(path)?.into_dimensions().map_err(|e| e.to_string())?;
    if w == 0 || h == 0 {
        return Err(format!("the image is empty ({w} x {h})"));
    }
    Ok(())
}

/// Decodes one file to H x W x C bytes, resized (bilinear) to the model input.
pub fn decode(path: &Path, h: usize, w: usize, c: usize) -> Result<Vec<u8>, String> {
    to_input(reader(path)?.decode().map_err(|e| e.to_string())?, h, w, c)
}

/// Decodes one image, a file or a shard member, as [`decode`].
pub fn decode_source(src: &Source, h: usize, w: usize, c: usize) -> Result<Vec<u8>, String> {
    match src {
        Source::File(p) => decode(p, h, w, c),
        Source::Shard(m) => {
            let img = image::ImageReader::new(std::io::Cursor::new(m.read()?))
                .with_guessed_format()
                .map_err(|e| e.to_string())?
                .decode()
                .map_err(|e| e.to_string())?;
            to_input(img, h, w, c)
        }
    }
}

fn to_input(img: image::DynamicImage, h: usize, w: usize, c: usize) -> Result<Vec<u8>, String> {
    let img = if img.width() as usize != w || img.height() as usize != h {
        img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    Ok(if c == 1 {
        img.to_luma8().into_raw()
    } else {
        img.to_rgb8().into_raw()
    })
}

fn load_split(
    classes: &[(String, PathBuf)],
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<Split, String> {
    let mut files = vec![];
    for (label, (_, dir)) in classes.iter().enumerate() {
        for f in list_images(dir)? {
            files.push((f, label));
        }
    }
    let checked: Vec<Result<(), String>> = files.par_iter().map(|(p, _)| check_header(p)).collect();
    let mut split = Split::default();
    for ((p, l), ok) in files.into_iter().zip(checked) {
        match ok {
            Ok(()) => {
                split.labels.push(l);
                split.sources.push(Source::File(p));
            }
            Err(e) => skipped.push((p, e)),
        }
    }
    Ok(split)
}

/// A folder of class folders (`dir/<class>/*.png`): the sorted class names, each readable
/// image with its label, and the images whose header does not read (path, reason).
#[allow(clippy::type_complexity)]
pub fn list_class_folders(
    dir: &Path,
) -> Result<(Vec<String>, Vec<(PathBuf, usize)>, Vec<(PathBuf, String)>), String> {
    let classes = class_dirs(dir)?;
    let mut skipped = vec![];
    let split = load_split(&classes, &mut skipped)?;
    let files = split
        .sources
        .into_iter()
        .zip(split.labels)
        .filter_map(|(s, l)| match s {
            Source::File(p) => Some((p, l)),
            Source::Shard(_) => None,
        })
        .collect();
    Ok((
        classes.into_iter().map(|(n, _)| n).collect(),
        files,
        skipped,
    ))
}

impl Dataset {
    /// Lists `root/train` and `root/test`; without `test/`, holds out `val_split` of train.
    pub fn load(
        root: &Path,
        h: usize,
        w: usize,
        c: usize,
        val_split: f32,
        seed: u64,
    ) -> Result<Dataset, String> {
        if !root.is_dir() {
            return Err(format!(
                "{}: no such data folder (expected DIR/train/<class>/*.png)",
                root.display()
            ));
        }
        let train_dir = root.join("train");
        if !train_dir.is_dir() {
            return Err(format!(
                "{}: has no train/ folder (expected DIR/train/<class>/*.png)",
                root.display()
            ));
        }
        let classes = class_dirs(&train_dir)?;
        let mut skipped = vec![];
        let mut train = load_split(&classes, &mut skipped)?;
        let test_dir = root.join("test");
        let val = if test_dir.is_dir() {
            let test_classes = class_dirs(&test_dir)?;
            let names: Vec<&String> = classes.iter().map(|(n, _)| n).collect();
            let tnames: Vec<&String> = test_classes.iter().map(|(n, _)| n).collect();
            if names != tnames {
                return Err(format!(
                    "{}: class folders differ from train/ ({:?} vs {:?})",
                    test_dir.display(),
                    tnames,
                    names
                ));
            }
            load_split(&test_classes, &mut skipped)?
        } else {
            let mut idx: Vec<usize> = (0..train.len()).collect();
            Rng::new(seed ^ 0x5EED).shuffle(&mut idx);
            let n_val = ((train.len() as f32) * val_split).round() as usize;
            let val = train.pick(&idx[..n_val]);
            train = train.pick(&idx[n_val..]);
            val
        };
        if train.is_empty() {
            return Err(format!(
                "{}: no readable training images",
                train_dir.display()
            ));
        }
        Ok(Dataset {
            classes: classes.into_iter().map(|(n, _)| n).collect(),
            train,
            val,
            skipped,
            warnings: vec![],
            h,
            w,
            c,
            warned: Mutex::default(),
        })
    }

    /// `--data` as given: shards ([`super::shards`]) or a class-folder root. `val_data` (shards
    /// only) gives the validation shards; without it, `val_split` of the shards (at least one
    /// when the fraction is not 0 and there are two) is held out, chosen by `seed`.
    /// `shape` is the model input (H, W, C).
    pub fn load_any(
        data: &str,
        val_data: Option<&str>,
        shape: &[usize],
        val_split: f32,
        seed: u64,
    ) -> Result<Dataset, String> {
        let (h, w, c) = (shape[0], shape[1], shape[2]);
        if !shards::is_shards(data) {
            if let Some(v) = val_data {
                return Err(format!(
                    "--val-data {v}: only for shards; with class folders, validation images go in {data}/test/<class>/"
                ));
            }
            return Dataset::load(Path::new(data), h, w, c, val_split, seed);
        }
        let (mut train_shards, dir) = shards::resolve(data)?;
        let val_shards = match val_data {
            Some(v) => shards::resolve(v)?.0,
            None => {
                Rng::new(seed ^ 0x5EED).shuffle(&mut train_shards);
                let n = train_shards.len();
                let mut n_val = ((n as f32) * val_split).round() as usize;
                if val_split > 0.0 && n >= 2 {
                    n_val = n_val.clamp(1, n - 1);
                }
                let val = train_shards.drain(..n_val.min(n)).collect::<Vec<_>>();
                train_shards.sort();
                val
            }
        };
        let mut warnings = vec![];
        let mut read = |list: &[PathBuf]| {
            let scanned: Vec<shards::Scanned> = list.par_iter().map(|p| shards::scan(p)).collect();
            let mut split = Split::default();
            for (p, s) in list.iter().zip(scanned) {
                warnings.extend(s.warnings.iter().map(|w| format!("{}: {w}", p.display())));
                split.push_shard(s.samples);
            }
            split
        };
        let (mut train, mut val) = (read(&train_shards), read(&val_shards));
        let top = train.labels.iter().chain(&val.labels).max().copied();
        let classes = match shards::class_names(&dir)? {
            Some(names) => names,
            None => (0..top.map_or(0, |t| t + 1))
                .map(|i| i.to_string())
                .collect(),
        };
        for split in [&mut train, &mut val] {
            if let Some((n, first)) = split.keep_labels_below(classes.len()) {
                warnings.push(format!(
                    "{n} sample(s) skipped: their .cls is not below the {} classes of {} (first: {first})",
                    classes.len(),
                    dir.join("classes.txt").display(),
                ));
            }
        }
        if classes.len() < 2 {
            return Err(format!(
                "{data}: the shards hold {} class(es); classification needs at least 2 (KEY.cls holds the class index)",
                classes.len()
            ));
        }
        if train.is_empty() {
            return Err(format!(
                "{data}: no readable training samples (each needs KEY.png or KEY.jpg and KEY.cls)"
            ));
        }
        Ok(Dataset {
            classes,
            train,
            val,
            skipped: vec![],
            warnings,
            h,
            w,
            c,
            warned: Mutex::default(),
        })
    }

    /// The order of one training epoch: a seeded shuffle of all images for folders; for shards,
    /// [`shards::epoch_order`] (the shards shuffled, then a shuffle buffer).
    pub fn epoch_order(&self, seed: u64, epoch: usize) -> Vec<usize> {
        if !self.train.shards.is_empty() {
            return shards::epoch_order(&self.train.shards, seed, epoch);
        }
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9)).shuffle(&mut order);
        order
    }

    /// A dataset of loose files (`predict`): all in `train`, label 0, no classes, no header check.
    pub fn of_files(paths: Vec<PathBuf>, h: usize, w: usize, c: usize) -> Dataset {
        Dataset {
            classes: vec![],
            train: Split {
                labels: vec![0; paths.len()],
                sources: paths.into_iter().map(Source::File).collect(),
                shards: vec![],
                cache: vec![],
            },
            val: Split::default(),
            skipped: vec![],
            warnings: vec![],
            h,
            w,
            c,
            warned: Mutex::default(),
        }
    }

    /// Bytes of both splits once decoded.
    pub fn decoded_bytes(&self) -> u64 {
        (self.train.len() + self.val.len()) as u64 * (self.h * self.w * self.c) as u64
    }

    /// Keeps every image's decoded bytes after its first decode when the whole decoded dataset
    /// fits `budget_mb` (0: never). Returns the line that says which.
    pub fn cache(&mut self, budget_mb: u64) -> String {
        let bytes = self.decoded_bytes();
        let cached = budget_mb > 0 && bytes <= budget_mb << 20;
        if cached {
            for s in [&mut self.train, &mut self.val] {
                s.cache = (0..s.len()).map(|_| OnceLock::new()).collect();
            }
        }
        format!(
            "data: {} images, {:.1} MB decoded: {}",
            self.train.len() + self.val.len(),
            bytes as f64 / (1u64 << 20) as f64,
            match (cached, budget_mb) {
                (true, _) => "cached in memory".to_string(),
                (false, 0) => "streamed from disk (cache off: --cache-mb 0)".to_string(),
                (false, b) => format!("streamed from disk (over the {b} MB cache budget)"),
            }
        )
    }

    /// Image `i` of `split` as H x W x C bytes: from the cache, or decoded (and cached).
    fn pixels<'a>(&self, split: &'a Split, i: usize) -> Result<Cow<'a, [u8]>, String> {
        let src = &split.sources[i];
        match split.cache.get(i) {
            Some(cell) => {
                if cell.get().is_none() {
                    // Another thread may set it first: the bytes are the same.
                    let _ =
                        cell.set(decode_source(src, self.h, self.w, self.c)?.into_boxed_slice());
                }
                Ok(Cow::Borrowed(cell.get().expect("set above")))
            }
            None => decode_source(src, self.h, self.w, self.c).map(Cow::Owned),
        }
    }

    /// One batch of `split`'s images `idx`, decoded in parallel, as f32 (N, H, W, C) scaled by
    /// 1/255, augmented when `aug` is given. Each image's augmentation comes from its own seed
    /// (and its index in the split), so batches are reproducible. Images that do not decode are
    /// left out and listed in `failed`.
    pub fn batch(&self, split: &Split, idx: &[usize], aug: Option<(&Augment, u64)>) -> Loaded {
        let per = self.h * self.w * self.c;
        let decoded: Vec<Result<Cow<[u8]>, String>> =
            idx.par_iter().map(|&i| self.pixels(split, i)).collect();
        let mut out = Loaded::default();
        let mut src = vec![];
        for (&i, d) in idx.iter().zip(decoded) {
            match d {
                Ok(px) => {
                    out.index.push(i);
                    out.labels.push(split.labels[i]);
                    src.push(px);
                }
                Err(e) => out.failed.push((i, e)),
            }
        }
        out.x = vec![0.0f32; src.len() * per];
        out.x
            .par_chunks_mut(per)
            .zip(src.par_iter().zip(&out.index))
            .for_each(|(dst, (src, &i))| match aug {
                Some((a, seed)) if a.enabled => augment(
                    src,
                    dst,
                    self.h,
                    self.w,
                    self.c,
                    a,
                    &mut Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)),
                ),
                _ => dst
                    .iter_mut()
                    .zip(src.iter())
                    .for_each(|(d, s)| *d = *s as f32 / 255.0),
            });
        out
    }

    /// Every image of `split` in order, in batches of `batch`, decoded (not augmented) on the
    /// [`prefetch`] worker: `each` gets the batches that hold at least one image, after the
    /// images that did not decode are reported ([`Dataset::warn_once`]). `evaluate` and
    /// `se-compile analyze` read a split this way.
    pub fn each_batch(&self, split: &Split, batch: usize, mut each: impl FnMut(Loaded)) {
        let idx: Vec<usize> = (0..split.len()).collect();
        let chunks: Vec<&[usize]> = idx.chunks(batch.max(1)).collect();
        // `consume` never fails; the worker only stops early by panicking, which the scope
        // re-raises.
        let _ = prefetch(
            chunks.len(),
            |k| self.batch(split, chunks[k], None),
            |_, b| {
                self.warn_once(split, &b.failed);
                if !b.is_empty() {
                    each(b);
                }
                Ok(())
            },
        );
    }

    /// Reports, once per file, the images of `failed` (from [`Dataset::batch`] on `split`).
    pub fn warn_once(&self, split: &Split, failed: &[(usize, String)]) {
        if failed.is_empty() {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        for (i, why) in failed {
            let p = split.sources[*i].display();
            if warned.insert(p.clone()) {
                eprintln!("warning: {p}: cannot decode, left out of its batches: {why}");
            }
        }
    }
}

/// Keras `ImageDataGenerator.apply_affine_transform` with `fill_mode='nearest'`: every output
/// pixel reads the input at M (p - centre) + centre + shift, clamped to the border.
pub fn augment(
    src: &[u8],
    dst: &mut [f32],
    h: usize,
    w: usize,
    c: usize,
    a: &Augment,
    rng: &mut Rng,
) {
    let theta = rng.range(-a.rotation, a.rotation).to_radians();
    let tx = rng.range(-a.width_shift, a.width_shift) * w as f32;
    let ty = rng.range(-a.height_shift, a.height_shift) * h as f32;
    let shear = rng.range(-a.shear, a.shear).to_radians();
    let (zx, zy) = (
        rng.range(1.0 - a.zoom, 1.0 + a.zoom),
        rng.range(1.0 - a.zoom, 1.0 + a.zoom),
    );
    let flip = a.horizontal_flip && rng.uniform() < 0.5;
    let bright = rng.range(a.brightness[0], a.brightness[1]);
    // rotation * shear * zoom, as Keras composes them.
    let (cs, sn) = (theta.cos(), theta.sin());
    let r = [[cs, -sn], [sn, cs]];
    let s = [[1.0, -shear.sin()], [0.0, shear.cos()]];
    let rs = [
        [
            r[0][0] * s[0][0] + r[0][1] * s[1][0],
            r[0][0] * s[0][1] + r[0][1] * s[1][1],
        ],
        [
            r[1][0] * s[0][0] + r[1][1] * s[1][0],
            r[1][0] * s[0][1] + r[1][1] * s[1][1],
        ],
    ];
    let m = [
        [rs[0][0] * zx, rs[0][1] * zy],
        [rs[1][0] * zx, rs[1][1] * zy],
    ];
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    for y in 0..h {
        for x in 0..w {
            let xo = if flip { w - 1 - x } else { x };
            let (px, py) = (xo as f32 - cx, y as f32 - cy);
            let sx = (m[0][0] * px + m[0][1] * py + cx + tx)
                .round()
                .clamp(0.0, w as f32 - 1.0) as usize;
            let sy = (m[1][0] * px + m[1][1] * py + cy + ty)
                .round()
                .clamp(0.0, h as f32 - 1.0) as usize;
            for ch in 0..c {
                let v = (src[(sy * w + sx) * c + ch] as f32 * bright).min(255.0);
                dst[(y * w + x) * c + ch] = v / 255.0;
            }
        }
    }
}
