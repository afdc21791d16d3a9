"""Link the harness firmware, report its memory, and run it on QEMU.

Instruction counts
------------------
QEMU runs with ``-icount shift=0,align=off,sleep=off``: virtual time advances
exactly 1 ns per executed instruction, independent of the host.  The mps2
boards clock the CMSDK APB timer from SYSCLK = 25 MHz, so one timer tick is
40 ns of virtual time = **40 instructions**.  The harness reads the timer
right before and after ``Invoke()``, so the count per inference is
``ticks x 40`` with a resolution of +-40 instructions (one tick at each end;
plus the handful of instructions of the two timer reads).  At MNIST's ~1.15 M
instructions that is 0.004 %.  The harness also times a loop of exactly
400,001 instructions at start-up; :func:`run` checks that the measured
instructions-per-tick matches the board's nominal value (within 0.1 %), so a
QEMU whose timer clock differs is caught instead of silently mis-scaled.

This is an *instruction* count, not a cycle count: QEMU models no pipeline,
wait states or caches (see :mod:`edgepipe.targets.mcu.calibrate` for a cycles-per-instruction
factor fitted against published boards).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from edgepipe.targets.mcu._util import cache_root, nice_prefix, work_root
from edgepipe.targets.mcu.build import BuildResult, Compiler, Target, compile_flags, get_target, include_dirs
from edgepipe.targets.mcu.bundle import Bundle, write_bundle, write_model_io
from edgepipe.targets.mcu.errors import McuError, one_line
from edgepipe.targets.mcu.model import ModelInfo, read_model

__all__ = ["Firmware", "link_firmware", "MemoryReport", "memory_report",
           "parse_map", "RunResult", "run", "run_many", "prepare_firmware",
           "BOARDS", "parse_overflow", "FIRMWARE_DIR"]

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"

#: QEMU machine -> memory layout and timer clock.
BOARDS = {
    "mps2-an386": {"cpu": "cortex-m4", "flash": (0x00000000, 0x400000),
                   "ram": (0x20000000, 0x400000), "instr_per_tick": 40,
                   "script": "mps2_an386.ld", "timer": 0x40000000},
    "mps2-an500": {"cpu": "cortex-m7", "flash": (0x00000000, 0x400000),
                   "ram": (0x20000000, 0x400000), "instr_per_tick": 40,
                   "script": "mps2_an500.ld", "timer": 0x40000000},
    # The AN547's CMSDK timers sit behind a TrustZone PPC and read as zero
    # from the reset (secure) state; the harness times with SysTick instead.
    # SysTick runs from the 32 MHz CPU clock: 31.25 ns = 31.25 instructions.
    "mps3-an547": {"cpu": "cortex-m55", "flash": (0x00000000, 0x80000),
                   "ram": (0x20000000, 0x80000), "instr_per_tick": 31.25,
                   "script": "mps3_an547.ld", "timer": None},
}

_HARNESS_SRCS = (("startup.c", "c"), ("syscalls.c", "c"), ("harness.cc", "c++"))


# ------------------------------------------------------------------ link ---

@dataclass
class Firmware:
    """A linked firmware image.

    Attributes:
        elf, map: paths of the ELF and its linker map.
        work_dir: the folder holding them (and ``bundle/``, ``obj/``).
        target: the :class:`~edgepipe.targets.mcu.build.Target`; machine: QEMU board.
        flash_size, ram_size: the region sizes it was linked against.
        arena_size: ``kTensorArenaSize`` compiled in.
    """

    elf: Path
    map: Path
    work_dir: Path
    target: Target
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
    return McuError("model does not fit the board: " + "; ".join(parts),
                    "use a board with more flash/RAM, a smaller or more "
                    "quantized model, or a smaller tensor arena/stack")


def _bundle_files(bundle) -> dict[str, Path]:
    """Accept a Bundle, a folder, or an iterable of file paths."""
    if isinstance(bundle, Bundle):
        d = bundle.dir
        files = {n: d / n for n in ("model_data.h", "model_data.cc",
                                    "model_ops.h", "model_io.h")}
    elif isinstance(bundle, (str, os.PathLike)) and Path(bundle).is_dir():
        d = Path(bundle)
        files = {p.name: p for p in d.iterdir() if p.is_file()}
    else:
        files = {Path(p).name: Path(p) for p in bundle}
    need = ("model_data.h", "model_ops.h", "model_io.h")
    missing = [n for n in need if n not in files]
    if missing:
        raise McuError(f"bundle lacks {', '.join(missing)}",
                       "generate it with mcu.bundle.write_bundle()")
    return files


def _script(board: dict, work: Path, flash_size: int | None,
            ram_size: int | None, stack_size: int | None,
            heap_size: int | None) -> tuple[Path, int, int]:
    text = (FIRMWARE_DIR / board["script"]).read_text()
    fl = flash_size or board["flash"][1]
    rm = ram_size or board["ram"][1]
    text = re.sub(r"(FLASH\s*\(rx\)\s*:\s*ORIGIN\s*=\s*\w+,\s*LENGTH\s*=\s*)\w+",
                  lambda m: m.group(1) + hex(fl), text)
    text = re.sub(r"(RAM\s*\(rwx\)\s*:\s*ORIGIN\s*=\s*\w+,\s*LENGTH\s*=\s*)\w+",
                  lambda m: m.group(1) + hex(rm), text)
    head = ""
    if stack_size:
        head += f"__stack_size = {int(stack_size):#x};\n"
    if heap_size is not None:
        head += f"__heap_size = {int(heap_size):#x};\n"
    p = work / "board.ld"
    p.write_text(head + text)
    return p, fl, rm


def link_firmware(bundle: Bundle | str | os.PathLike | Iterable,
                  target: str | Target, build: BuildResult, *,
                  work_dir: str | os.PathLike | None = None,
                  flash_size: int | None = None, ram_size: int | None = None,
                  stack_size: int | None = None,
                  heap_size: int | None = None,
                  defines: Sequence[str] = ()) -> Firmware:
    """Compile the harness against *bundle* and link it with *build*'s archives.

    Args:
        bundle: a :class:`~edgepipe.targets.mcu.bundle.Bundle`, its folder, or the generated
            files (``model_data.h``, ``model_ops.h``, ``model_io.h`` and the
            ``model_data.cc`` defining the array, unless ``model_data.h``
            defines it itself).
        target: must match ``build.target``.
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
    t = get_target(target)
    if build.target.name != t.name:
        raise McuError(f"build is for {build.target.name}, not {t.name}",
                       f"build for {t.name} first")
    machine = t.machine
    board = BOARDS[machine]
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(
        prefix="fw-", dir=work_root()))
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
    defs = ([f"-DEDGEPIPE_TIMER_BASE={board['timer']:#x}u"] if board["timer"]
            else ["-DEDGEPIPE_USE_SYSTICK"]) + [f"-D{d}" for d in defines]
    srcs = [(str(FIRMWARE_DIR / n), lang, n) for n, lang in _HARNESS_SRCS]
    srcs.append((str(FIRMWARE_DIR / "arena.cc"), "c++", "arena.cc"))
    mdc = next((files[n] for n in ("model_data.cc", "model_data.c") if n in files), None)
    if mdc is not None:
        srcs.append((f"bundle/{mdc.name}", "c++" if mdc.suffix == ".cc" else "c",
                     "model_data.cc"))
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
    script, fl_size, ram = _script(board, work, flash_size, ram_size,
                                   stack_size, heap_size)
    shutil.copyfile(FIRMWARE_DIR / "edgepipe_sections.ld",
                    work / "edgepipe_sections.ld")
    a = build.archives
    cmd = [*nice_prefix(), tc.gxx, *t.cpu_flags, "-nostartfiles",
           "--specs=nano.specs", "-Wl,--gc-sections", "-Wl,-Map=fw.map",
           "-Wl,--no-warn-rwx-segments", f"-T{script.name}", "-L.",
           *objs, "-Wl,--start-group", str(a["tflm_kernels"]), str(a["tflm_core"]),
           str(a["cmsis_nn"]), "-Wl,--end-group", "-lm", "-o", "fw.elf"]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if r.returncode != 0:
        (work / "link.log").write_text(" ".join(cmd) + "\n\n" + r.stderr)
        over = parse_overflow(r.stderr)
        if over:
            raise _fit_error(over, fl_size, ram)
        undef = re.findall(r"undefined reference to [`']([^']+)'", r.stderr)
        if undef:
            raise McuError(f"link failed: undefined {', '.join(sorted(set(undef))[:3])} "
                           f"(log: {work / 'link.log'})",
                           "a kernel's helper source was not compiled; add the op "
                           "with build(ops=[...]) or report the TFLM version",
                           detail=r.stderr)
        first = next((l for l in r.stderr.splitlines() if "error" in l),
                     r.stderr[:200])
        raise McuError(f"link failed: {one_line(first, 200)} (log: {work / 'link.log'})",
                       "check the bundle files and the toolchain", detail=r.stderr)
    arena = _arena_from_header(work / "bundle" / "model_io.h")
    return Firmware(elf=work / "fw.elf", map=work / "fw.map", work_dir=work,
                    target=t, machine=machine, flash_size=fl_size, ram_size=ram,
                    arena_size=arena, link_seconds=time.monotonic() - t0,
                    build=build)


