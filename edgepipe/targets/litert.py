"""Running `.tflite` files with the LiteRT interpreter (`ai_edge_litert`) on this host, as a device would.

These are thin wrappers over `device_runner`, the file that runs on devices, so host and device build
interpreters, quantize inputs (q = round(x / scale) + zero_point) and dequantize outputs with one piece
of code; the wrappers add what the host needs: native log lines silenced, and failures as one
`EdgepipeError` line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import quiet_native
from edgepipe.targets import device_runner


def interpreter(model: Path | bytes, num_threads: int | None = None, batch: int | None = None):
    """A LiteRT interpreter for a file or bytes, tensors allocated (for `batch` samples if given)."""
    name = str(model) if isinstance(model, Path) else "model bytes"
    try:
        with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            return device_runner.make_interpreter(
                model if isinstance(model, Path) else bytes(model), num_threads=num_threads, batch=batch
            )
    except (ValueError, RuntimeError) as e:
        raise EdgepipeError(
            f"{name}: not a valid LiteRT model ({' '.join(str(e).split())[:160]})",
            "re-run the convert stage to regenerate it",
        ) from None


def io_details(interp) -> tuple[dict, dict]:
    """(input, output) details of a single-input, single-output model."""
    try:
        return device_runner.io_details(interp)
    except ValueError as e:  # "model has N inputs and M outputs; only classifiers are benched"
        raise EdgepipeError(str(e).split(";")[0], "edgepipe benches classifiers") from None


def predict(model: Path | bytes, x: np.ndarray, batch: int = 250) -> np.ndarray:
    """Float outputs of the model on preprocessed inputs `x`, in batches (the device runner's code)."""
    return device_runner.predict(lambda n: interpreter(model, batch=n), x, batch=batch)
