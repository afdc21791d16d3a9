"""Scoring a Keras model on a split of the dataset artifact, by its task's metrics."""

from __future__ import annotations

import numpy as np

from edgepipe.datasets.artifact import Dataset
from edgepipe.tasks import task_of


def predict(model, ds: Dataset, split: str, batch_size: int = 512) -> np.ndarray:
    """The model's raw outputs for a whole split (preprocessed as recorded)."""
    x, _ = ds.splits[split]
    return model.predict(ds.preprocess(x), batch_size=batch_size, verbose=0)


def evaluate(model, ds: Dataset, split: str = "test") -> dict:
    """The task's metrics of `model` on a split (classification: accuracy, per-class scores, confusion matrix
    and the cross-entropy loss)."""
    return task_of(ds.info).metrics(ds.splits[split][1], predict(model, ds, split), ds.info)