def _arena_from_header(p: Path) -> int:
    m = re.search(r"kTensorArenaSize\s*=\s*(\d+)", p.read_text())
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------- memory ---

FLASH_SECTIONS = (".vectors", ".text", ".rodata", ".ARM.extab", ".ARM.exidx",
                  ".preinit_array", ".init_array", ".fini_array")
RAM_SECTIONS = (".data", ".bss", ".heap", ".stack")

#: "padding" is alignment fill; it can be slightly negative when the linker
#: merged duplicate strings (the map lists input sizes before merging).
ORIGINS = ("model data", "CMSIS-NN", "TFLM kernels", "TFLM runtime",
           "libc/libm/libgcc", "harness", "padding", "other")


def classify(file: str, section: str = "") -> str:
    """Origin of an input section, from its file in the linker map."""
    if section.startswith(".rodata.edgepipe_model") or "model_data" in file:
        return "model data"
    base = os.path.basename(file)
    if "libep_cmsis_nn.a" in base:
        return "CMSIS-NN"
    if "libep_tflm_kernels.a" in base:
        return "TFLM kernels"
    if "libep_tflm_core.a" in base:
        member = base.split("(", 1)[-1]
        if member.startswith(("tensorflow_lite_kernels_",
                              "tensorflow_lite_micro_kernels_")):
            return "TFLM kernels"
        return "TFLM runtime"
    if re.search(r"lib(c|c_nano|m|gcc|g|g_nano|stdc\+\+|stdc\+\+_nano|supc\+\+|supc\+\+_nano|nosys)\.a",
                 base) or "crt" in base:
        return "libc/libm/libgcc"
    if base in ("harness.o", "startup.o", "syscalls.o", "arena.o"):
        return "harness"
    return "other"


