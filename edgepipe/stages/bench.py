"""The bench stage: measure every converted model by running the exported file, on a target.

Per model, on this host: accuracy on the full test split and on the validation split (inputs preprocessed
and quantized exactly as on a device; what edgepipe chooses on is the validation figure, the test figure is
only reported), latency percentiles of single-image invokes after warm-up at 1 thread and at every core
(timed in rounds, the models taking turns, so that they share the machine's drift), FPS, memory, size,
parameters and MACs; for int8 models whether TensorFlow Lite Micro runs it and the smallest arena it needs
(found by search, the way firmware engineers size `tensor_arena`). The host figures come from
`device_runner`, the same code a device runs.

Then the target: first the op lint (what the target cannot run), then its figures, measured by the
target's backend (`edgepipe.targets.backends`: the host, a device over SSH or adb, a Cortex-M emulated
or estimated), each tagged with where it comes from (`edgepipe.targets.provenance.PROVENANCE`). The
stage is keyed on the host, its runtime versions and the target, so another machine or device reruns it.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from typing import Literal

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import quiet_native
from edgepipe.core.params import param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.export.sidecar import sidecars
from edgepipe.targets import backends, device_runner, lint, litert
from edgepipe.targets.backends import Backend, backend_for
from edgepipe.targets.backends.host import host_provenance
from edgepipe.targets.profiles import Target, load_target
from edgepipe.targets.tflm import tflm_check
from edgepipe.tasks import task_of


@dataclasses.dataclass
class BenchParams:
    """Parameters of the bench stage."""

    target: str | None = param(None, "target profile (name or .yaml); null: the recipe's `target:`, else host")
    host: str | None = param(None, "user@address[:port] of an SSH target (also --host on the command line)")
    fleet: list[str] = param([], "more user@address[:port] of the same kind of device, benched beside `host`")
    parallel: int = param(4, "devices benched at once (a bounded pool)", min=1, max=64)
    identity: str | None = param(None, "SSH private key for the host (null: the user's own ssh setup)")
    ssh_options: list[str] = param([], "extra ssh -o options, e.g. [Port=2222, UserKnownHostsFile=~/pi_hosts]")
    python: str | None = param(None, "Python with ai-edge-litert on the device (null: the target profile's)")
    warmup: int = param(20, "untimed invokes before timing", min=0)
    runs: int = param(300, "timed single-image invokes per model and thread count", min=5)
    rounds: int = param(
        5,
        "host latency is timed in rounds, every model in turn in each, so that a machine's "
        "drift during the bench falls on all models alike",
        min=1,
    )
    threads: list[int] = param([1, 0], "thread counts to time; 0 means every core")
    tflm: bool = param(True, "check int8 models with TensorFlow Lite Micro and measure the arena")
    max_test_samples: int | None = param(None, "cap the test images used for accuracy (null: all)", min=1)
    edgetpu_compiler: str = param("edgetpu_compiler", "Coral: the compiler command")
    benchmark_model: str | None = param(None, "android: path of LiteRT's benchmark_model binary for the phone")
    adb_serial: str | None = param(None, "android: the phone's serial when several are connected")
    android_delegate: Literal["none", "gpu", "nnapi"] = param(
        "none", "android: the delegate benchmark_model runs the model with"
    )
    measure: Literal["profile", "emulated", "estimate"] = param(
        "profile",
        "as the target profile says; emulated: on QEMU (a microcontroller: TFLite Micro built for its "
        "core; rpi4/rpi5: LiteRT in the Pi's arm64 Python, no latency); estimate: a microcontroller without a "
        "toolchain",
    )
    emulator_timeout: float = param(900.0, "wall-clock limit of one model's emulated run, in seconds", min=1.0)


def environment(params: BenchParams) -> dict:
    """Part of the cache key: the target, and the machine and runtime the figures come from.

    A remote device cannot be asked without connecting, so a device target is keyed on its profile and
    address; the host's own runtime versions are part of every key (they run the lint and TFLM).
    """
    p = host_provenance()
    key = {k: p[k] for k in ("cpu", "cores", "machine", "ai_edge_litert", "tflite_micro")}
    target, backend = effective_target(params)
    key["target"] = dataclasses.asdict(target)
    try:
        key.update(backend.environment(target, params))
    except EdgepipeError:
        key["environment"] = "unavailable"  # the preflight, then the stage itself, says what to install
    return key


def needs(params: BenchParams) -> list:
    """What measuring on the target needs from this machine (checked before the run starts); params that do
    not fit the target are refused first, since no install would fix them."""
    target, backend = effective_target(params)
    _check(target, backend, params)
    return backend.needs(target, params)


def effective_target(params: BenchParams) -> tuple[Target, Backend]:
    """The target profile, with the bench's `measure` override applied where the device takes one, and the
    backend that measures on it."""
    return backends.measured_as(load_target(params.target or "host"), params.measure)


def _check(target: Target, backend: Backend, params: BenchParams) -> None:
    """Refuse params the target cannot take, before anything is measured."""
    if params.host and not backend.takes_host:
        device_itself = backend_for(load_target(params.target or "host")).takes_host  # without the measure param
        other = (
            f"drop measure: {params.measure} to bench the device itself"
            if device_itself
            else "use an SSH target such as rpi4"
        )
        raise EdgepipeError(
            f"target {target.name} is measured by {backend.name}, not over SSH, but a host was given",
            f"drop --host (or the host param), or {other}",
        )
    if params.measure != "profile" and params.measure not in backend.measure_choices:
        takes = (
            f"takes measure: {' or '.join(backend.measure_choices)}"
            if backend.measure_choices
            else "is measured one way only"
        )
        raise EdgepipeError(
            f"measure: {params.measure} does not apply to target {target.name} ({backend.name}), which {takes}",
            "drop measure from this bench stage"
            + (f", or use measure: {backend.measure_choices[0]}" if backend.measure_choices else ""),
        )
    backend.check(target, params)


def check_task(params: BenchParams, task: str) -> None:
    """Refuse a task (`edgepipe.tasks`) whose raw outputs the target's backend cannot bring back to be judged."""
    backends.check_task(effective_target(params)[0], task, "bench")


