"""The transfer stage: a pretrained backbone, a new head trained on frozen features, then fine-tuning.

The backbone is one of `tf_keras.applications` (weights `imagenet`, a local file or none) or another
stage's model cut at a named layer, a backbone edgepipe trained itself. Phase 1 freezes it and trains the
new head (pooling, dropout, dense); phase 2, if `fine_tune.epochs > 0`, unfreezes the top of the backbone
and trains on at a lower learning rate. BatchNormalization layers stay frozen in phase 2: a frozen
BatchNormalization runs in inference mode in tf_keras, so its ImageNet (or MNIST) statistics are not
overwritten by small fine-tuning batches (the Keras transfer-learning guide's advice).

The model stays one flat functional graph (the backbone is built on the model's own input tensor, not
nested as a sub-model), because tfmot's quantize_model refuses nested models.

Input adaptation lives inside the model, so a device feeds exactly what the data stage's sidecar says:
an optional Resizing layer and a fixed 1x1 convolution, `input_adapter`, that maps the data stage's
normalised input to what the backbone was trained on (grayscale -> RGB, RGB -> BGR for ResNet50,
the backbone's own scaling). It is recorded under `input_adapter` in metrics.json and in the sidecars.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import Dataset, load_dataset
from edgepipe.training.evaluate import evaluate
from edgepipe.training.fit import EarlyStopping, Fit, Schedule, fit, seed_everything
from edgepipe.training.history import read_history, write_history
from edgepipe.training.modelio import load_model
from edgepipe.training.outputs import write_training_outputs

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A tf_keras.applications backbone and what its weights expect as input.

    Attributes:
        preprocessing: `tf` (pixel/127.5 - 1), `caffe` (BGR, pixel minus the ImageNet mean) or `pixels`
            (0..255: the application rescales inside itself).
        alpha: the builder takes a width multiplier.
        builder_args: fixed keyword arguments for the builder.
    """

    preprocessing: Literal["tf", "caffe", "pixels"]
    alpha: bool
    builder_args: tuple[tuple[str, Any], ...] = ()


BACKBONES: dict[str, Backbone] = {
    "MobileNetV2": Backbone("tf", alpha=True),
    # include_preprocessing=False: the Rescaling layer it would add cannot be quantized by tfmot.
    "MobileNetV3Small": Backbone("tf", alpha=True, builder_args=(("include_preprocessing", False),)),
    "MobileNetV3Large": Backbone("tf", alpha=True, builder_args=(("include_preprocessing", False),)),
    "EfficientNetB0": Backbone("pixels", alpha=False),
    "ResNet50": Backbone("caffe", alpha=False),
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclasses.dataclass
class Head:
    """The new classifier on top of the backbone's features."""

    pooling: Literal["avg", "max", "flatten"] = param("avg", "how the feature map becomes a vector")
    dropout: float = param(0.2, "dropout before the logits", min=0.0, max=0.9)
    units: int = param(0, "a hidden Dense+ReLU layer of this width before the logits; 0 for none", min=0)


@dataclasses.dataclass
class FineTune(Fit):
    """Phase 2: the training knobs again, with fine-tuning defaults, and which layers to unfreeze."""

    epochs: int = param(0, "fine-tuning epochs; 0 stops after the head (phase 1)", min=0)
    lr: float = param(1e-4, "learning rate, lower than the head's so pretrained features move little",
                      min=0.0, max=1.0)
    schedule: Schedule = param(Schedule(kind="constant"), "learning-rate schedule")
    early_stopping: EarlyStopping = param(EarlyStopping(patience=3), "early stopping")
    unfreeze_top: int | None = param(None, "unfreeze the top N backbone layers (null with unfreeze_from "
                                     "null: all of them)", min=1)
    unfreeze_from: str | None = param(None, "unfreeze from this backbone layer (by name) to the top")

    def __post_init__(self):
        if self.unfreeze_top is not None and self.unfreeze_from is not None:
            raise ValueError("set unfreeze_top or unfreeze_from, not both; fix: drop one of them")


@dataclasses.dataclass
class TransferParams(Fit):
    """Parameters of the transfer stage. The training knobs at the top level are phase 1's (the head)."""

    backbone: str = param("MobileNetV2", f"a tf_keras.applications name ({', '.join(BACKBONES)}), or 'stage' "
                          "for the model of the stage given as input 'backbone'")
    weights: str | None = param("imagenet", "imagenet (downloaded once to ~/.keras/models), a path to a "
                                "no-top weights file, or null for random initialisation (applications only)")
    alpha: float = param(1.0, "width multiplier (MobileNet backbones only)", min=0.05, max=2.0)
    input_size: list[int] | None = param(None, "[height, width] the backbone sees; null: the data's size. "
                                         "A different size adds a Resizing layer, which QAT cannot quantize: "
                                         "prefer the data stage's image_size for models that go through QAT")
    cut_at: str | None = param(None, "stage backbones: the layer whose output is the feature map; null: the "
                               "input of the model's pooling/flatten layer")
    batchnorm: Literal["frozen", "adapt"] = param(
        "frozen", "frozen: keep the backbone's BatchNorm statistics; adapt: first re-estimate them on this "
        "train split (AdaBN), for a backbone trained on different-looking data. Frozen in training either way")
    head: Head = param(Head(), "the new classifier")
    fine_tune: FineTune = param(FineTune(), "phase 2 (fine-tuning)")
    epochs: int = param(10, "phase 1 (head) epochs", min=1)
    lr: float = param(1e-3, "phase 1 (head) learning rate", min=0.0, max=10.0)

    def __post_init__(self):
        if self.backbone != "stage" and self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} is not known; fix: use one of {', '.join(BACKBONES)} or 'stage'")
        if self.backbone != "stage" and self.cut_at is not None:
            raise ValueError("cut_at applies to backbone: stage only (applications are cut below their top); "
                             "fix: drop cut_at")
        if self.backbone in BACKBONES and not BACKBONES[self.backbone].alpha and self.alpha != 1.0:
            raise ValueError(f"{self.backbone} has no width multiplier; fix: remove alpha")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise ValueError("input_size must be [height, width] of at least 1; fix: e.g. input_size: [96, 96], "
                             "or null for the data's size")


