//! Image folders in Keras' `flow_from_directory` layout: `DIR/train/<class>/*` and
//! `DIR/test/<class>/*` (or a seeded `val_split` of train). Class indices are the sorted folder
//! names. Images (PNG, JPEG; grey or colour) are decoded in parallel, resized to the spec's input
//! and kept as bytes; batches are scaled by 1/255 and augmented on worker threads.

use super::config::Augment;
use crate::lower::rng::Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Decoded images of one split, all H x W x C bytes.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub pixels: Vec<Vec<u8>>,
    pub labels: Vec<usize>,
    pub paths: Vec<PathBuf>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub train: Split,
    pub val: Split,
    /// Files that could not be decoded: (path, reason). They are skipped, never fatal.
    pub skipped: Vec<(PathBuf, String)>,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg"];

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

/// Decodes one file to H x W x C bytes, resized (bilinear) to the model input.
pub fn decode(path: &Path, h: usize, w: usize, c: usize) -> Result<Vec<u8>, String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
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
    h: usize,
    w: usize,
    c: usize,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<Split, String> {
    let mut files = vec![];
    for (label, (_, dir)) in classes.iter().enumerate() {
        for f in list_images(dir)? {
            files.push((f, label));
        }
    }
    let decoded: Vec<(PathBuf, usize, Result<Vec<u8>, String>)> = files
        .into_par_iter()
        .map(|(p, l)| {
            let d = decode(&p, h, w, c);
            (p, l, d)
        })
        .collect();
    let mut split = Split::default();
    for (p, l, d) in decoded {
        match d {
            Ok(px) => {
                split.pixels.push(px);
                split.labels.push(l);
                split.paths.push(p);
            }
            Err(e) => skipped.push((p, e)),
        }
    }
    Ok(split)
}

impl Dataset {
    /// Loads `root/train` and `root/test`; without `test/`, holds out `val_split` of train.
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
        let mut train = load_split(&classes, h, w, c, &mut skipped)?;
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
            load_split(&test_classes, h, w, c, &mut skipped)?
        } else {
            let mut idx: Vec<usize> = (0..train.len()).collect();
            Rng::new(seed ^ 0x5EED).shuffle(&mut idx);
            let n_val = ((train.len() as f32) * val_split).round() as usize;
            let (v, t): (Vec<usize>, Vec<usize>) = (idx[..n_val].to_vec(), idx[n_val..].to_vec());
            let pick = |ids: &[usize]| Split {
                pixels: ids.iter().map(|&i| train.pixels[i].clone()).collect(),
                labels: ids.iter().map(|&i| train.labels[i]).collect(),
                paths: ids.iter().map(|&i| train.paths[i].clone()).collect(),
            };
            let val = pick(&v);
            train = pick(&t);
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
            h,
            w,
            c,
        })
    }

    /// One batch as f32 (N, H, W, C) scaled by 1/255, augmented when `aug` is given. Each
    /// image's augmentation comes from its own seed, so batches are reproducible.
    pub fn batch(
        &self,
        split: &Split,
        idx: &[usize],
        aug: Option<(&Augment, u64)>,
    ) -> (Vec<f32>, Vec<usize>) {
        let per = self.h * self.w * self.c;
        let mut out = vec![0.0f32; idx.len() * per];
        out.par_chunks_mut(per)
            .zip(idx.par_iter())
            .for_each(|(dst, &i)| {
                let src = &split.pixels[i];
                match aug {
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
                        .zip(src)
                        .for_each(|(d, s)| *d = *s as f32 / 255.0),
                }
            });
        (out, idx.iter().map(|&i| split.labels[i]).collect())
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
