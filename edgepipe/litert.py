"""Running `.tflite` files with the LiteRT interpreter (`ai_edge_litert`), as a device would.

Inputs are preprocessed floats; for an int8/uint8 model they are quantized with the model's own input
scale and zero point (q = round(x / scale) + zero_point), and outputs dequantized the same way, so
accuracy is measured on exactly what the exported file computes. The quantization and batched
prediction are `device_runner`'s, the file that runs on devices, so host and device agree by design.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from edgepipe import device_runner
from edgepipe.device_runner import dequantize_output, quantize_input  # noqa: F401 - one implementation, re-exported
from edgepipe.errors import EdgepipeError


@contextlib.contextmanager
def quiet_native(dest: str | Path = os.devnull):
    """Send what Python and C++ code write to fds 1 and 2 to `dest` (/dev/null unless given).

    The converter prints "fully_quantize: ..." and TFLite Micro prints every failed allocation (the
    arena search fails on purpose). Failures still surface, as exceptions with their message. With a
    file as `dest` (a parallel run's stage log), it is truncated first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def interpreter(model: Path | bytes, num_threads: int | None = None, batch: int | None = None):
    """A LiteRT interpreter for a file or bytes, tensors allocated (for `batch` samples if given)."""
    from ai_edge_litert.interpreter import Interpreter

    name = str(model) if isinstance(model, Path) else "model bytes"
    try:
        kw = {"model_path": str(model)} if isinstance(model, Path) else {"model_content": bytes(model)}
        with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            interp = Interpreter(num_threads=num_threads, **kw)
            if batch:
                detail = interp.get_input_details()[0]
                interp.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EdgepipeError(f"{name}: not a valid LiteRT model ({' '.join(str(e).split())[:160]})",
                            "re-run the convert stage to regenerate it") from None
    return interp


def io_details(interp) -> tuple[dict, dict]:
    """(input, output) details of a single-input, single-output model."""
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise EdgepipeError(f"model has {len(ins)} inputs and {len(outs)} outputs", "edgepipe benches classifiers")
    return ins[0], outs[0]


def predict(model: Path | bytes, x: np.ndarray, batch: int = 250) -> np.ndarray:
    """Float outputs of the model on preprocessed inputs `x`, in batches (the device runner's code)."""
    return device_runner.predict(lambda n: interpreter(model, batch=n), x, batch=batch)
