"""What the detection metrics take, checked and paired per image (the formats: `detection_metrics`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgepipe.tasks.detection_decode import DETECTION_COLUMNS, X0, Y1, objects


def as_predictions(pred) -> np.ndarray:
    """One image's predictions as float64 `(n, 8)`; ValueError for another shape."""
    pred = np.asarray(pred, np.float32)
    if pred.size == 0:
        return np.zeros((0, len(DETECTION_COLUMNS)), np.float64)
    if pred.ndim != 2 or pred.shape[1] != len(DETECTION_COLUMNS):
        raise ValueError(
            f"predictions are (n, {len(DETECTION_COLUMNS)}) rows {', '.join(DETECTION_COLUMNS)}, not {pred.shape}"
        )
    return pred.astype(np.float64)


def per_image(preds: Sequence, gts: Sequence) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each image's (predictions float64 (n, 8), object classes (m,), object boxes (m, 4))."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} images of predictions but {len(gts)} of ground truth")
    return [(as_predictions(p), *objects(g)) for p, g in zip(preds, gts)]


def needs_boxes(pred: np.ndarray) -> None:
    """ValueError for predictions without boxes (their box columns NaN)."""
    if np.isnan(pred[:, X0 : Y1 + 1]).any():
        raise ValueError("these predictions have no boxes (decoded without a size head): box metrics need them")
