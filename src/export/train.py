#!/usr/bin/env python3
"""Train an se-compile export with PyTorch DistributedDataParallel, launched by torchrun.

Written by `se-compile export SPEC --format pytorch -o DIR` next to model.py,
weights.safetensors (the spec's seeded initial weights, the values `se-compile train`
starts from), names.json (state-dict key -> se-compile tensor name) and recipe.json (the
spec's `train:` recipe).

    torchrun --nproc-per-node 8 DIR/train.py --data IMAGES --out RUN_DIR
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 DIR/train.py --data IMAGES --out RUN_DIR
    python DIR/train.py --data IMAGES --out RUN_DIR            (one process, no torchrun)

IMAGES is se-compile's layout: IMAGES/train/<class>/*.png|jpg and IMAGES/test/<class>/*
(or a seeded `val_split` of train/), or WebDataset shards (a folder of .tar files or a brace
pattern; KEY.png|jpg plus KEY.cls; classes.txt beside them; --val-data for validation
shards, else a `val_split` of the shard list): each process then reads its own shards. RUN_DIR is se-compile's run directory: history.csv,
history.json, steps.csv, last.safetensors and best.safetensors in se-compile's tensor names
and layouts, config.json and the spec. So `se-compile eval`, `predict` and
`train --resume` work on it, and `--resume` here continues an `se-compile train` run.
With the `tensorboard` package installed, RUN_DIR/tb/ receives TensorBoard event files with
the tags of `se-compile train` (`--no-tensorboard`: none).

--batch-size is the GLOBAL batch (the recipe's `batch_size`): each optimizer step sees the
same images as a step of `se-compile train` with the same seed, split over the processes.
NCCL on CUDA, gloo on the CPU. Only rank 0 writes; every file is written atomically.
"""

import argparse
import json
import math
import os
import sys
import time
from decimal import Decimal

try:
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    import torch.nn.functional as F
    import PIL  # noqa: F401
    import safetensors  # noqa: F401
except ImportError as e:
    sys.exit(f"error: {e}. train.py needs PyTorch, numpy, Pillow and safetensors: "
             "python3 -m venv V && V/bin/pip install torch numpy pillow safetensors, "
             "then run V/bin/torchrun (or V/bin/python)")

HERE = os.path.dirname(os.path.abspath(__file__))
M64 = (1 << 64) - 1
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# --- se-compile's seeded generator (SplitMix64, src/util/rng.rs), for identical shuffles,
# --- validation splits and augmentations.
class Rng:
    def __init__(self, seed):
        self.s = (seed ^ 0x9E3779B97F4A7C15) & M64

    def next_u64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def uniform(self):
        return np.float32(self.next_u64() >> 40) / np.float32(1 << 24)

    def range(self, lo, hi):
        lo, hi = np.float32(lo), np.float32(hi)
        return lo + (hi - lo) * self.uniform()

    def below(self, n):
        return self.next_u64() % max(n, 1)

    def shuffle(self, v):
        for i in range(len(v) - 1, 0, -1):
            j = self.below(i + 1)
            v[i], v[j] = v[j], v[i]


# --- data: the same folders, order, split and pixels as src/train/data.rs
def class_dirs(d):
    try:
        names = sorted(e.name for e in os.scandir(d) if e.is_dir())
    except OSError as e:
        fail(f"{d}: cannot read: {e}")
    if len(names) < 2:
        fail(f"{d}: found {len(names)} class folder(s); classification needs at least 2 "
             "(DIR/train/<class>/*.png)")
    return names


def readable(path, warn):
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.size
        return True
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, as se-compile does
        if warn:
            print(f"warning: skipped unreadable image {path}: {e}", file=sys.stderr)
        return False


def list_split(d, names, warn):
    paths, labels = [], []
    for label, n in enumerate(names):
        cdir = os.path.join(d, n)
        files = sorted(
            os.path.join(cdir, f) for f in os.listdir(cdir)
            if f.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(cdir, f)))
        if not files:
            fail(f"{cdir}: class folder holds no images (.png, .jpg, .jpeg); add images or "
                 "remove the folder")
        for f in files:
            if readable(f, warn):
                paths.append(f)
                labels.append(label)
    return paths, labels


def load_lists(root, val_split, seed, verbose):
    if not os.path.isdir(root):
        fail(f"{root}: no such data folder (expected DIR/train/<class>/*.png)")
    tdir = os.path.join(root, "train")
    if not os.path.isdir(tdir):
        fail(f"{root}: has no train/ folder (expected DIR/train/<class>/*.png)")
    names = class_dirs(tdir)
    train = list_split(tdir, names, verbose)
    vdir = os.path.join(root, "test")
    if os.path.isdir(vdir):
        if class_dirs(vdir) != names:
            fail(f"{vdir}: class folders differ from train/")
        val = list_split(vdir, names, verbose)
    else:
        idx = list(range(len(train[0])))
        Rng(seed ^ 0x5EED).shuffle(idx)
        n_val = int(math.floor(float(np.float32(len(idx)) * np.float32(val_split)) + 0.5))
        pick = lambda ids: ([train[0][i] for i in ids], [train[1][i] for i in ids])  # noqa: E731
        val, train = pick(idx[:n_val]), pick(idx[n_val:])
    if not train[0]:
        fail(f"{tdir}: no readable training images")
    return names, train, val


# --- WebDataset shards: the same index, classes, split and epoch order as src/train/shards.rs.
# Each process reads only its own shards (the epoch's shard order dealt out over the ranks).
SHUFFLE_BUFFER = 1000


