"""The bench stage: measure every converted model by running the exported file.

Per model: accuracy on the full test split (inputs preprocessed and quantized exactly as on a device),
latency percentiles of single-image invokes after warm-up, at 1 thread and at every core, FPS, size,
parameters and MACs; for int8 models whether TensorFlow Lite Micro runs it and the smallest arena it
needs (found by search, the way firmware engineers size `tensor_arena`). Provenance (CPU, versions,
threads) is recorded, and the stage is keyed on it: a different machine reruns it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Literal

import numpy as np

from edgepipe import fsio, litert
from edgepipe.convert import sidecars
from edgepipe.data import load_dataset
from edgepipe.errors import EdgepipeError
from edgepipe.params import param
from edgepipe.stages import StageIO, StageKind


MISCLASSIFIED_KEPT = 32  # test indices of wrong answers kept per model, for the report's sample grid


@dataclasses.dataclass
class BenchParams:
    """Parameters of the bench stage."""

    target: Literal["host"] = param("host", "where the models run (device targets come with #5)")
    warmup: int = param(20, "untimed invokes before timing", min=0)
    runs: int = param(300, "timed single-image invokes per model and thread count", min=5)
    threads: list[int] = param([1, 0], "thread counts to time; 0 means every core")
    tflm: bool = param(True, "check int8 models with TensorFlow Lite Micro and measure the arena")
    max_test_samples: int | None = param(None, "cap the test images used for accuracy (null: all)", min=1)


def host_provenance() -> dict:
    """What the figures were measured on."""
    import ai_edge_litert

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        tflm = version("tflite-micro")
    except Exception:  # noqa: BLE001
        tflm = None
    return {"target": "host", "cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "ai_edge_litert": getattr(ai_edge_litert, "__version__", None),
            "tflite_micro": tflm}


def environment(params: BenchParams) -> dict:
    """Part of the cache key: the machine and runtime the figures come from."""
    p = host_provenance()
    return {k: p[k] for k in ("target", "cpu", "cores", "machine", "ai_edge_litert", "tflite_micro")}


def latency(path: Path, x_q: np.ndarray, threads: int, warmup: int, runs: int) -> dict:
    """Percentiles (microseconds) of single-image invokes, cycling through prepared inputs."""
    interp = litert.interpreter(path, num_threads=threads)
    din, _ = litert.io_details(interp)
    for i in range(warmup):
        interp.set_tensor(din["index"], x_q[i % len(x_q)][None])
        interp.invoke()
    times = np.empty(runs)
    for i in range(runs):
        interp.set_tensor(din["index"], x_q[i % len(x_q)][None])
        t = time.perf_counter_ns()
        interp.invoke()
        times[i] = (time.perf_counter_ns() - t) / 1e3
    return {"p50_us": float(np.percentile(times, 50)), "p90_us": float(np.percentile(times, 90)),
            "p99_us": float(np.percentile(times, 99)), "mean_us": float(times.mean()),
            "fps": float(1e6 / times.mean()), "runs": runs}


def tflm_check(path: Path, x_q: np.ndarray, expected_top1: np.ndarray) -> dict:
    """Run the model in TFLite Micro: does it run, does it agree with LiteRT, what arena does it need."""
    from tflite_micro.python.tflite_micro import runtime

    blob = path.read_bytes()

    @litert.quiet_native()
    def runs_with(arena: int) -> bool:
        try:
            interp = runtime.Interpreter.from_bytes(blob, arena_size=arena)
            interp.set_input(x_q[:1], 0)
            interp.invoke()
            return True
        except (RuntimeError, ValueError):
            return False

    hi = max(64 * 1024, 10 * len(blob))
    if not runs_with(hi):
        try:
            runtime.Interpreter.from_bytes(blob, arena_size=hi)
            error = "invoke failed"
        except (RuntimeError, ValueError) as e:
            error = " ".join(str(e).split())[:200]
        return {"ok": False, "error": error}
    lo = 0
    while hi - lo > 16:  # the smallest arena (to 16 bytes) in which it allocates and runs
        mid = (lo + hi) // 2
        hi, lo = (mid, lo) if runs_with(mid) else (hi, mid)
    interp = runtime.Interpreter.from_bytes(blob, arena_size=hi)
    top1 = []
    for x in x_q:
        interp.set_input(x[None], 0)
        interp.invoke()
        top1.append(int(np.argmax(interp.get_output(0))))
    return {"ok": True, "arena_bytes": int(hi), "top1_agreement_with_litert": float(np.mean(np.array(top1) == expected_top1)),
            "samples": len(x_q)}


def run_bench_stage(params: BenchParams, io: StageIO) -> str:
    """Bench every model of every input convert stage; write bench.json."""
    ds = load_dataset(io.inputs["data"])
    x_test, y_test = ds.splits["test"]
    if params.max_test_samples:
        x_test, y_test = x_test[: params.max_test_samples], y_test[: params.max_test_samples]
    x = ds.preprocess(x_test)
    cores = os.cpu_count() or 1
    rows = []
    for stage_dir in io.inputs["models"]:
        for side in sidecars(stage_dir):
            path = Path(stage_dir) / side["file"]
            if side["preprocessing"] != ds.info["preprocessing"]:
                raise EdgepipeError(f"{path.name} was converted with other preprocessing than this bench's data",
                                    "bench a model on the dataset it was trained on")
            probs = litert.predict(path, x)
            pred = probs.argmax(1)
            din, _ = litert.io_details(litert.interpreter(path))
            x_q = litert.quantize_input(x[:100], din)
            row = {
                "name": f"{side['file'].rsplit('_', 1)[0]}/{side['variant']}",
                "variant": side["variant"], "source": side["source"], "qat": side["qat"], "file": side["file"],
                "size_bytes": side["size_bytes"], "params": side["params"], "macs": side["macs"],
                "accuracy": float(np.mean(pred == y_test)), "test_samples": int(len(y_test)),
                "input_dtype": side["input"]["dtype"], "parity": side["parity"], "latency": {},
                "per_class_accuracy": [float(np.mean(pred[y_test == c] == c)) if np.any(y_test == c) else None
                                       for c in range(len(ds.classes))],
                "misclassified": [[int(i), int(y_test[i]), int(pred[i])]
                                  for i in np.flatnonzero(pred != y_test)[:MISCLASSIFIED_KEPT]],
            }
            for t in params.threads:
                n = cores if t == 0 else t
                row["latency"][f"threads_{n}"] = latency(path, x_q, n, params.warmup, params.runs)
            if params.tflm and side["variant"] == "int8":
                row["tflm"] = tflm_check(path, x_q, pred[:100])
            rows.append(row)
    fsio.write_json(io.out / "bench.json", {"provenance": host_provenance(), "data": Path(io.inputs["data"]).name,
                                            "classes": ds.classes, "rows": rows})
    best = max(rows, key=lambda r: r["accuracy"])
    return f"{len(rows)} models benched; best {best['name']} {100 * best['accuracy']:.2f} %"


KIND = StageKind(
    name="bench", params=BenchParams, run=run_bench_stage, inputs={"data": False, "models": True},
    code=("edgepipe.bench", "edgepipe.litert", "edgepipe.convert", "edgepipe.data"), main_output="bench.json",
    environment=environment, exclusive=True, doc="accuracy, latency, FPS, size and MCU arena of each .tflite, measured",
)
