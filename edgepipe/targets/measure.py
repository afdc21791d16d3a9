"""The figures of one benched model on its target, each tagged with where it comes from.

The provenance keys are `edgepipe.targets.provenance.PROVENANCE`'s.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from edgepipe.targets import device_runner
from edgepipe.targets.profiles import Target
from edgepipe.targets.tflm import mcu_figures, tflm_accuracy


def host_provenance() -> dict:
    """What the figures were measured on."""
    import ai_edge_litert

    cpu = device_runner.provenance(None)["cpu"]
    try:
        from importlib.metadata import version

        tflm = version("tflite-micro")
    except Exception:  # noqa: BLE001
        tflm = None
    return {"target": "host", "cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "ai_edge_litert": getattr(ai_edge_litert, "__version__", None),
            "tflite_micro": tflm}



def target_figures(target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray,
                   y: np.ndarray) -> dict:
    """The row's accuracy, latency and memory on the target, each tagged with its `PROVENANCE` key."""
    out: dict = {"name": target.name, "deployable": target.runs(row["variant"])}
    if not out["deployable"]:
        out["why_not"] = f"{target.name} runs full-int8 models only"
        return out
    one = row["latency"].get("threads_1")
    if target.reach == "local":
        out["accuracy"] = {"value": row["accuracy"], "provenance": "host-litert"}
        out["latency_p50_us"] = {"value": one and one["p50_us"], "provenance": "host-litert"}
        out["memory"] = {"value": row.get("model_rss_bytes"), "what": "RSS growth", "provenance": "host-litert"}
    elif target.kind == "mcu" and device is not None:  # emulated: TFLite Micro + CMSIS-NN on the core
        out["emulated"] = device
        out["fits"] = device["fits"]
        if "accuracy" not in device:  # it did not link for the board: nothing ran
            out["why_not"] = f"does not fit {target.name}: {device['why_not_fit']}"
            return out
        out["accuracy"] = {"value": device["accuracy"], "provenance": "emulated"}
        ms = device["latency_ms"]
        out["latency_p50_us"] = {"value": None if ms is None else 1000 * ms, "provenance": "emulated"}
        out["instructions"] = {"value": device["instructions"]["median"], "provenance": "emulated"}
        out["flash"] = {"value": device["flash_bytes"], "provenance": "emulated"}
        out["memory"] = {"value": device["ram_used_bytes"], "what": "RAM", "provenance": "emulated"}
    elif target.kind == "mcu":
        mcu = mcu_figures(target, row, path)
        acc = tflm_accuracy(path, x, y, mcu["arena_bytes"]) if mcu["arena_bytes"] else None
        out.update(mcu=mcu, fits=mcu["fits"])
        out["accuracy"] = {"value": acc, "provenance": "tflm-host"}
        out["latency_p50_us"] = {"value": mcu["latency_us_estimate"], "provenance": "estimate"}
        out["memory"] = {"value": mcu["arena_bytes"], "what": "arena", "provenance": "tflm-host"}
    elif target.reach == "adb":
        out["latency"] = device.get("threads") or {"threads_1": device}
        out["accuracy"] = {"value": row["accuracy"], "provenance": "host-litert"}
        out["latency_p50_us"] = {"value": device.get("p50_us"), "provenance": "target"}  # the median; None if not printed
        out["memory"] = {"value": device.get("memory_bytes"), "what": "peak", "provenance": "target"}
    else:  # measured on the device over SSH
        out.update({k: device[k] for k in ("latency", "predictions_sha256", "peak_rss_bytes", "edgetpu") if k in device})
        dev_one = device["latency"].get("threads_1")
        out["accuracy"] = {"value": device["accuracy"], "provenance": "target"}
        out["latency_p50_us"] = {"value": dev_one and dev_one["p50_us"], "provenance": "target"}
        out["memory"] = {"value": device.get("model_rss_bytes"), "what": "RSS growth", "provenance": "target"}
        if device.get("emulated"):  # an emulator's timings and memory are the emulator's, not the device's
            out["emulated_device"] = device["emulated"]
            out["latency_p50_us"] = {"value": None, "provenance": "target", "not_measured": "emulated"}
            out["memory"] = {"value": None, "what": "RSS growth", "provenance": "target", "not_measured": "emulated"}
        out["same_predictions_as_host"] = device.get("predictions_sha256") == row.get("predictions_sha256")
    return out