def is_shards(data):
    if data.endswith(".tar") or ("{" in data and ".." in data):
        return True
    return (os.path.isdir(data) and not os.path.isdir(os.path.join(data, "train"))
            and any(f.endswith(".tar") for f in os.listdir(data)))


def expand_braces(p):
    i = p.find("{")
    if i < 0:
        return [p]
    j = p.find("}", i)
    a, _, b = p[i + 1:j].partition("..")
    if j < 0 or not a.isdigit() or not b.isdigit() or int(b) < int(a):
        fail(f"{p}: a brace range is {{FIRST..LAST}} with decimal numbers, as in "
             "train-{000000..000099}.tar")
    out = []
    for k in range(int(a), int(b) + 1):
        out += expand_braces(f"{p[:i]}{k:0{len(a)}d}{p[j + 1:]}")
    return out


def resolve_shards(data):
    if os.path.isdir(data):
        shards = sorted(os.path.join(data, f) for f in os.listdir(data)
                        if f.endswith(".tar") and os.path.isfile(os.path.join(data, f)))
        d = data
    else:
        shards = expand_braces(data)
        d = os.path.dirname(shards[0]) or "."
    if not shards:
        fail(f"{data}: holds no .tar shards (write some with `se-compile shard DIR -o {data}`)")
    for s in shards:
        if not os.path.isfile(s):
            fail(f"{s}: no such shard (from {data}); fix the pattern or the folder")
    return shards, d


def scan_shard(path, warn):
    """(member, label) of each labelled sample; member = (tar, name, offset, size). A damaged
    shard keeps the samples before the damage; unlabelled samples are left out."""
    import tarfile
    size = os.path.getsize(path)
    order, pend, damage, end = [], {}, None, 0
    try:
        with tarfile.open(path, "r:") as tf:
            while True:
                try:
                    m = tf.next()
                except tarfile.TarError as e:
                    damage = str(e)
                    break
                if m is None:
                    break
                if not m.isfile():
                    continue
                if m.offset_data + m.size > size:
                    damage = (f"truncated: a member ends at byte {m.offset_data + m.size} of a "
                              f"{size}-byte file")
                    break
                end = -(-(m.offset_data + m.size) // 512) * 512
                base = m.name.rfind("/") + 1
                dot = m.name.find(".", base)
                if dot < 0:
                    continue
                key, ext = m.name[:dot], m.name[dot + 1:].lower()
                if key not in pend:
                    order.append(key)
                    pend[key] = [None, None]
                if ext == "cls":
                    txt = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                    pend[key][1] = int(txt) if txt.isdigit() else ValueError(
                        f"{m.name} holds {txt!r}, not a class index")
                elif ext in ("png", "jpg", "jpeg") and pend[key][0] is None:
                    pend[key][0] = (path, m.name, m.offset_data, m.size)
    except (OSError, tarfile.TarError) as e:
        damage = str(e)
    if damage is None and end > 0:
        # tarfile ends quietly at a truncated or corrupt header: a written tar has two zero
        # blocks after its last member.
        with open(path, "rb") as f:
            f.seek(end)
            if f.read(1024) != bytes(1024):
                damage = ("truncated or corrupt: no end-of-archive blocks after the last "
                          f"member, at byte {end}")
    out, unlabelled, bad = [], [], []
    for key in order:
        img, cls = pend[key]
        if img is None:
            continue
        if cls is None:
            unlabelled.append(key)
        elif isinstance(cls, Exception):
            bad.append(str(cls))
        else:
            out.append((img, cls))
    if warn:
        if damage:
            print(f"warning: {path}: damaged ({damage}); kept the {len(out)} samples before the "
                  "damage, skipped the rest", file=sys.stderr)
        if unlabelled:
            print(f"warning: {path}: {len(unlabelled)} sample(s) with no .cls label skipped "
                  f"(first: {unlabelled[0]})", file=sys.stderr)
        if bad:
            print(f"warning: {path}: {len(bad)} sample(s) with a bad .cls label skipped "
                  f"(first: {bad[0]})", file=sys.stderr)
    return out


def load_shards(data, val_data, val_split, seed, verbose):
    """names, train, val as load_lists gives them, and train's shard ranges."""
    shards, d = resolve_shards(data)
    if val_data:
        val_shards = resolve_shards(val_data)[0]
    else:
        Rng(seed ^ 0x5EED).shuffle(shards)
        n = len(shards)
        n_val = int(math.floor(float(np.float32(n) * np.float32(val_split)) + 0.5))
        if val_split > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        val_shards, shards = shards[:n_val], sorted(shards[n_val:])
    scanned = {}

    def read(lst):
        paths, labels, ranges = [], [], []
        for s in lst:
            if s not in scanned:
                scanned[s] = scan_shard(s, verbose)
            start = len(paths)
            for m, c in scanned[s]:
                paths.append(m)
                labels.append(c)
            ranges.append((start, len(paths)))
        return paths, labels, ranges

    train, val = read(shards), read(val_shards)
    cf = os.path.join(d, "classes.txt")
    if os.path.isfile(cf):
        with open(cf) as f:
            names = [ln.strip() for ln in f if ln.strip()]
    else:
        names = [str(i) for i in range(max(train[1] + val[1], default=-1) + 1)]
    kept = []
    for paths, labels, ranges in (train, val):
        bad = [i for i, c in enumerate(labels) if c >= len(names)]
        if bad and verbose:
            print(f"warning: {len(bad)} sample(s) skipped: their .cls is not below the "
                  f"{len(names)} classes of {cf}", file=sys.stderr)
        p2, l2, r2 = [], [], []
        for a, b in ranges:
            start = len(p2)
            for i in range(a, b):
                if labels[i] < len(names):
                    p2.append(paths[i])
                    l2.append(labels[i])
            r2.append((start, len(p2)))
        kept.append(((p2, l2), r2))
    (train, ranges), (val, _) = kept
    if len(names) < 2:
        fail(f"{data}: the shards hold {len(names)} class(es); classification needs at least 2 "
             "(KEY.cls holds the class index)")
    if not train[0]:
        fail(f"{data}: no readable training samples (each needs KEY.png or KEY.jpg and KEY.cls)")
    return names, train, val, ranges


def buffered(ranges, ids, rng):
    """The samples of shards `ids` in turn through a SHUFFLE_BUFFER-sample shuffle buffer."""
    buf, out = [], []

    def take():
        j = rng.below(len(buf))
        v = buf[j]
        buf[j] = buf[-1]
        buf.pop()
        out.append(v)

    for s in ids:
        for i in range(*ranges[s]):
            buf.append(i)
            if len(buf) >= SHUFFLE_BUFFER:
                take()
    while buf:
        take()
    return out


def shard_batches(ranges, n, batch, seed, epoch, world):
    """An epoch's global batches over shards. The shards go in a seeded order, dealt out over
    the ranks (rank r reads shards r, r + world, ...), each rank's through its own shuffle
    buffer. Step k takes each rank's share of the global batch from its own stream, which
    starts again from its beginning if it runs out (ranks' shards may hold unequal counts).
    Rank r's items sit at r, r + world, ... of each batch (as RankBatches reads them). With
    one process this is exactly se-compile's epoch over the same shards."""
    rng = Rng(seed ^ (((epoch + 1) * 0x9E3779B9) & M64))
    ids = list(range(len(ranges)))
    rng.shuffle(ids)
    if world == 1:
        order = buffered(ranges, ids, rng)
        return [order[k:k + batch] for k in range(0, n, batch)]
    if len(ids) < world:
        fail(f"{len(ids)} training shard(s) for {world} processes: each process reads its own "
             "shards; write smaller ones (se-compile shard --shard-size)")
    streams = [buffered(ranges, ids[r::world], Rng(rng.next_u64() ^ r)) for r in range(world)]
    pos = [0] * world
    batches = []
    for k in range(0, n, batch):
        nk = min(batch, n - k)
        share = [nk // world + (1 if r < nk % world else 0) for r in range(world)]
        per = []
        for r in range(world):
            got = []
            for _ in range(share[r]):
                got.append(streams[r][pos[r] % len(streams[r])])
                pos[r] += 1
            per.append(got)
        b = []
        for j in range(max(share)):
            b += [per[r][j] for r in range(world) if j < share[r]]
        batches.append(b)
    return batches


def decode(path, h, w, c):
    from PIL import Image
    if isinstance(path, tuple):  # a shard member: (tar, name, offset, size)
        import io
        with open(path[0], "rb") as f:
            f.seek(path[2])
            path = io.BytesIO(f.read(path[3]))
    with Image.open(path) as im:
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).reshape(h, w, c)


def round_away(v):
    return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))


