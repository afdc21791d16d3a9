"""Model builders: the architectures a train-type stage names with `arch:`.

Every builder has the same contract, which user builders (`arch: package.module:function`) follow too:

    builder(input_shape, num_classes, *, dropout, kernel_initializer, kernel_regularizer, **arch_args)
        -> tf_keras.Model ending in a Softmax layer (its input is the logits, which distillation uses)

The zoo is designed for quantization-aware training: every convolution is Conv2D/DepthwiseConv2D
without bias or activation, then BatchNormalization, then ReLU, the pattern tfmot folds and quantizes.
(A BatchNormalization after a convolution with its own activation is rejected by tfmot.)
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable

from edgepipe.core.errors import EdgepipeError
from edgepipe.tasks import task_of
from edgepipe.training import detection_nets
from edgepipe.training.blocks import conv_bn_relu, ds_block


def cnn_teacher(
    input_shape,
    num_classes,
    *,
    dropout=0.25,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
    width: float = 1.0,
):
    """A VGG-style CNN for small images (28x28, 32x32): five conv-BN-ReLU layers, 106 k params and 8.3 M MACs at width 1."""
    from edgepipe.core._tf import keras

    conv = conv_bn_relu(kernel_initializer, kernel_regularizer)
    c = lambda n: max(8, int(n * width))  # noqa: E731
    inputs = keras.Input(input_shape)
    x = conv(inputs, c(24), 3, 1)
    x = conv(x, c(32), 3, 2)  # 14x14
    x = conv(x, c(48), 3, 1)
    x = conv(x, c(64), 3, 2)  # 7x7
    x = conv(x, c(96), 3, 1)
    return _classifier(inputs, x, num_classes, dropout, kernel_initializer, kernel_regularizer, "cnn_teacher")


def ds_student(
    input_shape,
    num_classes,
    *,
    dropout=0.1,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
    alpha: float = 1.0,
    stem: int | None = None,
    stem_kernel: int = 3,
):
    """A tiny depthwise-separable CNN for microcontrollers; `alpha` scales every width (MobileNet's multiplier).

    The stride-2 stem keeps the largest activation small, which is what sets a TFLite Micro arena. Its
    input has one channel (or three), so a wider, larger stem (`stem` filters, `stem_kernel` square) costs
    few MACs and can pay (benchmarks/README.md).
    """
    from edgepipe.core._tf import keras

    conv = conv_bn_relu(kernel_initializer, kernel_regularizer)
    ds = ds_block(kernel_initializer, kernel_regularizer)
    c = lambda n: max(4, int(n * alpha))  # noqa: E731
    inputs = keras.Input(input_shape)
    x = conv(inputs, stem or c(8), stem_kernel, 2)  # 14x14
    x = ds(x, c(16), 1)
    x = ds(x, c(32), 2)  # 7x7
    x = ds(x, c(32), 1)
    x = ds(x, c(64), 2)  # 4x4
    return _classifier(inputs, x, num_classes, dropout, kernel_initializer, kernel_regularizer, "ds_student")


def strided_cnn(
    input_shape,
    num_classes,
    *,
    dropout=0.1,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
    widths=(16, 32, 40),
    blocks: int = 0,
):
    """A CNN for 28x28-class inputs whose int8 LiteRT model beats TF-MOT's example model on host latency.

    Three stride-2 3x3 conv-BN-ReLU layers (28 -> 14 -> 7 -> 4) with `blocks` depthwise-separable blocks
    at 7x7 between the second and third, then Flatten and Dense. Why this shape (the measurements are in
    benchmarks/README.md):
    - a 3x3 stem is much cheaper than a 5x5 one on a one-channel input;
    - regular convs train about twice as fast as depthwise ones on a CPU;
    - a Flatten head keeps *where* each feature is, which global pooling after three such convs (a
      15-pixel receptive field) loses;
    - stride 2 everywhere keeps the largest activation at 14x14xwidths[0], which sets the TFLite Micro arena.
    """
    from edgepipe.core._tf import keras

    conv = conv_bn_relu(kernel_initializer, kernel_regularizer)
    ds = ds_block(kernel_initializer, kernel_regularizer)
    if len(widths) != 3:
        raise TypeError(f"widths must list 3 channel counts, got {list(widths)}")
    inputs = keras.Input(input_shape)
    x = conv(inputs, widths[0], 3, 2)  # 14x14
    x = conv(x, widths[1], 3, 2)  # 7x7
    for _ in range(blocks):
        x = ds(x, widths[1], 1)
    x = conv(x, widths[2], 3, 2)  # 4x4
    return _classifier(
        inputs, x, num_classes, dropout, kernel_initializer, kernel_regularizer, "strided_cnn", flatten=True
    )


def mobilenet_tiny(
    input_shape,
    num_classes,
    *,
    dropout=0.2,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
    alpha: float = 0.5,
):
    """A MobileNetV1-style net for larger images (96x96 or more), width multiplier `alpha`."""
    from edgepipe.core._tf import keras

    conv = conv_bn_relu(kernel_initializer, kernel_regularizer)
    ds = ds_block(kernel_initializer, kernel_regularizer)
    c = lambda n: max(8, int(n * alpha))  # noqa: E731
    inputs = keras.Input(input_shape)
    x = conv(inputs, c(32), 3, 2)
    for filters, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (1024, 2)):
        x = ds(x, c(filters), stride)
    return _classifier(inputs, x, num_classes, dropout, kernel_initializer, kernel_regularizer, "mobilenet_tiny")


def tiny_conv(input_shape, num_classes, *, dropout=0.0, kernel_initializer="glorot_uniform", kernel_regularizer=None):
    """One conv and a dense layer: the smallest model that trains, for tests."""
    from edgepipe.core._tf import keras

    L = keras.layers
    inputs = keras.Input(input_shape)
    x = conv_bn_relu(kernel_initializer, kernel_regularizer)(inputs, 4, 3, 2)
    x = L.Flatten()(x)  # not pooling: the test data's classes differ by *where* the pattern is
    x = L.Dropout(dropout)(x)
    x = L.Dense(num_classes, kernel_initializer=kernel_initializer, name="logits")(x)
    return keras.Model(inputs, L.Softmax(name="probs")(x), name="tiny_conv")


def tfmot_example(
    input_shape, num_classes, *, dropout=0.0, kernel_initializer="glorot_uniform", kernel_regularizer=None
):
    """The model of TF-MOT's QAT example (Conv2D 12 3x3 ReLU, MaxPool 2x2, Flatten, Dense): the public reference."""
    from edgepipe.core._tf import keras

    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(12, 3, activation="relu", kernel_initializer=kernel_initializer)(inputs)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(num_classes, kernel_initializer=kernel_initializer, name="logits")(x)
    return keras.Model(inputs, L.Softmax(name="probs")(x), name="tfmot_example")


ARCHITECTURES: dict[str, Callable[..., Any]] = {
    "tfmot_example": tfmot_example,
    "cnn_teacher": cnn_teacher,
    "ds_student": ds_student,
    "strided_cnn": strided_cnn,
    "mobilenet_tiny": mobilenet_tiny,
    "tiny_conv": tiny_conv,
    # detection: a heat map of object centres (edgepipe.training.detection_nets)
    "fomo": detection_nets.fomo,
    "centroid_net": detection_nets.centroid_net,
}


def resolve(arch: str) -> Callable[..., Any]:
    """An architecture name from the zoo, or ``package.module:function`` for a user builder."""
    if ":" not in arch:
        if arch not in ARCHITECTURES:
            raise EdgepipeError(
                f"unknown architecture '{arch}'", f"use one of: {', '.join(ARCHITECTURES)}, or package.module:function"
            )
        return ARCHITECTURES[arch]
    module_name, _, func = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EdgepipeError(
            f"arch '{arch}': cannot import module {module_name} ({e})", "check the module is on PYTHONPATH or installed"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing (a syntax error, ...)
        raise EdgepipeError(
            f"arch '{arch}': importing {module_name} failed ({type(e).__name__}: {' '.join(str(e).split())[:160]})",
            "fix that module",
        ) from None
    builder = getattr(module, func, None)
    if not callable(builder):
        raise EdgepipeError(
            f"arch '{arch}': module {module_name} has no function {func}",
            "name a function that returns a tf_keras model",
        )
    return builder


def build_model(arch: str, input_shape, num_classes: int, arch_args: dict, *, check_output=None, **common):
    """Build `arch` and check it is a tf_keras model with the right input and output shapes (`check_output`:
    a task's check of the output shape; None: `num_classes` class scores)."""
    from edgepipe.core._tf import keras

    builder = resolve(arch)
    try:
        model = builder(tuple(input_shape), num_classes, **common, **arch_args)
    except EdgepipeError:
        raise
    except TypeError as e:
        raise EdgepipeError(f"arch '{arch}': bad arguments ({e})", "check arch_args against the builder") from None
    except Exception as e:  # noqa: BLE001 - the builder is the boundary: Keras or user code rejecting a value
        fix = (
            "fix the builder, or the arch_args it is given"
            if ":" in arch
            else "check arch_args (widths at least 1) and initializer (a tf_keras initializer name, e.g. he_normal)"
        )
        raise EdgepipeError(
            f"arch '{arch}' could not be built ({type(e).__name__}: {' '.join(str(e).split())[:160]})", fix
        ) from None
    if not isinstance(model, keras.Model):
        raise EdgepipeError(
            f"arch '{arch}' returned {type(model).__name__}, not a tf_keras model",
            "build it with tf_keras (import tf_keras as keras), not Keras 3",
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EdgepipeError(
            f"arch '{arch}' builds a model of {len(model.inputs)} inputs and {len(model.outputs)} outputs",
            "edgepipe trains classifiers: one image input, one class-score output",
        )
    want = (
        check_output(tuple(model.output_shape[1:]))
        if check_output
        else (None if model.output_shape[-1] == num_classes else f"{num_classes} class scores")
    )
    if tuple(model.input_shape[1:]) != tuple(input_shape) or want:
        raise EdgepipeError(
            f"arch '{arch}' maps {model.input_shape} to {model.output_shape}, the data is "
            f"{tuple(input_shape)} with {num_classes} classes (it needs {want or 'that input'})",
            "fix the builder's shapes",
        )
    return model


def build_for(p, ds):
    """The model a training-type stage's params name, for dataset `ds`: `p.arch` with `p.arch_args` and
    the regularisation knobs (`initializer`, `l1`, `l2`, `dropout`) every builder takes."""
    from edgepipe.core._tf import keras

    common: dict[str, Any] = {"kernel_initializer": p.initializer}
    if p.l1 or p.l2:
        common["kernel_regularizer"] = keras.regularizers.L1L2(l1=p.l1, l2=p.l2)
    if p.dropout is not None:
        common["dropout"] = p.dropout
    task = task_of(ds.info)
    return build_model(
        p.arch,
        ds.input_shape,
        len(ds.classes),
        p.arch_args,
        check_output=lambda shape: task.check_output(shape, ds.info),
        **common,
    )


def builder_files(arch: str) -> list[Path]:
    """The source files of a user builder (`package.module:function`), which a stage's key hashes so that
    editing the builder makes the stage stale; none for the zoo's own builders (they are edgepipe code).

    The builder's module and the user's modules it imports, directly or through others (found by reading
    the source, as edgepipe's own code versions are): those of the same top-level package, or, for a
    builder that is a lone module, those beside it in its folder. Installed libraries are not followed.
    """
    if ":" not in arch:
        return []
    module_name = arch.partition(":")[0]
    origin = _source_of(module_name)
    if origin is False:
        raise EdgepipeError(
            f"arch '{arch}': cannot import module {module_name} (not found)",
            "check the module is on PYTHONPATH or installed",
        )
    if origin is None:
        return []  # built-in: no source
    top, home = module_name.split(".")[0], origin.parent
    lone = "." not in module_name and not any(part in ("site-packages", "dist-packages") for part in home.parts)
    files, seen, todo = {}, set(), [module_name]
    while todo:
        name = todo.pop()
        # Decided on the name before looking it up: finding `tensorflow.keras` would import TensorFlow.
        ours = name == module_name or (name.split(".")[0] == top if "." in module_name else lone and "." not in name)
        if name in seen or not ours:
            continue
        seen.add(name)
        path = _source_of(name)
        if not path or path.suffix != ".py" or (name != module_name and "." not in module_name and path.parent != home):
            continue
        files[str(path)] = path
        todo.extend(_imported_names(path, name))
    return [files[k] for k in sorted(files)]


def _source_of(name: str) -> Path | None | bool:
    """The source file of module `name`; None if it has none (built-in), False if there is no such module."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    return Path(spec.origin) if spec.origin and Path(spec.origin).is_file() else None


def _imported_names(path: Path, name: str) -> list[str]:
    """Modules the source file of module `name` imports (`from a import b` gives a and a.b), unresolved."""
    import ast

    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []  # the build reports a broken module itself
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: max(0, len(package.split(".")) - node.level + 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base:
                names.append(base)
                names += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names


def count_macs(model) -> int:
    """Multiply-accumulates of one inference of Conv2D, DepthwiseConv2D and Dense layers.

    tfmot's QAT wraps each layer (`QuantizeWrapperV2.layer`), so the wrapped layer's type decides and
    the wrapper's shapes are used.
    """
    from edgepipe.core._tf import keras

    macs = 0
    for outer in _flat_layers(model):
        layer = getattr(outer, "layer", outer)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            _, h, w, c = outer.output_shape
            macs += h * w * c * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            _, h, w, c = outer.output_shape
            macs += h * w * c * kh * kw * outer.input_shape[-1] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            macs += int(outer.input_shape[-1]) * layer.units
    return int(macs)


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _flat_layers(layer)
        else:
            yield layer


def _classifier(inputs, x, num_classes, dropout, initializer, regularizer, name, flatten=False):
    """Global average pooling (or Flatten), dropout, Dense logits and a Softmax: the head of every zoo model.

    The Softmax is its own layer so that distillation can take its input, the logits.
    """
    from edgepipe.core._tf import keras

    L = keras.layers
    x = L.Flatten()(x) if flatten else L.GlobalAveragePooling2D()(x)
    x = L.Dropout(dropout)(x)
    x = L.Dense(num_classes, kernel_initializer=initializer, kernel_regularizer=regularizer, name="logits")(x)
    return keras.Model(inputs, L.Softmax(name="probs")(x), name=name)
