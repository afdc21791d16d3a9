"""The C decoding of a detection model's output, built and run on the emulated Cortex-M4 or on the host.

A detection bundle ships `firmware/detect_decode.{h,c}` (`SOURCES`): the C port of edgepipe's Python
decoding (`edgepipe.tasks.detection_decode.decode`), which turns the model's heat map, and its size
channels if any, into centroids or boxes, so the model keeps to builtin ops. `run_decoder` compiles it
with `firmware/detect_decode_check.c` and the given output tensors as C arrays, runs it on QEMU's
mps2-an386 (as the MCU bench does) or natively, and reads back every detection's float bits, so a caller
can check that the C equals the Python on its own tensors, bit for bit.

No build cache: the tensors are compiled in, so each call's firmware is new, and it builds in about a
second (450 lines of C, the bench's startup and syscalls included), less than a cache lookup would save.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgepipe.targets.mcu._util import nice_prefix, work_root
from edgepipe.targets.mcu.errors import McuError, one_line

__all__ = ["DecodeCase", "SOURCES", "source_files", "run_decoder", "WHERE"]

log = logging.getLogger(__name__)

FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"
#: the files a bundle ships to decode on the device (C99, no allocation, no libm)
SOURCES = ("detect_decode.h", "detect_decode.c")
#: where `run_decoder` can run the decoder: the emulated Cortex-M4 board, or this machine
WHERE = ("board", "host")

# The MCU bench's Cortex-M4 build and QEMU board (the M4 entry of the mcu package's core table, and its
# QEMU command line), repeated here rather than imported while that table moves between modules.
_CPU_FLAGS = ("-mcpu=cortex-m4", "-mfpu=auto", "-mfloat-abi=hard", "-mthumb")
_MACHINE, _QEMU_CPU, _LINKER_SCRIPT = "mps2-an386", "cortex-m4", "mps2_an386.ld"
# The decoder's own flags: C99 as documented, and the warnings a firmware team's strict build would show.
_C_FLAGS = (
    "-std=c99",
    "-ffp-contract=off",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
    "-Wconversion",
    "-Wshadow",
    "-Wdouble-promotion",
)
_SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all")
_CHECK = "detect_decode_check.c"
_CASES = "detect_decode_cases.inc"
_MAX_CELLS = 65536  # DETECT_DECODE_MAX_CELLS


@dataclass(frozen=True)
class DecodeCase:
    """One output tensor to decode, as the device holds it.

    Attributes:
        output: `(gh, gw, C + 1)` or, with a size head, `(gh, gw, C + 3)`: int8 (with `scale` and
            `zero_point`) or float32, channel 0 background.
        classes: C, the object classes.
        scale, zero_point: the int8 output's quantisation (None for float32).
        threshold: a cell is hot when its probability is strictly above this (compared in float32).
        stride: input pixels per cell.
        max_detections: the cap; the first detections in output order are kept.
    """

    output: np.ndarray
    classes: int
    scale: float | None = None
    zero_point: int | None = None
    threshold: float = 0.5
    stride: int = 8
    max_detections: int = 100

    @property
    def has_size(self) -> bool:
        return self.output.shape[2] == self.classes + 3


def source_files() -> list[Path]:
    """The decoder's header and source, for a bundle to copy."""
    return [FIRMWARE_DIR / name for name in SOURCES]


def _check_case(i: int, case: DecodeCase) -> None:
    out = case.output
    if not isinstance(out, np.ndarray) or out.ndim != 3:
        raise ValueError(f"case {i}: an output is a (rows, cols, channels) array, not {getattr(out, 'shape', out)}")
    rows, cols, channels = out.shape
    if case.classes < 1 or channels not in (case.classes + 1, case.classes + 3):
        raise ValueError(
            f"case {i}: {channels} channels do not hold {case.classes} classes + background (+ 2 size channels)"
        )
    if rows < 1 or cols < 1 or rows * cols > _MAX_CELLS:
        raise ValueError(f"case {i}: a {rows} x {cols} grid is out of range (1 to {_MAX_CELLS} cells)")
    if out.dtype == np.int8:
        if case.scale is None or case.zero_point is None:
            raise ValueError(f"case {i}: an int8 output needs its scale and zero_point")
    elif out.dtype == np.float32:
        if case.scale is not None or case.zero_point is not None:
            raise ValueError(f"case {i}: a float32 output has no scale or zero_point")
    else:
        raise ValueError(f"case {i}: outputs are int8 or float32, not {out.dtype}")
    if case.stride < 1 or case.max_detections < 0:
        raise ValueError(f"case {i}: stride {case.stride} must be >= 1 and max_detections {case.max_detections} >= 0")


def _f32_bits(x: float) -> str:
    return f"0x{int(np.float32(x).view(np.uint32)):08x}u"


def _array(ctype: str, name: str, values: list[str]) -> str:
    rows = [", ".join(values[i : i + 16]) for i in range(0, len(values), 16)]
    return f"static const {ctype} {name}[] = {{\n  " + ",\n  ".join(rows) + "\n};\n"


