#!/usr/bin/env python3
"""The seed's SE-ResNet-50 (models/se_resnet50.yaml: stride on the first 1x1, conv bias,
ChannelSE r=16 with biased 1x1 convs, 17 classes) in PyTorch on the CPU, timed like
`se-compile bench`: Adam train steps and inference batches on random data.
Run by hand, not in CI:  python3 bench/torch_se_resnet50.py --input 64 --batch-size 8 --steps 5
"""
import argparse, time
import torch
import torch.nn as nn


class SE(nn.Module):
    def __init__(self, c, r=16):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Block(nn.Module):
    def __init__(self, cin, f, stride, project):
        super().__init__()
        bn = lambda c: nn.BatchNorm2d(c, eps=1.001e-5, momentum=0.01)
        self.short = nn.Sequential(nn.Conv2d(cin, 4 * f, 1, stride), bn(4 * f)) if project else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(cin, f, 1, stride), bn(f), nn.ReLU(),
            nn.Conv2d(f, f, 3, 1, 1), bn(f), nn.ReLU(),
            nn.Conv2d(f, 4 * f, 1), bn(4 * f), SE(4 * f))

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def se_resnet50(classes=17):
    layers = [nn.ZeroPad2d(3), nn.Conv2d(3, 64, 7, 2), nn.BatchNorm2d(64, eps=1.001e-5), nn.ReLU(), nn.ZeroPad2d(1), nn.MaxPool2d(3, 2)]
    cin = 64
    for f, n, s in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(n):
            layers.append(Block(cin, f, s if i == 0 else 1, i == 0))
            cin = 4 * f
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", choices=["train", "infer", "both"], default="both")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = se_resnet50()
    print("params", sum(p.numel() for p in m.parameters()))
    x = torch.rand(a.batch_size, 3, a.input, a.input)
    y = torch.arange(a.batch_size) % 17
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(m(x), y).backward()
        opt.step()

    print(f"torch {torch.__version__}, {a.threads} threads, se_resnet50 at {a.input}x{a.input}, batch {a.batch_size}")
    if a.mode in ("train", "both"):
        m.train(); step()
        t = time.perf_counter()
        for _ in range(a.steps):
            step()
        tr = (time.perf_counter() - t) / a.steps
        print(f"train:     {a.batch_size / tr:.1f} images/s ({tr * 1e3:.1f} ms/step)")
    if a.mode in ("infer", "both"):
        m.eval()
        with torch.no_grad():
            m(x)
            t = time.perf_counter()
            for _ in range(a.steps):
                m(x)
            inf = (time.perf_counter() - t) / a.steps
        print(f"inference: {a.batch_size / inf:.1f} images/s ({inf * 1e3:.1f} ms/batch)")


if __name__ == "__main__":
    main()
