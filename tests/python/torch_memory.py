"""Measures what the exported model.py allocates on the CPU in one Adam training step and one
inference batch, with torch.profiler (profile_memory=True): the allocator's events in time order,
summed, give the peak above what was live when the step began. Prints one JSON line.

usage: torch_memory.py EXPORT_DIR BATCH H W C [--cuda] [--bf16]

With --cuda (the GPU machine's check, scripts/gpu-check.sh): the same step on the GPU, measured
with torch.cuda.max_memory_allocated above what was allocated when the step began.
With --bf16: the forward and the loss under autocast(bfloat16), as timm's --amp-dtype bfloat16
and scripts/torch_bench.py run it (the parameters and Adam's state stay float32).
"""
import importlib.util
import json
import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile


def peak_above_start(prof):
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def main():
    out_dir, n, h, w, c = sys.argv[1], *map(int, sys.argv[2:6])
    cuda = "--cuda" in sys.argv[6:]
    bf16 = "--bf16" in sys.argv[6:]
    dev = torch.device("cuda" if cuda else "cpu")
    spec = importlib.util.spec_from_file_location("model", f"{out_dir}/model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cls = [v for k, v in vars(mod).items() if isinstance(v, type) and issubclass(v, torch.nn.Module)
           and v.__module__ == "model"][-1]
    torch.manual_seed(0)
    net = cls().to(dev)
    if hasattr(net, "softmax_output"):
        net.softmax_output = False
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    y = (torch.arange(n) % 2).to(dev)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        x = torch.rand(n, c, h, w, device=dev)
        with autocast():
            out = net(x)
            loss = F.cross_entropy(out, y, reduction="sum")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    net.train()
    step()  # makes Adam's state and the gradients, as in every later step
    if cuda:
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        print(json.dumps({"train_step_bytes": torch.cuda.max_memory_allocated() - start,
                          "torch": torch.__version__}))
        return
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    train = peak_above_start(prof)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in net.buffers())
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t))
    grads = sum(p.grad.numel() * p.grad.element_size() for p in net.parameters()
                if p.grad is not None)
    net.eval()
    # One autocast per batch, as timm's validate runs it (its cache of weight casts is the
    # batch's own).
    with torch.no_grad():
        with autocast():
            net(torch.rand(n, c, h, w))
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            with autocast():
                net(torch.rand(n, c, h, w))
    infer = peak_above_start(prof)
    print(json.dumps({"train_step_bytes": train, "infer_step_bytes": infer, "param_bytes": params,
                      "buffer_bytes": buffers, "optimizer_bytes": state, "grad_bytes": grads,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


main()