def run_bench_stage(params: BenchParams, io: StageIO) -> str:
    """Lint every model for the target, measure it on this host and on the target; write bench.json."""
    target, backend = effective_target(params)
    _check(target, backend, params)
    ds = load_dataset(io.inputs["data"])
    task = task_of(ds.info)
    check_task(params, task.name)
    x_test, y_test = ds.splits["test"]
    if params.max_test_samples:
        x_test, y_test = x_test[: params.max_test_samples], y_test[: params.max_test_samples]
    x = ds.preprocess(x_test)
    models = _benchable_models(io, ds, x)

    # The lint runs first: what a target cannot run is said before anything is copied anywhere.
    findings = lint.lint_models(models, target, backend.runtime)
    if findings:
        fsio.write_json(io.out / "diagnostics.json", findings)

    deployable = [path for path, side in models if target.runs(side["variant"])]
    # Host figures come from device_runner, the code a device runs, so they compare like for like.
    with quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        measured = device_runner.measure_many(
            [str(p) for p, _ in models],
            x,
            y_test,
            params.threads,
            params.warmup,
            params.runs,
            rounds=params.rounds,
            keep_predictions=True,
        )
    host_outputs = {}
    for p, m in measured.items():
        if "outputs" in m:  # raw outputs (a detector's): the task judges them
            outputs = host_outputs[Path(p).name] = m.pop("outputs")
            m["checked_outputs"] = outputs[:TFLM_SAMPLES]  # what TFLite Micro's are compared with
            m["task_metrics"] = task.metrics(y_test, outputs, ds.info)
            m["accuracy"] = m["task_metrics"][task.headline]
            m.update(task.examples(outputs, ds.info))
    host_top1 = {Path(p).name: m["predictions"] for p, m in measured.items() if "predictions" in m}
    val = _val_accuracy(models, ds)
    device = backend.measure(target, params, deployable, x, y_test, work=io.work, host_top1=host_top1, out=io.out)
    _judge_device_outputs(device, task, y_test, ds.info, host_outputs)
    rows = [
        _row(path, side, measured[str(path)] | val[path], findings, target, backend, params, device, x, y_test, ds.info)
        for path, side in models
    ]
    fsio.write_json(
        io.out / "bench.json",
        {
            "provenance": host_provenance(),
            "target": dataclasses.asdict(target),
            "device": device.get("_provenance"),
            "fleet": {h: d["provenance"] for h, d in device.get("_fleet", {}).items()},
            "data": Path(io.inputs["data"]).name,
            "classes": ds.classes,
            "metric": {
                "name": task.headline,
                "short": task.headline_short,
                "label": task.headline_label,
                "shown": list(task.report_metrics),
            },
            "rows": rows,
        },
    )
    where = "" if target.name == "host" else f" on {target.name}"
    counted = [f for f in findings if not f.get("intended")]
    lint_note = f"; {len(counted)} lint findings" if counted else ""
    runnable = [r for r in rows if r["target"]["deployable"]] or rows  # an MCU runs only the int8 models
    return f"{len(rows)} models benched{where}; {best_lines(runnable)}{lint_note}"


