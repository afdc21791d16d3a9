"""Link the harness firmware for a model: its bundle compiled with the board's harness, against a build's archives.

The harness (``firmware/``) streams inputs and outputs over semihosting, so
no test data is in the image; the linker script is the board's, with its
flash and RAM lengths set to the part being modelled, so a model that does
not fit fails at link time, naming the region.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from edgepipe.targets.mcu._util import cache_root, nice_prefix, work_root
from edgepipe.targets.mcu.build import BuildResult
from edgepipe.targets.mcu.bundle import BUNDLE_FILES, Bundle
from edgepipe.targets.mcu.compiler import Compiler
from edgepipe.targets.mcu.cores import BOARDS, Core, compile_flags, get_core, include_dirs
from edgepipe.targets.mcu.errors import McuError, one_line

__all__ = ["Firmware", "link_firmware", "parse_overflow", "FIRMWARE_DIR"]

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"

_HARNESS_SRCS = (("startup.c", "c"), ("syscalls.c", "c"), ("harness.cc", "c++"))


@dataclass
class Firmware:
    """A linked firmware image.

    Attributes:
        elf, map: paths of the ELF and its linker map.
        work_dir: the folder holding them (and ``bundle/``, ``obj/``).
        core: the :class:`~edgepipe.targets.mcu.cores.Core`; machine: QEMU board.
        flash_size, ram_size: the region sizes it was linked against.
        arena_size: ``kTensorArenaSize`` compiled in.
    """

    elf: Path
    map: Path
    work_dir: Path
    core: Core
    machine: str
    flash_size: int
    ram_size: int
    arena_size: int
    link_seconds: float = 0.0
    build: BuildResult | None = None


_OVERFLOW_RE = re.compile(r"region [`'\"]?(\w+)['\"]? overflowed by (\d+) bytes")


def parse_overflow(linker_stderr: str) -> list[tuple[str, int]]:
    """``[(region, bytes over), ...]`` from GNU ld's overflow messages."""
    return [(r, int(n)) for r, n in _OVERFLOW_RE.findall(linker_stderr)]


def _fit_error(over: list[tuple[str, int]], flash: int, ram: int) -> McuError:
    parts = []
    for region, n in over:
        size = flash if region.upper() == "FLASH" else ram
        parts.append(f"{region} overflowed by {n:,} bytes (region is {size:,} B)")
    return McuError(
        "model does not fit the board: " + "; ".join(parts),
        "use a board with more flash/RAM, a smaller or more quantized model, or a smaller tensor arena/stack",
    )


def _bundle_files(bundle) -> dict[str, Path]:
    """Accept a Bundle, a folder, or an iterable of file paths."""
    if isinstance(bundle, Bundle):
        d = bundle.dir
        files = {n: d / n for n in BUNDLE_FILES}
    elif isinstance(bundle, (str, os.PathLike)) and Path(bundle).is_dir():
        d = Path(bundle)
        files = {p.name: p for p in d.iterdir() if p.is_file()}
    else:
        files = {Path(p).name: Path(p) for p in bundle}
    need = ("model_data.h", "model_ops.h", "model_io.h")
    missing = [n for n in need if n not in files]
    if missing:
        raise McuError(f"bundle lacks {', '.join(missing)}", "generate it with mcu.bundle.write_bundle()")
    return files


def _script(
    board: dict, work: Path, flash_size: int | None, ram_size: int | None, stack_size: int | None, heap_size: int | None
) -> tuple[Path, int, int]:
    text = (FIRMWARE_DIR / board["script"]).read_text()
    fl = flash_size or board["flash"][1]
    rm = ram_size or board["ram"][1]
    text = re.sub(r"(FLASH\s*\(rx\)\s*:\s*ORIGIN\s*=\s*\w+,\s*LENGTH\s*=\s*)\w+", lambda m: m.group(1) + hex(fl), text)
    text = re.sub(r"(RAM\s*\(rwx\)\s*:\s*ORIGIN\s*=\s*\w+,\s*LENGTH\s*=\s*)\w+", lambda m: m.group(1) + hex(rm), text)
    head = ""
    if stack_size:
        head += f"__stack_size = {int(stack_size):#x};\n"
    if heap_size is not None:
        head += f"__heap_size = {int(heap_size):#x};\n"
    p = work / "board.ld"
    p.write_text(head + text)
    return p, fl, rm


