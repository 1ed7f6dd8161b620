//! Images/s of the training data path alone (read, decode, resize, batch; no model, no cache)
//! from class folders and from the WebDataset shards `se-compile shard` wrote from them:
//!
//!     se-compile shard data/fashion-mnist-mini -o /tmp/fm-shards
//!     cargo run --example data_rate -- data/fashion-mnist-mini /tmp/fm-shards/train
//!
//! (the dev profile already builds the decoders, `image` and its codecs, with opt-level 3)
//!
//! Loading (folders: listing and reading every header; shards: reading the tar headers and
//! labels) is timed once. Each round reads one training epoch from each, in the order training takes (folders: a
//! seeded shuffle; shards: shard shuffle and buffer), in batches of 64 on the prefetch worker,
//! alternating which goes first; it prints every round and the median. The files are read
//! through the page cache, warm after the first round (a cold-disk figure needs dropped caches).
//! Args: FOLDERS SHARDS [ROUNDS=5] [SIDE=28] [CHANNELS=1].
use se_compile::train::data::{prefetch, Dataset};
use std::time::Instant;

fn epoch_rate(ds: &Dataset, epoch: usize) -> f64 {
    let order = ds.epoch_order(1, epoch);
    let batches: Vec<&[usize]> = order.chunks(64).collect();
    let t = Instant::now();
    let mut seen = 0usize;
    prefetch(
        batches.len(),
        |k| ds.batch(&ds.train, batches[k], None),
        |_, b| {
            seen += b.len();
            Ok(())
        },
    )
    .expect("the data worker runs");
    seen as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 2 {
        eprintln!("usage: data_rate FOLDERS SHARDS [ROUNDS] [SIDE] [CHANNELS]");
        std::process::exit(2);
    }
    let arg = |i: usize, d: usize| a.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (rounds, side, ch) = (arg(2, 5), arg(3, 28), arg(4, 1));
    let shape = [side, side, ch];
    let load = |data: &str| {
        let t = Instant::now();
        let ds = Dataset::load_any(data, None, &shape, 0.0, 1).expect("data loads");
        (ds, t.elapsed().as_secs_f64())
    };
    let ((folders, tf), (shards, ts)) = (load(&a[0]), load(&a[1]));
    println!(
        "folders {}: {} images, listed in {tf:.2}s; shards {}: {} images in {} shards, indexed in {ts:.2}s; {} threads",
        a[0],
        folders.train.len(),
        a[1],
        shards.train.len(),
        shards.train.shards.len(),
        rayon::current_num_threads()
    );
    let (mut f, mut s) = (vec![], vec![]);
    for r in 0..rounds {
        if r % 2 == 0 {
            f.push(epoch_rate(&folders, r));
            s.push(epoch_rate(&shards, r));
        } else {
            s.push(epoch_rate(&shards, r));
            f.push(epoch_rate(&folders, r));
        }
        println!(
            "round {}: folders {:.0} images/s, shards {:.0} images/s",
            r + 1,
            f[r],
            s[r]
        );
    }
    let (mf, ms) = (median(f), median(s));
    println!(
        "median: folders {mf:.0} images/s, shards {ms:.0} images/s (shards / folders {:.2})",
        ms / mf
    );
}
