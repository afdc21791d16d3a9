"""A pretrained backbone for transfer learning, and the surgery around it: the input adapter, the new head,
AdaBN and unfreezing the top of the backbone.

The backbone is one of `tf_keras.applications` (weights `imagenet`, a local file or none) or another
stage's model cut at a named layer. The model stays one flat functional graph (the backbone is built on
the model's own input tensor, not nested as a sub-model), because tfmot's quantize_model refuses nested
models.

Input adaptation lives inside the model, so a device feeds exactly what the data stage's sidecar says:
an optional Resizing layer and a fixed 1x1 convolution, `input_adapter`, that maps the data stage's
normalised input to what the backbone was trained on (grayscale -> RGB, RGB -> BGR for ResNet50,
the backbone's own scaling).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.datasets.artifact import Dataset
from edgepipe.training.modelio import load_model


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
    info = {
        "channels": "grayscale -> RGB" if in_channels == 1 else ("RGB -> BGR" if order != (0, 1, 2) else "RGB"),
        "backbone_input": formula,
    }
    return kernel, bias, info


def application_backbone(name: str, ds: Dataset, *, weights: str | None, alpha: float, input_size: list[int] | None):
    """Application `name` (a key of `BACKBONES`) with `weights` (imagenet, a no-top weights file or None),
    seeing `input_size` (None: the data's): input, the backbone's feature map, its layers and the adapter
    description."""
    from edgepipe.core._tf import keras

    spec = BACKBONES[name]
    h, w, c = ds.input_shape
    size = tuple(input_size or (h, w))
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
        kwargs["alpha"] = alpha
    builder = getattr(keras.applications, name)
    try:
        base = builder(input_tensor=x, input_shape=(*size, 3), include_top=False, weights=None, **kwargs)
        if weights is not None:
            # Keras loads weight files into the application's own layer list, which the adapter in front
            # would shift: load them into a standalone copy, then copy layer by layer.
            pretrained = builder(input_shape=(*size, 3), include_top=False, weights=_weights_arg(weights), **kwargs)
            _copy_weights(pretrained, base)
    except EdgepipeError:
        raise
    except ValueError as e:  # bad size or alpha for these weights: the application says which
        raise EdgepipeError(
            f"{name}: {' '.join(str(e).split())[:240]}",
            "choose an input_size/alpha the backbone supports (see its tf_keras docs)",
        ) from None
    except Exception as e:  # noqa: BLE001 - keras' get_file raises a plain Exception when offline
        raise _weights_error(name, weights, e) from None
    frozen = [layer for layer in base.layers if layer.name not in ("image", "input_resize", "input_adapter")]
    return inputs, base.output, frozen, adapter


def stage_backbone(ds: Dataset, stage_dir: Path, cut_at: str | None):
    """Another stage's model, cut at layer `cut_at` (None: below its pooling): input, features, layers, adapter."""
    from edgepipe.core._tf import keras

    model = load_model(stage_dir)
    if tuple(model.input_shape[1:]) != tuple(ds.input_shape):
        raise EdgepipeError(
            f"backbone '{Path(stage_dir).name}' takes {tuple(model.input_shape[1:])}, the data is "
            f"{tuple(ds.input_shape)}",
            "set the data stage's image_size and channels to match",
        )
    if cut_at:
        try:
            features = model.get_layer(cut_at).output
        except ValueError:
            names = ", ".join(layer.name for layer in model.layers[-8:])
            raise EdgepipeError(
                f"backbone '{Path(stage_dir).name}' has no layer '{cut_at}'",
                f"name one of its layers, e.g. the last ones: {names}",
            ) from None
    else:
        pool = next(
            (
                layer
                for layer in model.layers
                if isinstance(
                    layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
                )
            ),
            None,
        )
        if pool is None:
            raise EdgepipeError(
                f"backbone '{Path(stage_dir).name}' has no pooling or Flatten layer to cut below",
                "set cut_at to the name of the layer whose output is the feature map",
            )
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
            name="head_pool"
        )(x)
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
            batch = x[start : start + batch_size]
            for layer in bns:
                layer.momentum = seen / (seen + len(batch))
            model(batch, training=True)
            seen += len(batch)
    finally:
        for layer, (momentum, trainable) in zip(bns, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return len(bns)


def unfreeze(backbone_layers: list, *, top: int | None, from_layer: str | None) -> int:
    """Make the top of the backbone trainable, BatchNormalization excepted: its `top` layers, or from layer
    `from_layer` up, or (both None) all of it; returns how many layers."""
    from edgepipe.core._tf import keras

    names = [layer.name for layer in backbone_layers]
    if from_layer is not None:
        if from_layer not in names:
            raise EdgepipeError(
                f"fine_tune.unfreeze_from: the backbone has no layer '{from_layer}'",
                f"name a backbone layer, e.g. one of the last: {', '.join(names[-6:])}",
            )
        layers = backbone_layers[names.index(from_layer) :]
    elif top is not None:
        layers = backbone_layers[-top:]
    else:
        layers = backbone_layers
    count = 0
    for layer in layers:
        if not isinstance(layer, keras.layers.BatchNormalization) and layer.weights:
            layer.trainable = True
            count += 1
    return count


def _weights_arg(weights: str | None):
    if weights in (None, "imagenet"):
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise EdgepipeError(
            f"weights file {path} does not exist", "give the path of a no-top .h5 weights file, 'imagenet', or null"
        )
    return str(path)


def _copy_weights(source, dest) -> None:
    """Copy weights between two builds of one application (dest has the adapter layers in front)."""
    src = [layer for layer in source.layers if layer.weights]
    dst = [layer for layer in dest.layers if layer.weights and layer.name not in ("input_adapter",)]
    if len(src) != len(dst):
        raise EdgepipeError(
            f"internal: {len(src)} weighted layers in the pretrained backbone, {len(dst)} here", "report this as a bug"
        )
    for a, b in zip(src, dst):
        b.set_weights(a.get_weights())


def _weights_error(name: str, weights: str | None, e: Exception) -> EdgepipeError:
    """Keras could not fetch the ImageNet weights: name the file and where to put it."""
    text = " ".join(str(e).split())
    url = re.search(r"(https?://\S+?\.h5)", text)
    if weights != "imagenet" or not url:
        return EdgepipeError(
            f"{name}: cannot load weights {weights} ({text[:200]})",
            "check the weights file matches the backbone without its top",
        )
    fname = url.group(1).rsplit("/", 1)[1]
    cache = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"  # where keras looks first
    return EdgepipeError(
        f"{name} imagenet weights {fname} are not cached and cannot be downloaded (offline?)",
        f"on a machine online, fetch {url.group(1)} and place it at {cache / fname}; "
        f"or set weights to a local file or null",
    )