def link_firmware(
    bundle: Bundle | str | os.PathLike | Iterable,
    core: str | Core,
    build: BuildResult,
    *,
    work_dir: str | os.PathLike | None = None,
    flash_size: int | None = None,
    ram_size: int | None = None,
    stack_size: int | None = None,
    heap_size: int | None = None,
    defines: Sequence[str] = (),
) -> Firmware:
    """Compile the harness against *bundle* and link it with *build*'s archives.

    Args:
        bundle: a :class:`~edgepipe.targets.mcu.bundle.Bundle`, its folder, or the generated
            files (``model_data.h``, ``model_ops.h``, ``model_io.h`` and the
            ``model_data.cc`` defining the array, unless ``model_data.h``
            defines it itself).
        core: must match ``build.core``.
        work_dir: output folder (default: a fresh one under the cache).
        flash_size, ram_size: override the board's region sizes (model a
            smaller part; a model that does not fit raises the fit error).
        stack_size, heap_size: override the 16 KiB stack / 4 KiB heap.
        defines: extra ``-D`` defines for the harness (e.g.
            ``EDGEPIPE_SELFTEST_FAULT`` to test the fault path).

    Returns:
        a :class:`Firmware` with ``fw.elf`` and ``fw.map`` in *work_dir*.

    Raises:
        McuError: compile or link failure; "model does not fit the board:
            FLASH overflowed by N bytes ..." when a region overflows.
    """
    t0 = time.monotonic()
    t = get_core(core)
    if build.core.name != t.name:
        raise McuError(f"build is for {build.core.name}, not {t.name}", f"build for {t.name} first")
    machine = t.machine
    board = BOARDS[machine]
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="fw-", dir=work_root()))
    (work / "bundle").mkdir(parents=True, exist_ok=True)
    (work / "obj").mkdir(exist_ok=True)
    files = _bundle_files(bundle)
    for name, p in files.items():
        dst = work / "bundle" / name
        if p.resolve() != dst.resolve():
            data = p.read_bytes()
            if not dst.exists() or dst.read_bytes() != data:
                dst.write_bytes(data)
    tc = build.toolchain
    comp = Compiler(work, tc, cache_root())
    tflm_incs = [str(build.sources.root / i) for i in include_dirs(t)]
    incs = ["bundle", str(FIRMWARE_DIR), *tflm_incs]
    defs = ([f"-DEDGEPIPE_TIMER_BASE={board['timer']:#x}u"] if board["timer"] else ["-DEDGEPIPE_USE_SYSTICK"]) + [
        f"-D{d}" for d in defines
    ]
    srcs = [(str(FIRMWARE_DIR / n), lang, n) for n, lang in _HARNESS_SRCS]
    srcs.append((str(FIRMWARE_DIR / "arena.cc"), "c++", "arena.cc"))
    mdc = next((files[n] for n in ("model_data.cc", "model_data.c") if n in files), None)
    if mdc is not None:
        srcs.append((f"bundle/{mdc.name}", "c++" if mdc.suffix == ".cc" else "c", "model_data.cc"))
    else:
        (work / "bundle" / "model_data_def.cc").write_text('#include "model_data.h"\n')
        srcs.append(("bundle/model_data_def.cc", "c++", "model_data.cc"))
    objs = []
    for src, lang, name in srcs:
        fl = compile_flags(t, lang) + ["-Os"] + defs
        o = comp.compile(src, lang, fl, incs)
        dst = work / "obj" / (Path(name).stem + ".o")
        shutil.copyfile(o, dst)
        objs.append(str(dst.relative_to(work)))
    script, fl_size, ram = _script(board, work, flash_size, ram_size, stack_size, heap_size)
    shutil.copyfile(FIRMWARE_DIR / "edgepipe_sections.ld", work / "edgepipe_sections.ld")
    a = build.archives
    cmd = [
        *nice_prefix(),
        tc.gxx,
        *t.cpu_flags,
        "-nostartfiles",
        "--specs=nano.specs",
        "-Wl,--gc-sections",
        "-Wl,-Map=fw.map",
        "-Wl,--no-warn-rwx-segments",
        f"-T{script.name}",
        "-L.",
        *objs,
        "-Wl,--start-group",
        str(a["tflm_kernels"]),
        str(a["tflm_core"]),
        str(a["cmsis_nn"]),
        "-Wl,--end-group",
        "-lm",
        "-o",
        "fw.elf",
    ]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        (work / "link.log").write_text(" ".join(cmd) + "\n\n" + r.stderr)
        over = parse_overflow(r.stderr)
        if over:
            raise _fit_error(over, fl_size, ram)
        undef = re.findall(r"undefined reference to [`']([^']+)'", r.stderr)
        if undef:
            raise McuError(
                f"link failed: undefined {', '.join(sorted(set(undef))[:3])} (log: {work / 'link.log'})",
                "a kernel's helper source was not compiled; add the op "
                "with build(ops=[...]) or report the TFLM version",
                detail=r.stderr,
            )
        first = next((l for l in r.stderr.splitlines() if "error" in l), r.stderr[:200])
        raise McuError(
            f"link failed: {one_line(first, 200)} (log: {work / 'link.log'})",
            "check the bundle files and the toolchain",
            detail=r.stderr,
        )
    arena = _arena_from_header(work / "bundle" / "model_io.h")
    return Firmware(
        elf=work / "fw.elf",
        map=work / "fw.map",
        work_dir=work,
        core=t,
        machine=machine,
        flash_size=fl_size,
        ram_size=ram,
        arena_size=arena,
        link_seconds=time.monotonic() - t0,
        build=build,
    )


def _arena_from_header(p: Path) -> int:
    m = re.search(r"kTensorArenaSize\s*=\s*(\d+)", p.read_text())
    return int(m.group(1)) if m else 0
