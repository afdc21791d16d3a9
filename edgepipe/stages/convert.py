"""The convert stage: LiteRT models in several formats, each checked against Keras before it counts.

The formats are `edgepipe.targets.converter`'s. Every `.tflite` is loaded in the
LiteRT interpreter and compared with the Keras model on held-out samples: float formats by the largest
absolute difference of the output probabilities, int8 by top-1 agreement. Beside each model: a JSON
sidecar (I/O shape, dtype, scale and zero point, preprocessing, classes, parity) and `labels.txt`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.core.paths import SAFE_NAME
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.targets import litert
from edgepipe.targets.converter import Variant, convert
from edgepipe.targets.sidecar import describe_tflite
from edgepipe.training import nets
from edgepipe.training.modelio import carried_forward, load_model



@dataclasses.dataclass
class Tolerance:
    """Parity thresholds below which conversion fails."""

    float32: float = param(1e-4, "max |keras - tflite| of output probabilities", min=0.0)
    float16: float = param(2e-2, "same, float16 weights", min=0.0)
    dynamic_top1: float = param(0.99, "min top-1 agreement of dynamic-range (int8 weights, float activations) "
                                "with keras", min=0.0, max=1.0)
    int8_top1: float = param(0.98, "min top-1 agreement of int8 with keras", min=0.0, max=1.0)


@dataclasses.dataclass
class ConvertParams:
    """Parameters of the convert stage."""

    variants: list[Variant] = param(["float32", "float16", "dynamic", "int8"], "formats to produce")
    name: str | None = param(None, "file name prefix; default: the name of the model's stage")
    io_type: Literal["int8", "uint8", "float32"] = param("int8", "input/output type of int8 models")
    representative_samples: int = param(500, "train images used to calibrate int8 ranges", min=10)
    parity_samples: int = param(1000, "validation images compared between keras and tflite", min=10)
    tolerance: Tolerance = param(Tolerance(), "parity thresholds")

    def __post_init__(self):
        if self.name is not None and not SAFE_NAME.match(self.name):
            raise ValueError(f"name {self.name!r} is not a usable file-name prefix; fix: use letters, digits, "
                             "_, - and . (not first), no / or ..")


def is_qat(model) -> bool:
    """True for a tfmot quantize-aware model (its layers are Quantize wrappers)."""
    return any(type(layer).__name__.startswith("Quantize") for layer in model.layers)


def run_convert_stage(params: ConvertParams, io: StageIO) -> str:
    """Convert the input model to each variant, check parity, write .tflite + sidecar + labels.txt."""
    ds = load_dataset(io.inputs["data"])
    model = load_model(io.inputs["model"])
    name = params.name or Path(io.inputs["model"]).name
    qat = is_qat(model)
    if qat and set(params.variants) != {"int8"}:
        raise EdgepipeError(f"'{name}' is a QAT model, which converts to int8 only",
                            "set variants: [int8] here and convert its float source for float variants")
    rng = np.random.default_rng(0)
    x_train = ds.splits["train"][0]
    representative = ds.preprocess(x_train[rng.choice(len(x_train), min(params.representative_samples,
                                                                         len(x_train)), replace=False)])
    x_val = ds.preprocess(ds.splits["val"][0][: params.parity_samples])
    reference = model.predict(x_val, batch_size=256, verbose=0)
    fsio.write_text(io.out / "labels.txt", "\n".join(ds.classes) + "\n")
    macs, n_params = nets.count_macs(model), int(model.count_params())
    lines = []
    for variant in params.variants:
        blob = convert(model, variant, representative, params.io_type, name)
        path = io.out / f"{name}_{variant}.tflite"
        path.write_bytes(blob)
        parity = check_parity(path, variant, x_val, reference, params.tolerance, name)
        sidecar = describe_tflite(path, ds, variant=variant, source=Path(io.inputs["model"]).name, qat=qat,
                                  params=n_params, macs=macs, parity=parity, **carried_forward(io.inputs["model"]))
        fsio.write_json(path.with_suffix(".json"), sidecar)
        lines.append(f"{variant} {fsio.human_size(len(blob))}")
    return f"{name}: " + ", ".join(lines)


def check_parity(path: Path, variant: str, x: np.ndarray, reference: np.ndarray, tol: Tolerance, name: str) -> dict:
    """Compare the .tflite with the Keras outputs; raise if below the variant's threshold.

    Float variants must reproduce Keras's probabilities (largest absolute difference). Variants with int8
    weights (dynamic, int8) are judged by top-1 agreement: their largest difference is set by the one most
    borderline input, and varies from run to run at full agreement (benchmarks/README.md).
    """
    out = litert.predict(path, x)
    diff = float(np.max(np.abs(out - reference)))
    agree = float(np.mean(out.argmax(1) == reference.argmax(1)))
    parity = {"samples": len(x), "max_abs_diff": diff, "top1_agreement": agree}
    if variant in ("int8", "dynamic"):
        key = f"{variant}_top1"
        limit = getattr(tol, key)
        ok, what = agree >= limit, f"top-1 agreement {agree:.4f} < {limit}"
    else:
        key = variant
        limit = getattr(tol, key)
        ok, what = diff <= limit, f"max abs difference {diff:.2e} > {limit:.0e}"
    if not ok:
        raise EdgepipeError(f"{name}_{variant}.tflite disagrees with keras: {what} on {len(x)} samples",
                            f"inspect the model, or relax tolerance.{key}")
    return parity


KIND = StageKind(
    name="convert", params=ConvertParams, run=run_convert_stage, inputs={"data": False, "model": False},
    output="tflite", accepts={"data": ("dataset",), "model": ("model",)},
    main_output="labels.txt",
    doc="LiteRT float32/float16/dynamic/int8 models, each checked against keras",
)