def parse_map(text: str) -> list[tuple[str, str, int, str]]:
    """Input sections from a GNU ld map: ``[(output sec, input sec, size, file)]``.

    ``*fill*`` padding is reported with file ``"*fill*"``.  Only the part
    after "Linker script and memory map" is read (the discarded-sections list
    before it is ignored).
    """
    out = []
    lines = text.splitlines()
    try:
        start = next(i for i, l in enumerate(lines)
                     if l.startswith("Linker script and memory map"))
    except StopIteration:
        raise McuError("not a GNU ld map file (no 'Linker script and memory map')",
                       "link with -Wl,-Map=FILE")
    cur = None
    pending = None
    rx_full = re.compile(r"^ (\S+)\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(\S.*)$")
    rx_cont = re.compile(r"^\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(\S.*)$")
    rx_fill = re.compile(r"^ \*fill\*\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)")
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        if not line[0].isspace():
            name = line.split()[0]
            cur = name if name.startswith(".") else None
            pending = None
            continue
        if cur is None:
            continue
        m = rx_fill.match(line)
        if m:
            out.append((cur, "*fill*", int(m.group(2), 16), "*fill*"))
            pending = None
            continue
        m = rx_full.match(line)
        if m and not m.group(1).startswith("*"):
            size = int(m.group(3), 16)
            if size:
                out.append((cur, m.group(1), size, m.group(4).strip()))
            pending = None
            continue
        if pending is not None:
            m = rx_cont.match(line)
            if m:
                size = int(m.group(2), 16)
                if size:
                    out.append((cur, pending, size, m.group(3).strip()))
            pending = None
            continue
        s = line.strip()
        if line.startswith(" ") and not line.startswith("  ") and " " not in s \
                and not s.startswith("*"):
            pending = s
    return out


