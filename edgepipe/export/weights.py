"""The weight tensors of a `.tflite`, read back: what pruning and clustering left in the exported file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core.weights import weight_stats_of
from edgepipe.targets import litert

WEIGHTED_OPS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3}  # op -> its filter's output-channel axis


def tflite_weight_stats(path: Path) -> list[dict]:
    """`weight_stats_of` for each filter of a `.tflite` (the weights input of every conv, depthwise conv and
    fully-connected operator), read back through the LiteRT interpreter."""
    interp = litert.interpreter(path)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():  # the interpreter's only per-op listing
        if op["op_name"] not in WEIGHTED_OPS or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        w = np.asarray(interp.get_tensor(index))
        out.append(weight_stats_of(details[index]["name"], w, out_axis=WEIGHTED_OPS[op["op_name"]]))
    return out
