"""The bench stage: measure every converted model by running the exported file, on a target.

Per model, on this host: accuracy on the full test split (inputs preprocessed and quantized exactly as on
a device), latency percentiles of single-image invokes after warm-up at 1 thread and at every core
(timed in rounds, the models taking turns, so that they share the machine's drift), FPS, memory, size,
parameters and MACs; for int8 models whether TensorFlow Lite Micro runs it and the smallest arena it needs
(found by search, the way firmware engineers size `tensor_arena`). The host figures come from
`device_runner`, the same code a device runs.

Then the target (`edgepipe.targets`): first the op lint (what the target cannot run), then its figures,
each tagged with where it comes from (`PROVENANCE`): measured on the device over SSH (Raspberry Pi,
Coral through the libedgetpu delegate) or adb (Android, `benchmark_model`), TFLite Micro on this host
(an MCU's accuracy and arena), or an estimate (an MCU's latency). The stage is keyed on the host, its
runtime versions and the target, so another machine or device reruns it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import numpy as np

from edgepipe import device_runner, fsio, litert
from edgepipe.convert import sidecars
from edgepipe.data import load_dataset
from edgepipe.errors import EdgepipeError
from edgepipe.params import param
from edgepipe.stages import StageIO, StageKind
from edgepipe.targets import DEFAULT_KERNEL_BYTES, KERNEL_FLASH_BYTES, Target, check_reach, load_target


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
    rounds: int = param(5, "host latency is timed in rounds, every model in turn in each, so that a machine's "
                        "drift during the bench falls on all models alike", min=1)
    threads: list[int] = param([1, 0], "thread counts to time; 0 means every core")
    tflm: bool = param(True, "check int8 models with TensorFlow Lite Micro and measure the arena")
    max_test_samples: int | None = param(None, "cap the test images used for accuracy (null: all)", min=1)
    edgetpu_compiler: str = param("edgetpu_compiler", "Coral: the compiler command")
    benchmark_model: str | None = param(None, "android: path of LiteRT's benchmark_model binary for the phone")
    adb_serial: str | None = param(None, "android: the phone's serial when several are connected")


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


def environment(params: BenchParams) -> dict:
    """Part of the cache key: the target, and the machine and runtime the figures come from.

    A remote device cannot be asked without connecting, so a device target is keyed on its profile and
    address; the host's own runtime versions are part of every key (they run the lint and TFLM).
    """
    p = host_provenance()
    key = {k: p[k] for k in ("cpu", "cores", "machine", "ai_edge_litert", "tflite_micro")}
    target = load_target(params.target or "host")
    key["target"] = dataclasses.asdict(target)
    if target.reach in ("ssh", "adb"):
        key["device"] = [params.host or params.adb_serial, *params.fleet]
    return key


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


def tflm_accuracy(path: Path, x: np.ndarray, y: np.ndarray, arena: int) -> float:
    """Accuracy of an int8 model run by TFLite Micro's own kernels (what a microcontroller computes)."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=arena)
    din, _ = litert.io_details(litert.interpreter(path))
    x_q = device_runner.quantize_input(x, din)
    hits = 0
    for xi, yi in zip(x_q, y):
        interp.set_input(xi[None], 0)
        interp.invoke()
        hits += int(np.argmax(interp.get_output(0)) == yi)
    return hits / len(y)


def mcu_figures(target: Target, row: dict, path: Path) -> dict:
    """How an int8 model fits a microcontroller.

    RAM: the arena TFLite Micro needed on this host, plus the target's margin. Flash: the model's bytes
    plus the runtime's and its kernels' code (an estimate). Latency: MACs x cycles/MAC / clock (an
    estimate).
    """
    from edgepipe import lint

    tflm = row.get("tflm") or {}
    ops, _, _, _ = lint.read_graph(path)
    kernels = sorted({op.name for op in ops})
    code = (target.runtime_flash_bytes or 0) + sum(KERNEL_FLASH_BYTES.get(k, DEFAULT_KERNEL_BYTES) for k in kernels)
    flash = row["size_bytes"] + code
    arena = tflm.get("arena_bytes")
    ram_needed = None if arena is None else int(arena * (1 + target.arena_margin))
    fits_ram = None if ram_needed is None or target.ram_bytes is None else ram_needed <= target.ram_bytes
    fits_flash = None if target.flash_bytes is None else flash <= target.flash_bytes
    latency_us = (row["macs"] * target.cycles_per_mac / target.clock_mhz
                  if target.cycles_per_mac and target.clock_mhz else None)
    return {"arena_bytes": arena, "arena_margin": target.arena_margin, "ram_needed_bytes": ram_needed,
            "ram_bytes": target.ram_bytes, "flash_needed_bytes": flash, "flash_bytes": target.flash_bytes,
            "code_bytes_estimate": code, "ops": kernels, "fits_ram": fits_ram, "fits_flash": fits_flash,
            "fits": bool(tflm.get("ok")) and fits_ram is not False and fits_flash is not False,
            "latency_us_estimate": latency_us}


