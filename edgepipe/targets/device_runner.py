#!/usr/bin/env python3
"""Benchmark `.tflite` files where they will run: accuracy, latency percentiles, FPS, peak RSS, as JSON.

This file is the device runner. It is copied as-is to a Raspberry Pi (or any Linux board) next to the
models and a test set, so it imports only the standard library, numpy and a LiteRT interpreter
(`ai_edge_litert`, or the older `tflite_runtime` wheel). It never imports TensorFlow or edgepipe.
edgepipe's host bench imports the same functions, so a host figure and a device figure come from one
piece of code.

    python3 device_runner.py --data test.npz --threads 1 0 MODEL.tflite [MODEL.tflite ...]

`test.npz` holds `x` (preprocessed float32 inputs, as the model's Keras source took them) and `y`
(integer labels). Inputs are quantized with each model's own input scale and zero point, exactly as
firmware would. The JSON goes to stdout. Failures print {"error": ..., "fix": ...} and exit 3, so the
caller can show one line instead of a traceback from another machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import time

try:
    import numpy as np
except ImportError:  # reported by main() as one line; the functions below need it
    np = None

EXIT_FAILED = 3
# Raspberry Pi OS Bookworm (like Debian 12) refuses a system-wide `pip install` (PEP 668): use a venv.
INSTALL = (
    "make a venv on the device and install LiteRT in it: python3 -m venv ~/litert && "
    "~/litert/bin/pip install ai-edge-litert numpy; then set the bench param python: ~/litert/bin/python"
)


def load_interpreter_class(delegate: str | None = None):
    """The LiteRT `Interpreter` class and `load_delegate`, from ai_edge_litert or tflite_runtime.

    With a delegate (Coral's libedgetpu), tflite_runtime comes first: libedgetpu is built against the
    TensorFlow Lite runtime of its release, and Coral ships the two together.
    """
    order = ("tflite_runtime", "ai_edge_litert") if delegate else ("ai_edge_litert", "tflite_runtime")
    for module in order:
        try:
            if module == "ai_edge_litert":
                from ai_edge_litert.interpreter import Interpreter, load_delegate
            else:
                from tflite_runtime.interpreter import Interpreter, load_delegate
            return Interpreter, load_delegate, module
        except ImportError:
            continue
    return None, None, None


def runtime_version(module: str | None) -> str | None:
    """The installed version of the runtime module (None if unknown)."""
    if module is None:
        return None
    try:
        from importlib.metadata import version

        return version({"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[module])
    except Exception:  # noqa: BLE001 - a version is provenance, never a reason to fail
        return None


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input -> the model's input dtype (identity for float models): q = round(x / scale) + zero."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """The model's output -> float (identity for float models)."""
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


def make_interpreter(
    model: str | bytes, num_threads: int | None = None, batch: int | None = None, delegate: str | None = None
):
    """An allocated interpreter for a model file (or its bytes), for `batch` samples if given, with an
    external delegate if named."""
    Interpreter, load_delegate, _ = load_interpreter_class(delegate)
    kw = {"experimental_delegates": [load_delegate(delegate)]} if delegate else {}
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    interp = Interpreter(num_threads=num_threads, **source, **kw)
    if batch:
        detail = interp.get_input_details()[0]
        interp.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
    interp.allocate_tensors()
    return interp


def io_details(interp) -> tuple[dict, dict]:
    """(input, output) details of a single-input, single-output model."""
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise ValueError(f"model has {len(ins)} inputs and {len(outs)} outputs; only classifiers are benched")
    return ins[0], outs[0]


def predict(make, x: np.ndarray, batch: int = 250) -> np.ndarray:
    """Float outputs on preprocessed inputs `x`, in batches; `make(batch)` returns an allocated interpreter.

    A delegate that cannot resize (the Edge TPU's) is given batch 1.
    """
    interpreters: dict[int, tuple] = {}  # batch size -> (interpreter, input, output); the last batch may be short
    outputs = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) not in interpreters:
            interp = make(len(chunk))
            interpreters[len(chunk)] = (interp, *io_details(interp))
        interp, din, dout = interpreters[len(chunk)]
        interp.set_tensor(din["index"], quantize_input(chunk, din))
        interp.invoke()
        outputs.append(dequantize_output(interp.get_tensor(dout["index"]), dout))
    return np.concatenate(outputs)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def rss_bytes() -> int | None:
    """This process's resident set size now (Linux only; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def measure(
    model_path: str,
    x: np.ndarray,
    y: np.ndarray,
    threads: list[int],
    warmup: int,
    runs: int,
    delegate: str | None = None,
) -> dict:
    """Accuracy on every sample and latency at each thread count (0 = every core) of one model.

    Run one model per process for a clean memory figure (the SSH harness does).
    """
    return measure_many([model_path], x, y, threads, warmup, runs, delegate=delegate)[model_path]


def measure_many(
    model_paths: list[str],
    x: np.ndarray,
    y: np.ndarray,
    threads: list[int],
    warmup: int,
    runs: int,
    rounds: int = 1,
    delegate: str | None = None,
    misclassified_kept: int = 32,
    keep_predictions: bool = False,
) -> dict[str, dict]:
    """`measure` for several models: `time_rounds` for latency and memory, then each one's accuracy."""
    rows = time_rounds(model_paths, x, threads, warmup, runs, rounds, delegate)
    for path in model_paths:
        rows[path].update(accuracy(path, x, y, delegate, misclassified_kept, keep_predictions))
    return rows


