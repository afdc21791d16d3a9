"""The doctor's measurements on a model: gradient norms per epoch, dead ReLUs, BatchNorm statistics lag.

Each measures without changing the model (inference-mode passes; variables restored afterwards).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.datasets.artifact import Dataset
from edgepipe.tasks import task_of


def gradient_norms(watched, ds: Dataset, dest: Path, samples: int = 64):
    """A callback: after each epoch, the L2 norm of the loss gradient of every kernel of `watched`, on one
    fixed batch of val images, appended to `dest` (gradients.json) for the doctor.

    The forward pass is in inference mode, so that measuring does not move BatchNorm statistics.
    """
    from edgepipe.core._tf import keras, tf

    x, y = ds.splits["val"]
    task = task_of(ds.info)
    x, y = tf.constant(ds.preprocess(x[:samples])), tf.constant(task.targets(y[:samples], ds.info))
    loss_fn = task.loss(ds.info)
    rows: list[dict] = []

    def measure(epoch, logs=None):
        kernels = [v for v in watched.trainable_variables if "kernel" in v.name]
        if not kernels:
            return
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y, watched(x, training=False)))
        grads = tape.gradient(loss, kernels)
        rows.append(
            {
                "epoch": epoch + 1,
                "norms": {
                    v.name.rsplit("/", 1)[0]: float(tf.norm(g)) if g is not None else 0.0
                    for v, g in zip(kernels, grads)
                },
            }
        )
        fsio.write_json(dest, rows)

    return keras.callbacks.LambdaCallback(on_epoch_end=measure)


def batchnorm_modes(model, ds: Dataset, samples: int = 512, batch: int = 128) -> dict | None:
    """The task's headline metric (accuracy) on train images with BatchNorm's moving statistics (inference, as exported) and with each
    batch's own statistics (as in training); None for a model with no BatchNorm layer that learns.

    A large gap means the moving averages lag the weights. The model's non-trainable variables (moving
    statistics, QAT ranges) are restored afterwards, so measuring changes nothing.
    """
    from edgepipe.core._tf import keras

    if not any(isinstance(m, keras.layers.BatchNormalization) and m.trainable for m in model.submodules):
        return None
    x, y = ds.splits["train"]
    x, y = ds.preprocess(x[:samples]), y[:samples]
    task = task_of(ds.info)

    def score(outputs):  # the task's headline metric (a classifier's: top-1 accuracy)
        return float(task.metrics(y, outputs, ds.info)[task.headline])

    moving = model.predict(x, batch_size=batch, verbose=0)
    kept = [v.numpy() for v in model.non_trainable_variables]
    try:
        batched = np.concatenate([model(x[i : i + batch], training=True).numpy() for i in range(0, len(x), batch)])
    finally:
        for v, value in zip(model.non_trainable_variables, kept):
            v.assign(value)
    return {"moving": score(moving), "batch": score(batched), "metric": task.headline, "samples": int(len(y))}


def dead_relus(model, ds: Dataset, samples: int = 256) -> dict[str, float]:
    """Share of each ReLU layer's channels that output zero for every one of `samples` val images."""
    from edgepipe.core._tf import keras

    relus = [
        layer
        for layer in model.layers
        if isinstance(getattr(layer, "layer", layer), keras.layers.ReLU)
        or getattr(getattr(layer, "layer", layer), "activation", None) is keras.activations.relu
    ]
    if not relus:
        return {}
    # A layer's newest node is this model's: tfmot's strip functions reuse layers of the model they strip.
    probe = keras.Model(model.input, [layer.get_output_at(-1) for layer in relus])
    outputs = probe.predict(ds.preprocess(ds.splits["val"][0][:samples]), batch_size=256, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    shares = {}
    for layer, out in zip(relus, outputs):
        alive = (out.reshape(-1, out.shape[-1]) > 0).any(axis=0)
        shares[layer.name] = float(1 - alive.mean())
    return shares
