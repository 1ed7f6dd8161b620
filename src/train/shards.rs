//! WebDataset shards: tar files whose samples are `KEY.jpg` or `KEY.png` plus `KEY.cls` (the
//! class index as text), as the Python `webdataset` package writes them. `--data` names a folder
//! of `.tar` files or a brace pattern (`shards/train-{000000..000099}.tar`); class names come
//! from a `classes.txt` beside the shards, one per line, else they are the indices.
//!
//! Loading reads each shard's tar headers (seeking past the data) and its small `.cls` members,
//! and keeps one index entry per sample: shard, byte offset and length of its image, label. The
//! images themselves are read from the shard when a batch needs them, so memory holds the index,
//! not the data. An epoch's order is a seeded shuffle of the shards, then a shuffle buffer of
//! [`SHUFFLE_BUFFER`] samples over them in that order (webdataset's `shardshuffle` + `shuffle`);
//! it depends only on the seed and the epoch, so a resumed run continues exactly.
//!
//! A damaged shard (truncated, corrupt header) keeps the samples before the damage, a sample
//! with no or a bad label is left out: each is reported once, as a warning, and loading goes on.

use crate::util::rng::Rng;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Samples the shuffle buffer holds (train.py uses the same).
pub const SHUFFLE_BUFFER: usize = 1000;

const IMAGE_EXTS: &[&str] = &["png", "jpg", "jpeg"];

/// One sample's image inside a shard.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub tar: Arc<PathBuf>,
    /// The member's name in the tar (`KEY.png`).
    pub name: String,
    pub offset: u64,
    pub len: u64,
}

impl Member {
    /// The member's bytes, read from its shard.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        let mut f = std::fs::File::open(self.tar.as_path()).map_err(|e| e.to_string())?;
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; self.len as usize];
        f.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    }
}

/// Whether `tar` holds two zero blocks (the end-of-archive marker) at byte `at`.
fn zero_blocks_at(tar: &Path, at: u64) -> bool {
    let mut buf = [0u8; 1024];
    std::fs::File::open(tar)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut buf)
        })
        .is_ok_and(|_| buf.iter().all(|&b| b == 0))
}

/// One shard's labelled samples, in the tar's order.
#[derive(Debug, Default)]
pub struct Scanned {
    pub samples: Vec<(Member, usize)>,
    /// What was wrong with the shard, one line each (damage, unlabelled samples).
    pub warnings: Vec<String>,
}

/// Whether `--data` names shards: a `.tar` file, a brace pattern, or a folder that holds `.tar`
/// files and no `train/` folder.
pub fn is_shards(data: &str) -> bool {
    let p = Path::new(data);
    if data.ends_with(".tar") || (data.contains('{') && data.contains("..")) {
        return true;
    }
    p.is_dir()
        && !p.join("train").is_dir()
        && std::fs::read_dir(p).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "tar"))
        })
}

/// Expands the first `{A..B}` of `pattern` (zero padded to A's width), recursively.
fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| format!("{pattern}: `{{` without `}}`"))?;
    let inner = &pattern[open + 1..close];
    let bad = || {
        format!("{pattern}: a brace range is {{FIRST..LAST}} with decimal numbers, as in train-{{000000..000099}}.tar")
    };
    let (a, b) = inner.split_once("..").ok_or_else(bad)?;
    let (lo, hi): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if hi < lo {
        return Err(bad());
    }
    let mut out = vec![];
    for k in lo..=hi {
        let s = format!(
            "{}{k:0w$}{}",
            &pattern[..open],
            &pattern[close + 1..],
            w = a.len()
        );
        out.extend(expand_braces(&s)?);
    }
    Ok(out)
}

/// The shard files `data` names, in order, and the folder that may hold `classes.txt`.
pub fn resolve(data: &str) -> Result<(Vec<PathBuf>, PathBuf), String> {
    let p = Path::new(data);
    let shards: Vec<PathBuf> = if p.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("{data}: cannot read: {e}"))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "tar"))
            .collect();
        v.sort();
        v
    } else {
        expand_braces(data)?
            .into_iter()
            .map(PathBuf::from)
            .collect()
    };
    if shards.is_empty() {
        return Err(format!(
            "{data}: holds no .tar shards (write some with `se-compile shard DIR -o {data}`)"
        ));
    }
    if let Some(missing) = shards.iter().find(|s| !s.is_file()) {
        return Err(format!(
            "{}: no such shard (from {data}); fix the pattern or the folder",
            missing.display()
        ));
    }
    let dir = if p.is_dir() {
        p.to_path_buf()
    } else {
        shards[0].parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    Ok((shards, dir))
}

