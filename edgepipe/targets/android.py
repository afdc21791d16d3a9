"""Android phones: LiteRT's `benchmark_model` binary over adb.

The user supplies `benchmark_model` (built for the phone's ABI, from the LiteRT releases or a source
build); edgepipe pushes it and the model to /data/local/tmp, runs it, parses its timing and memory
lines and removes what it pushed. `benchmark_model` measures speed and memory only, so accuracy in the
report stays the host LiteRT figure, tagged as such.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from edgepipe.core.errors import EdgepipeError

REMOTE_DIR = "/data/local/tmp/edgepipe"
# benchmark_model (C++) prints "Inference timings in us: ... Inference (avg): 1538.1" and a statistics line
# "count=200 first=... min=... max=... avg=... std=... p5=... median=... p95=..." (microseconds); LiteRT's
# Python benchmark tool prints "Inference (avg): 1.53 ms (200 runs)", "Inference (median): 1.52 ms", ...
_AVG_US = re.compile(r"Inference \(avg\):\s*([\d.e+]+)\s*$", re.M)
_AVG_MS = re.compile(r"Inference \(avg\):\s*([\d.e+]+)\s*ms")
_STATS = re.compile(r"\bcount=\d+\b.*?\bmedian=([\d.e+]+)")
_PCT = re.compile(r"\b(p\d+)=([\d.e+]+)")
_NAMED_MS = re.compile(r"Inference \((median|p\d+|min|max)\):\s*([\d.e+]+)\s*ms")
_MEM = re.compile(
    r"(?:Peak memory footprint|Memory footprint delta)[^:]*\(MB\):\s*init=([\d.e+]+)\s+overall=([\d.e+]+)"
)


def find_adb() -> str:
    path = shutil.which("adb")
    if path is None:
        raise EdgepipeError(
            "adb not found on this machine (needed to reach an Android phone)",
            "install it (Debian: apt-get install adb), connect the phone with USB debugging on",
        )
    return path


def check_binary(benchmark_model: str | None) -> Path:
    if not benchmark_model:
        raise EdgepipeError(
            "the android target needs LiteRT's benchmark_model binary",
            "download the android_aarch64 benchmark_model from the LiteRT releases and pass its "
            "path as the bench stage's benchmark_model param",
        )
    path = Path(benchmark_model)
    if not path.is_file():
        raise EdgepipeError(f"benchmark_model binary not found: {path}", "check the benchmark_model param's path")
    return path


def parse_output(text: str) -> dict:
    """Mean, median (p50) and the other percentiles printed, in microseconds, and memory in bytes, from
    either benchmark_model's output or LiteRT's Python benchmark tool's."""
    out: dict = {}
    if m := _AVG_MS.search(text):  # the Python tool: milliseconds, each statistic on its own line
        out["mean_us"] = 1000 * float(m.group(1))
        for name, value in _NAMED_MS.findall(text):
            out["p50_us" if name == "median" else f"{name}_us"] = 1000 * float(value)
    elif m := (_AVG_US.search(text) or re.search(r"Inference \(avg\):\s*([\d.e+]+)", text)):
        out["mean_us"] = float(m.group(1))
        stats = _STATS.search(text[m.start() :]) or _STATS.search(text)
        if stats:
            out["p50_us"] = float(stats.group(1))
            for name, value in _PCT.findall(stats.group(0)):
                out[f"{name}_us"] = float(value)
    else:
        raise EdgepipeError(
            "benchmark_model printed no inference timing", "run it by hand with adb shell to see what it says"
        )
    out["fps"] = 1e6 / out["mean_us"] if out["mean_us"] else None
    mem = _MEM.search(text)
    if mem:
        out["memory_bytes"] = int(float(mem.group(2)) * 1024 * 1024)
    return out


DELEGATES = {"none": [], "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"]}


def bench(
    model: Path,
    benchmark_model: str | None,
    *,
    threads: int,
    runs: int,
    warmup: int,
    serial: str | None = None,
    delegate: str = "none",
) -> dict:
    """Push, run and parse `benchmark_model` on the phone; the pushed files are removed afterwards."""
    adb = [find_adb(), *(["-s", serial] if serial else [])]
    binary = check_binary(benchmark_model)

    def call(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([*adb, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise EdgepipeError(
                f"adb {args[0]} failed: {(done.stderr or done.stdout).strip()[:200]}",
                "check `adb devices` lists the phone and it is authorized",
            )
        return done

    call("shell", "mkdir", "-p", REMOTE_DIR)
    try:
        call("push", str(binary), f"{REMOTE_DIR}/benchmark_model")
        call("push", str(model), f"{REMOTE_DIR}/{model.name}")
        call("shell", "chmod", "755", f"{REMOTE_DIR}/benchmark_model")
        done = call(
            "shell",
            f"{REMOTE_DIR}/benchmark_model",
            f"--graph={REMOTE_DIR}/{model.name}",
            f"--num_threads={threads}",
            f"--warmup_runs={warmup}",
            f"--num_runs={runs}",
            "--report_peak_memory_footprint=true",
            *DELEGATES[delegate],
        )
        return parse_output(done.stdout)
    finally:
        subprocess.run([*adb, "shell", "rm", "-rf", REMOTE_DIR], capture_output=True, timeout=60)
