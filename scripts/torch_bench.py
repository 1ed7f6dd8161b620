"""PyTorch + timm `seresnet50` on the GPU, the baseline of scripts/gpu-speed.sh.

Same setting as `se-compile bench`: Adam, random inputs, 17 classes; median of 20 steps after
5 warm-up steps. fp32 runs with TF32 off (PyTorch's default for convolutions is on, so it is
turned off explicitly); bf16 runs under autocast with channels_last, as timm's benchmark does.
Prints one line: `pytorch <precision> <input> <batch>: train T img/s, inference I img/s,
train max reserved R GB, max allocated A GB`.
Usage: python3 torch_bench.py --input 224 --batch 64 [--precision fp32|bf16]
"""
import argparse
import statistics
import time

import timm
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--input", type=int, default=224)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
ap.add_argument("--steps", type=int, default=20)
a = ap.parse_args()

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
bf16 = a.precision == "bf16"
fmt = torch.channels_last if bf16 else torch.contiguous_format
m = timm.create_model("seresnet50", num_classes=17).cuda().to(memory_format=fmt)
opt = torch.optim.Adam(m.parameters(), 1e-4)
x = torch.randn(a.batch, 3, a.input, a.input, device="cuda").to(memory_format=fmt)
y = torch.randint(0, 17, (a.batch,), device="cuda")
loss_fn = torch.nn.CrossEntropyLoss()


def train_step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(m(x), y)
    loss.backward()
    opt.step()


def infer_step():
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        m(x)


def median_seconds(f):
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(a.steps):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


m.train()
torch.cuda.reset_peak_memory_stats()
tr = a.batch / median_seconds(train_step)
reserved = torch.cuda.max_memory_reserved() / 1e9
allocated = torch.cuda.max_memory_allocated() / 1e9
m.eval()
inf = a.batch / median_seconds(infer_step)
print(
    f"pytorch {a.precision} {a.input} {a.batch}: train {tr:.1f} img/s, inference {inf:.1f} img/s, "
    f"train max reserved {reserved:.2f} GB, max allocated {allocated:.2f} GB "
    f"({torch.cuda.get_device_name()}, torch {torch.__version__}, timm {timm.__version__}, "
    f"cuDNN {torch.backends.cudnn.version()})"
)