/// Class names from `dir/classes.txt` (one per line), if there is one.
pub fn class_names(dir: &Path) -> Result<Option<Vec<String>>, String> {
    let f = dir.join("classes.txt");
    if !f.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
    Ok(Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    ))
}

/// webdataset's split of a member name into key and extension: the key runs to the first dot of
/// the file name (folders included).
fn key_ext(name: &str) -> Option<(&str, String)> {
    let base = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[base..].find('.')? + base;
    Some((&name[..dot], name[dot + 1..].to_lowercase()))
}

#[derive(Default)]
struct Pending {
    image: Option<Member>,
    cls: Option<Result<usize, String>>,
}

/// Reads `tar`'s headers and `.cls` members. Never fails: a shard that cannot be read at all
/// gives no samples and one warning.
pub fn scan(tar: &Path) -> Scanned {
    let mut out = Scanned::default();
    let shard = Arc::new(tar.to_path_buf());
    let file = match std::fs::File::open(tar) {
        Ok(f) => f,
        Err(e) => {
            out.warnings.push(format!("cannot open: {e}"));
            return out;
        }
    };
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Samples by key in the order they start; webdataset's members of one sample are adjacent.
    let mut order: Vec<String> = vec![];
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut damage: Option<String> = None;
    // Where the last member's data ends, padded to 512: the end-of-archive blocks follow.
    let mut end = 0u64;
    let mut archive = tar::Archive::new(file);
    match archive.entries_with_seek() {
        Err(e) => damage = Some(e.to_string()),
        Ok(entries) => {
            for entry in entries {
                let mut entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        damage = Some(e.to_string());
                        break;
                    }
                };
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let (offset, len) = (entry.raw_file_position(), entry.size());
                if offset + len > file_len {
                    damage = Some(format!(
                        "truncated: a member ends at byte {} of a {file_len}-byte file",
                        offset + len
                    ));
                    break;
                }
                end = (offset + len).div_ceil(512) * 512;
                let name = match entry.path() {
                    Ok(p) => p.to_string_lossy().into_owned(),
                    Err(e) => {
                        damage = Some(e.to_string());
                        break;
                    }
                };
                let Some((key, ext)) = key_ext(&name) else {
                    continue;
                };
                let key = key.to_string();
                if !pending.contains_key(&key) {
                    order.push(key.clone());
                }
                let p = pending.entry(key).or_default();
                if ext == "cls" {
                    let mut s = String::new();
                    p.cls = Some(match entry.read_to_string(&mut s) {
                        Ok(_) => s
                            .trim()
                            .parse()
                            .map_err(|_| format!("{name} holds {:?}, not a class index", s.trim())),
                        Err(e) => Err(format!("{name}: {e}")),
                    });
                } else if IMAGE_EXTS.contains(&ext.as_str()) && p.image.is_none() {
                    p.image = Some(Member {
                        tar: shard.clone(),
                        name,
                        offset,
                        len,
                    });
                }
            }
        }
    }
    // A reader takes a file that ends between two members for a whole archive: a written one
    // (tar, Python's tarfile) has two zero blocks after its last member.
    if damage.is_none() && end > 0 && !zero_blocks_at(tar, end) {
        damage = Some(format!(
            "truncated or corrupt: no end-of-archive blocks after the last member, at byte {end}"
        ));
    }
    let (mut unlabelled, mut bad_labels, mut no_image) = (vec![], vec![], 0usize);
    for key in order {
        let p = pending.remove(&key).expect("keyed above");
        match (p.image, p.cls) {
            (Some(m), Some(Ok(label))) => out.samples.push((m, label)),
            (Some(_), None) => unlabelled.push(key),
            (Some(_), Some(Err(e))) => bad_labels.push(e),
            (None, _) => no_image += 1,
        }
    }
    if let Some(d) = damage {
        out.warnings.push(format!(
            "damaged ({d}); kept the {} samples before the damage, skipped the rest",
            out.samples.len()
        ));
    }
    if !unlabelled.is_empty() {
        out.warnings.push(format!(
            "{} sample(s) with no .cls label skipped (first: {})",
            unlabelled.len(),
            unlabelled[0]
        ));
    }
    if !bad_labels.is_empty() {
        out.warnings.push(format!(
            "{} sample(s) with a bad .cls label skipped (first: {})",
            bad_labels.len(),
            bad_labels[0]
        ));
    }
    if no_image > 0 {
        out.warnings.push(format!(
            "{no_image} sample(s) with no .jpg/.png image skipped"
        ));
    }
    out
}

