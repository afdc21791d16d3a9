"""Which TFLite Micro and CMSIS-NN sources a build compiles: TFLM's own source lists, specialised as its Makefile does.

TFLM's Makefile is *not* driven (it downloads and runs generators at parse
time, and its ``microlite`` target compiles ~315 objects).  Instead this
module reads TFLM's own source lists (``tools/make/sources.inc``) and applies
the same specialisation rules as the Makefile (a file of the same name in
``kernels/cmsis_nn/`` replaces the reference kernel; ``cortex_m_generic/``
replaces ``debug_log.cc`` / ``micro_time.cc``); for the kernels, only the
files a model's ops register and the helper sources they include.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.model import ModelInfo, read_model
from edgepipe.targets.mcu.resolver import ResolverMethod, _methods, int8_registrations, model_ops_header
from edgepipe.targets.mcu.sources import DOWNLOADS_REL, TflmSources

__all__ = ["plan", "core_sources", "cmsis_nn_sources", "kernel_sources_for", "ops_for_model"]

_SOURCES_INC = "tensorflow/lite/micro/tools/make/sources.inc"
_KDIR = "tensorflow/lite/micro/kernels"
_OPT_KDIR = f"{_KDIR}/cmsis_nn"
_TARGET_DIR = "tensorflow/lite/micro/cortex_m_generic"
#: Test-support sources in TFLM's core list that no deployed app links.
_TEST_SUPPORT = {
    "tensorflow/lite/micro/test_helpers.cc",
    "tensorflow/lite/micro/test_helper_custom_ops.cc",
    "tensorflow/lite/micro/fake_micro_context.cc",
    "tensorflow/lite/micro/mock_micro_graph.cc",
}


def _make_list(text: str, var: str) -> list[str]:
    """Items of a ``VAR := \\`` list in a makefile fragment."""
    m = re.search(rf"^{var}\s*:?=\s*\\\n((?:.*\\\n)*.*)$", text, re.M)
    if not m:
        return []
    items = []
    for line in m.group(1).splitlines():
        line = line.rstrip("\\").strip()
        if not line:
            break
        items.append(line.replace("$(TENSORFLOW_ROOT)", ""))
    return items


def _specialize(files: Iterable[str], root: Path, directory: str) -> list[str]:
    """TFLM's specialize_files.py: same basename in *directory* wins."""
    d = root / directory
    names = set(os.listdir(d)) if d.is_dir() else set()
    return [f"{directory}/{os.path.basename(f)}" if os.path.basename(f) in names else f for f in files]


def _sources_inc(root: Path) -> str:
    p = root / _SOURCES_INC
    if not p.is_file():
        raise McuError(f"{p} not found", "pass a complete TFLite Micro source tree")
    return p.read_text()


def core_sources(root: Path) -> list[str]:
    """TFLM runtime sources (MICROLITE_CC_SRCS of the Makefile, specialised
    for cortex_m_generic), minus test support, plus ``kernels/kernel_util.cc``."""
    text = _sources_inc(root)
    tests = set(_make_list(text, "MICROLITE_TEST_SRCS"))
    files = []
    for sub in (
        "tensorflow/lite/micro",
        "tensorflow/lite/micro/arena_allocator",
        "tensorflow/lite/micro/memory_planner",
        "tensorflow/lite/micro/tflite_bridge",
    ):
        files += sorted(str(p.relative_to(root)) for p in (root / sub).glob("*.cc"))
    # TFL_CC_SRCS: every .cc/.c under tensorflow/ except lite/micro and
    # lite/experimental; lite/array.cc excluded for TF_LITE_STATIC_MEMORY.
    tf = root / "tensorflow"
    for p in sorted(tf.rglob("*")):
        rel = str(p.relative_to(root))
        if (
            rel.startswith(("tensorflow/lite/micro/", "tensorflow/lite/experimental/"))
            or p.suffix not in (".cc", ".c")
            or not p.is_file()
        ):
            continue
        if rel != "tensorflow/lite/array.cc":
            files.append(rel)
    files = [
        f
        for f in files
        if f not in tests and not f.endswith("_test.cc") and not f.endswith("benchmark.cc") and f not in _TEST_SUPPORT
    ]
    files = _specialize(files, root, _TARGET_DIR)
    files.append(f"{_KDIR}/kernel_util.cc")
    return files


def cmsis_nn_sources(root: Path) -> list[str]:
    """CMSIS-NN ``Source/**/*.c`` without f16/f32 files (ext_libs/cmsis_nn.inc)."""
    base = root / DOWNLOADS_REL / "cmsis_nn" / "Source"
    out = []
    for p in sorted(base.rglob("*.c")):
        n = p.name
        if n.endswith(("_f16.c", "_f32.c")) or n == "arm_nntables_flt.c":
            continue
        out.append(str(p.relative_to(root)))
    return out


def _kernel_candidates(root: Path) -> list[str]:
    text = _sources_inc(root)
    k = _make_list(text, "MICROLITE_CC_KERNEL_SRCS")
    k = _specialize(k, root, _OPT_KDIR)
    sig = _make_list(text, "MICROLITE_CC_SIGNAL_KERNEL_SRCS")
    if not k:
        raise McuError(f"no MICROLITE_CC_KERNEL_SRCS in {_SOURCES_INC}", "pass an unmodified TFLite Micro source tree")
    return k + sig