def augment(src, a, rng):
    """Keras' apply_affine_transform with fill_mode='nearest', as src/train/data.rs: the
    same random draws in the same order."""
    h, w, c = src.shape
    f32 = np.float32
    theta = np.deg2rad(rng.range(-a["rotation"], a["rotation"])).astype(f32)
    tx = rng.range(-a["width_shift"], a["width_shift"]) * f32(w)
    ty = rng.range(-a["height_shift"], a["height_shift"]) * f32(h)
    shear = np.deg2rad(rng.range(-a["shear"], a["shear"])).astype(f32)
    zx = rng.range(1.0 - a["zoom"], 1.0 + a["zoom"])
    zy = rng.range(1.0 - a["zoom"], 1.0 + a["zoom"])
    flip = a["horizontal_flip"] and rng.uniform() < 0.5
    bright = rng.range(a["brightness"][0], a["brightness"][1])
    cs, sn = np.cos(theta), np.sin(theta)
    r = np.array([[cs, -sn], [sn, cs]], dtype=f32)
    s = np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]], dtype=f32)
    rs = r @ s
    m = np.array([[rs[0, 0] * zx, rs[0, 1] * zy], [rs[1, 0] * zx, rs[1, 1] * zy]], dtype=f32)
    cy, cx = f32((h - 1.0) / 2.0), f32((w - 1.0) / 2.0)
    ys, xs = np.mgrid[0:h, 0:w].astype(f32)
    if flip:
        xs = f32(w - 1) - xs
    px, py = xs - cx, ys - cy
    sx = np.clip(round_away(m[0, 0] * px + m[0, 1] * py + cx + tx), 0, w - 1).astype(np.int64)
    sy = np.clip(round_away(m[1, 0] * px + m[1, 1] * py + cy + ty), 0, h - 1).astype(np.int64)
    v = np.minimum(src[sy, sx].astype(f32) * bright, f32(255.0))
    return v / f32(255.0)


