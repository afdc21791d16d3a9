"""A training-type stage's `model.h5`: how it is saved, and how a later stage (convert, qat, distill,
transfer) reads it back, with the facts about it that models made from it must carry forward."""

from __future__ import annotations

import json
from pathlib import Path


def carried_forward(stage_dir) -> dict:
    """Facts of a model stage that stay true of models made from it (its QAT version, its .tflite files).

    Today that is the in-model input adapter a transfer stage records, which devices must know about.
    """
    path = Path(stage_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    return {k: metrics[k] for k in ("input_adapter",) if k in metrics}


def save_model(model, dest: Path) -> None:
    """Save a model as HDF5, weights only with no optimizer state.

    HDF5, not the `.keras` format: tfmot's quantize-aware layers do not reload from `.keras` (their
    variables are not restored), and one format must work for every stage's model.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy.*")
        model.save(dest, include_optimizer=False)


def load_model(stage_dir: Path):
    """Load a training-type stage's model.h5 (QAT models included: tfmot's layers are in scope)."""
    from edgepipe.core._tf import keras  # noqa: I001 - first: TensorFlow's import noise silenced

    import tensorflow_model_optimization as tfmot

    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(Path(stage_dir) / "model.h5", compile=False)