_DEF_RE = re.compile(r"^TFLMRegistration\s*\*?\s*(Register_\w+)\s*\(\s*\)\s*\{", re.M)
_INC_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


@dataclass
class _KernelIndex:
    defines: dict  # Register_X -> source file
    by_stem: dict  # (dir, stem) -> [source files]
    candidates: list


def _kernel_index(root: Path) -> _KernelIndex:
    cands = _kernel_candidates(root)
    defines, by_stem = {}, {}
    for f in cands:
        p = root / f
        if not p.is_file():
            continue
        for fn in _DEF_RE.findall(p.read_text(errors="replace")):
            defines.setdefault(fn, f)
        stem = os.path.basename(f).rsplit(".", 1)[0]
        # Helper sources are named after the header: x.h -> x.cc / x_common.cc.
        by_stem.setdefault(stem, []).append(f)
    return _KernelIndex(defines, by_stem, cands)


def _header_stem_dir(inc: str) -> str | None:
    for d in (_KDIR + "/", "signal/micro/kernels/", "signal/src/"):
        if inc.startswith(d) and inc.endswith(".h") and "/" not in inc[len(d) :]:
            return inc[len(d) : -2]
    return None


def kernel_sources_for(root: Path, register_fns: Iterable[str]) -> list[str]:
    """Kernel sources for the given ``Register_*`` functions.

    For each function, the (specialised) file defining it; then, transitively,
    for every kernel header ``<x>.h`` included by a chosen file or header:
    ``<x>_common.cc`` and a helper ``<x>.cc`` that registers no op (e.g.
    ``lstm_eval.cc``, ``micro_tensor_utils.cc``).

    Raises:
        McuError: no kernel source defines a requested function.
    """
    idx = _kernel_index(root)
    chosen: list[str] = []
    missing = []
    for fn in register_fns:
        f = idx.defines.get(fn)
        if f is None:
            missing.append(fn)
        elif f not in chosen:
            chosen.append(f)
    if missing:
        raise McuError(
            f"no TFLM kernel source defines {', '.join(missing)}", "use a TFLite Micro tree that has these kernels"
        )
    registering = set(idx.defines.values())
    seen_headers: set[str] = set()
    queue = list(chosen)
    while queue:
        f = queue.pop()
        p = root / f
        if not p.is_file():
            continue
        for inc in _INC_RE.findall(p.read_text(errors="replace")):
            stem = _header_stem_dir(inc)
            if stem is None or inc in seen_headers:
                continue
            seen_headers.add(inc)
            queue.append(inc)
            cands = idx.by_stem.get(stem, []) + idx.by_stem.get(stem + "_common", [])
            if inc.startswith("signal/src/"):
                # signal/src/x.h is implemented by x.cc or x_<variant>.cc.
                cands += [
                    c
                    for st, fs in idx.by_stem.items()
                    if st.startswith(stem + "_")
                    for c in fs
                    if c.startswith("signal/src/")
                ]
            for cand in cands:
                if cand in chosen:
                    continue
                base = os.path.basename(cand).rsplit(".", 1)[0]
                if base == stem and cand in registering:
                    continue  # another op's registering file, not a helper
                if os.path.dirname(cand).split("/")[0] != inc.split("/")[0]:
                    continue  # signal/... vs tensorflow/...
                chosen.append(cand)
                queue.append(cand)
    # kernel_util.cc lives in the core archive.
    return [f for f in chosen if f != f"{_KDIR}/kernel_util.cc"]


def ops_for_model(model: ModelInfo | str | Path, root: Path, *, int8_kernels: bool = False) -> list[ResolverMethod]:
    """The resolver methods a model needs (its builtin and custom ops)."""
    if not isinstance(model, ModelInfo):
        model = read_model(model)
    return model_ops_header(model, root, int8_kernels=int8_kernels)[1]


def plan(
    sources: TflmSources,
    *,
    model: ModelInfo | str | Path | None = None,
    ops: Iterable[str] | None = None,
    int8_kernels: bool = False,
) -> tuple[list[ResolverMethod], list[str], list[str], list[str]]:
    """What a build compiles, without compiling: (resolver methods, core sources, kernel sources, CMSIS-NN
    sources), the sources relative to the TFLM root. A bundle's Makefile lists the same files."""
    root = sources.root
    methods = _methods(root)
    by_name = {m.method: m for m in methods.values()}
    chosen: list[ResolverMethod] = []
    if model is not None:
        chosen += ops_for_model(model, root, int8_kernels=int8_kernels)
    for o in ops or ():
        m = methods.get(o) or by_name.get(o) or methods.get(str(o).upper())
        if m is None:
            raise McuError(
                f"unknown TFLM op {o!r}",
                "use a BuiltinOperator name such as CONV_2D, 'custom:<name>' or an Add<Op> method name",
            )
        if m not in chosen:
            chosen.append(m)
    reg_fns = []
    int8 = int8_registrations(root) if int8_kernels else {}
    for m in chosen:
        if m.register_fn:
            reg_fns.append(m.register_fn)
            if m.register_fn in int8:
                reg_fns.append(m.register_fn + "_INT8")
    # _INT8 variants that are only inline aliases are not defined anywhere:
    idx = _kernel_index(root)
    reg_fns = [f for f in dict.fromkeys(reg_fns) if f in idx.defines or not f.endswith("_INT8")]
    return chosen, core_sources(root), kernel_sources_for(root, reg_fns), cmsis_nn_sources(root)