def run_bench_stage(params: BenchParams, io: StageIO) -> str:
    """Lint every model for the target, measure it on this host and on the target; write bench.json."""
    from edgepipe import lint

    target = load_target(params.target or "host")
    check_reach(target, params.host)
    if target.kind == "mcu" and not params.tflm:
        raise EdgepipeError(f"target {target.name} is a microcontroller, measured with TFLite Micro, but tflm is false",
                            "drop tflm: false from this bench stage")
    ds = load_dataset(io.inputs["data"])
    x_test, y_test = ds.splits["test"]
    if params.max_test_samples:
        x_test, y_test = x_test[: params.max_test_samples], y_test[: params.max_test_samples]
    x = ds.preprocess(x_test)
    models: list[tuple[Path, dict]] = []
    for stage_dir in io.inputs["models"]:
        for side in sidecars(stage_dir):
            path = Path(stage_dir) / side["file"]
            if list(side["input"]["shape"][1:]) != list(x.shape[1:]):
                raise EdgepipeError(f"{path.name} takes input {side['input']['shape'][1:]}, the data "
                                    f"'{Path(io.inputs['data']).name}' is {list(x.shape[1:])}",
                                    "bench a model on the dataset it was trained on (same size and channels)")
            if side["preprocessing"] != ds.info["preprocessing"]:
                raise EdgepipeError(f"{path.name} was converted with other preprocessing than this bench's data",
                                    "bench a model on the dataset it was trained on")
            models.append((path, side))

    # The lint runs first: what a target cannot run is said before anything is copied anywhere.
    deployable = {path.name for path, side in models if side["variant"] == "int8" or not target.needs_int8}
    findings = []
    for path, side in models:
        kind = target.kind if path.name in deployable else None
        for f in lint.lint(path, int8=side["variant"] == "int8", target_kind=kind):
            findings.append({"source": "lint", "model": path.name, "code": f.code, "op": f.op, "layer": f.layer,
                             "line": f.line(path.name)})
    if findings:
        fsio.write_json(io.out / "diagnostics.json", findings)

    device = measure_on_target(target, params, [p for p, _ in models if p.name in deployable], x, y_test, io.work)
    # Host figures come from device_runner, the code a device runs, so they compare like for like.
    with litert.quiet_native():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        measured = device_runner.measure_many([str(p) for p, _ in models], x, y_test, params.threads, params.warmup,
                                              params.runs, rounds=params.rounds, keep_predictions=True)
    rows = []
    for path, side in models:
        host = measured[str(path)]
        pred = host.pop("predictions")
        row = {
            "name": f"{side['file'].rsplit('_', 1)[0]}/{side['variant']}",
            "variant": side["variant"], "source": side["source"], "qat": side["qat"], "file": side["file"],
            "size_bytes": side["size_bytes"], "params": side["params"], "macs": side["macs"],
            "input_dtype": side["input"]["dtype"], "parity": side["parity"], **host,
            "lint": [f["line"] for f in findings if f["model"] == path.name],
        }
        if params.tflm and side["variant"] == "int8":
            din, _ = litert.io_details(litert.interpreter(path))
            row["tflm"] = tflm_check(path, device_runner.quantize_input(x[:100], din), pred[:100])
        row["target"] = target_figures(target, row, path, device.get(path.name), x, y_test)
        if "_fleet" in device:  # every device of the fleet, the first one included
            row["fleet"] = {h: target_figures(target, row, path, d[path.name], x, y_test) | {"name": f"{target.name}@{h}"}
                            for h, d in device["_fleet"].items() if path.name in d}
        rows.append(row)
    fsio.write_json(io.out / "bench.json", {"provenance": host_provenance(), "target": dataclasses.asdict(target),
                                            "device": device.get("_provenance"),
                                            "fleet": {h: d["provenance"] for h, d in device.get("_fleet", {}).items()},
                                            "data": Path(io.inputs["data"]).name, "classes": ds.classes,
                                            "rows": rows})
    where = "" if target.name == "host" else f" on {target.name}"
    lint_note = f"; {len(findings)} lint findings" if findings else ""
    runnable = [r for r in rows if r["target"]["deployable"]] or rows  # an MCU runs only the int8 models
    return f"{len(rows)} models benched{where}; {best_lines(runnable)}{lint_note}"


def best_lines(rows: list[dict]) -> str:
    """The most accurate model, and the most accurate int8 one (what an MCU or NPU can take) if it differs."""
    def line(r):
        return f"{r['name']} {100 * r['accuracy']:.2f} % ({r['size_bytes'] / 1024:.1f} KB)"

    best = max(rows, key=lambda r: r["accuracy"])
    ints = [r for r in rows if r["variant"] == "int8"]
    best_int8 = max(ints, key=lambda r: r["accuracy"]) if ints else None
    if best_int8 is None or best_int8 is best:
        return f"most accurate {line(best)}"
    return f"most accurate {line(best)}; most accurate int8 {line(best_int8)}"