class Images(torch.utils.data.Dataset):
    """Items are addressed as (augmentation seed or None, index in the split)."""

    def __init__(self, paths, labels, shape, aug):
        self.paths, self.labels, self.shape, self.aug = paths, labels, shape, aug
        self.warned = set()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        seed, i = key
        h, w, c = self.shape
        try:
            px = decode(self.paths[i], h, w, c)
        except Exception as e:  # noqa: BLE001
            p = self.paths[i]
            if p not in self.warned:  # once per image (and loader process)
                self.warned.add(p)
                name = f"{p[0]}:{p[1]}" if isinstance(p, tuple) else p
                print(f"warning: cannot decode {name}: {e}; using a black image",
                      file=sys.stderr)
            px = np.zeros((h, w, c), np.uint8)
        if seed is not None and self.aug["enabled"]:
            x = augment(px, self.aug, Rng(seed ^ ((i * 0x2545F4914F6CDD1D) & M64)))
        else:
            x = px.astype(np.float32) / np.float32(255.0)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), self.labels[i]


def epoch_batches(n, batch, seed, epoch):
    """se-compile's batches of one epoch: the seeded shuffle cut into global batches."""
    order = list(range(n))
    Rng(seed ^ (((epoch + 1) * 0x9E3779B9) & M64)).shuffle(order)
    return [order[k:k + batch] for k in range(0, n, batch)]


class RankBatches(torch.utils.data.Sampler):
    """This rank's share of every global batch: elements rank, rank + world, ... The union
    over the ranks of step k is exactly se-compile's batch k."""

    def __init__(self, batches, rank, world, seed, epoch, augment):
        self.items = []
        for k, b in enumerate(batches):
            s = (seed ^ ((epoch << 32) & M64) ^ k) if augment else None
            self.items.append([(s, i) for i in b[rank::world]])

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


# --- callbacks: the same rules as src/train/callbacks.rs, replayed from the history
class Callbacks:
    def __init__(self, cfg):
        self.cfg, self.lr_scale, self.best = cfg, 1.0, math.inf
        self.wait = self.plateau_wait = 0
        self.stop = False

    def value(self, r):
        m = self.cfg["monitor"]
        v, fallback, sign = {
            "val_loss": (r["val_loss"], r["loss"], 1.0),
            "val_accuracy": (r["val_accuracy"], r["accuracy"], -1.0),
            "loss": (r["loss"], r["loss"], 1.0),
            "accuracy": (r["accuracy"], r["accuracy"], -1.0),
        }[m]
        return sign * (fallback if v is None or (isinstance(v, float) and math.isnan(v)) else v)

    def observe(self, r):
        v = self.value(r)
        if v < self.best - self.cfg["min_delta"]:
            self.best, self.wait, self.plateau_wait = v, 0, 0
            return
        self.wait += 1
        self.plateau_wait += 1
        if self.cfg["early_stopping"] > 0 and self.wait >= self.cfg["early_stopping"]:
            self.stop = True
        p = self.cfg["reduce_lr_on_plateau"]
        if p > 0 and self.plateau_wait >= p:
            self.lr_scale *= self.cfg["plateau_factor"]
            self.plateau_wait = 0

    def lr(self, epoch):
        lr = lr_at(self.cfg, epoch)
        return max(lr * self.lr_scale, self.cfg["min_lr"]) if self.lr_scale < 1.0 else lr


def lr_at(cfg, epoch):
    warm = (epoch + 1) / cfg["warmup_epochs"] if epoch < cfg["warmup_epochs"] else 1.0
    s = cfg["schedule"]
    if s == "step":
        lr = cfg["lr"] * cfg["gamma"] ** sum(1 for m in cfg["milestones"] if epoch > m)
    elif s == "cosine":
        lr = 0.5 * cfg["lr"] * (1.0 + math.cos(math.pi * epoch / max(cfg["epochs"], 1)))
    else:
        lr = cfg["lr"]
    return warm * lr


# --- run directory: se-compile's files and formats
def write_atomic(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rust_e(x):
    """Rust's `{:e}` of an f64: the shortest digits, e.g. 5e-4, 2.500000000000001e-4."""
    if x == 0:
        return "0e0"
    sign, digits, exp = Decimal(repr(float(x))).normalize().as_tuple()
    d = "".join(map(str, digits))
    e = exp + len(d) - 1
    mant = d[0] + ("." + d[1:] if len(d) > 1 else "")
    return ("-" if sign else "") + f"{mant}e{e}"


def rust_f(x, n):
    return "NaN" if x is None or math.isnan(x) else f"{x:.{n}f}"


def write_history(out, hist):
    lines = ["epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds"]
    for r in hist:
        lines.append(",".join([
            str(r["epoch"]), rust_f(r["loss"], 6), rust_f(r["accuracy"], 6),
            rust_f(r["val_loss"], 6), rust_f(r["val_accuracy"], 6), rust_e(r["lr"]),
            f"{r['seconds']:.3f}"]))
    write_atomic(os.path.join(out, "history.csv"), ("\n".join(lines) + "\n").encode())
    # serde_json writes a NaN as null
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
             for r in hist]
    write_atomic(os.path.join(out, "history.json"), json.dumps(clean, indent=2).encode())


def to_se(t):
    """A torch tensor in se-compile's layout, flat: HWIO kernels, [in, out] dense kernels."""
    t = t.detach().float().cpu()
    if t.dim() == 4:
        t = t.permute(2, 3, 1, 0)
    elif t.dim() == 2:
        t = t.t()
    return t.contiguous().reshape(-1)