def time_rounds(
    model_paths: list[str],
    x: np.ndarray,
    threads: list[int],
    warmup: int,
    runs: int,
    rounds: int = 1,
    delegate: str | None = None,
) -> dict[str, dict]:
    """Latency of several models taking the same input, timed in `rounds` interleaved rounds.

    In each round every model runs its share of the `runs` invokes in turn (after a short warm-up, since
    the model before it took the caches), so a machine that speeds up or slows down during the bench
    moves every model's percentiles alike, and two models of one bench compare fairly. Each latency
    entry pools every round and also keeps each round's p50 (`round_p50_us`), for ratios taken within
    a round.

    Memory (`model_rss_bytes`) is the growth of the resident set from before a model is loaded to after
    its first interpreter has run: the runtime, its arena and the model as a device holds them.
    """
    cores = os.cpu_count() or 1
    rows: dict[str, dict] = {}
    timed = []  # (model, thread key, interpreter, prepared inputs, collected times)
    for path in model_paths:
        before, grown = rss_bytes(), None
        rows[path] = {"latency": {}}
        for i, t in enumerate(threads):
            interp = make_interpreter(path, num_threads=cores if t == 0 else t, delegate=delegate)
            din, _ = io_details(interp)
            x_q = quantize_input(x[:100], din)
            invoke_times(interp, x_q, warmup, 0)
            if i == 0:
                now = rss_bytes()
                grown = now - before if before is not None and now is not None else None
            timed.append((path, f"threads_{cores if t == 0 else t}", interp, x_q, []))
        rows[path]["model_rss_bytes"] = grown
    share = -(-runs // rounds)  # ceil: every model gets at least `runs` timed invokes
    for r in range(rounds):
        for _, _, interp, x_q, times in timed:
            times.append(invoke_times(interp, x_q, 0 if r == 0 else max(1, warmup // rounds), share, start=r * share))
    for path, key, _, _, times in timed:
        rows[path]["latency"][key] = latency_stats(np.concatenate(times)) | {
            "rounds": rounds,
            "round_p50_us": [float(np.percentile(t, 50)) for t in times],
        }
    return rows


def invoke_times(interp, x_q: np.ndarray, warmup: int, runs: int, start: int = 0) -> np.ndarray:
    """Microseconds of `runs` single-image invokes after `warmup` untimed ones, cycling through `x_q`."""
    din, _ = io_details(interp)
    for i in range(warmup):
        interp.set_tensor(din["index"], x_q[i % len(x_q)][None])
        interp.invoke()
    times = np.empty(runs)
    for i in range(runs):
        interp.set_tensor(din["index"], x_q[(start + i) % len(x_q)][None])
        t = time.perf_counter_ns()
        interp.invoke()
        times[i] = (time.perf_counter_ns() - t) / 1e3
    return times


def latency_stats(times: np.ndarray) -> dict:
    """Percentiles, mean (microseconds) and FPS of a set of invoke times."""
    percentiles = {f"p{q}_us": float(np.percentile(times, q)) for q in (50, 90, 99)}
    return percentiles | {"mean_us": float(times.mean()), "fps": float(1e6 / times.mean()), "runs": int(len(times))}


def accuracy(
    model_path: str, x: np.ndarray, y: np.ndarray, delegate: str | None, misclassified_kept: int, keep_predictions: bool
) -> dict:
    """Top-1 accuracy on every sample, per class, the first misclassified, and a hash of the predictions; for
    a model whose outputs are not class scores, a hash of them (and them, with `keep_predictions`)."""
    batch = None if delegate else 250  # the Edge TPU delegate runs the compiled batch-1 graph only
    probs = predict(
        lambda n: make_interpreter(model_path, batch=n if batch else None, delegate=delegate), x, batch=batch or 1
    )
    if probs.ndim != 2:  # not class scores (a detector's heat map): the host's task judges the raw outputs
        row = {"test_samples": int(len(x)), "outputs_sha256": hashlib.sha256(probs.tobytes()).hexdigest()}
        if keep_predictions:
            row["outputs"] = probs
        return row
    pred = probs.argmax(1)
    classes = int(probs.shape[1])
    row = {
        "accuracy": float(np.mean(pred == y)),
        "test_samples": int(len(y)),
        "per_class_accuracy": [float(np.mean(pred[y == c] == c)) if np.any(y == c) else None for c in range(classes)],
        "misclassified": [[int(i), int(y[i]), int(pred[i])] for i in np.flatnonzero(pred != y)[:misclassified_kept]],
        "predictions_sha256": hashlib.sha256(pred.astype(np.int64).tobytes()).hexdigest(),
    }
    if keep_predictions:
        row["predictions"] = pred
    return row


#: The core's name by the MIDR's (implementer, part), /proc/cpuinfo's "CPU implementer" and "CPU part", in
#: IMPLEMENTER:PART:NAME entries (hex; ARM Ltd = 41, Fujitsu = 46). Covers every Raspberry Pi (ARM1176,
#: Cortex-A7/A53/A72/A76) and the common boards and servers around them.
_CORE_NAMES = """
    41:B76:ARM1176       41:C07:Cortex-A7     41:C09:Cortex-A9     41:C0F:Cortex-A15    41:D03:Cortex-A53
    41:D04:Cortex-A35    41:D05:Cortex-A55    41:D07:Cortex-A57    41:D08:Cortex-A72    41:D09:Cortex-A73
    41:D0A:Cortex-A75    41:D0B:Cortex-A76    41:D0C:Neoverse-N1   41:D0D:Cortex-A77    41:D0E:Cortex-A76AE
    41:D40:Neoverse-V1   41:D41:Cortex-A78    41:D42:Cortex-A78AE  41:D44:Cortex-X1     41:D46:Cortex-A510
    41:D47:Cortex-A710   41:D48:Cortex-X2     41:D49:Neoverse-N2   41:D4B:Cortex-A78C   41:D4D:Cortex-A715
    41:D4E:Cortex-X3     41:D4F:Neoverse-V2   41:D80:Cortex-A520   41:D81:Cortex-A720   41:D82:Cortex-X4
    46:001:A64FX
"""
ARM_CORES = {(int(i, 16), int(p, 16)): name for i, p, name in (e.split(":") for e in _CORE_NAMES.split())}


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def cpu_description(cpuinfo: str | None = None, dt_model: str | None = None) -> str:
    """What the device's CPU is, never empty where /proc/cpuinfo says anything (see the module doc).

    `cpuinfo` and `dt_model` are the texts of /proc/cpuinfo and /proc/device-tree/model (read when None).
    """
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    fields: dict[str, str] = {}
    cores: list[str] = []
    implementer = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        fields.setdefault(key, value)
        if key == "CPU implementer":
            implementer = int(value, 16)
        elif key == "CPU part" and implementer is not None:
            part = int(value, 16)
            cores.append(ARM_CORES.get((implementer, part), f"ARM core {implementer:#04x}:{part:#05x}"))
    if not cores:  # x86 and the rest: as before
        return fields.get("model name") or fields.get("Model") or fields.get("Hardware") or platform.processor()
    model = (_read("/proc/device-tree/model") if dt_model is None else dt_model).strip("\0 \n")
    board = fields.get("Model") or model or fields.get("Hardware") or ""
    counts: dict[str, int] = {}
    for c in cores:
        counts[c] = counts.get(c, 0) + 1
    named = " + ".join(f"{n}x {c}" for c, n in counts.items())
    return f"{board} ({named})" if board else named


def provenance(runtime: str | None) -> dict:
    """What the figures were measured on; `emulated` is what an emulated device says of itself, else None."""
    return {
        "cpu": cpu_description(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "runtime": runtime,
        "runtime_version": runtime_version(runtime),
        "emulated": _read("/etc/edgepipe-emulated").strip() or None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help=".tflite files")
    ap.add_argument("--data", required=True, help="npz with x (preprocessed float32) and y (labels)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="thread counts; 0 = every core")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--delegate", default=None, help="external delegate library, e.g. libedgetpu.so.1")
    args = ap.parse_args(argv)

    def fail(error: str, fix: str) -> int:
        print(json.dumps({"error": error, "fix": fix}))
        return EXIT_FAILED

    if np is None:
        return fail(f"numpy is not installed for {sys.executable}", INSTALL)
    _, _, runtime = load_interpreter_class(args.delegate)
    if runtime is None:
        return fail(f"no LiteRT runtime for {sys.executable}", INSTALL)
    try:
        with np.load(args.data) as d:
            x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
    except (OSError, KeyError, ValueError) as e:
        return fail(f"cannot read test set {args.data}: {e}", "pass an npz with arrays x and y")
    results = {}
    for path in args.models:
        try:
            results[os.path.basename(path)] = measure(
                path, x, y, args.threads, args.warmup, args.runs, delegate=args.delegate
            )
        except (ValueError, RuntimeError, OSError) as e:
            if args.delegate and "delegate" in str(e).lower():
                fix = f"check that {args.delegate} is installed on the device (Coral: the libedgetpu1-std package)"
            else:
                fix = "re-run the convert stage; check the file copied intact"
            return fail(f"{os.path.basename(path)}: {' '.join(str(e).split())[:200]}", fix)
    out = {
        "provenance": provenance(runtime),
        "delegate": args.delegate,
        "peak_rss_bytes": peak_rss_bytes(),
        "models": results,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
