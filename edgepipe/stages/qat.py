"""The qat stage: quantization-aware fine-tuning with tensorflow-model-optimization.

`quantize_model` returns a new model with fake-quantization on weights and activations; a few epochs at
a low learning rate let the weights adapt to int8 before conversion. The converter then takes the
learned ranges instead of calibrating them.
"""

from __future__ import annotations

import dataclasses
import re

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import MAX_EPOCHS, param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.training import compress
from edgepipe.training.fit import EarlyStopping, Fit, Schedule, fit, seed_everything
from edgepipe.training.modelio import carried_forward, load_model
from edgepipe.training.outputs import test_figure, write_training_outputs


@dataclasses.dataclass
class QatParams(Fit):
    """Parameters of the qat stage (the training knobs, with fine-tuning defaults)."""

    lr: float = param(1e-4, "fine-tuning learning rate (low: the float weights are already good)", min=0.0, max=1.0)
    epochs: int = param(2, f"fine-tuning epochs (at most {MAX_EPOCHS})", min=1, max=MAX_EPOCHS)
    schedule: Schedule = param(Schedule(kind="constant"), "learning-rate schedule")
    early_stopping: EarlyStopping = param(EarlyStopping(enabled=False), "early stopping")
    preserve: compress.Preserve = param(
        "none",
        "keep what an earlier stage made of the weights through QAT: "
        "sparsity (a pruned model: PQAT), clusters (CQAT) or both (PCQAT)",
    )


def quantize(model, preserve: compress.Preserve = "none"):
    """tfmot.quantize_model(model) (or its collaborative scheme for `preserve`), with tfmot's error turned into
    one line naming the layer."""
    from edgepipe.core._tf import tf  # noqa: F401, I001 - first: TensorFlow's import noise silenced

    import tensorflow_model_optimization as tfmot

    try:
        if preserve != "none":
            qk = tfmot.quantization.keras
            return qk.quantize_apply(qk.quantize_annotate_model(model), compress.quantize_scheme(preserve))
        return tfmot.quantization.keras.quantize_model(model)
    except (ValueError, RuntimeError, TypeError) as e:
        text = " ".join(str(e).split())
        layer = re.search(r"Layer ([\w/.-]+):<class", text) or re.search(r"layer '([\w/.-]+)'", text)
        where = f"layer '{layer.group(1)}'" if layer else f"model '{model.name}'"
        raise EdgepipeError(
            f"QAT cannot quantize {where}: {text[:200]}",
            "use Conv2D/DepthwiseConv2D without activation -> BatchNormalization -> ReLU, "
            "or annotate that layer with a custom QuantizeConfig",
        ) from None


def run_qat_stage(params: QatParams, io: StageIO) -> str:
    """Quantize the input model for training, fine-tune it, evaluate it, save it."""
    ds = load_dataset(io.inputs["data"])
    float_model = load_model(io.inputs["model"])
    compress.check_preserve(float_model, params.preserve)
    seed_everything(params.seed)
    model = quantize(float_model, params.preserve)
    fit(model, ds, params, io)
    model = compress.strip_cqat(model, params.preserve)
    kept = {"preserve": params.preserve} if params.preserve != "none" else {}
    metrics = write_training_outputs(model, ds, io, params, extra={**carried_forward(io.inputs["model"]), **kept})
    return f"QAT{'' if not kept else ' (preserving ' + params.preserve + ')'} {test_figure(metrics)} ({metrics['epochs_run']} epochs)"


KIND = StageKind(
    name="qat",
    params=QatParams,
    run=run_qat_stage,
    inputs={"data": False, "model": False},
    output="model",
    accepts={"data": ("dataset",), "model": ("model",)},
    main_output="model.h5",
    doc="quantization-aware fine-tuning (tfmot) of a trained model",
)