/// The order of one epoch over samples grouped by shard (`shards[i]` is shard i's range of
/// sample indices): the shards in a seeded order, then a [`SHUFFLE_BUFFER`]-sample buffer that
/// hands out a random one of its samples each time it is full, and the rest at the end.
pub fn epoch_order(shards: &[Range<usize>], seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9));
    let mut ids: Vec<usize> = (0..shards.len()).collect();
    rng.shuffle(&mut ids);
    let mut buf: Vec<usize> = Vec::with_capacity(SHUFFLE_BUFFER);
    let mut out = Vec::with_capacity(shards.iter().map(|r| r.len()).sum());
    for s in ids {
        for i in shards[s].clone() {
            buf.push(i);
            if buf.len() >= SHUFFLE_BUFFER {
                let j = rng.below(buf.len());
                out.push(buf.swap_remove(j));
            }
        }
    }
    while !buf.is_empty() {
        let j = rng.below(buf.len());
        out.push(buf.swap_remove(j));
    }
    out
}

/// Writes `samples` ((image file, label)) as shards `OUT/PREFIX-000000.tar`, ... of `per_shard`
/// samples each (keys `%09d`, members `KEY.EXT` and `KEY.cls`, as webdataset's `ShardWriter`),
/// and `OUT/classes.txt`. Returns the shard paths.
pub fn write(
    samples: &[(PathBuf, usize)],
    classes: &[String],
    out: &Path,
    prefix: &str,
    per_shard: usize,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: cannot create: {e}", out.display()))?;
    let mut written = vec![];
    for (k, chunk) in samples.chunks(per_shard.max(1)).enumerate() {
        let path = out.join(format!("{prefix}-{k:06}.tar"));
        let tmp = path.with_extension("tar.tmp");
        let err = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let f = std::fs::File::create(&tmp).map_err(err)?;
        let mut b = tar::Builder::new(std::io::BufWriter::new(f));
        for (i, (img, label)) in chunk.iter().enumerate() {
            let key = format!("{:09}", k * per_shard.max(1) + i);
            let ext = img
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_lowercase)
                .unwrap_or_default();
            let bytes = std::fs::read(img).map_err(|e| format!("{}: {e}", img.display()))?;
            let label = label.to_string();
            for (name, data) in [
                (format!("{key}.{ext}"), bytes.as_slice()),
                (format!("{key}.cls"), label.as_bytes()),
            ] {
                let mut h = tar::Header::new_ustar();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, &name, data).map_err(err)?;
            }
        }
        b.into_inner()
            .and_then(|mut w| std::io::Write::flush(&mut w))
            .map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    let names: String = classes.iter().map(|c| format!("{c}\n")).collect();
    crate::util::atomic::write_atomic(&out.join("classes.txt"), names.as_bytes())
        .map_err(|e| format!("{}: {e}", out.join("classes.txt").display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_zero_padded() {
        let v = expand_braces("s/train-{000008..000011}.tar").unwrap();
        assert_eq!(
            v,
            [
                "s/train-000008.tar",
                "s/train-000009.tar",
                "s/train-000010.tar",
                "s/train-000011.tar"
            ]
        );
        assert!(expand_braces("s/{3..1}.tar").is_err());
        assert!(expand_braces("s/{a..b}.tar").is_err());
    }

    #[test]
    fn keys_as_webdataset_splits_them() {
        assert_eq!(
            key_ext("a/b.c/000001.seg.png"),
            Some(("a/b.c/000001", "seg.png".into()))
        );
        assert_eq!(key_ext("x.CLS"), Some(("x", "cls".into())));
        assert_eq!(key_ext("noext"), None);
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let shards = vec![0..700, 700..1500, 1500..1503];
        let a = epoch_order(&shards, 7, 0);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..1503).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(&shards, 7, 0));
        assert_ne!(a, epoch_order(&shards, 7, 1));
    }
}
