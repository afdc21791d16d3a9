"""Compile only what a model needs of TFLite Micro + CMSIS-NN, with an object cache.

The sources are TFLM's own lists, specialised for the core as its Makefile
does (:mod:`edgepipe.targets.mcu.source_lists`); they are compiled with the
flags that ``make TARGET=cortex_m_generic TARGET_ARCH=<cpu>+fp
OPTIMIZED_KERNEL_DIR=cmsis_nn BUILD_TYPE=release`` uses (core ``-Os``,
kernels and CMSIS-NN ``-O2``; :mod:`edgepipe.targets.mcu.cores`), each
object once (:mod:`edgepipe.targets.mcu.compiler`).

Three static archives are produced, so the linker pulls only what is
referenced and the flash figure is honest:

* ``libep_tflm_core.a``: interpreter, allocator, memory planner, flatbuffer
  bridge, shared TFLite kernel utilities (``tensorflow/lite/kernels``,
  ``tensorflow/lite/core``, ...), ``kernels/kernel_util.cc``;
* ``libep_cmsis_nn.a``: every CMSIS-NN ``Source/**/*.c`` (no f16/f32), as TFLM;
* ``libep_tflm_kernels.a``: for each op of the model, the file that defines its
  ``Register_<OP>`` (CMSIS-NN version preferred) and the helper sources it
  needs (``<x>_common.cc`` / helper ``<x>.cc`` of every kernel header it
  includes, transitively).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from edgepipe.targets.mcu._util import cache_root
from edgepipe.targets.mcu.compiler import Compiler, _archive, _member_name
from edgepipe.targets.mcu.cores import (
    OPT_CORE,
    OPT_KERNEL,
    OPT_THIRD_PARTY,
    Core,
    compile_flags,
    get_core,
    include_dirs,
)
from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.model import ModelInfo
from edgepipe.targets.mcu.source_lists import plan
from edgepipe.targets.mcu.sources import TflmSources
from edgepipe.targets.mcu.toolchain import Toolchain, find_toolchain

__all__ = ["BuildResult", "build"]


@dataclass
class BuildResult:
    """What :func:`build` produced (input to :func:`edgepipe.targets.mcu.link.link_firmware`).

    Attributes:
        core: the :class:`~edgepipe.targets.mcu.cores.Core`.
        sources: the :class:`~edgepipe.targets.mcu.sources.TflmSources`.
        toolchain: the :class:`~edgepipe.targets.mcu.toolchain.Toolchain`.
        archives: ``{"tflm_kernels"|"tflm_core"|"cmsis_nn": path}``, in link order.
        ops: the resolver methods compiled in.
        kernel_sources: kernel sources compiled for those ops.
        objects: number of objects in the archives.
        compiled, cached: objects compiled now / reused from the cache.
        seconds: wall time of the build.
        int8_kernels: whether int8-only registrations are used.
    """

    core: Core
    sources: TflmSources
    toolchain: Toolchain
    archives: dict
    ops: list
    kernel_sources: list
    objects: int
    compiled: int
    cached: int
    seconds: float
    int8_kernels: bool = False
    compiler: Compiler | None = None

    def flags(self, lang: str) -> list[str]:
        return compile_flags(self.core, lang)

    def include_paths(self) -> list[str]:
        return [str(self.sources.root / i) for i in include_dirs(self.core)]

    def summary(self) -> str:
        return (
            f"{self.core.name}: {self.objects} objects "
            f"({self.compiled} compiled, {self.cached} cached), "
            f"{len(self.ops)} ops, {self.seconds:.1f} s"
        )


def _default_progress(target: str) -> Callable[[int, int], None]:
    tty = sys.stderr.isatty()
    state = {"last": -1}

    def cb(done: int, total: int) -> None:
        if tty:
            end = "\n" if done == total else ""
            print(f"\rbuilding TFLite Micro for {target}: {done}/{total} objects", end=end, file=sys.stderr, flush=True)
        else:
            step = max(1, total // 10)
            if done == total or done // step != state["last"]:
                state["last"] = done // step
                print(f"building TFLite Micro for {target}: {done}/{total} objects", file=sys.stderr, flush=True)

    return cb


def build(
    sources: TflmSources,
    core: str | Core = "cortex-m4",
    *,
    model: ModelInfo | str | Path | None = None,
    ops: Iterable[str] | None = None,
    int8_kernels: bool = False,
    jobs: int | None = None,
    toolchain: Toolchain | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None | bool = True,
) -> BuildResult:
    """Compile TFLM core, CMSIS-NN and the kernels a model needs.

    Args:
        sources: from :func:`edgepipe.targets.mcu.sources.locate_sources`.
        core: ``cortex-m4``, ``cortex-m7`` or ``cortex-m55``.
        model: a ``.tflite`` (path or :class:`ModelInfo`) whose ops to build.
        ops: extra op names (``"ADD"``, ``"custom:CIRCULAR_BUFFER"``) or
            resolver method names (``"AddAdd"``), in addition to the model's.
        int8_kernels: build the ``Register_<OP>_INT8`` variants (see
            :func:`edgepipe.targets.mcu.resolver.model_ops_header`).
        jobs: parallel compiler processes (default ``min(2, cpu count)``).
        progress: ``True`` for the default progress line on stderr, a
            callback ``(done, total)``, or ``False``/``None`` for silence.

    Returns:
        a :class:`BuildResult`.
    """
    t0 = time.monotonic()
    t = get_core(core)
    tc = toolchain or find_toolchain()
    cache = Path(cache_dir) if cache_dir else cache_root()
    root = sources.root
    chosen, csrcs, ksrcs, nsrcs = plan(sources, model=model, ops=ops, int8_kernels=int8_kernels)

    comp = Compiler(root, tc, cache)
    incs = include_dirs(t)
    fl_cxx = compile_flags(t, "c++")
    fl_c = compile_flags(t, "c")
    jobs_list = []  # (group, src, lang, flags)
    for group, srcs, opt in (
        ("tflm_core", csrcs, OPT_CORE),
        ("tflm_kernels", ksrcs, OPT_KERNEL),
        ("cmsis_nn", nsrcs, OPT_THIRD_PARTY),
    ):
        for s in srcs:
            lang = "c" if s.endswith(".c") else "c++"
            fl = (fl_c if lang == "c" else fl_cxx) + [opt]
            jobs_list.append((group, s, lang, fl))
    total = len(jobs_list)
    cb = _default_progress(t.name) if progress is True else (progress or None)
    done = [0]
    lock = threading.Lock()

    def work(item):
        group, s, lang, fl = item
        obj = comp.compile(s, lang, fl, incs)
        with lock:
            done[0] += 1
            if cb:
                cb(done[0], total)
        return group, s, obj

    n = jobs or min(2, os.cpu_count() or 1)
    results = []
    with ThreadPoolExecutor(max_workers=max(1, min(n, 2))) as ex:
        futs = [ex.submit(work, it) for it in jobs_list]
        first_err = None
        for f in futs:
            try:
                results.append(f.result())
            except McuError as e:
                if first_err is None:
                    first_err = e
                    for g in futs:
                        g.cancel()
        if first_err:
            raise first_err
    groups: dict[str, list] = {"tflm_kernels": [], "tflm_core": [], "cmsis_nn": []}
    for group, s, obj in results:
        groups[group].append((_member_name(s), obj))
    archives = {}
    for g in ("tflm_kernels", "tflm_core", "cmsis_nn"):
        archives[g] = _archive(tc, cache, f"ep_{g}", sorted(groups[g]))
    return BuildResult(
        core=t,
        sources=sources,
        toolchain=tc,
        archives=archives,
        ops=chosen,
        kernel_sources=ksrcs,
        objects=total,
        compiled=comp.stats["compiled"],
        cached=comp.stats["cached"],
        seconds=time.monotonic() - t0,
        int8_kernels=int8_kernels,
        compiler=comp,
    )
