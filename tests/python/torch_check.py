"""Loads an exported PyTorch model (DIR/model.py + DIR/weights.safetensors) strictly and runs it.

usage: torch_check.py DIR INPUTS.safetensors OUTPUTS.safetensors

INPUTS holds `x` as NHWC (se-compile's layout); it is fed NCHW. Prints one JSON line with the
parameter and buffer counts; writes the output as `y` (NCHW images back to NHWC).
"""
import importlib.util
import json
import sys

import torch
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)
d = sys.argv[1]
spec = importlib.util.spec_from_file_location("exported_model", f"{d}/model.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
classes = [v for k, v in vars(mod).items() if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == "exported_model"]
Model = classes[-1]  # the model class is written last
model = Model()
missing = model.load_state_dict(load_file(f"{d}/weights.safetensors"), strict=True)
model.eval()
params = sum(p.numel() for p in model.parameters())
stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
counters = sum(1 for n, _ in model.named_buffers() if n.endswith("num_batches_tracked"))
x = load_file(sys.argv[2])["x"]
if x.dim() == 4:
    x = x.permute(0, 3, 1, 2).contiguous()
with torch.no_grad():
    y = model(x)
if y.dim() == 4:
    y = y.permute(0, 2, 3, 1)
save_file({"y": y.contiguous().float()}, sys.argv[3])
print(json.dumps({"class": Model.__name__, "parameters": params, "bn_statistics": stats, "bn_counters": counters, "output_shape": list(y.shape)}))
