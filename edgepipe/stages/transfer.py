"""The transfer stage: a pretrained backbone, a new head trained on frozen features, then fine-tuning.

The backbone is one of `tf_keras.applications` (weights `imagenet`, a local file or none) or another
stage's model cut at a named layer, a backbone edgepipe trained itself. Phase 1 freezes it and trains the
new head (pooling, dropout, dense); phase 2, if `fine_tune.epochs > 0`, unfreezes the top of the backbone
and trains on at a lower learning rate. BatchNormalization layers stay frozen in phase 2: a frozen
BatchNormalization runs in inference mode in tf_keras, so its ImageNet (or MNIST) statistics are not
overwritten by small fine-tuning batches (the Keras transfer-learning guide's advice).

The model is built in `edgepipe.training.backbones`: one flat functional graph (tfmot's quantize_model
refuses nested models) with the input adaptation inside it, so a device feeds exactly what the data
stage's sidecar says: an optional Resizing layer and a fixed 1x1 convolution, `input_adapter`, that maps
the data stage's normalised input to what the backbone was trained on. It is recorded under
`input_adapter` in metrics.json and in the sidecars.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import MAX_EPOCHS, param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.tasks import classifiers_only
from edgepipe.training.backbones import (
    BACKBONES,
    Head,
    adapt_batchnorm,
    add_head,
    application_backbone,
    stage_backbone,
    unfreeze,
)
from edgepipe.training.evaluate import evaluate
from edgepipe.training.fit import EarlyStopping, Fit, Schedule, fit, seed_everything
from edgepipe.training.history import read_history, write_history
from edgepipe.training.outputs import write_training_outputs

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FineTune(Fit):
    """Phase 2: the training knobs again, with fine-tuning defaults, and which layers to unfreeze."""

    epochs: int = param(
        0, f"fine-tuning epochs; 0 stops after the head (phase 1) (at most {MAX_EPOCHS})", min=0, max=MAX_EPOCHS
    )
    lr: float = param(1e-4, "learning rate, lower than the head's so pretrained features move little", min=0.0, max=1.0)
    schedule: Schedule = param(Schedule(kind="constant"), "learning-rate schedule")
    early_stopping: EarlyStopping = param(EarlyStopping(patience=3), "early stopping")
    unfreeze_top: int | None = param(
        None, "unfreeze the top N backbone layers (null with unfreeze_from null: all of them)", min=1
    )
    unfreeze_from: str | None = param(None, "unfreeze from this backbone layer (by name) to the top")

    def __post_init__(self):
        if self.unfreeze_top is not None and self.unfreeze_from is not None:
            raise ValueError("set unfreeze_top or unfreeze_from, not both; fix: drop one of them")


@dataclasses.dataclass
class TransferParams(Fit):
    """Parameters of the transfer stage. The training knobs at the top level are phase 1's (the head)."""

    backbone: str = param(
        "MobileNetV2",
        f"a tf_keras.applications name ({', '.join(BACKBONES)}), or 'stage' "
        "for the model of the stage given as input 'backbone'",
    )
    weights: str | None = param(
        "imagenet",
        "imagenet (downloaded once to ~/.keras/models), a path to a "
        "no-top weights file, or null for random initialisation (applications only)",
    )
    alpha: float = param(1.0, "width multiplier (MobileNet backbones only)", min=0.05, max=2.0)
    input_size: list[int] | None = param(
        None,
        "[height, width] the backbone sees; null: the data's size. "
        "A different size adds a Resizing layer, which QAT cannot quantize: "
        "prefer the data stage's image_size for models that go through QAT",
    )
    cut_at: str | None = param(
        None,
        "stage backbones: the layer whose output is the feature map; null: the "
        "input of the model's pooling/flatten layer",
    )
    batchnorm: Literal["frozen", "adapt"] = param(
        "frozen",
        "frozen: keep the backbone's BatchNorm statistics; adapt: first re-estimate them on this "
        "train split (AdaBN), for a backbone trained on different-looking data. Frozen in training either way",
    )
    head: Head = param(Head(), "the new classifier")
    fine_tune: FineTune = param(FineTune(), "phase 2 (fine-tuning)")
    epochs: int = param(10, f"phase 1 (head) epochs (at most {MAX_EPOCHS})", min=1, max=MAX_EPOCHS)
    lr: float = param(1e-3, "phase 1 (head) learning rate", min=0.0, max=10.0)

    def __post_init__(self):
        if self.backbone != "stage" and self.backbone not in BACKBONES:
            raise ValueError(
                f"backbone {self.backbone!r} is not known; fix: use one of {', '.join(BACKBONES)} or 'stage'"
            )
        if self.backbone != "stage" and self.cut_at is not None:
            raise ValueError(
                "cut_at applies to backbone: stage only (applications are cut below their top); fix: drop cut_at"
            )
        if self.backbone in BACKBONES and not BACKBONES[self.backbone].alpha and self.alpha != 1.0:
            raise ValueError(f"{self.backbone} has no width multiplier; fix: remove alpha")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise ValueError(
                "input_size must be [height, width] of at least 1; fix: e.g. input_size: [96, 96], "
                "or null for the data's size"
            )


