"""Compile only what a model needs of TFLite Micro + CMSIS-NN, with an object cache.

TFLM's Makefile is *not* driven (it downloads and runs generators at parse
time, and its ``microlite`` target compiles ~315 objects).  Instead this
module reads TFLM's own source lists (``tools/make/sources.inc``) and applies
the same specialisation rules as the Makefile (a file of the same name in
``kernels/cmsis_nn/`` replaces the reference kernel; ``cortex_m_generic/``
replaces ``debug_log.cc`` / ``micro_time.cc``), then compiles with the flags
that ``make TARGET=cortex_m_generic TARGET_ARCH=<cpu>+fp
OPTIMIZED_KERNEL_DIR=cmsis_nn BUILD_TYPE=release`` uses (core ``-Os``,
kernels and CMSIS-NN ``-O2``).

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

Object cache: each source is compiled to ``<cache>/obj/<k>/<key>.o`` where
the key hashes (source content, its path in the tree, compiler version, all
flags, include dirs) and -- through a manifest written from the compiler's
``-MD`` output -- the content of every header it included.  Objects are
written under a temp name and renamed, so a killed build leaves no half
object and a later build reuses every finished one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from edgepipe.targets.mcu._util import atomic_write_text, cache_root, nice_prefix, sha256_bytes, sha256_file
from edgepipe.targets.mcu.errors import McuError, one_line
from edgepipe.targets.mcu.model import ModelInfo, read_model
from edgepipe.targets.mcu.resolver import ResolverMethod, _methods, int8_registrations
from edgepipe.targets.mcu.sources import DOWNLOADS_REL, TflmSources
from edgepipe.targets.mcu.toolchain import Toolchain, find_toolchain

__all__ = ["Target", "TARGETS", "get_target", "BuildResult", "build", "plan",
           "Compiler", "compile_flags", "include_dirs", "kernel_sources_for",
           "core_sources", "cmsis_nn_sources", "ops_for_model"]

# --------------------------------------------------------------- targets ---


@dataclass(frozen=True)
class Target:
    """A Cortex-M CPU and the QEMU board that emulates it.

    Attributes:
        name: ``cortex-m4`` etc. (TFLM's ``TARGET_ARCH`` minus ``+fp``).
        core: TFLM's ``CORE`` (M4, M7, M55) -> ``-DCPU_<core>=1``.
        machine: QEMU ``-M`` board.
        extra_defines: target-specific defines TFLM adds.
        linker_script: file name in ``firmware/``.
        timer_base: CMSDK APB timer0 base address on that board.
    """

    name: str
    core: str
    machine: str
    qemu_cpu: str
    linker_script: str
    timer_base: int
    extra_defines: tuple = ()

    @property
    def arm_cpu(self) -> str:
        return f"ARMC{self.core}"

    @property
    def cpu_flags(self) -> list[str]:
        # TARGET_ARCH=cortex-mX+fp -> GCC_TARGET_ARCH=cortex-mX, FPU auto, hard.
        return [f"-mcpu={self.name}", "-mfpu=auto", "-mfloat-abi=hard", "-mthumb"]


TARGETS = {
    "cortex-m4": Target("cortex-m4", "M4", "mps2-an386", "cortex-m4",
                        "mps2_an386.ld", 0x40000000),
    "cortex-m7": Target("cortex-m7", "M7", "mps2-an500", "cortex-m7",
                        "mps2_an500.ld", 0x40000000),
    "cortex-m55": Target("cortex-m55", "M55", "mps3-an547", "cortex-m55",
                         "mps3_an547.ld", 0x58000000,
                         ("-DARM_MODEL_USE_PMU_COUNTERS",)),
}


def get_target(name: str | Target) -> Target:
    if isinstance(name, Target):
        return name
    key = str(name).lower().replace("+fp", "")
    if key not in TARGETS:
        raise McuError(f"unknown MCU target {name!r}",
                       "use one of " + ", ".join(sorted(TARGETS)))
    return TARGETS[key]


# ----------------------------------------------------------------- flags ---

_WARNINGS = ["-Wsign-compare", "-Wdouble-promotion", "-Wunused-variable",
             "-Wunused-function", "-Wswitch", "-Wvla", "-Wall", "-Wextra",
             "-Wmissing-field-initializers", "-Wstrict-aliasing",
             "-Wno-unused-parameter"]
# COMMON_FLAGS of TFLM's Makefile + ADDITIONAL_DEFINES (OPTIMIZED_KERNEL_DIR,
# OPTIMIZE_KERNELS_FOR) + BUILD_TYPE=release.
_COMMON = ["-fno-unwind-tables", "-fno-asynchronous-unwind-tables",
           "-ffunction-sections", "-fdata-sections", "-fmessage-length=0",
           "-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_DISABLE_X86_NEON",
           *_WARNINGS, "-DCMSIS_NN", "-DKERNELS_OPTIMIZED_FOR_SPEED",
           "-DNDEBUG", "-DTF_LITE_STRIP_ERROR_STRINGS"]
_CXX_ONLY = ["-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics",
             "-Wnon-virtual-dtor", "-std=c++17"]
_C_ONLY = ["-Wimplicit-function-declaration", "-std=c17"]

OPT_CORE = "-Os"       # CORE_OPTIMIZATION_LEVEL (gcc)
OPT_KERNEL = "-O2"     # KERNEL_OPTIMIZATION_LEVEL
OPT_THIRD_PARTY = "-O2"  # THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL


def _platform_flags(t: Target) -> list[str]:
    # PLATFORM_FLAGS of targets/cortex_m_generic_makefile.inc (minus -MD).
    return [*t.cpu_flags, "-DTF_LITE_MCU_DEBUG_LOG", "-mlittle-endian",
            "-Wno-type-limits", "-Wno-unused-private-field",
            "-fomit-frame-pointer", f"-DCPU_{t.core}=1", "-funsigned-char",
            f'-DCMSIS_DEVICE_ARM_CORTEX_M_XX_HEADER_FILE="{t.arm_cpu}.h"',
            f"-D{t.arm_cpu}", *t.extra_defines,
            # ext_libs/cmsis_nn.inc
            "-DARM_NN_ENABLE_F16=0", "-DARM_NN_ENABLE_F32=0"]


def compile_flags(target: Target | str, lang: str) -> list[str]:
    """TFLM's flags for *lang* (``"c"`` or ``"c++"``), without -O and -I."""
    t = get_target(target)
    extra = _CXX_ONLY if lang == "c++" else _C_ONLY
    return [*extra, *_COMMON, *_platform_flags(t)]


def include_dirs(target: Target | str) -> list[str]:
    """Include dirs relative to the TFLM root, in TFLM's order."""
    t = get_target(target)
    dl = DOWNLOADS_REL
    return [".", dl, f"{dl}/gemmlowp", f"{dl}/flatbuffers/include",
            f"{dl}/kissfft", f"{dl}/ruy",
            # cortex_m_generic_makefile.inc
            f"{dl}/cmsis/Cortex_DFP/Device/{t.arm_cpu}/Include",
            f"{dl}/cmsis/CMSIS/Core/Include",
            # ext_libs/cmsis_nn.inc
            f"{dl}/cmsis", f"{dl}/cmsis_nn", f"{dl}/cmsis/CMSIS/Core/Include",
            f"{dl}/cmsis_nn/Include"]


# --------------------------------------------------------- source lists ---

_SOURCES_INC = "tensorflow/lite/micro/tools/make/sources.inc"
_KDIR = "tensorflow/lite/micro/kernels"
_OPT_KDIR = f"{_KDIR}/cmsis_nn"
_TARGET_DIR = "tensorflow/lite/micro/cortex_m_generic"
#: Test-support sources in TFLM's core list that no deployed app links.
_TEST_SUPPORT = {"tensorflow/lite/micro/test_helpers.cc",
                 "tensorflow/lite/micro/test_helper_custom_ops.cc",
                 "tensorflow/lite/micro/fake_micro_context.cc",
                 "tensorflow/lite/micro/mock_micro_graph.cc"}


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
    return [f"{directory}/{os.path.basename(f)}" if os.path.basename(f) in names
            else f for f in files]


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
    for sub in ("tensorflow/lite/micro", "tensorflow/lite/micro/arena_allocator",
                "tensorflow/lite/micro/memory_planner",
                "tensorflow/lite/micro/tflite_bridge"):
        files += sorted(str(p.relative_to(root)) for p in (root / sub).glob("*.cc"))
    # TFL_CC_SRCS: every .cc/.c under tensorflow/ except lite/micro and
    # lite/experimental; lite/array.cc excluded for TF_LITE_STATIC_MEMORY.
    tf = root / "tensorflow"
    for p in sorted(tf.rglob("*")):
        rel = str(p.relative_to(root))
        if (rel.startswith(("tensorflow/lite/micro/", "tensorflow/lite/experimental/"))
                or p.suffix not in (".cc", ".c") or not p.is_file()):
            continue
        if rel != "tensorflow/lite/array.cc":
            files.append(rel)
    files = [f for f in files if f not in tests and not f.endswith("_test.cc")
             and not f.endswith("benchmark.cc") and f not in _TEST_SUPPORT]
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
        raise McuError(f"no MICROLITE_CC_KERNEL_SRCS in {_SOURCES_INC}",
                       "pass an unmodified TFLite Micro source tree")
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
        if inc.startswith(d) and inc.endswith(".h") and "/" not in inc[len(d):]:
            return inc[len(d):-2]
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
        raise McuError(f"no TFLM kernel source defines {', '.join(missing)}",
                       "use a TFLite Micro tree that has these kernels")
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
                cands += [c for st, fs in idx.by_stem.items()
                          if st.startswith(stem + "_") for c in fs
                          if c.startswith("signal/src/")]
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


def ops_for_model(model: ModelInfo | str | Path, root: Path, *,
                  int8_kernels: bool = False) -> list[ResolverMethod]:
    """The resolver methods a model needs (its builtin and custom ops)."""
    from edgepipe.targets.mcu.resolver import model_ops_header
    if not isinstance(model, ModelInfo):
        model = read_model(model)
    return model_ops_header(model, root, int8_kernels=int8_kernels)[1]


# ---------------------------------------------------------- object cache ---

class _HashMemo:
    """Content hashes of files, memoised by (size, mtime_ns), thread-safe."""

    def __init__(self):
        self._d: dict = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        k = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            h = self._d.get(k)
        if h is None:
            h = sha256_file(path)
            with self._lock:
                self._d[k] = h
        return h


_MEMO = _HashMemo()


def _parse_depfile(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    _, _, deps = text.partition(": ")
    out = []
    for tok in re.split(r"(?<!\\) ", deps.strip()):
        if tok:
            out.append(tok.replace("\\ ", " "))
    return out


@dataclass
class Compiler:
    """Compiles sources of a tree into the object cache.

    Args:
        root: directory the relative source and include paths refer to (the
            compiler runs there).
        toolchain: from :func:`find_toolchain`.
        cache: the cache root.
        sysdirs: dependency paths under these prefixes (the toolchain's own
            headers) are covered by the compiler version, not hashed.
    """

    root: Path
    toolchain: Toolchain
    cache: Path
    stats: dict = field(default_factory=lambda: {"compiled": 0, "cached": 0})

    def __post_init__(self):
        self.root = Path(self.root)
        self.obj_dir = self.cache / "obj"
        self.man_dir = self.cache / "obj" / "manifests"
        self.man_dir.mkdir(parents=True, exist_ok=True)
        gcc_dir = Path(self.toolchain.gcc).resolve().parent.parent
        self.sysdirs = tuple({str(gcc_dir / "lib" / "gcc"), str(gcc_dir / "include" / "newlib"),
                              str(gcc_dir / "lib" / "arm-none-eabi"),
                              "/usr/lib/gcc/arm-none-eabi", "/usr/include/newlib",
                              "/usr/lib/arm-none-eabi"})
        self._lock = threading.Lock()

    def _abs(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.root, p)

    def _rel(self, p: str) -> str:
        a = os.path.normpath(self._abs(p))
        r = os.path.relpath(a, self.root)
        return a if r.startswith("..") else r

    def key1(self, src: str, flags: list[str], includes: list[str]) -> str:
        h = _MEMO.get(self._abs(src))
        if h is None:
            raise McuError(f"source {src} not found under {self.root}",
                           "pass a complete TFLite Micro source tree")
        return sha256_bytes(json.dumps(
            [self.toolchain.compiler_id, self._rel(src), h, flags, includes]).encode())

    def lookup(self, k1: str) -> Path | None:
        """The cached object for key1 if all recorded headers are unchanged."""
        man = self.man_dir / k1[:2] / f"{k1}.json"
        try:
            entry = json.loads(man.read_text())
        except (OSError, ValueError):
            return None
        for dep, h in entry["deps"].items():
            if _MEMO.get(self._abs(dep)) != h:
                return None
        obj = self.obj_dir / entry["obj"][:2] / f"{entry['obj']}.o"
        return obj if obj.is_file() else None

    def compile(self, src: str, lang: str, flags: list[str],
                includes: list[str]) -> Path:
        """Compile *src* (relative to root or absolute); return the cached object."""
        k1 = self.key1(src, flags, includes)
        hit = self.lookup(k1)
        if hit is not None:
            with self._lock:
                self.stats["cached"] += 1
            return hit
        exe = self.toolchain.gxx if lang == "c++" else self.toolchain.gcc
        tmpdir = self.obj_dir / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        fd, tmp_o = tempfile.mkstemp(suffix=".o", dir=tmpdir)
        os.close(fd)
        tmp_d = tmp_o[:-2] + ".d"
        cmd = [*nice_prefix(), exe, *flags, *[f"-I{i}" for i in includes],
               "-MD", "-MF", tmp_d, "-c", src, "-o", tmp_o]
        try:
            r = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
            if r.returncode != 0:
                err = next((l for l in r.stderr.splitlines() if "error" in l),
                           r.stderr.strip()[:300])
                log = self.cache / "logs" / f"compile-{k1[:12]}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(" ".join(cmd) + "\n\n" + r.stderr)
                raise McuError(f"compiling {src} failed: {one_line(err, 200)} "
                               f"(log: {log})",
                               "check the TFLite Micro tree and toolchain "
                               "versions; the log has the compiler output",
                               detail=r.stderr)
            deps = {}
            for d in _parse_depfile(Path(tmp_d).read_text())[1:]:
                a = os.path.normpath(self._abs(d))
                if a.startswith(self.sysdirs):
                    continue
                h = _MEMO.get(a)
                if h is not None:
                    deps[self._rel(a)] = h
            content = sha256_file(tmp_o)
            obj = self.obj_dir / content[:2] / f"{content}.o"
            obj.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_o, obj)
            atomic_write_text(self.man_dir / k1[:2] / f"{k1}.json",
                              json.dumps({"src": self._rel(src), "obj": content,
                                          "deps": deps}))
        finally:
            for t in (tmp_o, tmp_d):
                try:
                    os.unlink(t)
                except OSError:
                    pass
        with self._lock:
            self.stats["compiled"] += 1
        return obj


def _member_name(src: str) -> str:
    """Readable unique archive member name: path with '/' -> '_' + '.o'."""
    s = src.replace("tensorflow/lite/micro/tools/make/downloads/", "")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", s).rsplit(".", 1)[0] + ".o"


def _archive(tc: Toolchain, cache: Path, name: str,
             members: list[tuple[str, Path]]) -> Path:
    """Static archive of (member name, object) pairs, cached by content."""
    key = sha256_bytes(json.dumps([tc.compiler_id, name] +
                                  [(m, o.name) for m, o in members]).encode())[:24]
    out = cache / "lib" / key / f"lib{name}.a"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as td:
        names = []
        for m, o in members:
            dst = Path(td) / m
            shutil.copyfile(o, dst)
            names.append(m)
        tmp_a = Path(td) / f"lib{name}.a"
        r = subprocess.run([tc.ar, "rcs", tmp_a.name, *names], cwd=td,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise McuError(f"creating lib{name}.a failed: {one_line(r.stderr, 200)}",
                           "check binutils-arm-none-eabi is installed and the disk is not full")
        os.replace(tmp_a, out)
    return out


# ---------------------------------------------------------------- build ---

@dataclass
class BuildResult:
    """What :func:`build` produced (input to :func:`edgepipe.targets.mcu.run.link_firmware`).

    Attributes:
        target: the :class:`Target`.
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

    target: Target
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
        return compile_flags(self.target, lang)

    def include_paths(self) -> list[str]:
        return [str(self.sources.root / i) for i in include_dirs(self.target)]

    def summary(self) -> str:
        return (f"{self.target.name}: {self.objects} objects "
                f"({self.compiled} compiled, {self.cached} cached), "
                f"{len(self.ops)} ops, {self.seconds:.1f} s")


def _default_progress(target: str) -> Callable[[int, int], None]:
    tty = sys.stderr.isatty()
    state = {"last": -1}

    def cb(done: int, total: int) -> None:
        if tty:
            end = "\n" if done == total else ""
            print(f"\rbuilding TFLite Micro for {target}: {done}/{total} objects",
                  end=end, file=sys.stderr, flush=True)
        else:
            step = max(1, total // 10)
            if done == total or done // step != state["last"]:
                state["last"] = done // step
                print(f"building TFLite Micro for {target}: {done}/{total} objects",
                      file=sys.stderr, flush=True)
    return cb


def plan(sources: TflmSources, *, model: ModelInfo | str | Path | None = None, ops: Iterable[str] | None = None,
         int8_kernels: bool = False) -> tuple[list[ResolverMethod], list[str], list[str], list[str]]:
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
            raise McuError(f"unknown TFLM op {o!r}",
                           "use a BuiltinOperator name such as CONV_2D, "
                           "'custom:<name>' or an Add<Op> method name")
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
    reg_fns = [f for f in dict.fromkeys(reg_fns)
               if f in idx.defines or not f.endswith("_INT8")]
    return chosen, core_sources(root), kernel_sources_for(root, reg_fns), cmsis_nn_sources(root)


def build(sources: TflmSources, target: str | Target = "cortex-m4", *,
          model: ModelInfo | str | Path | None = None,
          ops: Iterable[str] | None = None,
          int8_kernels: bool = False,
          jobs: int | None = None,
          toolchain: Toolchain | None = None,
          cache_dir: str | Path | None = None,
          progress: Callable[[int, int], None] | None | bool = True) -> BuildResult:
    """Compile TFLM core, CMSIS-NN and the kernels a model needs.

    Args:
        sources: from :func:`edgepipe.targets.mcu.sources.locate_sources`.
        target: ``cortex-m4``, ``cortex-m7`` or ``cortex-m55``.
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
    t = get_target(target)
    tc = toolchain or find_toolchain()
    cache = Path(cache_dir) if cache_dir else cache_root()
    root = sources.root
    chosen, csrcs, ksrcs, nsrcs = plan(sources, model=model, ops=ops, int8_kernels=int8_kernels)

    comp = Compiler(root, tc, cache)
    incs = include_dirs(t)
    fl_cxx = compile_flags(t, "c++")
    fl_c = compile_flags(t, "c")
    jobs_list = []  # (group, src, lang, flags)
    for group, srcs, opt in (("tflm_core", csrcs, OPT_CORE),
                             ("tflm_kernels", ksrcs, OPT_KERNEL),
                             ("cmsis_nn", nsrcs, OPT_THIRD_PARTY)):
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
    return BuildResult(target=t, sources=sources, toolchain=tc, archives=archives,
                       ops=chosen, kernel_sources=ksrcs, objects=total,
                       compiled=comp.stats["compiled"], cached=comp.stats["cached"],
                       seconds=time.monotonic() - t0, int8_kernels=int8_kernels,
                       compiler=comp)
