"""Figures of a weight array that compression promises: zeros, and how many distinct values it takes."""

from __future__ import annotations

import numpy as np


def weight_stats_of(name: str, w: np.ndarray, out_axis: int = -1) -> dict:
    """Weights, zeros, sparsity and distinct values of `w`, per array and the most in one output channel
    (`out_axis`): what survives BatchNormalization folding and per-channel int8."""
    zeros = int(np.count_nonzero(w == 0))
    channels = np.moveaxis(w, out_axis, 0).reshape(w.shape[out_axis], -1)
    return {
        "layer": name,
        "weights": int(w.size),
        "zeros": zeros,
        "sparsity": round(zeros / max(1, w.size), 4),
        "unique": int(len(np.unique(w))),
        "max_unique_per_channel": int(max(len(np.unique(c)) for c in channels)),
    }
