"""Training on more than one device or machine, on tf.distribute (TensorFlow's own engine).

A train stage's `strategy` param picks it:

- `default`: no strategy, one process (all the cores TensorFlow uses).
- `mirrored`: `MirroredStrategy`, one replica per local GPU (on a CPU-only machine, one replica).
- `multi_worker`: `MultiWorkerMirroredStrategy` across machines. Every machine runs the same recipe;
  `TF_CONFIG` says who is who. The chief (worker 0) runs `edgepipe run RECIPE --only STAGE` and writes
  the outputs; every other worker runs `edgepipe worker RECIPE STAGE`, trains its share and keeps
  nothing. `batch_size` is the global batch: each of N workers computes 1/N of it and the gradients are
  averaged, so the result matches one machine's up to floating-point summation order.

After training, the model is copied out of the strategy, so evaluation, the doctor and saving are local
and need no other worker.
"""

from __future__ import annotations

import contextlib
import json
import os

from edgepipe.core.errors import EdgepipeError


def cluster() -> dict | None:
    """The parsed TF_CONFIG, or None when it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        if task["type"] not in ("worker", "chief") or not isinstance(workers, list) or not workers:
            raise ValueError("not a worker's cluster spec")  # a check, not an assert: python -O keeps it
        return config
    except (ValueError, KeyError, TypeError):
        raise EdgepipeError(
            "TF_CONFIG is not a valid cluster spec",
            'set it to {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": N}} on each machine',
        ) from None


def make_strategy(kind: str):
    """The tf.distribute strategy for `kind`, or None for `default`."""
    from edgepipe.core._tf import tf

    if kind == "default":
        return None
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    config = cluster()
    if config is None:
        raise EdgepipeError(
            "strategy multi_worker needs TF_CONFIG, which is not set",
            'set TF_CONFIG on every machine (see docs/training.md, "Training on a cluster")',
        )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise EdgepipeError(
            f"cannot start MultiWorkerMirroredStrategy: {' '.join(str(e).split())[:200]}",
            "start training in a fresh process (edgepipe run --only STAGE, or edgepipe worker)",
        ) from None


def scope(strategy):
    """`strategy.scope()`, or nothing for no strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def local_copy(model, strategy):
    """The trained model as a plain, single-process model (same layers, names and weights)."""
    from edgepipe.core._tf import keras

    if strategy is None:
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