def _judge_device_outputs(device: dict, task, y: np.ndarray, info: dict, host_outputs: dict) -> None:
    """In place: a device's raw outputs (a detector's, from a backend in `Backend.tasks`) become the task's
    metrics, its headline as `accuracy`, and its agreement with LiteRT's outputs on this host."""
    for name, figures in device.items():
        if name.startswith("_") or not isinstance(figures, dict) or "outputs" not in figures:
            continue
        outputs = figures.pop("outputs")
        figures["task_metrics"] = task.metrics(y[: len(outputs)], outputs, info)
        figures["accuracy"] = figures["task_metrics"][task.headline]
        reference = host_outputs[name][: len(outputs)]
        figures[f"{task.agreement_name}_with_host_litert"] = task.agreement(reference, outputs, info)


#: test images TFLite Micro runs on this host, to check it agrees with LiteRT and to size the arena
TFLM_SAMPLES = 100


def _val_accuracy(models: list[tuple[Path, dict]], ds) -> dict[Path, dict]:
    """Each model's headline metric (a classifier's accuracy) on the data stage's validation split, from the
    .tflite on this host: the figure the report's gates and "most accurate" lines choose on (the test split is
    only for the final figure). None when the dataset has no validation images."""
    task = task_of(ds.info)
    x_val, y_val = ds.splits["val"]
    out = {}
    for path, _ in models:
        if not len(y_val):
            out[path] = {"val_accuracy": None, "val_samples": 0}
            continue
        with quiet_native():
            outputs = litert.predict(path, ds.preprocess(x_val))
        out[path] = {
            "val_accuracy": task.metrics(y_val, outputs, ds.info)[task.headline],
            "val_samples": int(len(y_val)),
        }
    return out


def _benchable_models(io: StageIO, ds, x: np.ndarray) -> list[tuple[Path, dict]]:
    """Every .tflite of the input convert stages with its sidecar, checked to take this bench's data."""
    models: list[tuple[Path, dict]] = []
    for stage_dir in io.inputs["models"]:
        for side in sidecars(stage_dir):
            path = Path(stage_dir) / side["file"]
            if list(side["input"]["shape"][1:]) != list(x.shape[1:]):
                raise EdgepipeError(
                    f"{path.name} takes input {side['input']['shape'][1:]}, the data "
                    f"'{Path(io.inputs['data']).name}' is {list(x.shape[1:])}",
                    "bench a model on the dataset it was trained on (same size and channels)",
                )
            if side["preprocessing"] != ds.info["preprocessing"]:
                raise EdgepipeError(
                    f"{path.name} was converted with other preprocessing than this bench's data",
                    "bench a model on the dataset it was trained on",
                )
            models.append((path, side))
    return models


