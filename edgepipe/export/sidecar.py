"""The JSON sidecar beside every `.tflite` a convert stage writes, and how other stages read them.

A sidecar says what an app or firmware needs to feed the model and read its output (I/O shape, dtype,
scale and zero point, the preprocessing, the classes) and where the model came from (variant, source
stage, QAT, parameters, MACs, parity with Keras).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.datasets.artifact import Dataset
from edgepipe.targets import litert


def describe_tflite(path: Path, ds: Dataset, **extra) -> dict:
    """The sidecar: what an app or firmware needs to feed the model and read its output."""
    interp = litert.interpreter(path)
    din, dout = litert.io_details(interp)

    def tensor(d):
        scale, zero = d["quantization"]
        return {
            "shape": [int(s) for s in d["shape"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(scale),
            "zero_point": int(zero),
        }

    return {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "sha256": fsio.sha256_file(path),
        "input": tensor(din),
        "output": tensor(dout),
        "preprocessing": ds.info["preprocessing"],
        "classes": ds.classes,
        **extra,
    }


def sidecars(stage_dir: Path) -> list[dict]:
    """The sidecars of a convert stage's output, in file order."""
    return [json.loads(p.read_text()) for p in sorted(Path(stage_dir).glob("*.json"))]


def tflite_facts(path: Path) -> dict:
    """What a sidecar says about a `.tflite` that edgepipe did not convert (an imported file), read from the
    file itself: its variant, parameters and MACs.

    The variant: int8 when the input is integer, float16 or dynamic when float weights are stored as
    float16 or int8, else float32. Parameters count the elements of the constant tensors the operators
    read (weights, biases); MACs those of Conv2D, DepthwiseConv2D and FullyConnected, as for a Keras model.
    """
    from edgepipe.targets.lint import read_graph

    ops, tensors, ins, _ = read_graph(path)
    produced = {o for op in ops for o in op.outputs}
    constants = {i for op in ops for i in op.inputs if i not in produced and i not in ins}
    size = lambda t: int(np.prod(tensors[t]["shape"], dtype=np.int64))  # noqa: E731
    dtypes = {np.dtype(tensors[t]["dtype"]).name for t in constants}
    integer_input = any(np.dtype(tensors[i]["dtype"]).kind in "iu" for i in ins)
    variant = (
        "int8" if integer_input else "float16" if "float16" in dtypes else "dynamic" if "int8" in dtypes else "float32"
    )
    macs = 0
    for op in ops:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(op.inputs) > 1:
            out = tensors[op.outputs[0]]["shape"]
            w = tensors[op.inputs[1]]["shape"]  # conv [out, kh, kw, in], depthwise [1, kh, kw, out], FC [out, in]
            if op.name == "CONV_2D":
                per_output = int(np.prod(w[1:]))
            elif op.name == "DEPTHWISE_CONV_2D":
                per_output = int(w[1] * w[2])
            else:
                per_output = int(w[-1])
            macs += int(np.prod(out[1:], dtype=np.int64)) * per_output
    return {"variant": variant, "params": sum(size(t) for t in constants), "macs": macs}
