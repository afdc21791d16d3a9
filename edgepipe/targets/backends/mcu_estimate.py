"""A microcontroller estimated from this host (`measure: estimate`; no toolchain needed).

TFLite Micro's Python interpreter runs the int8 model on this host: it proves every operator exists in
TFLite Micro, finds the smallest tensor arena, and gives the accuracy with TFLite Micro's own kernels
(tagged `tflm-host`). Flash (the model's bytes plus the runtime's and its kernels' code) and latency
(MACs x `cycles_per_mac` / clock) are estimates, tagged `estimate` (`edgepipe.targets.tflm.mcu_figures`).

Every microcontroller bundles the same way: the model as a C array, its op resolver and I/O header,
for an Arm core a project that builds and checks itself, and `fit.json`. The emulated microcontroller
(`mcu_emulated`) is this backend measured on QEMU instead, and shares its checks and its bundle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.requirements import Requirement
from edgepipe.targets import device_runner, litert
from edgepipe.targets.backends.protocol import Backend
from edgepipe.targets.lint import Runtime
from edgepipe.targets.profiles import Target
from edgepipe.targets.tflm import mcu_figures, tflm_accuracy, tflm_check

#: test images a bundle's sample check runs (a classifier's bundle ships the first 8 of them)
SAMPLES = 100

# Built-in operators of TFLite Micro's op resolver (tflite-micro `micro_mutable_op_resolver.h`, 2025).
TFLITE_MICRO = Runtime(
    "TFLite Micro",
    frozenset(
        """
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND BROADCAST_ARGS
BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE
DIV ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND
GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND
LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAX_POOL_2D MAXIMUM MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK
PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_MAX RELU RELU6 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR
ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE
SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM
UNPACK VAR_HANDLE WHILE ZEROS_LIKE
""".split()
    ),
)


class EstimatedMcu(Backend):
    name = "microcontroller (estimated)"
    measure_choices = ("emulated", "estimate")
    searchable = True
    runtime = TFLITE_MICRO  # TFLite Micro's kernels take every operator version: nothing refused

    def check_profile(self, target: Target) -> None:
        missing = [k for k in ("ram_bytes", "flash_bytes", "clock_mhz") if getattr(target, k) is None]
        if missing:  # the fit verdict and every latency in ms need them
            raise RecipeError(
                f"target {target.name}: a microcontroller profile needs {', '.join(missing)}",
                f"add {', '.join(f'{k}: ...' for k in missing)} (see `edgepipe targets cortex-m4`)",
            )

    def check(self, target: Target, params) -> None:
        if not params.tflm:
            raise EdgepipeError(
                f"target {target.name} is a microcontroller, measured with TFLite Micro, but tflm is false",
                "drop tflm: false from this bench stage",
            )

    def figures(self, target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray) -> dict:
        mcu = mcu_figures(target, row, path)
        acc = tflm_accuracy(path, x, y, mcu["arena_bytes"]) if mcu["arena_bytes"] else None
        return {
            "mcu": mcu,
            "fits": mcu["fits"],
            "accuracy": {"value": acc, "provenance": "tflm-host"},
            "latency_p50_us": {"value": mcu["latency_us_estimate"], "provenance": "estimate"},
            "memory": {"value": mcu["arena_bytes"], "what": "arena", "provenance": "tflm-host"},
        }

    def search_figures(self, target: Target, tflite: Path, x_float: np.ndarray, *, macs: int, work: Path) -> dict:
        din, _ = litert.io_details(litert.interpreter(tflite))
        tflm = tflm_check(tflite, device_runner.quantize_input(x_float, din), litert.predict(tflite, x_float).argmax(1))
        fit = mcu_figures(target, {"tflm": tflm, "size_bytes": tflite.stat().st_size, "macs": macs}, tflite)
        return {
            "latency_p50_us": {"value": fit["latency_us_estimate"], "provenance": "estimate"},
            "flash": {"value": fit["flash_needed_bytes"], "provenance": "estimate"},
            "memory": {"value": fit["ram_needed_bytes"], "what": "arena + margin", "provenance": "estimate"},
            "fits": fit["fits"],
        }

    def bundle_needs(self, target: Target) -> list[Requirement]:
        from edgepipe.targets.mcu import sources

        return [sources.requirement(target.tflm_src)]  # the op resolver and the project are TFLite Micro's

    def bundle_files(
        self, target: Target, out: Path, model: Path, side: dict, ds, *, symbol: str, bench_dirs: list[Path]
    ) -> dict | None:
        """The C array, op resolver, I/O header, and for an Arm core a project that builds and checks itself
        (Makefile, TFLite Micro source list, harness, example); fit.json. Returns the fit.

        A detection model's bundle also ships the C decoding of its output, and its `make check` runs the
        model and the decoding on every sample, the first `SAMPLES` test images, not a classifier's 8."""
        from edgepipe.targets.mcu.bundle import ALIGN, write_bundle
        from edgepipe.targets.mcu.project import write_project
        from edgepipe.targets.mcu.project_detect import grid_facts, python_detections, write_decoder
        from edgepipe.targets.mcu.reference import tflm_python
        from edgepipe.targets.mcu.sources import locate_sources
        from edgepipe.tasks import task_of

        measured = _emulated_figures(bench_dirs, target, side["file"])
        task = task_of(ds.info)
        detect = grid_facts(side, ds.info) if task.name == "detection" else None
        x = ds.preprocess(ds.splits["test"][0][:SAMPLES])
        raw = litert.predict(model, x)
        din, _ = litert.io_details(litert.interpreter(model))
        x_q = device_runner.quantize_input(x, din)
        if detect is None:
            tflm = tflm_check(model, x_q, raw.argmax(1))
        else:
            tflm = tflm_check(model, x_q, raw, lambda a, b: task.agreement(a, b, ds.info))
        if not tflm["ok"]:
            raise EdgepipeError(
                f"bundle: TFLite Micro cannot run {model.name}: {tflm['error']}",
                f"run `edgepipe lint {model.name} --target {target.name}` to see which op",
            )
        fit = mcu_figures(target, {**side, "tflm": tflm}, model)
        if measured:  # the arena the board needed, not the host's estimate plus a margin
            arena, note = (
                measured["arena_bytes"],
                (
                    f"the smallest arena in which the model ran on the emulated "
                    f"{target.cpu} (arena_used_bytes() {measured['arena_used_bytes']})"
                ),
            )
        else:
            arena, note = (
                fit["ram_needed_bytes"],
                (f"TFLite Micro needed {fit['arena_bytes']} bytes on the host; plus the target's margin"),
            )
        sources = locate_sources(target.tflm_src)
        write_bundle(
            model, out, sources.root, arena_size=arena, symbol=symbol, side=side, arena_note=note, detect=detect
        )
        if detect is not None:
            write_decoder(out)
        if target.cpu:
            samples = x_q if detect else x_q[:8]
            expected = tflm_python(model, samples)
            write_project(
                out,
                model,
                sources,
                target.cpu,
                flash_bytes=target.flash_bytes,
                ram_bytes=target.ram_bytes,
                samples=samples,
                expected=expected,
                detections=None if detect is None else python_detections(expected, detect),
            )
        fit = {**fit, "arena_hint_bytes": -(-arena // ALIGN) * ALIGN, "measured": measured}
        if detect is not None:  # the grid facts of the C decoding the bundle ships, checked on every test image
            fit["detect"] = {
                **detect,
                "checked_on_board": bool(target.cpu),
                "every_test_image": _decode_check(model, ds, din, detect, target),
            }
        fsio.write_json(out / "fit.json", {"target": dataclasses.asdict(target), **fit})
        return fit


def _decode_check(model: Path, ds, din: dict, facts: dict, target: Target) -> dict:
    """The shipped C decoding run on the emulated Cortex-M4 over every test image's int8 outputs, equal to the
    Python decoding (or why it was not run: no Arm toolchain or QEMU here, which the bundle does not need)."""
    from edgepipe.targets.mcu import toolchain
    from edgepipe.targets.mcu.project_detect import check_every_image

    if not target.cpu:
        return {"images": 0, "why_not": f"{target.name} has no Arm core to emulate"}
    if (missing := toolchain.requirement(target.cpu).unmet()) is not None:
        return {"images": 0, "why_not": missing}
    return check_every_image(model, device_runner.quantize_input(ds.preprocess(ds.splits["test"][0]), din), facts)


def _emulated_figures(bench_dirs: list[Path], target: Target, file: str) -> dict | None:
    """The figures an emulated bench of this target measured for this model file, if one is given."""
    for d in bench_dirs:
        b = json.loads((Path(d) / "bench.json").read_text())
        if b.get("target", {}).get("name") != target.name:
            continue
        for r in b["rows"]:
            if r["file"] == file and (r.get("target") or {}).get("emulated", {}).get("accuracy") is not None:
                return r["target"]["emulated"]
    return None