@dataclass
class MemoryReport:
    """Deployable flash and RAM of a linked image.

    Attributes:
        sections: ``{name: (size, addr)}`` from ``arm-none-eabi-size -A``.
        flash_bytes: code + read-only data + the ``.data`` load image.
        ram_bytes: ``.data + .bss + .heap + .stack`` as linked (reserved).
        flash_by_origin: bytes per origin (model data, CMSIS-NN, TFLM kernels,
            TFLM runtime, libc/libm/libgcc, harness, padding, other).
        ram_by_origin: ``.data``/``.bss`` bytes per origin, plus
            ``tensor arena``, ``stack (reserved)``, ``heap (reserved)``.
        arena_bytes: size of the tensor arena section.
        measured: filled by :meth:`with_measured` from a run summary:
            ``ram_used_bytes = .data + .bss - arena + arena_used + stack_used +
            heap_used``.
    """

    sections: dict
    flash_bytes: int
    ram_bytes: int
    flash_by_origin: dict
    ram_by_origin: dict
    arena_bytes: int
    measured: dict = field(default_factory=dict)

    def with_measured(self, summary: dict) -> "MemoryReport":
        statics = (self.sections.get(".data", (0, 0))[0]
                   + self.sections.get(".bss", (0, 0))[0])
        arena_used = int(summary.get("arena_used_bytes", 0))
        stack = int(summary.get("stack_used_bytes", 0))
        heap = int(summary.get("heap_used_bytes", 0))
        self.measured = {
            "arena_used_bytes": arena_used, "stack_used_bytes": stack,
            "heap_used_bytes": heap,
            "statics_without_arena_bytes": statics - self.arena_bytes,
            "ram_used_bytes": statics - self.arena_bytes + arena_used + stack + heap,
        }
        return self

    def as_dict(self) -> dict:
        return {"flash_bytes": self.flash_bytes, "ram_bytes": self.ram_bytes,
                "arena_bytes": self.arena_bytes,
                "flash_by_origin": self.flash_by_origin,
                "ram_by_origin": self.ram_by_origin,
                "sections": {k: v[0] for k, v in self.sections.items()},
                "measured": self.measured}

    def table(self) -> str:
        rows = [f"flash {self.flash_bytes:>9,} B"]
        rows += [f"  {k:<18}{v:>9,}" for k, v in self.flash_by_origin.items() if v]
        rows.append(f"RAM   {self.ram_bytes:>9,} B (as linked)")
        rows += [f"  {k:<18}{v:>9,}" for k, v in self.ram_by_origin.items() if v]
        if self.measured:
            m = self.measured
            rows.append(f"RAM used {m['ram_used_bytes']:>6,} B (arena_used "
                        f"{m['arena_used_bytes']:,}, stack {m['stack_used_bytes']:,}, "
                        f"heap {m['heap_used_bytes']:,}, other statics "
                        f"{m['statics_without_arena_bytes']:,})")
        return "\n".join(rows)


def _size_a(size_exe: str, elf: Path) -> dict:
    r = subprocess.run([size_exe, "-A", "-d", str(elf)], capture_output=True, text=True)
    if r.returncode != 0:
        raise McuError(f"arm-none-eabi-size failed on {elf}: {one_line(r.stderr, 150)}",
                       "pass a linked ELF file")
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


def memory_report(elf: str | Path, map_path: str | Path, *,
                  size_exe: str | None = None) -> MemoryReport:
    """Flash and RAM of *elf* (``size -A``), broken down by origin from *map_path*.

    Test inputs are never in the image (they are streamed over semihosting),
    so nothing needs excluding.
    """
    if size_exe is None:
        from edgepipe.targets.mcu.toolchain import find_toolchain
        size_exe = find_toolchain().size
    secs = _size_a(size_exe, Path(elf))
    flash = sum(secs.get(s, (0, 0))[0] for s in FLASH_SECTIONS) + secs.get(".data", (0, 0))[0]
    ram = sum(secs.get(s, (0, 0))[0] for s in RAM_SECTIONS)
    fl_o = {o: 0 for o in ORIGINS}
    ram_o = {o: 0 for o in ORIGINS}
    ram_o.update({"tensor arena": 0})
    arena = 0
    for out_sec, in_sec, size, file in parse_map(Path(map_path).read_text()):
        origin = "padding" if file == "*fill*" else classify(file, in_sec)
        if out_sec in FLASH_SECTIONS:
            fl_o[origin] += size
        elif out_sec == ".data":
            fl_o[origin] += size
            ram_o[origin] += size
        elif out_sec == ".bss":
            if in_sec.startswith(".bss.edgepipe_arena"):
                arena += size
                ram_o["tensor arena"] += size
            else:
                ram_o[origin] += size
    # Bytes the map does not attribute (section alignment) -> padding; negative
    # when merged strings (SHF_MERGE) were counted at their pre-merge size.
    fl_o["padding"] += flash - sum(fl_o.values())
    ram_o["heap (reserved)"] = secs.get(".heap", (0, 0))[0]
    ram_o["stack (reserved)"] = secs.get(".stack", (0, 0))[0]
    ram_o["padding"] += ram - sum(ram_o.values())
    return MemoryReport(sections=secs, flash_bytes=flash, ram_bytes=ram,
                        flash_by_origin=fl_o, ram_by_origin=ram_o, arena_bytes=arena)