def cases_source(cases: Sequence[DecodeCase]) -> str:
    """`detect_decode_cases.inc`: the cases as C arrays and the table `detect_decode_check.c` reads."""
    parts, table = ["// Generated by edgepipe.targets.mcu.detect_decode. Do not edit.\n"], []
    max_values = 1
    for i, case in enumerate(cases):
        rows, cols, _ = case.output.shape
        flat = np.ascontiguousarray(case.output).ravel()
        if case.output.dtype == np.int8:
            parts.append(_array("int8_t", f"kQ{i}", [str(int(v)) for v in flat]))
            head = f"kQ{i}, NULL, {_f32_bits(case.scale)}, {int(case.zero_point)}"
        else:
            parts.append(_array("uint32_t", f"kF{i}", [f"0x{int(v):08x}u" for v in flat.view(np.uint32)]))
            head = f"NULL, kF{i}, 0u, 0"
            max_values = max(max_values, flat.size)
        table.append(
            f"  {{{head}, {rows}, {cols}, {case.classes}, {int(case.has_size)}, {case.stride}, "
            f"{_f32_bits(case.threshold)}, {case.max_detections}}},"
        )
    parts.append("static const check_case kCases[] = {\n" + "\n".join(table) + "\n};\n")
    shapes = [c.output.shape for c in cases]
    parts.append(
        f"#define CHECK_CASE_COUNT {len(cases)}\n#define CHECK_MAX_VALUES {max_values}\n"
        f"#define CHECK_MAX_ROWS {max(s[0] for s in shapes)}\n"
        f"#define CHECK_MAX_COLS {max(s[1] for s in shapes)}\n"
        f"#define CHECK_MAX_DETECTIONS {max(c.max_detections for c in cases)}\n"
    )
    return "\n".join(parts)