def from_se(flat, like):
    if like.dim() == 4:
        o, i, kh, kw = like.shape
        return flat.reshape(kh, kw, i, o).permute(3, 2, 0, 1).contiguous()
    if like.dim() == 2:
        o, i = like.shape
        return flat.reshape(i, o).t().contiguous()
    return flat.reshape(like.shape)


class Checkpoints:
    def __init__(self, model, names):
        self.model, self.names = model, names
        self.state = dict(model.state_dict(keep_vars=True))
        for k in names:
            if k not in self.state:
                fail(f"names.json names `{k}` but model.py has no such tensor; re-export")

    def save(self, path, meta, opt=None, kind=None):
        from safetensors.torch import save_file
        tensors = {se: to_se(self.state[k]) for k, se in self.names.items()}
        if opt is not None:
            for k, se in self.names.items():
                p = self.state[k]
                if not isinstance(p, nn.Parameter) or not p.requires_grad:
                    continue
                st = opt.state.get(p, {})
                if kind == "adam":
                    if "exp_avg" not in st:
                        continue
                    m, v = st["exp_avg"], st["exp_avg_sq"]
                else:
                    if st.get("momentum_buffer") is None:
                        continue
                    m, v = st["momentum_buffer"], torch.zeros_like(p)
                tensors["optimizer/m/" + se] = to_se(m)
                tensors["optimizer/v/" + se] = to_se(v)
        meta = {k: str(v) for k, v in meta.items()}
        tmp = f"{path}.tmp-{os.getpid()}"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)

    def load(self, path, opt=None, kind=None):
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            have = set(f.keys())
            with torch.no_grad():
                for k, se in self.names.items():
                    if se not in have:
                        fail(f"{path}: has no tensor `{se}`; was it saved from a different spec?")
                    t = self.state[k]
                    flat = f.get_tensor(se).float()
                    if flat.numel() != t.numel():
                        fail(f"{path}: tensor `{se}` has {flat.numel()} values but the spec's "
                             f"layer needs {t.numel()}; the weights belong to a different spec")
                    t.copy_(from_se(flat, t))
            if opt is None:
                return meta
            step = int(meta.get("optimizer_step", "0"))
            for k, se in self.names.items():
                p = self.state[k]
                if not isinstance(p, nn.Parameter) or not p.requires_grad:
                    continue
                km, kv = "optimizer/m/" + se, "optimizer/v/" + se
                if km not in have or kv not in have:
                    fail(f"{path}: checkpoint has no optimizer state for `{se}`")
                m = from_se(f.get_tensor(km).float(), p).to(p.device)
                v = from_se(f.get_tensor(kv).float(), p).to(p.device)
                if kind == "adam":
                    opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": m,
                                    "exp_avg_sq": v}
                else:
                    opt.state[p] = {"momentum_buffer": m}
        return meta


# --- TensorBoard: the tags of se-compile's own engine (src/train/tensorboard.rs)
PROBE_IMAGES = 32


def open_board(out, purge_step):
    """A SummaryWriter on out/tb, or None (said once) when tensorboard is not installed.
    purge_step: a resumed run's first step; TensorBoard drops earlier files' events from it on
    (the interrupted epoch's steps)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        print(f"note: no TensorBoard event files ({e}); `pip install tensorboard` to get "
              "them in RUN_DIR/tb", flush=True)
        return None
    return SummaryWriter(os.path.join(out, "tb"), purge_step=purge_step)


def probe_batch(split, n_classes, images):
    """Up to PROBE_IMAGES images of a split, classes in turn (as se-compile picks them)."""
    per = [[] for _ in range(n_classes)]
    for i, k in enumerate(split[1]):
        if k < n_classes:
            per[k].append(i)
    idx = []
    j = 0
    while len(idx) < PROBE_IMAGES:
        row = [v[j] for v in per if j < len(v)]
        if not row:
            break
        idx += row
        j += 1
    idx = idx[:PROBE_IMAGES]
    if not idx:
        return None
    xs, ys = zip(*[images[(None, i)] for i in idx])
    return torch.stack(xs), torch.tensor(ys)


class Gates:
    """The SE gates of the model: the (N, C, 1, 1) factor of every product of a feature map
    (N, C, H, W) by a gate computed from it, found in the torch.fx graph of the model and read
    while it runs; named by recipe.json's `se_blocks` (graph order) when the counts agree."""

    def __init__(self, net, x, tags):
        import operator
        import torch.fx
        from torch.fx.passes.shape_prop import ShapeProp
        self.gm = torch.fx.symbolic_trace(net)
        was = net.training
        self.gm.eval()
        with torch.no_grad():
            ShapeProp(self.gm).propagate(x)
        self.gm.train(was)

        def shape(n):
            m = n.meta.get("tensor_meta") if isinstance(n, torch.fx.Node) else None
            return tuple(m.shape) if m is not None and hasattr(m, "shape") else None

        def reads(a, b):
            seen, todo = set(), [a]
            while todo:
                n = todo.pop()
                if n is b:
                    return True
                if n not in seen:
                    seen.add(n)
                    todo += n.all_input_nodes
            return False

        self.nodes = []
        for n in self.gm.graph.nodes:
            if n.op != "call_function" or n.target not in (operator.mul, torch.mul) \
                    or len(n.args) != 2:
                continue
            a, b = n.args
            for f, g in ((a, b), (b, a)):
                sf, sg = shape(f), shape(g)
                if sf and sg and len(sf) == 4 and sg == (sf[0], sf[1], 1, 1) \
                        and reads(g, f):
                    self.nodes.append(g)
                    break
        self.tags = tags if len(tags) == len(self.nodes) else [n.name for n in self.nodes]

    def __call__(self, x):
        """Each gate's (N, C) values on x, in inference mode."""
        import torch.fx
        want, got = set(self.nodes), {}

        class Rec(torch.fx.Interpreter):
            def run_node(self, n):
                v = super().run_node(n)
                if n in want:
                    got[n] = v
                return v

        was = self.gm.training
        self.gm.eval()
        with torch.no_grad():
            Rec(self.gm).run(x)
        self.gm.train(was)
        return [got[n].reshape(got[n].shape[0], -1).double() for n in self.nodes]


