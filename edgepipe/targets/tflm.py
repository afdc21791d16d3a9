"""TensorFlow Lite Micro on this host: does an int8 model run, what arena does it need, what would it cost.

The `tflite-micro` Python interpreter runs TFLite Micro's reference kernels on x86: it proves every op
of a model exists in TFLite Micro, finds the smallest tensor arena in which the model allocates and
runs (the way firmware engineers size `tensor_arena`), and gives its accuracy with TFLite Micro's own
arithmetic. `mcu_figures` turns that into a fit verdict for a microcontroller profile; its flash code
sizes and latency are estimates, labelled as such wherever they are shown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core.native import quiet_native
from edgepipe.targets import device_runner, lint, litert
from edgepipe.targets.mcu.arena import smallest_arena
from edgepipe.targets.profiles import Target

# TFLite Micro kernel code sizes (bytes, Cortex-M, -Os, CMSIS-NN where it has the kernel): an estimate for
# the flash check, grouped by cost. An op not listed counts as DEFAULT_KERNEL_BYTES.
KERNEL_FLASH_BYTES = {
    "CONV_2D": 9000,
    "DEPTHWISE_CONV_2D": 9000,
    "FULLY_CONNECTED": 4000,
    "SOFTMAX": 2500,
    "MAX_POOL_2D": 2000,
    "AVERAGE_POOL_2D": 2000,
    "MEAN": 2500,
    "ADD": 2500,
    "MUL": 2000,
    "RESHAPE": 500,
    "QUANTIZE": 1500,
    "DEQUANTIZE": 1500,
    "PAD": 1500,
    "CONCATENATION": 1500,
    "LOGISTIC": 1500,
    "TANH": 1500,
    "RELU": 800,
    "RELU6": 800,
    "HARD_SWISH": 1500,
}
DEFAULT_KERNEL_BYTES = 3000


def tflm_check(path: Path, x_q: np.ndarray, reference: np.ndarray, agree=None) -> dict:
    """Run the model in TFLite Micro: does it run, does it agree with LiteRT, what arena does it need.

    `reference` is LiteRT's result on the same inputs: a classifier's top-1 classes, or the raw outputs of
    another task's model, which `agree(reference, outputs)` (the task's agreement) compares with TFLite
    Micro's, dequantised.
    """
    from tflite_micro.python.tflite_micro import runtime

    blob = path.read_bytes()

    @quiet_native()
    def runs_with(arena: int) -> bool:
        try:
            interp = runtime.Interpreter.from_bytes(blob, arena_size=arena)
            interp.set_input(x_q[:1], 0)
            interp.invoke()
            return True
        except (RuntimeError, ValueError):
            return False

    # A try here takes a millisecond and the interpreter takes any byte count: the search starts from a size
    # meant to suffice (ten times the model, at least 64 KiB) and bisects down from it, nothing known to fail.
    generous = max(64 * 1024, 10 * len(blob))
    arena = smallest_arena(runs_with, generous)
    if arena is None:
        try:
            runtime.Interpreter.from_bytes(blob, arena_size=generous)
            error = "invoke failed"
        except (RuntimeError, ValueError) as e:
            error = " ".join(str(e).split())[:200]
        return {"ok": False, "error": error}
    interp = runtime.Interpreter.from_bytes(blob, arena_size=arena)
    outputs = []
    for x in x_q:
        interp.set_input(x[None], 0)
        interp.invoke()
        outputs.append(interp.get_output(0)[0])
    if reference.ndim == 1:
        top1 = np.array([int(np.argmax(o)) for o in outputs])
        agreement = {"top1_agreement_with_litert": float(np.mean(top1 == reference))}
    else:
        _, dout = litert.io_details(litert.interpreter(path))
        agreement = {
            "agreement_with_litert": agree(reference, device_runner.dequantize_output(np.stack(outputs), dout))
        }
    return {"ok": True, "arena_bytes": int(arena), **agreement, "samples": len(x_q)}


def tflm_accuracy(path: Path, x: np.ndarray, y: np.ndarray, arena: int) -> float:
    """Accuracy of an int8 model run by TFLite Micro's own kernels (what a microcontroller computes)."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=arena)
    din, _ = litert.io_details(litert.interpreter(path))
    x_q = device_runner.quantize_input(x, din)
    hits = 0
    for xi, yi in zip(x_q, y):
        interp.set_input(xi[None], 0)
        interp.invoke()
        hits += int(np.argmax(interp.get_output(0)) == yi)
    return hits / len(y)


def mcu_figures(target: Target, row: dict, path: Path) -> dict:
    """How an int8 model fits a microcontroller.

    RAM: the arena TFLite Micro needed on this host, plus the target's margin. Flash: the model's bytes
    plus the runtime's and its kernels' code (an estimate). Latency: MACs x cycles/MAC / clock (an
    estimate).
    """
    tflm = row.get("tflm") or {}
    ops, _, _, _ = lint.read_graph(path)
    kernels = sorted({op.name for op in ops})
    code = (target.runtime_flash_bytes or 0) + sum(KERNEL_FLASH_BYTES.get(k, DEFAULT_KERNEL_BYTES) for k in kernels)
    flash = row["size_bytes"] + code
    arena = tflm.get("arena_bytes")
    ram_needed = None if arena is None else int(arena * (1 + target.arena_margin))
    fits_ram = None if ram_needed is None or target.ram_bytes is None else ram_needed <= target.ram_bytes
    fits_flash = None if target.flash_bytes is None else flash <= target.flash_bytes
    latency_us = (
        row["macs"] * target.cycles_per_mac / target.clock_mhz if target.cycles_per_mac and target.clock_mhz else None
    )
    return {
        "arena_bytes": arena,
        "arena_margin": target.arena_margin,
        "ram_needed_bytes": ram_needed,
        "ram_bytes": target.ram_bytes,
        "flash_needed_bytes": flash,
        "flash_bytes": target.flash_bytes,
        "code_bytes_estimate": code,
        "ops": kernels,
        "fits_ram": fits_ram,
        "fits_flash": fits_flash,
        "fits": bool(tflm.get("ok")) and fits_ram is not False and fits_flash is not False,
        "latency_us_estimate": latency_us,
    }
