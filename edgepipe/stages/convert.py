"""The convert stage: LiteRT models in several formats, each checked against Keras before it counts.

The formats are `edgepipe.export.converter`'s. Every `.tflite` is loaded in the
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
from edgepipe.export import quant_debug
from edgepipe.export.converter import QUANTIZED, Granularity, Variant, convert
from edgepipe.export.sidecar import describe_tflite
from edgepipe.targets import litert
from edgepipe.tasks import Task, task_of
from edgepipe.training import nets
from edgepipe.training.modelio import carried_forward, load_model


@dataclasses.dataclass
class Tolerance:
    """Parity thresholds below which conversion fails."""

    float32: float = param(1e-4, "max |keras - tflite| of output probabilities", min=0.0)
    float16: float = param(2e-2, "same, float16 weights", min=0.0)
    dynamic_top1: float = param(
        0.99, "min top-1 agreement of dynamic-range (int8 weights, float activations) with keras", min=0.0, max=1.0
    )
    int8_top1: float = param(0.98, "min top-1 agreement of int8 with keras", min=0.0, max=1.0)
    int16x8_top1: float = param(0.99, "min top-1 agreement of int16x8 with keras", min=0.0, max=1.0)


@dataclasses.dataclass
class ConvertParams:
    """Parameters of the convert stage."""

    variants: list[Variant] = param(["float32", "float16", "dynamic", "int8"], "formats to produce")
    name: str | None = param(None, "file name prefix; default: the name of the model's stage")
    io_type: Literal["int8", "uint8", "float32"] = param("int8", "input/output type of int8 models")
    representative_samples: int = param(500, "train images used to calibrate int8 ranges", min=10)
    parity_samples: int = param(1000, "validation images compared between keras and tflite", min=10)
    tolerance: Tolerance = param(Tolerance(), "parity thresholds")
    granularity: Granularity = param(
        "per_channel",
        "int8/int16x8 weight scales: one per output channel, or "
        "per_tensor (what several NPUs and older accelerators take)",
    )
    debug: bool = param(
        False,
        "run TensorFlow's quantization debugger on the int8 model: quant_debug.csv/.png, "
        "the layers ranked by their own quantization error",
    )
    debug_samples: int = param(200, "validation images the debugger runs", min=1)
    keep_float: list[str] = param(
        [], "selective quantization: these layers stay float in the int8 model (reported as int8 (mixed))"
    )
    keep_float_worst: int = param(0, "keep the debugger's N worst layers float (runs the debugger)", min=0)

    def __post_init__(self):
        if (self.keep_float or self.keep_float_worst) and "int8" not in self.variants:
            raise ValueError(
                "keep_float and keep_float_worst shape the int8 model, which variants does not list; "
                "fix: add int8 to variants"
            )
        if self.keep_float and self.keep_float_worst:
            raise ValueError("keep_float and keep_float_worst both choose the float layers; fix: give one")
        if self.name is not None and not SAFE_NAME.match(self.name):
            raise ValueError(
                f"name {self.name!r} is not a usable file-name prefix; fix: use letters, digits, "
                "_, - and . (not first), no / or .."
            )


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
        raise EdgepipeError(
            f"'{name}' is a QAT model, which converts to int8 only",
            "set variants: [int8] here and convert its float source for float variants",
        )
    rng = np.random.default_rng(0)
    x_train = ds.splits["train"][0]
    representative = ds.preprocess(
        x_train[rng.choice(len(x_train), min(params.representative_samples, len(x_train)), replace=False)]
    )
    x_val = ds.preprocess(ds.splits["val"][0][: params.parity_samples])
    reference = model.predict(x_val, batch_size=256, verbose=0)
    fsio.write_text(io.out / "labels.txt", "\n".join(ds.classes) + "\n")
    macs, n_params = nets.count_macs(model), int(model.count_params())
    keep, debugged = _float_layers(model, params, representative, x_val, name, io.out)
    lines = []
    for variant in params.variants:
        quant = {"granularity": params.granularity} if variant in QUANTIZED else {}
        if variant == "int8" and keep:
            blob, nodes = quant_debug.convert_keeping_float(
                model, representative, x_val, params.io_type, keep, params.granularity, name
            )
            quant.update(float_layers=keep, float_tensors=len(nodes))
        else:
            blob = convert(model, variant, representative, params.io_type, name, params.granularity)
        path = io.out / f"{name}_{variant}.tflite"
        path.write_bytes(blob)
        parity = check_parity(path, variant, x_val, reference, params.tolerance, name, task_of(ds.info), ds.info)
        sidecar = describe_tflite(
            path,
            ds,
            variant=variant,
            source=Path(io.inputs["model"]).name,
            qat=qat,
            params=n_params,
            macs=macs,
            parity=parity,
            **({"quantization": quant} if quant else {}),
            **carried_forward(io.inputs["model"]),
        )
        fsio.write_json(path.with_suffix(".json"), sidecar)
        lines.append(f"{variant}{' (mixed)' if variant == 'int8' and keep else ''} {fsio.human_size(len(blob))}")
    if debugged:
        top = debugged[0]
        lines.append(
            f"worst int8 layer {top['layer']} ({100 * top['unresolved_channels']:.0f} % of its channels "
            f"unresolved, relative error {top['relative_rmse']:.3f})"
        )
    return f"{name}: " + ", ".join(lines)


def _float_layers(model, params: ConvertParams, representative, x_val, name: str, out: Path):
    """The layers to keep float and the debugger's rows (run when asked for, or to find the worst layers)."""
    rows = []
    if params.debug or params.keep_float_worst:
        samples = x_val[: params.debug_samples]
        rows = quant_debug.debug(model, representative, samples, params.io_type, params.granularity)
        quant_debug.write(
            rows, out / "quant_debug.csv", f"{name}: per-layer int8 error on {len(samples)} validation images"
        )
    keep = list(params.keep_float)
    if params.keep_float_worst:
        keep = quant_debug.worst_layers(rows, params.keep_float_worst)
    return keep, rows


