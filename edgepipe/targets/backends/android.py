"""An Android phone over adb: LiteRT's `benchmark_model` binary (`edgepipe.targets.android`).

Each model is pushed to the phone and timed there at every thread count of the bench (the first is the
row's), with the delegate the bench names. `benchmark_model` measures speed and memory only, so the
accuracy on the phone is the host LiteRT figure, tagged as such.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core.requirements import Requirement
from edgepipe.targets.backends.protocol import Backend, command
from edgepipe.targets.profiles import Target


class Android(Backend):
    name = "Android phone over adb"

    def needs(self, target: Target, params) -> list[Requirement]:
        return [
            command(
                "adb",
                "adb, to reach the Android phone",
                "apt-get install adb, then connect the phone with USB debugging on",
            )
        ]

    def environment(self, target: Target, params) -> dict:
        return {"device": [params.adb_serial, *params.fleet]}

    def measure(
        self,
        target: Target,
        params,
        models: list[Path],
        x: np.ndarray,
        y: np.ndarray,
        *,
        work: Path,
        host_top1: dict[str, np.ndarray],
        out: Path,
    ) -> dict:
        from edgepipe.targets import android

        measured = {"_provenance": {"adb_serial": params.adb_serial, "delegate": params.android_delegate}}
        for m in models:  # the first thread count is the row's; every one is kept (0: benchmark_model's default)
            runs = {
                t: android.bench(
                    m,
                    params.benchmark_model,
                    threads=t if t else -1,
                    runs=params.runs,
                    warmup=params.warmup,
                    serial=params.adb_serial,
                    delegate=params.android_delegate,
                )
                for t in params.threads
            }
            measured[m.name] = {**runs[params.threads[0]], "threads": {f"threads_{t}": r for t, r in runs.items()}}
        return measured

    def figures(self, target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray) -> dict:
        return {
            "latency": device.get("threads") or {"threads_1": device},
            "accuracy": {"value": row["accuracy"], "provenance": "host-litert"},
            "latency_p50_us": {"value": device.get("p50_us"), "provenance": "target"},  # None if not printed
            "memory": {"value": device.get("memory_bytes"), "what": "peak", "provenance": "target"},
        }