def _row(
    path: Path,
    side: dict,
    host: dict,
    findings: list[dict],
    target: Target,
    backend: Backend,
    params: BenchParams,
    device: dict,
    x: np.ndarray,
    y: np.ndarray,
    info: dict,
) -> dict:
    """One model's bench.json row: its sidecar facts, host figures, TFLite Micro check and target figures."""
    # LiteRT on this host: a classifier's top-1 classes, or another task's first raw outputs
    reference = host.pop("predictions", None)
    reference = host.pop("checked_outputs", None) if reference is None else reference[:TFLM_SAMPLES]
    row = {
        "name": f"{side['file'].rsplit('_', 1)[0]}/{side['variant']}",
        "variant": side["variant"],
        "source": side["source"],
        "qat": side["qat"],
        "file": side["file"],
        "size_bytes": side["size_bytes"],
        "params": side["params"],
        "macs": side["macs"],
        "input_dtype": side["input"]["dtype"],
        "parity": side["parity"],
        **host,
        "compressed_bytes": len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)),
        "label": quant_label(side),
        "lint": [f["line"] for f in findings if f["model"] == path.name and not f.get("intended")],
        "float_islands": [f["line"] for f in findings if f["model"] == path.name and f.get("intended")],
    }
    if params.tflm and side["variant"] == "int8":
        din, _ = litert.io_details(litert.interpreter(path))
        task = task_of(info)
        row["tflm"] = tflm_check(
            path,
            device_runner.quantize_input(x[:TFLM_SAMPLES], din),
            reference,
            lambda a, b: task.agreement(a, b, info),
        )
    row["target"] = _on_target(target, backend, row, path, device.get(path.name), x, y)
    if "_fleet" in device:  # every device of the fleet, the first one included
        row["fleet"] = {
            h: _on_target(target, backend, row, path, d[path.name], x, y) | {"name": f"{target.name}@{h}"}
            for h, d in device["_fleet"].items()
            if path.name in d
        }
    return row


def _on_target(
    target: Target, backend: Backend, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray
) -> dict:
    """The row's figures on the target, each tagged with its `PROVENANCE` key; why not, where it cannot run it."""
    if not target.runs(row["variant"]):
        return {"name": target.name, "deployable": False, "why_not": f"{target.name} runs full-int8 models only"}
    return {"name": target.name, "deployable": True, **backend.figures(target, row, path, device, x, y)}


def quant_label(side: dict) -> str:
    """What the report's quant column says: the variant, `int8 (mixed)` with float layers kept, and a
    per-tensor granularity named."""
    q = side.get("quantization", {})
    label = side["variant"] + (" (mixed)" if q.get("float_layers") else "")
    return label + (" per-tensor" if q.get("granularity") == "per_tensor" else "")


def best_lines(rows: list[dict]) -> str:
    """The most accurate model, and the most accurate int8 one (what an MCU or NPU can take) if it differs.

    Chosen on validation accuracy: the test split is only for the final figure, printed beside it.
    """

    def line(r):
        return (
            f"{r['name']} val {_percent(r.get('val_accuracy'))}, test {_percent(r['accuracy'])} "
            f"({r['size_bytes'] / 1024:.1f} KB)"
        )

    def val(r):
        return -1.0 if r.get("val_accuracy") is None else r["val_accuracy"]

    best = max(rows, key=val)
    ints = [r for r in rows if r["variant"] == "int8"]
    best_int8 = max(ints, key=val) if ints else None
    if best_int8 is None or best_int8 is best:
        return f"most accurate (val) {line(best)}"
    return f"most accurate (val) {line(best)}; most accurate int8 (val) {line(best_int8)}"


def _percent(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


KIND = StageKind(
    name="bench",
    params=BenchParams,
    run=run_bench_stage,
    inputs={"data": False, "models": True},
    output="bench",
    accepts={"data": ("dataset",), "models": ("tflite",)},
    main_output="bench.json",
    environment=environment,
    exclusive=True,
    needs=needs,
    check_task=check_task,
    doc="lint, accuracy, latency, FPS, size and memory of each .tflite, measured on this host and the target",
)
