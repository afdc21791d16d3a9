"""A trial's figures on the search's target, measured from its int8 `.tflite`, cached by the file's hash.

- An emulated microcontroller (`measure: emulated`): TFLite Micro + CMSIS-NN built for the core and
  linked for the board, a few validation images run on QEMU: instructions per inference, latency (if
  the profile is calibrated), flash and RAM of the linked firmware. The same code as the bench's.
- A microcontroller estimated (`measure: estimate`): TFLite Micro's arena on this host, flash and
  latency estimated from the model's bytes and MACs, tagged `estimate`.
- The host: LiteRT's median latency at one thread, the file's size as its flash; no RAM figure.

Each result is kept under the user's cache (`search-figures/`), keyed by the model bytes and what made
the figures (the target profile, the toolchain and QEMU versions), so a resumed or repeated search does
not measure a model twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.cache import cache_dir
from edgepipe.core.errors import EdgepipeError
from edgepipe.targets.profiles import Target

#: the figures a budget can bound, with the unit the report prints
FIGURES = ("latency_ms", "flash_bytes", "ram_bytes")


def supported(target: Target) -> str | None:
    """None if a search can measure on `target`, else why not."""
    if target.kind == "mcu" or target.reach == "local":
        return None
    return (f"a search measures every trial, so it needs a target it can reach from here: a microcontroller "
            f"profile (emulated or estimated) or host, not {target.name} ({target.reach})")


def environment(target: Target) -> dict:
    """What the figures depend on besides the model (for the cache key and the stage's key)."""
    env: dict = {"target": dataclasses.asdict(target)}
    if target.kind == "mcu" and target.measure == "emulated":
        from edgepipe.targets.mcu import measure as mcu

        env["emulator"] = mcu.environment(target)
    elif target.reach == "local":
        from edgepipe.targets.measure import host_provenance

        env["host"] = host_provenance()
    return env


def measure(tflite: Path, target: Target, x_float: np.ndarray, *, macs: int, work: Path, env_key: str) -> dict:
    """The figures of int8 model `tflite` on `target`: latency_ms (None when not calibrated), instructions,
    flash_bytes, ram_bytes, fits, provenance. `x_float`: a few preprocessed validation images."""
    blob = tflite.read_bytes()
    key = hashlib.sha256(blob + env_key.encode()).hexdigest()[:24]
    cached = cache_dir("search-figures") / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if target.kind == "mcu" and target.measure == "emulated":
        figures = _emulated(tflite, target, x_float, work)
    elif target.kind == "mcu":
        figures = _estimated(tflite, target, x_float, macs)
    else:
        figures = _host(tflite, x_float)
    fsio.write_json(cached, figures)
    return figures


def _emulated(tflite: Path, target: Target, x_float: np.ndarray, work: Path) -> dict:
    from edgepipe.targets.mcu import McuError
    from edgepipe.targets.mcu import measure as mcu

    y = np.zeros(len(x_float), np.int64)  # accuracy is the host's on the full val split; these run for figures
    try:
        got = mcu.emulate([tflite], x_float, y, {tflite.name: y}, target, work=work)[tflite.name]
    except McuError as e:
        raise EdgepipeError(f"search: emulating {tflite.name} on {target.name}: {e.message}", e.fix) from None
    if "instructions" not in got:  # it did not link: over the board's flash or RAM
        return {"latency_ms": None, "instructions": None, "flash_bytes": None, "ram_bytes": None, "fits": False,
                "why_not_fit": got.get("why_not_fit"), "provenance": "emulated"}
    return {"latency_ms": got["latency_ms"], "instructions": got["instructions"]["median"],
            "flash_bytes": got["flash_bytes"], "ram_bytes": got["ram_used_bytes"], "fits": got["fits"],
            "arena_bytes": got["arena_bytes"], "provenance": "emulated"}


def _estimated(tflite: Path, target: Target, x_float: np.ndarray, macs: int) -> dict:
    from edgepipe.targets import litert
    from edgepipe.targets.device_runner import quantize_input
    from edgepipe.targets.tflm import mcu_figures, tflm_check

    din, _ = litert.io_details(litert.interpreter(tflite))
    tflm = tflm_check(tflite, quantize_input(x_float, din), litert.predict(tflite, x_float).argmax(1))
    fit = mcu_figures(target, {"tflm": tflm, "size_bytes": tflite.stat().st_size, "macs": macs}, tflite)
    us = fit["latency_us_estimate"]
    return {"latency_ms": None if us is None else us / 1000, "instructions": None,
            "flash_bytes": fit["flash_needed_bytes"], "ram_bytes": fit["ram_needed_bytes"], "fits": fit["fits"],
            "arena_bytes": fit["arena_bytes"], "provenance": "estimate"}


def _host(tflite: Path, x_float: np.ndarray) -> dict:
    from edgepipe.core.native import quiet_native
    from edgepipe.targets import device_runner

    with quiet_native():
        got = device_runner.measure(str(tflite), x_float, np.zeros(len(x_float), np.int64), threads=[1], warmup=20,
                                    runs=200)
    return {"latency_ms": got["latency"]["threads_1"]["p50_us"] / 1000, "instructions": None,
            "flash_bytes": tflite.stat().st_size, "ram_bytes": None, "fits": True, "provenance": "host-litert"}