def check_parity(
    path: Path, variant: str, x: np.ndarray, reference: np.ndarray, tol: Tolerance, name: str, task: Task, info: dict
) -> dict:
    """Compare the .tflite with the Keras outputs; raise if below the variant's threshold.

    Float variants must reproduce Keras's outputs (largest absolute difference). Variants with int8
    weights (dynamic, int8) are judged by the agreement of their decoded outputs (the task's: top-1 for a
    classifier): their largest difference is set by the one most borderline input, and varies from run to
    run at full agreement (benchmarks/README.md).
    """
    out = litert.predict(path, x)
    diff = float(np.max(np.abs(out - reference)))
    agree = task.agreement(reference, out, info)
    parity = {"samples": len(x), "max_abs_diff": diff, task.agreement_name: agree}
    if variant in ("int8", "dynamic", "int16x8"):
        key = f"{variant}_top1"
        limit = getattr(tol, key)
        ok, what = agree >= limit, f"{task.agreement_label} {agree:.4f} < {limit}"
    else:
        key = variant
        limit = getattr(tol, key)
        ok, what = diff <= limit, f"max abs difference {diff:.2e} > {limit:.0e}"
    if not ok:
        raise EdgepipeError(
            f"{name}_{variant}.tflite disagrees with keras: {what} on {len(x)} samples",
            f"inspect the model, or relax tolerance.{key}",
        )
    return parity


KIND = StageKind(
    name="convert",
    params=ConvertParams,
    run=run_convert_stage,
    inputs={"data": False, "model": False},
    output="tflite",
    accepts={"data": ("dataset",), "model": ("model",)},
    main_output="labels.txt",
    doc="LiteRT float32/float16/dynamic/int8/int16x8 models, each checked against keras (int8 per tensor or mixed)",
)