def measure_on_target(target: Target, params: BenchParams, models: list[Path], x: np.ndarray, y: np.ndarray,
                      work: Path) -> dict:
    """Figures measured on the device itself, by model file name (nothing for host and MCU targets)."""
    if target.reach == "ssh":
        from concurrent.futures import ThreadPoolExecutor

        from edgepipe import edgetpu, remote

        hosts = [remote.SshHost.parse(h, params.identity, tuple(params.ssh_options))
                 for h in dict.fromkeys([params.host, *params.fleet])]
        compiled: dict[str, tuple[Path, dict]] = {}
        if target.kind == "edgetpu":  # the device runs the compiled model through the libedgetpu delegate
            for m in models:
                compiled[m.name] = edgetpu.compile_model(m, work, params.edgetpu_compiler)
        test_set = work / "test.npz"
        np.savez(test_set, x=x, y=y)
        files = [compiled[m.name][0] if compiled else m for m in models]

        def one(host):
            return remote.bench_over_ssh(host, files, test_set, python=params.python or target.python,
                                         threads=params.threads, warmup=params.warmup, runs=params.runs,
                                         delegate=target.delegate)

        with ThreadPoolExecutor(min(params.parallel, len(hosts))) as pool:  # a device failing fails the stage
            got_all = list(pool.map(one, hosts))
        out: dict = {"_provenance": {**got_all[0]["provenance"], "host": str(hosts[0])}}
        for m, f in zip(models, files):
            out[m.name] = {**got_all[0]["models"][f.name], **({"edgetpu": compiled[m.name][1]} if compiled else {})}
        if len(hosts) > 1:
            out["_fleet"] = {str(h): {"provenance": g["provenance"],
                                      **{m.name: g["models"][f.name] for m, f in zip(models, files)}}
                             for h, g in zip(hosts, got_all)}
        return out
    if target.reach == "adb":
        from edgepipe import android

        out = {"_provenance": {"adb_serial": params.adb_serial}}
        for m in models:
            out[m.name] = android.bench(m, params.benchmark_model, threads=1, runs=params.runs,
                                        warmup=params.warmup, serial=params.adb_serial)
        return out
    return {}


PROVENANCE = {"target": "measured on the target", "host-litert": "LiteRT on this host",
              "tflm-host": "TFLite Micro on this host", "estimate": "estimate (MACs x cycles/MAC / clock)"}


def target_figures(target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray,
                   y: np.ndarray) -> dict:
    """The row's accuracy, latency and memory on the target, each tagged with its `PROVENANCE` key."""
    out: dict = {"name": target.name, "deployable": row["variant"] == "int8" or not target.needs_int8}
    if not out["deployable"]:
        out["why_not"] = f"{target.name} runs full-int8 models only"
        return out
    one = row["latency"].get("threads_1")
    if target.reach == "local":
        out["accuracy"] = {"value": row["accuracy"], "provenance": "host-litert"}
        out["latency_p50_us"] = {"value": one and one["p50_us"], "provenance": "host-litert"}
        out["memory"] = {"value": row.get("model_rss_bytes"), "what": "RSS growth", "provenance": "host-litert"}
    elif target.kind == "mcu":
        mcu = mcu_figures(target, row, path)
        acc = tflm_accuracy(path, x, y, mcu["arena_bytes"]) if mcu["arena_bytes"] else None
        out.update(mcu=mcu, fits=mcu["fits"])
        out["accuracy"] = {"value": acc, "provenance": "tflm-host"}
        out["latency_p50_us"] = {"value": mcu["latency_us_estimate"], "provenance": "estimate"}
        out["memory"] = {"value": mcu["arena_bytes"], "what": "arena", "provenance": "tflm-host"}
    elif target.reach == "adb":
        out["latency"] = {"threads_1": device}
        out["accuracy"] = {"value": row["accuracy"], "provenance": "host-litert"}
        out["latency_p50_us"] = {"value": device.get("p50_us", device["mean_us"]), "provenance": "target"}
        out["memory"] = {"value": device.get("memory_bytes"), "what": "peak", "provenance": "target"}
    else:  # measured on the device over SSH
        out.update({k: device[k] for k in ("latency", "predictions_sha256", "peak_rss_bytes", "edgetpu") if k in device})
        dev_one = device["latency"].get("threads_1")
        out["accuracy"] = {"value": device["accuracy"], "provenance": "target"}
        out["latency_p50_us"] = {"value": dev_one and dev_one["p50_us"], "provenance": "target"}
        out["memory"] = {"value": device.get("model_rss_bytes"), "what": "RSS growth", "provenance": "target"}
        out["same_predictions_as_host"] = device.get("predictions_sha256") == row.get("predictions_sha256")
    return out


KIND = StageKind(
    name="bench", params=BenchParams, run=run_bench_stage, inputs={"data": False, "models": True},
    code=("edgepipe.bench", "edgepipe.device_runner", "edgepipe.litert", "edgepipe.lint", "edgepipe.targets",
          "edgepipe.remote", "edgepipe.edgetpu", "edgepipe.android", "edgepipe.convert", "edgepipe.data"),
    main_output="bench.json", environment=environment, exclusive=True,
    doc="lint, accuracy, latency, FPS, size and memory of each .tflite, measured on this host and the target",
)
