"""Host-side reference outputs for the same int8 inputs (optional deps).

* ``tflite_micro`` (pip ``tflite-micro``): TFLM's reference kernels on x86.
* ``ai_edge_litert`` with ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``: TFLite's
  builtin kernels.
* ``ai_edge_litert`` default (``AUTO``): TFLite with its XNNPACK delegate.

Every function returns ``(N, output_record_bytes)`` uint8, the raw bytes of
all outputs concatenated -- the same layout as :class:`edgepipe.targets.mcu.run.EmulatorRun`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.targets.mcu.errors import McuError

__all__ = ["tflm_python", "litert", "compare"]


def _as_records(outs: list[list[np.ndarray]]) -> np.ndarray:
    rows = [np.concatenate([np.ascontiguousarray(o).view(np.uint8).ravel() for o in r]) for r in outs]
    return np.stack(rows) if rows else np.zeros((0, 0), np.uint8)


def tflm_python(model: str | Path, inputs: np.ndarray) -> np.ndarray:
    """Run the host ``tflite_micro`` interpreter on each row of *inputs*."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise McuError("the tflite_micro Python package is not installed", "pip install tflite-micro")
    it = runtime.Interpreter.from_file(str(model))
    det = it.get_input_details(0)
    outs = []
    from edgepipe.targets.mcu.model import read_model

    n_out = len(read_model(model).outputs)
    for x in inputs:
        it.set_input(np.asarray(x).reshape(det["shape"]).astype(det["dtype"]), 0)
        it.invoke()
        outs.append([it.get_output(i) for i in range(n_out)])
    return _as_records(outs)


def litert(model: str | Path, inputs: np.ndarray, *, xnnpack: bool) -> np.ndarray:
    """Run ``ai_edge_litert`` (XNNPACK default path or builtin kernels only)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise McuError("the ai_edge_litert package is not installed", "pip install ai-edge-litert")
    kind = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = Interpreter(model_path=str(model), experimental_op_resolver_type=kind)
    it.allocate_tensors()
    ind = it.get_input_details()[0]
    od = it.get_output_details()
    outs = []
    for x in inputs:
        it.set_tensor(ind["index"], np.asarray(x).reshape(ind["shape"]).astype(ind["dtype"]))
        it.invoke()
        outs.append([it.get_tensor(d["index"]) for d in od])
    return _as_records(outs)


def compare(device: np.ndarray, host: np.ndarray, out_dtype=np.int8) -> dict:
    """Bit-exactness and argmax agreement of two output-byte arrays."""
    if device.shape != host.shape:
        raise McuError(
            f"output shapes differ: device {device.shape}, host {host.shape}",
            "compare outputs of the same model and inputs",
        )
    same = np.all(device == host, axis=1)
    d = device.view(out_dtype).astype(np.int32)
    h = host.view(out_dtype).astype(np.int32)
    return {
        "n": int(len(device)),
        "bit_exact": int(same.sum()),
        "argmax_diff": int((d.argmax(1) != h.argmax(1)).sum()),
        "max_abs_lsb": int(np.abs(d - h).max()) if len(d) else 0,
    }