def _run(cmd: list[str], cwd: Path, what: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise McuError(f"{what} exceeded {timeout:g} s", "raise the timeout, or decode fewer tensors") from None
    (cwd / f"{what.split()[0]}.log").write_text(" ".join(cmd) + "\n\n" + done.stdout + done.stderr)
    return done


def _build(where: str, work: Path, strict: bool, sanitize: bool, timeout: float) -> list[str]:
    """Compile the check program in *work*; returns the command that runs it."""
    srcs = [str(FIRMWARE_DIR / "detect_decode.c"), str(FIRMWARE_DIR / _CHECK)]
    flags = [*_C_FLAGS, *(["-Werror"] if strict else []), f"-I{work}", f"-I{FIRMWARE_DIR}"]
    if where == "host":
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise McuError("no C compiler for the host check (cc or gcc)", "install gcc (Debian: apt-get install gcc)")
        cmd = [*nice_prefix(), cc, "-O2", *flags, *(_SANITIZE if sanitize else ()), *srcs, "-o", "check"]
        done = _run(cmd, work, "compile (host)", timeout)
        if done.returncode != 0:
            raise McuError(
                f"the C decoder did not compile on the host: {one_line(done.stderr, 200)}",
                f"see {work / 'compile.log'}",
                detail=done.stderr,
            )
        return [str(work / "check")]
    from edgepipe.targets.mcu.toolchain import find_toolchain

    tc = find_toolchain()
    cmd = [*nice_prefix(), tc.gcc, *_CPU_FLAGS, "-Os", "-ffunction-sections", "-fdata-sections", *flags, "-c", *srcs]
    done = _run(cmd, work, "compile (board)", timeout)
    if done.returncode != 0:
        raise McuError(
            f"the C decoder did not compile for the Cortex-M4: {one_line(done.stderr, 200)}",
            f"see {work / 'compile.log'}",
            detail=done.stderr,
        )
    # startup.c and syscalls.c are the MCU bench's, linked as its firmware is (raw semihosting, newlib nano).
    cmd = [
        *nice_prefix(),
        tc.gcc,
        *_CPU_FLAGS,
        "-Os",
        "-ffunction-sections",
        "-fdata-sections",
        f"-I{FIRMWARE_DIR}",
        str(FIRMWARE_DIR / "startup.c"),
        str(FIRMWARE_DIR / "syscalls.c"),
        "detect_decode.o",
        "detect_decode_check.o",
        "-nostartfiles",
        "--specs=nano.specs",
        "-Wl,--gc-sections",
        "-Wl,--no-warn-rwx-segments",
        f"-L{FIRMWARE_DIR}",
        f"-T{FIRMWARE_DIR / _LINKER_SCRIPT}",
        "-o",
        "check.elf",
    ]
    done = _run(cmd, work, "link (board)", timeout)
    if done.returncode != 0:
        raise McuError(
            f"the decoder's check firmware did not link: {one_line(done.stderr, 200)}",
            f"see {work / 'link.log'}",
            detail=done.stderr,
        )
    return [
        *nice_prefix(),
        tc.qemu,
        "-M",
        _MACHINE,
        "-cpu",
        _QEMU_CPU,
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-icount",
        "shift=0,align=off,sleep=off",
        "-kernel",
        str(work / "check.elf"),
    ]


def parse_output(text: str, count: int) -> list[np.ndarray]:
    """The check program's lines to one float32 `(n, 8)` array per case (see `detect_decode_check.c`)."""
    lines = text.splitlines()
    if "api ok" not in lines:
        raise McuError(
            "the C decoder's argument checks did not pass: "
            + one_line(next((l for l in lines if "EDGEPIPE-" in l), text or "no output"), 200),
            "fix detect_decode.c",
        )
    results: list[np.ndarray] = []
    it = iter(lines[lines.index("api ok") + 1 :])
    for line in it:
        if line == "EDGEPIPE-DONE":
            break
        m = re.fullmatch(r"case (\d+) (-?\d+)", line)
        if not m or int(m.group(1)) != len(results):
            raise McuError(f"unexpected line from the C decoder: {one_line(line, 120)}", "fix detect_decode_check.c")
        n = int(m.group(2))
        if n < 0:
            raise McuError(f"the C decoder refused case {len(results)} (error {n})", "check the case's grid")
        bits = []
        for _ in range(n):
            words = next(it, "").split()
            if len(words) != 9 or words[0] != "det":
                raise McuError(f"case {len(results)}: a detection line is missing", "fix detect_decode_check.c")
            bits.append([int(w, 16) for w in words[1:]])
        results.append(np.array(bits, np.uint32).reshape(n, 8).view(np.float32))
    else:
        raise McuError(
            "the C decoder's check ended early: "
            + one_line(next((l for l in lines if "EDGEPIPE-" in l), lines[-1] if lines else "no output"), 200),
            "see the firmware's output",
        )
    if len(results) != count:
        raise McuError(f"the C decoder reported {len(results)} cases of {count}", "fix detect_decode_check.c")
    return results


def run_decoder(
    cases: Sequence[DecodeCase],
    *,
    where: str = "board",
    strict: bool = False,
    sanitize: bool = False,
    timeout: float = 300.0,
    work_dir: str | Path | None = None,
) -> list[np.ndarray]:
    """Decode each case's output tensor with the C decoder, on the emulated Cortex-M4 or on the host.

    Args:
        cases: the output tensors and how to read them.
        where: "board" (arm-none-eabi-gcc -Os, hard float, QEMU mps2-an386 as the MCU bench runs it) or
            "host" (the machine's cc -O2: a quick check needing no toolchain).
        strict: compile the decoder with -Werror (tests: a warning is a defect of a shipped file).
        sanitize: on the host, with the address and undefined-behaviour sanitizers.
        timeout: seconds for each compile and for the run.
        work_dir: where to build and keep the files (default: a temporary folder, removed after a
            success and kept, with its logs, after a failure).

    Returns:
        one float32 `(n, 8)` array per case, the columns of `edgepipe.tasks.detection_decode.decode`
        (`class, score, cx, cy, x0, y0, x1, y1`), at most the case's `max_detections` rows.

    Raises:
        ValueError: a case is malformed (its message names the case).
        McuError: no toolchain or QEMU, a compile error, a firmware failure or a time-out (one line naming
            the log, which is kept).
    """
    if where not in WHERE:
        raise ValueError(f"where={where!r}: use one of {', '.join(WHERE)}")
    cases = list(cases)
    for i, case in enumerate(cases):
        _check_case(i, case)
    if not cases:
        return []
    t0 = time.monotonic()
    scratch = work_dir is None
    if scratch:
        work = Path(tempfile.mkdtemp(prefix="detect-decode-", dir=work_root()))
    else:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        (work / _CASES).write_text(cases_source(cases))
        cmd = _build(where, work, strict, sanitize, timeout)
        t1 = time.monotonic()
        done = _run(cmd, work, "run", timeout)
        if done.returncode != 0:
            line = next(
                (l for l in (done.stdout + "\n" + done.stderr).splitlines() if "EDGEPIPE-" in l),
                one_line(done.stderr or done.stdout or "no output", 200),
            )
            raise McuError(
                f"the C decoder's check failed on the {where} (exit {done.returncode}): {line}",
                f"see {work / 'run.log'}",
                detail=done.stdout + done.stderr,
            )
        # QEMU writes the semihosting console to stderr; the host program writes to stdout
        results = parse_output(done.stdout + done.stderr, len(cases))
        log.debug(
            "C decoder on the %s: %d cases, built in %.2f s, ran in %.2f s",
            where,
            len(cases),
            t1 - t0,
            time.monotonic() - t1,
        )
    except BaseException:
        if scratch:
            log.info("C decoder: the failed build is kept in %s", work)
        raise
    if scratch:
        shutil.rmtree(work, ignore_errors=True)
    return results
