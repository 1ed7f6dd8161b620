"""Checks an exported ONNX model with ONNX's own checker and runs it with onnxruntime.

usage: onnx_check.py MODEL.onnx [INPUTS.safetensors OUTPUTS.safetensors]

Prints one JSON line: the checker's verdict, the opset, the input and output names and shapes,
and the metadata keys. With inputs (tensor `x`, in the model's input layout), writes the
model's output as tensor `y`.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file, save_file

path = sys.argv[1]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
info = {
    "checked": True,
    "opset": model.opset_import[0].version,
    "inputs": [(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]) for i in model.graph.input],
    "outputs": [(o.name, [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]) for o in model.graph.output],
    "metadata": sorted(p.key for p in model.metadata_props),
    "nodes": len(model.graph.node),
}
if len(sys.argv) > 3:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = load_file(sys.argv[2])["x"].astype(np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    save_file({"y": np.ascontiguousarray(y, dtype=np.float32)}, sys.argv[3])
    info["output_shape"] = list(y.shape)
print(json.dumps(info))