# ------------------------------------------------------------------- run ---

@dataclass
class RunResult:
    """Outcome of one emulator run.

    Attributes:
        outputs: ``(N, output_record_bytes)`` uint8, all output tensors'
            bytes per inference (view with ``.view(np.int8)`` for int8).
        ticks: ``(N,)`` timer ticks per ``Invoke()``.
        instructions: ``(N,)`` = ticks x instr_per_tick.
        instr_per_tick: nominal board value (40 on mps2, 31.25 on mps3-an547).
        calib_instr_per_tick: measured by the harness's timed loop.
        summary: the harness's ``summary.txt`` as a dict of ints.
        wall_seconds: emulator wall time.
        stdout: the emulator's console output.
    """

    outputs: np.ndarray
    ticks: np.ndarray
    instructions: np.ndarray
    instr_per_tick: int
    calib_instr_per_tick: float
    summary: dict
    wall_seconds: float
    stdout: str = ""

    def stats(self) -> dict:
        i = self.instructions
        if len(i) == 0:
            return {"inferences": 0}
        return {"inferences": int(len(i)), "instr_min": int(i.min()),
                "instr_mean": float(i.mean()), "instr_max": int(i.max())}


def _qemu_cmd(qemu: str, machine: str, cpu: str, elf: Path) -> list[str]:
    return [*nice_prefix(), qemu, "-M", machine, "-cpu", cpu, "-nographic",
            "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native",
            "-icount", "shift=0,align=off,sleep=off", "-kernel", str(elf)]


def _read_summary(p: Path) -> dict:
    out = {}
    try:
        for line in p.read_text().splitlines():
            k, _, v = line.partition("=")
            if v.strip().lstrip("-").isdigit():
                out[k.strip()] = int(v)
    except OSError:
        pass
    return out


