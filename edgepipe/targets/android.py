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
_AVG = re.compile(r"Inference \(avg\):\s*([\d.e+]+)")
_PCT = re.compile(r"(p\d+)=([\d.e+]+)")
_MEM = re.compile(r"(?:Peak memory footprint|Memory footprint delta)[^:]*\(MB\):\s*init=([\d.e+]+)\s+overall=([\d.e+]+)")


def find_adb() -> str:
    path = shutil.which("adb")
    if path is None:
        raise EdgepipeError("adb not found on this machine (needed to reach an Android phone)",
                            "install it (Debian: apt-get install adb), connect the phone with USB debugging on")
    return path


def check_binary(benchmark_model: str | None) -> Path:
    if not benchmark_model:
        raise EdgepipeError("the android target needs LiteRT's benchmark_model binary",
                            "download the android_aarch64 benchmark_model from the LiteRT releases and pass its "
                            "path as the bench stage's benchmark_model param")
    path = Path(benchmark_model)
    if not path.is_file():
        raise EdgepipeError(f"benchmark_model binary not found: {path}", "check the benchmark_model param's path")
    return path


def parse_output(text: str) -> dict:
    """Mean (and, when printed, percentile) latency in microseconds and memory in bytes."""
    avg = _AVG.search(text)
    if not avg:
        raise EdgepipeError("benchmark_model printed no inference timing",
                            "run it by hand with adb shell to see what it says")
    out = {"mean_us": float(avg.group(1)), "fps": 1e6 / float(avg.group(1))}
    for name, value in _PCT.findall(text[avg.start():]):
        out[f"{name}_us"] = float(value)
    mem = _MEM.search(text)
    if mem:
        out["memory_bytes"] = int(float(mem.group(2)) * 1024 * 1024)
    return out


def bench(model: Path, benchmark_model: str | None, *, threads: int, runs: int, warmup: int,
          serial: str | None = None) -> dict:
    """Push, run and parse `benchmark_model` on the phone; the pushed files are removed afterwards."""
    adb = [find_adb(), *(["-s", serial] if serial else [])]
    binary = check_binary(benchmark_model)

    def call(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([*adb, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise EdgepipeError(f"adb {args[0]} failed: {(done.stderr or done.stdout).strip()[:200]}",
                                "check `adb devices` lists the phone and it is authorized")
        return done

    call("shell", "mkdir", "-p", REMOTE_DIR)
    try:
        call("push", str(binary), f"{REMOTE_DIR}/benchmark_model")
        call("push", str(model), f"{REMOTE_DIR}/{model.name}")
        call("shell", "chmod", "755", f"{REMOTE_DIR}/benchmark_model")
        done = call("shell", f"{REMOTE_DIR}/benchmark_model", f"--graph={REMOTE_DIR}/{model.name}",
                    f"--num_threads={threads}", f"--warmup_runs={warmup}", f"--num_runs={runs}",
                    "--report_peak_memory_footprint=true")
        return parse_output(done.stdout)
    finally:
        subprocess.run([*adb, "shell", "rm", "-rf", REMOTE_DIR], capture_output=True, timeout=60)