# -- building the model ---------------------------------------------------------------------------------------


def adapter_weights(data_spec: dict, in_channels: int, preprocessing: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The 1x1 convolution that maps the data stage's input to the backbone's, and its description.

    The data stage feeds ``x = (pixel * scale - mean) / std``, so ``pixel = (x * std + mean) / scale``; the
    backbone wants ``a_o * pixel[src(o)] + b_o`` in output channel o, an affine map, hence a 1x1 conv:
    weight ``a_o * std / scale`` and bias ``a_o * mean / scale + b_o`` on the source channel.
    """
    scale = float(data_spec["scale"])
    mean = np.broadcast_to(np.asarray(data_spec["mean"], np.float64), (in_channels,))
    std = np.broadcast_to(np.asarray(data_spec["std"], np.float64), (in_channels,))
    if preprocessing == "tf":
        a, b, order, formula = [1 / 127.5] * 3, [-1.0] * 3, (0, 1, 2), "pixel / 127.5 - 1"
    elif preprocessing == "caffe":
        a, b, order, formula = [1.0] * 3, [-m for m in CAFFE_MEAN_BGR], (2, 1, 0), "BGR pixel - ImageNet mean"
    else:
        a, b, order, formula = [1.0] * 3, [0.0] * 3, (0, 1, 2), "pixel (0..255)"
    kernel = np.zeros((1, 1, in_channels, 3), np.float32)
    bias = np.zeros(3, np.float32)
    for o in range(3):
        src = order[o] if in_channels == 3 else 0
        kernel[0, 0, src, o] = a[o] * std[src] / scale
        bias[o] = a[o] * mean[src] / scale + b[o]
    info = {"channels": "grayscale -> RGB" if in_channels == 1 else ("RGB -> BGR" if order != (0, 1, 2) else "RGB"),
            "backbone_input": formula}
    return kernel, bias, info


def application_backbone(params: TransferParams, ds: Dataset):
    """Input, the backbone's feature map, the backbone's layers and the adapter description."""
    from edgepipe.core._tf import keras

    spec = BACKBONES[params.backbone]
    h, w, c = ds.input_shape
    size = tuple(params.input_size or (h, w))
    inputs = keras.Input(ds.input_shape, name="image")
    x = inputs
    adapter: dict[str, Any] = {"in_model": True}
    if size != (h, w):
        x = keras.layers.Resizing(*size, interpolation="bilinear", name="input_resize")(x)
        adapter["resize"] = {"from": [h, w], "to": list(size), "interpolation": "bilinear"}
    kernel, bias, described = adapter_weights(ds.info["preprocessing"], c, spec.preprocessing)
    adapter.update(described)
    conv = keras.layers.Conv2D(3, 1, name="input_adapter", trainable=False)
    x = conv(x)
    conv.set_weights([kernel, bias])
    kwargs: dict[str, Any] = dict(spec.builder_args)
    if spec.alpha:
        kwargs["alpha"] = params.alpha
    builder = getattr(keras.applications, params.backbone)
    try:
        base = builder(input_tensor=x, input_shape=(*size, 3), include_top=False, weights=None, **kwargs)
        if params.weights is not None:
            # Keras loads weight files into the application's own layer list, which the adapter in front
            # would shift: load them into a standalone copy, then copy layer by layer.
            pretrained = builder(input_shape=(*size, 3), include_top=False, weights=_weights_arg(params), **kwargs)
            _copy_weights(pretrained, base)
    except EdgepipeError:
        raise
    except ValueError as e:  # bad size or alpha for these weights: the application says which
        raise EdgepipeError(f"{params.backbone}: {' '.join(str(e).split())[:240]}",
                            "choose an input_size/alpha the backbone supports (see its tf_keras docs)") from None
    except Exception as e:  # noqa: BLE001 - keras' get_file raises a plain Exception when offline
        raise _weights_error(params, e) from None
    frozen = [layer for layer in base.layers if layer.name not in ("image", "input_resize", "input_adapter")]
    return inputs, base.output, frozen, adapter


def stage_backbone(params: TransferParams, ds: Dataset, stage_dir: Path):
    """Another stage's model, cut at `cut_at` (or below its pooling): input, features, layers, adapter."""
    from edgepipe.core._tf import keras

    model = load_model(stage_dir)
    if tuple(model.input_shape[1:]) != tuple(ds.input_shape):
        raise EdgepipeError(f"backbone '{Path(stage_dir).name}' takes {tuple(model.input_shape[1:])}, the data is "
                            f"{tuple(ds.input_shape)}", "set the data stage's image_size and channels to match")
    if params.cut_at:
        try:
            features = model.get_layer(params.cut_at).output
        except ValueError:
            names = ", ".join(layer.name for layer in model.layers[-8:])
            raise EdgepipeError(f"backbone '{Path(stage_dir).name}' has no layer '{params.cut_at}'",
                                f"name one of its layers, e.g. the last ones: {names}") from None
    else:
        pool = next((layer for layer in model.layers if isinstance(
            layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten))),
            None)
        if pool is None:
            raise EdgepipeError(f"backbone '{Path(stage_dir).name}' has no pooling or Flatten layer to cut below",
                                "set cut_at to the name of the layer whose output is the feature map")
        features = pool.input
    base = keras.Model(model.input, features)
    return model.input, features, base.layers[1:], {"in_model": False}