def run(elf: str | Path | Firmware, machine: str | None = None,
        inputs: np.ndarray | None = None, timeout: float = 600.0, *,
        run_dir: str | Path | None = None, qemu: str | None = None,
        keep: bool = False) -> RunResult:
    """Run the firmware on QEMU over *inputs*.

    Args:
        elf: a :class:`Firmware` or an ELF path (then *machine* is required).
        machine: QEMU board (``mps2-an386``, ``mps2-an500``, ``mps3-an547``).
        inputs: ``(N, ...)`` int8/uint8 array; each row is one inference's
            input bytes (all input tensors concatenated). ``None`` or N = 0
            just allocates tensors (an arena probe).
        timeout: wall-clock limit in seconds; QEMU is killed past it.
        run_dir: folder for inputs.bin/outputs.bin/summary.txt (default: temp).

    Raises:
        McuError: time-out, QEMU crash, a fault in the firmware, or a
            non-zero harness exit (one line naming what happened).
    """
    if isinstance(elf, Firmware):
        machine = machine or elf.machine
        elf = elf.elf
    elf = Path(elf)
    if machine not in BOARDS:
        raise McuError(f"unknown QEMU machine {machine!r}",
                       "use one of " + ", ".join(BOARDS))
    board = BOARDS[machine]
    if qemu is None:
        from edgepipe.targets.mcu.toolchain import find_toolchain
        qemu = find_toolchain().qemu
    if inputs is None:
        inputs = np.zeros((0, 0), np.int8)
    arr = np.asarray(inputs)
    if arr.dtype not in (np.int8, np.uint8):
        raise McuError(f"inputs have dtype {arr.dtype}, not int8/uint8",
                       "quantize the inputs with the model's input scale and zero point")
    n = arr.shape[0] if arr.ndim else 0
    rec = arr.reshape(n, -1) if n else arr.reshape(0, 0)
    rec_bytes = rec.shape[1] if n else 0
    tmp_ctx = None
    if run_dir is None:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="run-", dir=work_root())
        rd = Path(tmp_ctx.name)
    else:
        rd = Path(run_dir)
        rd.mkdir(parents=True, exist_ok=True)
    try:
        for f in ("outputs.bin", "summary.txt"):
            (rd / f).unlink(missing_ok=True)
        with open(rd / "inputs.bin", "wb") as f:
            f.write(b"EPI1" + struct.pack("<III", rec_bytes, n, 0))
            f.write(np.ascontiguousarray(rec).tobytes())
        cmd = _qemu_cmd(qemu, machine, board["cpu"], elf.resolve())
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=rd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise McuError(f"emulation of {elf.name} exceeded the {timeout:g} s "
                           f"wall-clock limit (QEMU killed)",
                           "raise the timeout, or run fewer inputs")
        wall = time.monotonic() - t0
        out_s = out.decode(errors="replace")
        err_s = err.decode(errors="replace")
        if proc.returncode != 0:
            line = next((l.strip() for l in (out_s + "\n" + err_s).splitlines()
                         if l.strip().startswith(("EDGEPIPE-FAULT", "EDGEPIPE-ERROR",
                                                  "EDGEPIPE-ABORT"))),
                        None)
            if line and line.startswith("EDGEPIPE-FAULT"):
                raise McuError(f"firmware fault on {machine}: {line[15:]}",
                               "look up the pc with arm-none-eabi-addr2line -e "
                               f"{elf}; a stack overflow needs a bigger stack_size")
            if line and "code=3" in line:
                raise McuError(f"AllocateTensors failed: tensor arena of "
                               f"{_read_summary(rd / 'summary.txt').get('arena_size', '?')} B "
                               "is too small",
                               "link with a larger arena (prepare_firmware sizes it)")
            if line and "code=6" in line:
                raise McuError(f"input record size mismatch on the board ({line[15:]})",
                               "pass inputs shaped like the model's input tensors")
            if line:
                raise McuError(f"firmware failed on {machine}: {line[15:]}",
                               "see the harness exit codes in firmware/harness.cc")
            first_err = one_line(err_s or out_s or "no output", 200)
            raise McuError(f"QEMU exited with status {proc.returncode} running "
                           f"{elf.name}: {first_err}",
                           f"check that qemu-system-arm supports -M {machine} and "
                           "that the ELF is for this board")
        summary = _read_summary(rd / "summary.txt")
        if summary.get("status") != 0 or "EDGEPIPE-DONE" not in out_s + err_s:
            raise McuError(f"firmware on {machine} ended without a summary",
                           "check the harness build; console: " + one_line(out_s, 100))
        ob = summary["output_record_bytes"]
        data = (rd / "outputs.bin").read_bytes()
        hdr = data[:16]
        if hdr[:4] != b"EPO1":
            raise McuError("outputs.bin has no EPO1 header", "re-run")
        body = np.frombuffer(data, np.uint8, offset=16)
        if body.size != n * (4 + ob):
            raise McuError(f"outputs.bin holds {body.size} bytes, expected "
                           f"{n * (4 + ob)}", "re-run; the disk may be full")
        body = body.reshape(n, 4 + ob)
        ticks = body[:, :4].copy().view("<u4").reshape(n).astype(np.int64)
        outputs = body[:, 4:].copy()
        if summary["calib_ticks"] <= 0:
            raise McuError(f"the timer on {machine} did not count",
                           "check the timer base address and -icount in BOARDS")
        calib = summary["calib_instructions"] / summary["calib_ticks"]
        # Boards without a nominal figure use the measured ratio.
        ipt = board["instr_per_tick"] or round(calib, 2)
        if abs(calib - ipt) / ipt > 1e-3:
            raise McuError(f"timer calibration on {machine} gives {calib:.3f} "
                           f"instructions per tick, expected {ipt}",
                           "this QEMU clocks the timer differently; update BOARDS")
        instr = ticks * ipt
        instr = instr.astype(np.int64) if float(ipt).is_integer() else instr
        res = RunResult(outputs=outputs, ticks=ticks, instructions=instr,
                        instr_per_tick=ipt, calib_instr_per_tick=calib,
                        summary=summary, wall_seconds=wall, stdout=out_s)
        return res
    finally:
        if tmp_ctx is not None and not keep:
            tmp_ctx.cleanup()


