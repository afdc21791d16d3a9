"""A Cortex-M measured on its emulator (`measure: emulated`): TFLite Micro + CMSIS-NN built for the core.

For each int8 model, `edgepipe.targets.mcu.measure.emulate` builds TFLite Micro with the model's kernels
for the profile's `cpu`, links the firmware for the board's flash and RAM (a model that overflows them
does not fit, and the region is named), and streams the test split through QEMU's `qemu_machine`.
Accuracy, instructions per inference, flash and RAM are measured on the target's instruction set,
tagged `emulated`; latency is instructions x the profile's calibrated `cycles_per_instruction` / clock,
and there is none without a calibration. It checks and bundles like any microcontroller (`mcu_estimate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.requirements import Requirement
from edgepipe.targets.backends.mcu_estimate import EstimatedMcu
from edgepipe.targets.profiles import Target


class EmulatedMcu(EstimatedMcu):
    name = "microcontroller (emulated)"
    tasks = ("detection",)  # the board's output tensors come back whole: the bench's task judges them

    def check_profile(self, target: Target) -> None:
        if not (target.cpu and target.qemu_machine):
            raise RecipeError(
                f"target {target.name}: measure: emulated needs cpu and qemu_machine",
                "e.g. cpu: cortex-m4 and qemu_machine: mps2-an386, or measure: estimate",
            )
        super().check_profile(target)

    def needs(self, target: Target, params) -> list[Requirement]:
        from edgepipe.targets.mcu import sources, toolchain

        return [toolchain.requirement(target.cpu or target.name), sources.requirement(target.tflm_src)]

    def environment(self, target: Target, params) -> dict:
        from edgepipe.targets.mcu import measure as mcu

        return {"emulator": mcu.environment(target)}  # the compiler, the emulator and the sources make the figures

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
        from edgepipe.targets.mcu.measure import emulate

        figures = emulate(models, x, y, host_top1, target, work=work / "emulated", timeout=params.emulator_timeout)
        first = next(iter(figures.values()), {}).get("emulator", {})
        return {"_provenance": {"emulated": True, **first}, **figures}

    def figures(self, target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray) -> dict:
        out = {"emulated": device, "fits": device["fits"]}
        if "accuracy" not in device:  # it did not link for the board: nothing ran
            out["why_not"] = f"does not fit {target.name}: {device['why_not_fit']}"
            return out
        out["accuracy"] = {"value": device["accuracy"], "provenance": "emulated"}
        ms = device["latency_ms"]
        out["latency_p50_us"] = {"value": None if ms is None else 1000 * ms, "provenance": "emulated"}
        out["instructions"] = {"value": device["instructions"]["median"], "provenance": "emulated"}
        out["flash"] = {"value": device["flash_bytes"], "provenance": "emulated"}
        out["memory"] = {"value": device["ram_used_bytes"], "what": "RAM", "provenance": "emulated"}
        return out

    def missing_figure(self, target: Target, figure: str) -> str | None:
        if figure == "latency_p50_us" and not target.cycles_per_instruction:
            return "has no latency calibration"
        return None

    def search_figures(self, target: Target, tflite: Path, x_float: np.ndarray, *, macs: int, work: Path) -> dict:
        """The bench's figures of the model, but accuracy: a search runs a few images for the figures, and
        judges accuracy on the host over the whole validation split."""
        from edgepipe.targets.mcu import McuError
        from edgepipe.targets.mcu.measure import emulate

        y = np.zeros(len(x_float), np.int64)
        try:
            got = emulate([tflite], x_float, y, {tflite.name: y}, target, work=work)[tflite.name]
        except McuError as e:
            raise EdgepipeError(f"search: emulating {tflite.name} on {target.name}: {e.message}", e.fix) from None
        figures = self.figures(target, {}, tflite, got, x_float, y)
        return {k: v for k, v in figures.items() if k not in ("emulated", "accuracy")}