def run_transfer_stage(params: TransferParams, io: StageIO) -> str:
    """Build backbone + head, train the head on frozen features, fine-tune, evaluate; outputs as for train."""
    ds = load_dataset(io.inputs["data"])
    classifiers_only(ds.info, "transfer learning")  # its heads are a classifier's
    if params.backbone == "stage":
        if "backbone" not in io.inputs:
            raise EdgepipeError("backbone: stage needs an input stage", "add inputs: {backbone: <stage name>}")
        inputs, features, layers, adapter = stage_backbone(ds, io.inputs["backbone"], params.cut_at)
        source = Path(io.inputs["backbone"]).name
    else:
        if "backbone" in io.inputs:
            raise EdgepipeError(
                f"an input backbone stage is given but backbone is {params.backbone}",
                "set backbone: stage, or remove inputs.backbone",
            )
        inputs, features, layers, adapter = application_backbone(
            params.backbone, ds, weights=params.weights, alpha=params.alpha, input_size=params.input_size
        )
        source = f"{params.backbone} ({params.weights or 'random'} weights)"
    seed_everything(params.seed)
    model = add_head(inputs, features, params.head, len(ds.classes), f"{params.backbone}_transfer")
    if params.batchnorm == "adapt" and not (io.work / "head_weights.h5").is_file():
        n = adapt_batchnorm(layers, model, ds, max(params.batch_size, 64))
        log.info("AdaBN: %d BatchNormalization layers re-estimated on %d train images", n, len(ds.splits["train"][1]))
    for layer in layers:
        layer.trainable = False

    phases = [("head", params)] + ([("fine_tune", params.fine_tune)] if params.fine_tune.epochs else [])
    rows, phase_accuracy = [], {}
    for phase, knobs in phases:
        done = io.work / f"{phase}_weights.h5"  # a finished phase survives a crash in the next one
        phase_io = StageIO(
            io.inputs, out=io.work / phase, work=io.work / phase, logs=io.logs / phase if io.logs is not None else None
        )
        phase_io.out.mkdir(parents=True, exist_ok=True)
        if phase == "fine_tune":
            n = unfreeze(layers, top=knobs.unfreeze_top, from_layer=knobs.unfreeze_from)
            log.info("fine-tuning: %d backbone layers unfrozen (BatchNormalization kept frozen)", n)
        if done.is_file():
            model.load_weights(done)
            log.info("phase %s: finished before a crash, reusing its weights", phase)
        else:
            fit(model, ds, knobs, phase_io)
            tmp = done.with_suffix(".tmp.h5")  # legacy HDF5: a name ending .weights.h5 means the Keras 3 format
            model.save_weights(tmp)
            tmp.replace(done)
        phase_rows = read_history(phase_io.out / "history.csv")
        rows += [
            {"epoch": str(len(rows) + i), "phase": phase, **{k: v for k, v in r.items() if k != "epoch"}}
            for i, r in enumerate(phase_rows)
        ]
        phase_accuracy[phase] = evaluate(model, ds, "test")["accuracy"]

    write_history(rows, io.out / "history.csv")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # the last phase's knobs: whether its early stopping kept a best epoch is what the doctor must know
    write_training_outputs(
        model,
        ds,
        io,
        phases[-1][1],
        title=source,
        extra={
            "backbone": source,
            "input_adapter": adapter,
            "phase_test_accuracy": phase_accuracy,
            "trainable_params_last_phase": trainable,
        },
    )
    text = ", ".join(f"{k} {100 * v:.2f} %" for k, v in phase_accuracy.items())
    return f"test accuracy after {text}"


def weights_files(params: TransferParams) -> list[Path]:
    """A local weights file, which the key hashes so that replacing it makes the stage stale (ImageNet's
    files are fixed by their names; a missing file is left to the stage, which says so)."""
    if params.weights in (None, "imagenet") or not Path(params.weights).is_file():
        return []
    return [Path(params.weights)]


KIND = StageKind(
    name="transfer",
    params=TransferParams,
    run=run_transfer_stage,
    inputs={"data": False, "backbone": False},
    output="model",
    accepts={"data": ("dataset",), "backbone": ("model",)},
    check_task=lambda p, task: classifiers_only({"task": task}, "transfer learning"),
    optional_inputs=("backbone",),
    deps=weights_files,
    main_output="model.h5",
    doc="transfer learning: a pretrained backbone, a new head on frozen features, then fine-tuning",
)