def board_epoch(tb, rec, images_per_sec, net, names, gates, probe):
    step = rec["epoch"]
    for k in ["loss", "accuracy", "val_loss", "val_accuracy", "lr"]:
        if not math.isnan(rec[k]):
            tb.add_scalar(f"epoch/{k}", rec[k], step)
    tb.add_scalar("epoch/images_per_sec", images_per_sec, step)
    for key, t in net.state_dict().items():
        if key in names:
            tb.add_histogram(f"weights/{names[key]}", t.detach().float().cpu(), step)
    if gates is not None and probe is not None:
        x, y = probe
        dev = next(net.parameters()).device
        for tag, g in zip(gates.tags, gates(x.to(dev))):
            g = g.cpu()
            overall = g.mean(0)
            per_class = [g[y == k].mean(0) for k in sorted(set(y.tolist()))]
            spec = torch.stack([(m - overall) ** 2 for m in per_class]).mean().sqrt().item()
            tb.add_histogram(f"excitation/{tag}", overall.float(), step)
            tb.add_scalar(f"excitation_specificity/{tag}", spec, step)
    tb.flush()


def parse_args(recipe):
    t = recipe["train"]
    p = argparse.ArgumentParser(
        description=f"Train {recipe['model']} (exported from {recipe['spec']}) with PyTorch "
                    "DDP; launch with torchrun for more than one process.")
    p.add_argument("--data", required=True,
                   help="DIR with train/<class>/ (and test/<class>/), or WebDataset shards: a "
                        "folder of .tar files or a pattern such as 'train-{000000..000099}.tar'")
    p.add_argument("--val-data", help="validation shards (folder or pattern) with shards")
    p.add_argument("--out", help="run directory (default runs/<model>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR (an se-compile or train.py run) from its last epoch")
    p.add_argument("--epochs", type=int)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--batch-size", type=int,
                   help=f"GLOBAL batch, split over the processes (recipe: {t['batch_size']})")
    g.add_argument("--batch-per-process", type=int,
                   help="batch per process; the global batch is this times the world size")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--schedule", choices=["constant", "step", "cosine"])
    p.add_argument("--seed", type=int)
    p.add_argument("--val-split", type=float)
    p.add_argument("--augment", choices=["true", "false"])
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--early-stopping", type=int, metavar="PATIENCE")
    p.add_argument("--reduce-lr-on-plateau", type=int, metavar="PATIENCE")
    p.add_argument("--monitor", choices=["val_loss", "val_accuracy", "loss", "accuracy"])
    p.add_argument("--min-delta", type=float)
    p.add_argument("--plateau-factor", type=float)
    p.add_argument("--min-lr", type=float)
    p.add_argument("--sync-bn", action="store_true",
                   help="SyncBatchNorm: batch statistics over the global batch (CUDA only)")
    p.add_argument("--workers", type=int, default=2, help="data loader processes per rank")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard event files to RUN_DIR/tb")
    return p.parse_args()


