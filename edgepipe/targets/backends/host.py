"""This machine as the target: LiteRT (XNNPACK) on its CPU, the `host` profile.

Every bench measures on this host anyway (`edgepipe.targets.device_runner`, the code a device runs), so
the host's figures as a target are the bench row's own, tagged `host-litert`. A search measures each
trial's latency here the same way; its flash is the file's size.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from edgepipe.targets import device_runner
from edgepipe.targets.backends.protocol import Backend
from edgepipe.targets.profiles import Target


def host_provenance() -> dict:
    """What the host figures were measured on (every bench records it)."""
    import ai_edge_litert

    cpu = device_runner.provenance(None)["cpu"]
    try:
        from importlib.metadata import version

        tflm = version("tflite-micro")
    except Exception:  # noqa: BLE001
        tflm = None
    return {
        "target": "host",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "ai_edge_litert": getattr(ai_edge_litert, "__version__", None),
        "tflite_micro": tflm,
    }


class Host(Backend):
    name = "this host"
    searchable = True
    tasks = ("detection",)  # the bench's own host figures: the task judges LiteRT's outputs here

    def environment(self, target: Target, params) -> dict:
        return {"host": host_provenance()}

    def figures(self, target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray) -> dict:
        one = row["latency"].get("threads_1")
        return {
            "accuracy": {"value": row["accuracy"], "provenance": "host-litert"},
            "latency_p50_us": {"value": one and one["p50_us"], "provenance": "host-litert"},
            "memory": {"value": row.get("model_rss_bytes"), "what": "RSS growth", "provenance": "host-litert"},
        }

    def search_figures(self, target: Target, tflite: Path, x_float: np.ndarray, *, macs: int, work: Path) -> dict:
        from edgepipe.core.native import quiet_native

        with quiet_native():
            got = device_runner.measure(
                str(tflite), x_float, np.zeros(len(x_float), np.int64), threads=[1], warmup=20, runs=200
            )
        return {
            "latency_p50_us": {"value": got["latency"]["threads_1"]["p50_us"], "provenance": "host-litert"},
            "flash": {"value": tflite.stat().st_size, "provenance": "host-litert"},
            "fits": True,
        }
