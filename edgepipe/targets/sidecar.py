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
        return {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero)}

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