def add_head(inputs, features, head: Head, num_classes: int, name: str):
    """Pooling, optional hidden layer, dropout, Dense logits and a separate Softmax (as every zoo model)."""
    from edgepipe.core._tf import keras

    L = keras.layers
    x = features
    if len(x.shape) == 4:
        x = {"avg": L.GlobalAveragePooling2D, "max": L.GlobalMaxPooling2D, "flatten": L.Flatten}[head.pooling](
            name="head_pool")(x)
    if head.units:
        x = L.Dense(head.units, activation="relu", name="head_hidden")(x)
    x = L.Dropout(head.dropout, name="head_dropout")(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, L.Softmax(name="probs")(x), name=name)


def adapt_batchnorm(layers: list, model, ds: Dataset, batch_size: int) -> int:
    """AdaBN (Li et al., 2016): set each BatchNormalization's moving mean and variance to the statistics of
    this dataset's train split, keeping the learned scale and offset. Returns how many layers changed.

    A pass in training mode normalises each batch by its own statistics and folds them into the moving
    averages with momentum = seen / (seen + batch), which makes them plain averages over the whole split.
    """
    from edgepipe.core._tf import keras

    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.momentum, layer.trainable) for layer in bns]
    x = ds.preprocess(ds.splits["train"][0])
    try:
        for layer in bns:
            layer.trainable = True  # a frozen BatchNormalization ignores training=True
        seen = 0
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            for layer in bns:
                layer.momentum = seen / (seen + len(batch))
            model(batch, training=True)
            seen += len(batch)
    finally:
        for layer, (momentum, trainable) in zip(bns, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(bns)


def unfreeze(backbone_layers: list, ft: FineTune) -> int:
    """Make the top of the backbone trainable, BatchNormalization excepted; returns how many layers."""
    from edgepipe.core._tf import keras

    names = [layer.name for layer in backbone_layers]
    if ft.unfreeze_from is not None:
        if ft.unfreeze_from not in names:
            raise EdgepipeError(f"fine_tune.unfreeze_from: the backbone has no layer '{ft.unfreeze_from}'",
                                f"name a backbone layer, e.g. one of the last: {', '.join(names[-6:])}")
        top = backbone_layers[names.index(ft.unfreeze_from):]
    elif ft.unfreeze_top is not None:
        top = backbone_layers[-ft.unfreeze_top:]
    else:
        top = backbone_layers
    count = 0
    for layer in top:
        if not isinstance(layer, keras.layers.BatchNormalization) and layer.weights:
            layer.trainable = True
            count += 1
    return count


# -- the stage ---------------------------------------------------------------------------------------------------


def run_transfer_stage(params: TransferParams, io: StageIO) -> str:
    """Build backbone + head, train the head on frozen features, fine-tune, evaluate; outputs as for train."""
    ds = load_dataset(io.inputs["data"])
    if params.backbone == "stage":
        if "backbone" not in io.inputs:
            raise EdgepipeError("backbone: stage needs an input stage", "add inputs: {backbone: <stage name>}")
        inputs, features, layers, adapter = stage_backbone(params, ds, io.inputs["backbone"])
        source = Path(io.inputs["backbone"]).name
    else:
        if "backbone" in io.inputs:
            raise EdgepipeError(f"an input backbone stage is given but backbone is {params.backbone}",
                                "set backbone: stage, or remove inputs.backbone")
        inputs, features, layers, adapter = application_backbone(params, ds)
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
        phase_io = StageIO(io.inputs, out=io.work / phase, work=io.work / phase,
                           logs=io.logs / phase if io.logs is not None else None)
        phase_io.out.mkdir(parents=True, exist_ok=True)
        if phase == "fine_tune":
            n = unfreeze(layers, knobs)
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
        rows += [{"epoch": str(len(rows) + i), "phase": phase, **{k: v for k, v in r.items() if k != "epoch"}}
                 for i, r in enumerate(phase_rows)]
        phase_accuracy[phase] = evaluate(model, ds, "test")["accuracy"]

    write_history(rows, io.out / "history.csv")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # the last phase's knobs: whether its early stopping kept a best epoch is what the doctor must know
    write_training_outputs(model, ds, io, phases[-1][1], title=source, extra={
        "backbone": source, "input_adapter": adapter, "phase_test_accuracy": phase_accuracy,
        "trainable_params_last_phase": trainable})
    text = ", ".join(f"{k} {100 * v:.2f} %" for k, v in phase_accuracy.items())
    return f"test accuracy after {text}"


def _weights_arg(params: TransferParams):
    if params.weights in (None, "imagenet"):
        return params.weights
    path = Path(params.weights).expanduser()
    if not path.is_file():
        raise EdgepipeError(f"weights file {path} does not exist",
                            "give the path of a no-top .h5 weights file, 'imagenet', or null")
    return str(path)


def _copy_weights(source, dest) -> None:
    """Copy weights between two builds of one application (dest has the adapter layers in front)."""
    src = [layer for layer in source.layers if layer.weights]
    dst = [layer for layer in dest.layers if layer.weights and layer.name not in ("input_adapter",)]
    if len(src) != len(dst):
        raise EdgepipeError(f"internal: {len(src)} weighted layers in the pretrained backbone, {len(dst)} here",
                            "report this as a bug")
    for a, b in zip(src, dst):
        b.set_weights(a.get_weights())


def _weights_error(params: TransferParams, e: Exception) -> EdgepipeError:
    """Keras could not fetch the ImageNet weights: name the file and where to put it."""
    text = " ".join(str(e).split())
    url = re.search(r"(https?://\S+?\.h5)", text)
    if params.weights != "imagenet" or not url:
        return EdgepipeError(f"{params.backbone}: cannot load weights {params.weights} ({text[:200]})",
                             "check the weights file matches the backbone without its top")
    fname = url.group(1).rsplit("/", 1)[1]
    cache = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"  # where keras looks first
    return EdgepipeError(
        f"{params.backbone} imagenet weights {fname} are not cached and cannot be downloaded (offline?)",
        f"on a machine online, fetch {url.group(1)} and place it at {cache / fname}; "
        f"or set weights to a local file or null")


def weights_files(params: TransferParams) -> list[Path]:
    """A local weights file, which the key hashes so that replacing it makes the stage stale (ImageNet's
    files are fixed by their names; a missing file is left to the stage, which says so)."""
    if params.weights in (None, "imagenet") or not Path(params.weights).is_file():
        return []
    return [Path(params.weights)]


KIND = StageKind(
    name="transfer", params=TransferParams, run=run_transfer_stage, inputs={"data": False, "backbone": False},
    output="model", accepts={"data": ("dataset",), "backbone": ("model",)},
    optional_inputs=("backbone",), deps=weights_files,
    main_output="model.h5",
    doc="transfer learning: a pretrained backbone, a new head on frozen features, then fine-tuning",
)
