"""Reads a TensorBoard log directory with TensorBoard's own EventAccumulator and prints one JSON
line: {"scalars": {tag: [[step, value], ...]}, "histograms": {tag: [[step, num, min, max], ...]},
"images": {tag: [[step, width, height, PNG bytes], ...]}}.

usage: tb_read.py LOGDIR
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ea = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "histograms": 0, "images": 0})
ea.Reload()
tags = ea.Tags()
print(json.dumps({
    "scalars": {t: [[e.step, e.value] for e in ea.Scalars(t)] for t in tags["scalars"]},
    "histograms": {t: [[e.step, e.histogram_value.num, e.histogram_value.min,
                        e.histogram_value.max] for e in ea.Histograms(t)]
                   for t in tags["histograms"]},
    "images": {t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in ea.Images(t)]
               for t in tags["images"]},
}))