def run_many(jobs: Sequence[dict], max_parallel: int | None = None,
             on_done: Callable[[int, int], None] | None = None) -> list:
    """Run several :func:`run` calls in parallel (up to the core count).

    Args:
        jobs: keyword-argument dicts for :func:`run`.
        on_done: called in this thread as each run ends, with how many have ended and that job's index.

    Returns:
        a list aligned with *jobs* of :class:`RunResult` or :class:`McuError`.
    """
    n = max(1, min(len(jobs), max_parallel or os.cpu_count() or 1))

    def one(kw):
        try:
            return run(**kw)
        except McuError as e:
            return e
    with ThreadPoolExecutor(max_workers=n) as ex:
        futures = [ex.submit(one, kw) for kw in jobs]
        if on_done is not None:
            index = {f: i for i, f in enumerate(futures)}
            for k, f in enumerate(as_completed(futures), 1):
                on_done(k, index[f])
        return [f.result() for f in futures]


# ----------------------------------------------------- high-level helper ---

def prepare_firmware(model: str | Path | ModelInfo, build: BuildResult, *,
                     work_dir: str | Path | None = None,
                     int8_kernels: bool | None = None,
                     probe_arena: int | None = None,
                     flash_size: int | None = None, ram_size: int | None = None,
                     timeout: float = 120.0) -> tuple[Firmware, dict]:
    """Bundle *model*, size its arena on the board, and link the final firmware.

    The arena is probed with a generous size, then shrunk to
    ``arena_used_bytes()`` rounded up to 16 B; when AllocateTensors needs more
    during planning (scratch buffers), it grows in steps until it works and
    then bisects to the smallest working size (16-byte granularity).  The
    figure compiled in is one that works.

    Returns:
        ``(firmware, info)`` with ``info = {"arena_size", "arena_used_bytes",
        "probe_arena", "tries"}``.
    """
    info = model if isinstance(model, ModelInfo) else read_model(model)
    t = build.target
    board = BOARDS[t.machine]
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(
        prefix="fw-", dir=work_root()))
    int8 = build.int8_kernels if int8_kernels is None else int8_kernels
    ram = ram_size or board["ram"][1]
    probe = probe_arena or max(64 * 1024, min(ram - 64 * 1024, 4 * info.size + 512 * 1024))
    bundle = write_bundle(info, work / "bundle", build.sources.root,
                          arena_size=probe, int8_kernels=int8)
    fw = link_firmware(bundle, t, build, work_dir=work, flash_size=flash_size,
                       ram_size=ram_size)
    r = run(fw, inputs=None, timeout=timeout)
    used = r.summary["arena_used_bytes"]
    tries = 0
    last = [None]  # every link overwrites work/fw.elf: remember which size it has

    def works(size: int) -> Firmware | None:
        nonlocal tries
        tries += 1
        last[0] = size
        write_model_io(bundle.dir, size)
        f = link_firmware(bundle, t, build, work_dir=work, flash_size=flash_size,
                          ram_size=ram_size)
        try:
            run(f, inputs=None, timeout=timeout)
            return f
        except McuError as e:
            if "AllocateTensors" not in e.message:
                raise
            return None

    # Grow from arena_used (rounded to 16 B) until AllocateTensors succeeds,
    # then bisect the last step down to 16-byte granularity.
    lo = hi = (used + 15) // 16 * 16
    best = None
    for step in (0, 16, 64, 256, 1024, 4096, 16384, 65536):
        hi = lo + step
        best = works(hi)
        if best is not None:
            break
        fail_at = hi
    else:
        raise McuError(f"AllocateTensors still fails with a {hi:,} B arena "
                       f"(arena_used_bytes() reported {used:,} B)",
                       "report this model; TFLM needs far more scratch than it reports")
    if hi != lo:
        bad = fail_at
        while hi - bad > 16:
            mid = (bad + hi) // 2 // 16 * 16
            f = works(mid)
            if f is not None:
                hi, best = mid, f
            else:
                bad = mid
        if last[0] != hi:  # the ELF on disk is from a failed try: relink
            best = works(hi)
    fw, cand = best, hi
    fw.arena_size = (cand + 15) // 16 * 16
    return fw, {"arena_size": fw.arena_size, "arena_used_bytes": used,
                "probe_arena": probe, "tries": tries}
