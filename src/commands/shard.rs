//! `se-compile shard`: WebDataset shards from a class-folder dataset.

use super::shared::{EXIT_INVALID, EXIT_USAGE};
use se_compile::train::data::list_class_folders;
use se_compile::train::shards;
use se_compile::util::rng::Rng;
use std::path::{Path, PathBuf};

/// Write WebDataset shards (KEY.png or KEY.jpg plus KEY.cls) and classes.txt from class folders.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  se-compile shard data/fashion-mnist-mini -o shards\n  se-compile train models/se_resnet_mini.yaml --data shards/train --val-data shards/test\n  se-compile train models/se_resnet_mini.yaml --data 'shards/train/train-{000000..000001}.tar'\n\nDIR/train/<class>/ and DIR/test/<class>/ become OUT/train/ and OUT/test/; a DIR of class\nfolders alone becomes OUT/. Each split's samples are shuffled (--seed) before they are cut into\nshards, so every shard mixes the classes. Images are stored as they are, not re-encoded."
)]
pub struct ShardArgs {
    /// The dataset: DIR/train/<class>/* (and DIR/test/<class>/*), or DIR/<class>/*.
    pub dir: String,
    /// Output folder.
    #[arg(short, long)]
    pub output: String,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: usize,
    /// Seed of the shuffle before the samples are cut into shards.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One folder of class folders to `out/` as `prefix-NNNNNN.tar` and `classes.txt`.
fn write_split(dir: &Path, out: &Path, prefix: &str, a: &ShardArgs) -> Result<(), String> {
    let (classes, mut files, skipped) = list_class_folders(dir)?;
    for (p, why) in &skipped {
        eprintln!("warning: skipped unreadable image {}: {why}", p.display());
    }
    Rng::new(a.seed).shuffle(&mut files);
    let written = shards::write(&files, &classes, out, prefix, a.shard_size)?;
    println!(
        "{}: {} images in {} classes -> {} shard(s) {}",
        dir.display(),
        files.len(),
        classes.len(),
        written.len(),
        match (written.first(), written.last()) {
            (Some(f), Some(l)) if written.len() > 1 => format!(
                "{}{{{}..{}}}.tar",
                out.join(format!("{prefix}-")).display(),
                &f.file_stem().unwrap_or_default().to_string_lossy()[prefix.len() + 1..],
                &l.file_stem().unwrap_or_default().to_string_lossy()[prefix.len() + 1..]
            ),
            (Some(f), _) => f.display().to_string(),
            _ => String::new(),
        }
    );
    Ok(())
}

pub fn run(a: ShardArgs) -> Result<(), u8> {
    if a.shard_size == 0 {
        eprintln!("error: --shard-size must be at least 1");
        return Err(EXIT_USAGE);
    }
    let dir = PathBuf::from(&a.dir);
    let out = PathBuf::from(&a.output);
    if !dir.is_dir() {
        eprintln!(
            "error: {}: no such folder (expected DIR/train/<class>/*.png or DIR/<class>/*.png)",
            dir.display()
        );
        return Err(EXIT_USAGE);
    }
    let splits: Vec<(PathBuf, PathBuf, &str)> = if dir.join("train").is_dir() {
        ["train", "test"]
            .iter()
            .filter(|s| dir.join(s).is_dir())
            .map(|s| (dir.join(s), out.join(s), *s))
            .collect()
    } else {
        vec![(dir.clone(), out.clone(), "shard")]
    };
    for (src, dst, prefix) in splits {
        write_split(&src, &dst, prefix, &a).map_err(|e| {
            eprintln!("error: {e}");
            EXIT_INVALID
        })?;
    }
    Ok(())
}
