"""Instruction classes a LiteRT inference executes on the emulated Pi's core, counted by a TCG plugin.

The first piece of issue #31 (latency without the device): the user variant's arm64 python runs
`invoke_loop.py` under Debian's *dynamic* `qemu-aarch64` (package `qemu-user`; the static build that
the emulated Pi otherwise uses cannot load plugins) with `-cpu <core>` and edgepipe's plugin
(`plugin/insn_classes.c`), which classifies each instruction by its A64 encoding when it is translated
and counts executions per class and per guest thread. Steady state is the difference of a run with N
and one with 2N invokes, divided by N: loading, XNNPACK's weight packing and the first invoke cancel.

    counts = steady_state_counts("model.tflite", cpu="cortex-a76", invokes=5)
    counts["per_invoke"]["vdot_i8"]

The plugin is compiled once into edgepipe's cache (`qemu-plugins/`), keyed by its source and the
compiler; a count is cached (`insn-counts/`) by the model's bytes, the core, threads, N, the plugin,
the device entry (its wheel pins: the runtime version) and qemu's version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from edgepipe.core.cache import cache_dir as cache_dir_of
from edgepipe.targets.emulated_pi.build import build_device
from edgepipe.targets.emulated_pi.rootfs import qemu_user_args
from edgepipe.targets.emulated_pi.tools import BuildError, Progress, show_progress

log = logging.getLogger(__name__)

#: Debian's dynamically linked qemu-user: built with TCG plugin support (qemu-user-static is not).
QEMU_PLUGIN_USER = "qemu-aarch64"
PLUGIN_SOURCE = Path(__file__).with_name("plugin") / "insn_classes.c"
INVOKE_LOOP = Path(__file__).with_name("invoke_loop.py")
CFLAGS = ("-O2", "-fPIC", "-shared", "-Wall")

#: The plugin's classes, grouped as issue #31 names them (what a calibration fits one weight to).
GROUPS = {
    "vfma_f32": ("vfma_f32", "vfma_f16"),
    "int8_dot_mla": ("vdot_i8", "vmla_int"),
    "vec_other": ("vec_other", "fp_scalar"),
    "vec_ldst": ("vec_load", "vec_store"),
    "scalar_ldst": ("load", "store", "prefetch"),
    "scalar_alu": ("alu", "system", "other"),
    "branch": ("branch",),
}


def _qemu() -> str | None:
    return shutil.which(QEMU_PLUGIN_USER)


def _cc() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def plugin_unavailable() -> str | None:
    """None if this machine can count instructions, else why not (one line naming the fix; for pytest.skip)."""
    qemu = _qemu()
    if qemu is None:
        return f"no {QEMU_PLUGIN_USER} (apt-get install qemu-user: the dynamic build loads TCG plugins)"
    if _cc() is None:
        return "no C compiler to build the TCG plugin (apt-get install gcc)"
    probe = subprocess.run([qemu, "-plugin", "/nonexistent.so", "/nonexistent"], capture_output=True, text=True)
    if "unknown option" in probe.stderr:
        return f"{qemu} was built without TCG plugin support (-plugin is an unknown option)"
    return None


def _tool_version(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    return (done.stdout or done.stderr).splitlines()[0].strip() if (done.stdout or done.stderr) else "?"


def build_plugin(cache_dir: str | Path | None = None) -> Path:
    """The compiled plugin (`insn_classes-<key>.so` in edgepipe's cache), built first if need be.

    Keyed by the source's sha256, the compiler's version line and the flags. Compiled to a temporary
    name and renamed into place, so a killed build leaves nothing.
    """
    cc = _cc()
    if cc is None:
        raise BuildError("no C compiler to build the instruction-count plugin", "apt-get install gcc")
    source = PLUGIN_SOURCE.read_bytes()
    key = hashlib.sha256(
        json.dumps([hashlib.sha256(source).hexdigest(), _tool_version([cc, "--version"]), CFLAGS]).encode()
    ).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir else cache_dir_of("qemu-plugins")
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"insn_classes-{key}.so"
    if final.is_file():
        return final
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    done = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(PLUGIN_SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling {PLUGIN_SOURCE.name} failed: {done.stderr.strip()[-500:]}")
    os.replace(tmp, final)
    return final


def run_counted(
    model: str | Path,
    invokes: int,
    *,
    cpu: str = "cortex-a72",
    threads: int = 1,
    mode: str = "cb",
    mnemonics: bool = False,
    plugin: Path | None = None,
    device: Path | None = None,
    plugin_enabled: bool = True,
    timeout: float = 3600,
) -> dict:
    """One emulated run of `invoke_loop.py` (`invokes` invokes) with the plugin: its JSON plus `wall_seconds`.

    `plugin_enabled=False` runs the same command under the same qemu without the plugin (the cost
    baseline) and returns only `wall_seconds`.
    """
    qemu = _qemu()
    if qemu is None:
        raise BuildError(plugin_unavailable() or f"no {QEMU_PLUGIN_USER}", "apt-get install qemu-user")
    device = device or build_device(cpu=cpu, variant="user", progress=None)
    plugin = plugin or build_plugin()
    with tempfile.TemporaryDirectory(prefix="edgepipe-insn-") as tmp:
        out = Path(tmp) / "counts.json"
        args = [f"out={out}", f"mode={mode}"] + (["mnemonics=on"] if mnemonics else [])
        cmd = qemu_user_args(cpu, device / "rootfs", device / "site", qemu)
        cmd[1:1] = ["-plugin", ",".join([str(plugin), *args])] if plugin_enabled else []
        # numpy's OpenBLAS starts a worker per host core (qemu-user shows the host's affinity) that
        # spins on NOPs for as long as the wall clock lets it: no part of an inference, so none here
        cmd[1:1] = ["-E", "PYTHONHASHSEED=0", "-E", "OPENBLAS_NUM_THREADS=1"]
        cmd += [str(INVOKE_LOOP), str(Path(model).resolve()), str(invokes), str(threads)]
        log.debug("running %s", " ".join(cmd))
        start = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.monotonic() - start
        if done.returncode != 0:
            raise BuildError(f"counted run failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        if not plugin_enabled:
            return {"wall_seconds": wall}
        result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    return result


#: Vector data processing: a thread that runs none of it in the 2N run does no inference work.
VECTOR_WORK = ("vfma_f32", "vfma_f16", "vdot_i8", "vmla_int", "vec_other")


def _thread_totals(run: dict) -> dict[str, dict[str, int]]:
    return {t: dict(zip(run["classes"], c)) for t, c in run["threads"].items()}


def steady_state(run_n: dict, run_2n: dict, invokes: int) -> dict:
    """Per-invoke counts from a run of N and one of 2N invokes: (count(2N) - count(N)) / N per class,
    per thread (threads matched by vCPU index: the order they were created) and summed over the
    inference threads.

    Inference threads are those that run vector work in the 2N run. The others are left out of
    `per_invoke` and listed in `idle_threads`: a thread that only waits (numpy's OpenBLAS worker, when
    it is not switched off, spins on NOPs for as long as the wall clock lets it) counts nothing that
    belongs to the model and differs from run to run, even in sign after subtraction.
    """
    ta, tb = _thread_totals(run_n), _thread_totals(run_2n)
    classes = run_n["classes"]
    zero = dict.fromkeys(classes, 0)
    per_thread = {
        t: {k: (tb.get(t, zero)[k] - ta.get(t, zero)[k]) / invokes for k in classes}
        for t in sorted(set(ta) | set(tb), key=str)
    }
    working = [t for t in per_thread if any(tb.get(t, zero)[k] for k in VECTOR_WORK)]
    per_invoke = {k: sum(per_thread[t][k] for t in working) for k in classes}
    return {
        "per_invoke": per_invoke,
        "groups": {g: sum(per_invoke[c] for c in cs) for g, cs in GROUPS.items()},
        "total": sum(per_invoke.values()),
        "inference_threads": working,
        "idle_threads": [t for t in per_thread if t not in working],
        "per_thread": per_thread,
    }


def _count_key(model: Path, cpu: str, threads: int, invokes: int, plugin: Path, device: Path) -> str:
    spec = {
        "model": hashlib.sha256(model.read_bytes()).hexdigest(),
        "cpu": cpu,
        "threads": threads,
        "invokes": invokes,
        "plugin": plugin.name,
        "device": device.name,
        "invoke_loop": hashlib.sha256(INVOKE_LOOP.read_bytes()).hexdigest(),
        "qemu": _tool_version([_qemu() or QEMU_PLUGIN_USER, "--version"]),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def steady_state_counts(
    model: str | Path,
    *,
    cpu: str = "cortex-a72",
    threads: int = 1,
    invokes: int = 5,
    cache_dir: str | Path | None = None,
    progress: Progress = print,
) -> dict:
    """Per-invoke instruction counts per class of `model` on the emulated `cpu`, in steady state.

    Runs N = `invokes` and 2N invokes under the plugin and subtracts (`steady_state`); the result
    (with both runs' wall times) is cached under `insn-counts/` keyed by everything it depends on, so a
    second call is a lookup.
    """
    model = Path(model)
    device = build_device(cpu=cpu, variant="user", progress=progress)
    plugin = build_plugin()
    key = _count_key(model, cpu, threads, invokes, plugin, device)
    root = Path(cache_dir).expanduser() if cache_dir else cache_dir_of("insn-counts")
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{model.stem}-{cpu}-t{threads}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = time.monotonic()
    runs = [
        run_counted(model, n, cpu=cpu, threads=threads, plugin=plugin, device=device) for n in (invokes, 2 * invokes)
    ]
    result = {
        "model": str(model),
        "cpu": cpu,
        "threads": threads,
        "invokes": invokes,
        "device": device.name,
        "plugin": plugin.name,
        **steady_state(runs[0], runs[1], invokes),
        "wall_seconds": [round(r["wall_seconds"], 2) for r in runs],
    }
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)
    show_progress(
        progress,
        f"insn counts: {model.name} on {cpu}, {threads} thread(s): {result['total']:,.0f} insns/invoke "
        f"in {time.monotonic() - start:.0f} s -> {path}",
    )
    return result
