"""A bench's figures for int8 models on an emulated Cortex-M: what the bench stage calls for `measure: emulated`.

For each model: TFLite Micro with CMSIS-NN built for the profile's core (only the kernels the model uses;
cached), the bundle files (`model_data.cc`, `model_ops.h`, `model_io.h`) written by the same code the
bundle stage uses, the tensor arena sized on the board, then the whole test split streamed through the
emulated board. Recorded: accuracy with the CMSIS-NN kernels, agreement with the host's LiteRT
predictions and with the `tflite_micro` Python interpreter's output bytes, instructions per inference,
deployable flash and RAM from the linked ELF (by origin), arena, stack and heap high-water marks.

Latency is instructions x the profile's calibrated cycles per instruction / its clock, and only when the
profile has a calibration (`cycles_per_instruction`); otherwise the figure is the instruction count alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edgepipe.core import progress, ui
from edgepipe.targets.device_runner import dequantize_output
from edgepipe.targets.mcu.build import build
from edgepipe.targets.mcu.cores import BOARDS, get_core
from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.memory import memory_report
from edgepipe.targets.mcu.model import read_model
from edgepipe.targets.mcu.prepare import prepare_firmware
from edgepipe.targets.mcu.reference import compare, tflm_python
from edgepipe.targets.mcu.run import run_many
from edgepipe.targets.mcu.sources import locate_sources
from edgepipe.targets.mcu.toolchain import find_toolchain


def environment(target) -> dict:
    """What the emulated figures depend on beyond the models: the toolchain, the emulator, the sources (for
    the bench's cache key, so an upgraded compiler or QEMU re-benches)."""
    tc = find_toolchain()
    return {**tc.versions(), "tflm_sources": locate_sources(target.tflm_src).fingerprint}


def emulate(
    models: list[Path],
    x_float: np.ndarray,
    y: np.ndarray,
    host_top1: dict[str, np.ndarray],
    target,
    *,
    work: Path,
    timeout: float = 900.0,
) -> dict[str, dict]:
    """Emulated figures of each int8 `.tflite` in `models`, by file name.

    Args:
        models: the model files (int8, one input, one output).
        x_float: the test split preprocessed as the model's float source takes it.
        y: the labels.
        host_top1: file name -> LiteRT's predicted class on this host, for the agreement figure.
        target: the `Target` profile (`cpu`, `qemu_machine`, `tflm_src`, flash, RAM, clock, calibration).
        work: scratch space for firmware and emulator files.
    """
    from edgepipe.targets.device_runner import quantize_input
    from edgepipe.targets.litert import interpreter, io_details

    toolchain = find_toolchain()
    sources = locate_sources(target.tflm_src)
    core = get_core(target.cpu)
    if BOARDS[core.machine]["cpu"] != target.cpu or (target.qemu_machine and target.qemu_machine != core.machine):
        raise McuError(
            f"target {target.name}: qemu_machine {target.qemu_machine} does not emulate {target.cpu}",
            f"use qemu_machine: {core.machine} for {target.cpu}",
        )
    jobs, prepared, out = [], [], {}
    for k, path in enumerate(models):
        progress.update(k, len(models), "firmware", path.name)
        info = read_model(path)
        built = build(sources, core, model=info, int8_kernels=True, toolchain=toolchain, progress=_progress(core.name))
        try:  # linked for the profile's flash and RAM: what overflows them does not fit the board
            fw, sizing = prepare_firmware(
                info, built, work_dir=work / path.stem, flash_size=target.flash_bytes, ram_size=target.ram_bytes
            )
        except McuError as e:
            if not e.message.startswith("model does not fit"):
                raise
            out[path.name] = {
                "fits": False,
                "why_not_fit": e.message.removeprefix("model does not fit the board: "),
                "ops": [m.op for m in built.ops],
            }
            continue
        din, _ = io_details(interpreter(path))
        x_q = quantize_input(x_float, din)
        prepared.append((path, built, fw, sizing, x_q))
        jobs.append({"elf": fw, "inputs": x_q, "timeout": timeout, "run_dir": work / path.stem / "run"})
    names = [path.name for path, *_ in prepared]
    if jobs:
        progress.update(0, len(jobs), "model", "on the emulator")
    results = run_many(
        jobs,
        max_parallel=os.cpu_count(),
        on_done=lambda k, i: progress.update(k, len(jobs), "model", f"emulated {names[i]}"),
    )
    for (path, built, fw, sizing, x_q), res in zip(prepared, results):
        if isinstance(res, Exception):
            raise res
        reference = compare(res.outputs, tflm_python(path, x_q), np.int8)
        memory = memory_report(fw.elf, fw.map, size_exe=toolchain.size).with_measured(res.summary)
        stats = res.stats()
        out[path.name] = {
            **_judged(res.outputs, read_model(path).outputs[0], y, host_top1, path.name),
            "outputs_bit_exact_with_tflite_micro": reference["bit_exact"],
            "instructions": {
                "min": stats["instr_min"],
                "median": float(np.median(res.instructions)),
                "mean": stats["instr_mean"],
                "max": stats["instr_max"],
            },
            "latency_ms": latency_ms(float(np.median(res.instructions)), target),
            "fits": memory.flash_bytes <= target.flash_bytes and memory.measured["ram_used_bytes"] <= target.ram_bytes,
            "flash_bytes": memory.flash_bytes,
            "flash_by_origin": memory.flash_by_origin,
            "ram_used_bytes": memory.measured["ram_used_bytes"],
            "ram_linked_bytes": memory.ram_bytes,
            "ram_by_origin": memory.ram_by_origin,
            "arena_used_bytes": memory.measured["arena_used_bytes"],
            "arena_bytes": sizing["arena_size"],
            "stack_used_bytes": memory.measured["stack_used_bytes"],
            "heap_used_bytes": memory.measured["heap_used_bytes"],
            "ops": [m.op for m in built.ops],
            "kernels": "int8 (CMSIS-NN)",
            "emulator": {
                "machine": core.machine,
                "cpu": core.name,
                **toolchain.versions(),
                "wall_seconds": round(res.wall_seconds, 2),
                "instructions_per_tick": res.instr_per_tick,
            },
        }
    return out


def _judged(record: np.ndarray, output, y: np.ndarray, host_top1: dict[str, np.ndarray], name: str) -> dict:
    """A classifier's figures from the board's output bytes (labels `y` are classes); for another task (a
    detector's boxes), the dequantized raw outputs, which the bench's task judges like the host's."""
    raw = record.view(np.dtype(output.dtype))
    if y.ndim != 1:
        detail = {"dtype": raw.dtype, "quantization": (output.scale or 1.0, output.zero_point or 0)}
        return {
            "outputs": dequantize_output(raw, detail).reshape((len(raw), *output.shape[1:])),
            "test_samples": int(len(raw)),
            "outputs_sha256": hashlib.sha256(raw.tobytes()).hexdigest(),
        }
    pred = raw.argmax(1)
    return {
        "accuracy": float(np.mean(pred == y)),
        "test_samples": int(len(y)),
        "per_class_accuracy": [
            float(np.mean(pred[y == c] == c)) if np.any(y == c) else None for c in range(raw.shape[1])
        ],
        "predictions_sha256": hashlib.sha256(pred.astype(np.int64).tobytes()).hexdigest(),
        "top1_agreement_with_host_litert": float(np.mean(pred == host_top1[name])),
    }


def _progress(cpu: str):
    """A build's progress as a few lines (a quarter at a time), or none when everything is cached."""
    import time

    start, shown = time.monotonic(), set()

    def say(done: int, total: int) -> None:
        quarter = 4 * done // total
        if time.monotonic() - start > 2 and quarter not in shown:  # a cached build ends within 2 s, silently
            shown.add(quarter)
            ui.say(f"    building TFLite Micro for {cpu}: {done}/{total} objects")

    return say


def latency_ms(instructions: float, target) -> float | None:
    """Instructions x calibrated cycles per instruction / clock; None without a calibration."""
    if not target.cycles_per_instruction or not target.clock_mhz:
        return None
    return instructions * target.cycles_per_instruction / (target.clock_mhz * 1e3)
