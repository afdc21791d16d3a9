"""Coral Edge TPU: compile a full-int8 model with `edgetpu_compiler` and read how much of it maps.

The compiler is a separate x86-64 Linux tool from Coral's apt repository; edgepipe never installs it.
Without it the Coral path stops with one line saying how to get it. Its log says how many operations
will run on the Edge TPU and how many fall back to the host CPU; both go into the bench row.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from edgepipe.core.errors import EdgepipeError

INSTALL = (
    "install Coral's compiler on an x86-64 Debian/Ubuntu machine: add the apt repository from "
    "https://coral.ai/docs/edgetpu/compiler/ then `apt-get install edgetpu-compiler`"
)
_TPU = re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)")
_CPU = re.compile(r"Number of operations that will run on CPU:\s*(\d+)")
# "On-chip memory used for caching model parameters: 3.21MiB" and its two siblings
_MEMORY = {
    "on_chip_used_bytes": re.compile(r"On-chip memory used for caching model parameters:\s*([\d.]+)\s*([KMG]?i?B)"),
    "on_chip_remaining_bytes": re.compile(
        r"On-chip memory remaining for caching model parameters:\s*([\d.]+)\s*"
        r"([KMG]?i?B)"
    ),
    "off_chip_bytes": re.compile(
        r"Off-chip memory used for streaming uncached model parameters:\s*([\d.]+)\s*"
        r"([KMG]?i?B)"
    ),
}
_UNIT = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 1000**2, "GB": 1000**3}


def find_compiler(name: str = "edgetpu_compiler") -> str:
    """The compiler's path, or one error line on how to install it."""
    path = shutil.which(name)
    if path is None:
        raise EdgepipeError(f"{name} not found on this machine (needed to compile for the Coral Edge TPU)", INSTALL)
    return path


def parse_log(text: str) -> dict:
    """Operation counts from the compiler's log (`-s` prints the per-op table too)."""
    tpu, cpu = _TPU.search(text), _CPU.search(text)
    if not tpu:
        raise EdgepipeError(
            "edgetpu_compiler's log has no operation count", "run it by hand with -s to see what it says"
        )
    ops_tpu, ops_cpu = int(tpu.group(1)), int(cpu.group(1)) if cpu else 0
    out = {"ops_edgetpu": ops_tpu, "ops_cpu": ops_cpu, "fully_mapped": ops_cpu == 0}
    for key, pattern in _MEMORY.items():  # parameters that do not fit on chip stream from the host: slower
        m = pattern.search(text)
        out[key] = int(float(m.group(1)) * _UNIT[m.group(2)]) if m else None
    return out


def compile_model(model: Path, out_dir: Path, compiler: str = "edgetpu_compiler") -> tuple[Path, dict]:
    """Compile `model` into `out_dir`; returns (the `_edgetpu.tflite` path, operation counts)."""
    exe = find_compiler(compiler)
    done = subprocess.run([exe, "-s", "-o", str(out_dir), str(model)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EdgepipeError(
            f"edgetpu_compiler failed on {model.name}: {last[0][:200]}",
            "the Edge TPU needs a full-int8 model with static shapes (convert variant int8)",
        )
    compiled = out_dir / f"{model.stem}_edgetpu.tflite"
    (out_dir / f"{model.stem}_edgetpu.compile.log").write_text(done.stdout)  # beside the compiler's own op log
    return compiled, parse_log(done.stdout)
