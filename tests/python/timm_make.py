"""Saves a randomly initialised timm model's state dict and its output on given inputs.

usage: timm_make.py MODEL_NAME WEIGHTS.safetensors INPUTS.safetensors OUTPUTS.safetensors

timm's own initialisation (seeded), then the BN running statistics set to random values, so
that the moving statistics are checked too. INPUTS' `x` is NHWC; timm gets NCHW.
"""
import json
import sys

import timm
import torch
from safetensors.torch import load_file, save_file

torch.manual_seed(0)
torch.set_num_threads(2)
model = timm.create_model(sys.argv[1], pretrained=False)
g = torch.Generator().manual_seed(1)
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
model.eval()
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])
x = load_file(sys.argv[3])["x"].permute(0, 3, 1, 2).contiguous()
with torch.no_grad():
    y = model(x)
save_file({"y": y.contiguous()}, sys.argv[4])
print(json.dumps({"model": sys.argv[1], "parameters": sum(p.numel() for p in model.parameters()), "output_shape": list(y.shape)}))