def main():
    with open(os.path.join(HERE, "recipe.json")) as f:
        recipe = json.load(f)
    with open(os.path.join(HERE, "names.json")) as f:
        names = json.load(f)
    args = parse_args(recipe)
    # As `se-compile train SPEC --resume RUN_DIR`: the recipe (the spec's) and the flags given
    # now; the run directory brings the weights, the optimizer state and the history.
    cfg = dict(recipe["train"])
    for key in ["epochs", "lr", "optimizer", "schedule", "seed", "val_split", "label_smoothing",
                "warmup_epochs", "early_stopping", "reduce_lr_on_plateau", "monitor", "min_delta",
                "plateau_factor", "min_lr"]:
        v = getattr(args, key)
        if v is not None:
            cfg[key] = v
    if args.augment is not None:
        cfg["augment"] = dict(cfg["augment"], enabled=args.augment == "true")

    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        fail("--device cuda, but torch sees no CUDA device")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    if args.batch_per_process:
        cfg["batch_size"] = args.batch_per_process * world
    elif args.batch_size:
        cfg["batch_size"] = args.batch_size
    B = cfg["batch_size"]
    if B < world:
        fail(f"the global batch {B} is smaller than the {world} processes; raise --batch-size")
    lead = rank == 0
    out = args.resume or args.out or os.path.join("runs", recipe["model"])
    if lead:
        if not args.resume and os.path.exists(os.path.join(out, "last.safetensors")):
            fail(f"{out} already holds a run; continue it with --resume {out}, or choose "
                 "another --out")
        os.makedirs(out, exist_ok=True)

    h, w, c = recipe["input"]
    ranges = None
    if is_shards(args.data):
        names_cls, train, val, ranges = load_shards(args.data, args.val_data, cfg["val_split"],
                                                    cfg["seed"], lead)
    elif args.val_data:
        fail(f"--val-data {args.val_data}: only for shards; with class folders, validation "
             f"images go in {args.data}/test/<class>/")
    else:
        names_cls, train, val = load_lists(args.data, cfg["val_split"], cfg["seed"], lead)
    if recipe.get("classes") and len(names_cls) != recipe["classes"]:
        fail(f"{args.data} has {len(names_cls)} classes but the model's output has "
             f"{recipe['classes']} units; set `classes: {len(names_cls)}` in the spec")
    if lead:
        print(f"Found {len(train[0])} training and {len(val[0])} validation images in "
              f"{len(names_cls)} classes ({args.data}); {world} process(es), global batch {B} "
              f"({B // world}{'+' if B % world else ''} per process), "
              f"{'nccl' if cuda else 'gloo'} on {device.type}", flush=True)

    sys.path.insert(0, HERE)
    import model as model_py  # noqa: E402  (the exported model.py beside this file)
    torch.manual_seed(cfg["seed"])
    net = getattr(model_py, recipe["class"])()
    from safetensors.torch import load_file
    net.load_state_dict(load_file(os.path.join(HERE, "weights.safetensors")))
    if hasattr(net, "softmax_output"):
        net.softmax_output = False
    logits_out = not recipe["softmax_output"] or hasattr(net, "softmax_output")
    if args.sync_bn:
        if not cuda:
            fail("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel); leave it off "
                 "on the CPU, each process then normalises its own share of the batch")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    ck = Checkpoints(net, names)
    kind = cfg["optimizer"]
    if kind == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8,
                               weight_decay=cfg["weight_decay"])
    else:
        opt = torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                              weight_decay=cfg["weight_decay"])
    history = []
    steps_done = 0
    if args.resume:
        last = os.path.join(out, "last.safetensors")
        if not os.path.exists(last):
            fail(f"{last}: no such file; --resume needs a run with a finished epoch")
        meta = ck.load(last, opt, kind)
        steps_done = int(meta.get("optimizer_step", "0"))
        try:
            with open(os.path.join(out, "history.json")) as f:
                history = json.load(f)
        except (OSError, ValueError) as e:
            fail(f"{out}/history.json: {e}")
        history = history[:int(meta.get("epoch", "0"))]
        for r in history:
            for k in ("val_loss", "val_accuracy"):
                if r[k] is None:
                    r[k] = math.nan
    ddp = nn.parallel.DistributedDataParallel(net) if distributed else net

    if lead:
        spec_src = os.path.join(HERE, recipe["spec_file"])
        with open(spec_src, "rb") as f:
            write_atomic(os.path.join(out, recipe["spec_file"]), f.read())
        rc = {"spec": recipe["spec"], "data": args.data, "classes": names_cls, "train": cfg,
              "engine": "torchrun", "world_size": world}
        write_atomic(os.path.join(out, "config.json"), json.dumps(rc, indent=2).encode())
        kept = ["epoch,step,loss"]
        sp = os.path.join(out, "steps.csv")
        if history and os.path.exists(sp):
            with open(sp) as f:
                kept += [ln.rstrip("\n") for ln in list(f)[1:]
                         if int(ln.split(",")[0]) <= len(history)]
        write_atomic(sp, ("\n".join(kept) + "\n").encode())
        step_log = open(sp, "a")
    steps_per_epoch = -(-len(train[0]) // B)
    tb = (open_board(out, len(history) * steps_per_epoch + 1 if args.resume else None)
          if lead and not args.no_tensorboard else None)

    shape = (h, w, c)
    train_ds = Images(train[0], train[1], shape, cfg["augment"])
    val_ds = Images(val[0], val[1], shape, cfg["augment"])
    cb = Callbacks(cfg)
    for r in history:
        cb.observe(r)
    best = max([(r["val_accuracy"] if val[0] else -r["loss"]) for r in history],
               default=-math.inf)
    loader_kw = dict(num_workers=args.workers, persistent_workers=False,
                     pin_memory=cuda)
    gates = probe = None
    if tb is not None:
        probe = probe_batch(val if val[0] else train, len(names_cls),
                            val_ds if val[0] else train_ds)
        if probe is not None and recipe.get("se_blocks"):
            try:
                gates = Gates(net, probe[0].to(device), recipe["se_blocks"])
            except Exception as e:  # noqa: BLE001  (a model torch.fx cannot trace)
                print(f"note: no SE excitations in TensorBoard: torch.fx: {e}", flush=True)

    def loss_of(out_, y, smoothing):
        if logits_out:
            return F.cross_entropy(out_, y, reduction="sum", label_smoothing=smoothing)
        logp = torch.log(out_.clamp_min(1e-30))
        k = logp.shape[1]
        return -((1 - smoothing) * logp.gather(1, y[:, None]).sum()
                 + smoothing / k * logp.sum())

    for epoch in range(len(history), cfg["epochs"]):
        if cb.stop:
            break
        lr = cb.lr(epoch)
        for gr in opt.param_groups:
            gr["lr"] = lr
        if lead:
            print(f"Epoch {epoch + 1}/{cfg['epochs']}", flush=True)
        t0 = time.time()
        torch.manual_seed((cfg["seed"] * 1000003 + epoch) % (1 << 63))
        batches = (epoch_batches(len(train[0]), B, cfg["seed"], epoch) if ranges is None else
                   shard_batches(ranges, len(train[0]), B, cfg["seed"], epoch, world))
        sampler = RankBatches(batches, rank, world, cfg["seed"], epoch,
                              cfg["augment"]["enabled"])
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, **loader_kw)
        ddp.train()
        tot = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
        t_step = time.time()
        for k, (x, y) in enumerate(loader):
            n_global = len(batches[k])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if x.shape[0] == 0:
                fail(f"step {k + 1} gives this process no images (the last batch has "
                     f"{n_global} for {world} processes)")
            out_ = ddp(x)
            loss_sum = loss_of(out_, y, cfg["label_smoothing"])
            # DDP averages gradients over the processes: scale so that the result is the
            # mean over the global batch, whatever each process's share.
            opt.zero_grad(set_to_none=True)
            (loss_sum * (world / n_global)).backward()
            if not torch.isfinite(loss_sum):
                fail(f"loss became {loss_sum.item()} at epoch {epoch + 1} step {k + 1}: "
                     f"stopping. Lower the learning rate (now {lr:e}).")
            opt.step()
            steps_done += 1
            with torch.no_grad():
                st = torch.stack([loss_sum.detach().double(),
                                  (out_.argmax(1) == y).sum().double(),
                                  torch.tensor(float(x.shape[0]), dtype=torch.float64,
                                               device=device)])
            if distributed:
                dist.all_reduce(st)
            tot += st
            if lead:
                step_log.write(f"{epoch + 1},{k + 1},{(st[0] / st[2]).item():.7f}\n")
            if tb is not None:
                now = time.time()
                g = epoch * len(batches) + k + 1
                tb.add_scalar("step/loss", (st[0] / st[2]).item(), g)
                tb.add_scalar("step/accuracy", (st[1] / st[2]).item(), g)
                tb.add_scalar("step/lr", lr, g)
                tb.add_scalar("step/images_per_sec", st[2].item() / max(now - t_step, 1e-9), g)
                t_step = now
        if lead:
            step_log.flush()
        train_images_per_sec = tot[2].item() / max(time.time() - t0, 1e-9)
        val_loss = val_acc = math.nan
        if distributed:
            # DDP hands rank 0's BN statistics to the others at each forward, then every rank
            # updates them with its own share: evaluate with rank 0's, the ones it saves.
            for b in net.buffers():
                dist.broadcast(b, 0)
        if val[0]:
            ddp.eval()
            vs = torch.zeros(3, dtype=torch.float64, device=device)
            ids = list(range(len(val[0])))[rank::world]
            vl = torch.utils.data.DataLoader(
                val_ds, batch_sampler=[[(None, i) for i in ids[j:j + B]]
                                       for j in range(0, len(ids), B)], **loader_kw)
            with torch.no_grad():
                for x, y in vl:
                    x, y = x.to(device), y.to(device)
                    o = net(x)
                    vs += torch.stack([loss_of(o, y, 0.0).double(),
                                       (o.argmax(1) == y).sum().double(),
                                       torch.tensor(float(x.shape[0]), dtype=torch.float64,
                                                    device=device)])
            if distributed:
                dist.all_reduce(vs)
            val_loss, val_acc = (vs[0] / vs[2]).item(), (vs[1] / vs[2]).item()
        rec = {"epoch": epoch + 1, "loss": (tot[0] / tot[2]).item(),
               "accuracy": (tot[1] / tot[2]).item(), "val_loss": val_loss,
               "val_accuracy": val_acc, "lr": lr, "seconds": time.time() - t0}
        history.append(rec)
        if lead:
            print(f"{len(batches)}/{len(batches)} - {rec['seconds']:.0f}s - loss: "
                  f"{rec['loss']:.4f} - accuracy: {rec['accuracy']:.4f} - val_loss: "
                  f"{val_loss:.4f} - val_accuracy: {val_acc:.4f} - lr: {lr:.3e}", flush=True)
            meta = {"format": "se-compile-weights", "model": recipe["model"],
                    "epoch": epoch + 1, "engine": "torchrun",
                    # as se-compile's: every batch is one optimizer step (Adam's `step` too)
                    "optimizer_step": steps_done}
            ck.save(os.path.join(out, "last.safetensors"), meta, opt, kind)
            score = val_acc if val[0] else -rec["loss"]
            if score > best:
                best = score
                ck.save(os.path.join(out, "best.safetensors"), meta)
            write_history(out, history)
            if tb is not None:
                board_epoch(tb, rec, train_images_per_sec, net, names, gates, probe)
        scale = cb.lr_scale
        cb.observe(rec)
        if lead and cb.lr_scale < scale:
            print(f"reduce_lr_on_plateau: {cfg['monitor']} did not improve for "
                  f"{cfg['reduce_lr_on_plateau']} epochs; learning rate x{cfg['plateau_factor']}")
        if lead and cb.stop and epoch + 1 < cfg["epochs"]:
            print(f"early_stopping: {cfg['monitor']} did not improve for "
                  f"{cfg['early_stopping']} epochs; stopping after epoch {epoch + 1}")
    if tb is not None:
        tb.close()
    if lead and history:
        print(f"run saved in {out} (val_accuracy {history[-1]['val_accuracy']:.4f} after "
              f"epoch {history[-1]['epoch']})", flush=True)
    if distributed:
        # Every rank finishes its collectives before the group goes: without the barrier a rank
        # that is done first can tear gloo down under work still in flight (SIGABRT at exit).
        del ddp
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
