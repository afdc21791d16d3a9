"""Run a linked firmware on QEMU over a batch of inputs: outputs and instructions per inference.

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
import signal
import struct
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgepipe.targets.mcu._util import nice_prefix, work_root
from edgepipe.targets.mcu.cores import BOARDS
from edgepipe.targets.mcu.errors import McuError, one_line
from edgepipe.targets.mcu.link import Firmware

__all__ = ["EmulatorRun", "run", "run_many"]


@dataclass
class EmulatorRun:
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
        return {
            "inferences": int(len(i)),
            "instr_min": int(i.min()),
            "instr_mean": float(i.mean()),
            "instr_max": int(i.max()),
        }


def _qemu_cmd(qemu: str, machine: str, cpu: str, elf: Path) -> list[str]:
    return [
        *nice_prefix(),
        qemu,
        "-M",
        machine,
        "-cpu",
        cpu,
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
        str(elf),
    ]


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


def run(
    elf: str | Path | Firmware,
    machine: str | None = None,
    inputs: np.ndarray | None = None,
    timeout: float = 600.0,
    *,
    run_dir: str | Path | None = None,
    qemu: str | None = None,
    keep: bool = False,
) -> EmulatorRun:
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
        raise McuError(f"unknown QEMU machine {machine!r}", "use one of " + ", ".join(BOARDS))
    board = BOARDS[machine]
    if qemu is None:
        from edgepipe.targets.mcu.toolchain import find_toolchain

        qemu = find_toolchain().qemu
    if inputs is None:
        inputs = np.zeros((0, 0), np.int8)
    arr = np.asarray(inputs)
    if arr.dtype not in (np.int8, np.uint8):
        raise McuError(
            f"inputs have dtype {arr.dtype}, not int8/uint8",
            "quantize the inputs with the model's input scale and zero point",
        )
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
        proc = subprocess.Popen(
            cmd,
            cwd=rd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise McuError(
                f"emulation of {elf.name} exceeded the {timeout:g} s wall-clock limit (QEMU killed)",
                "raise the timeout, or run fewer inputs",
            )
        wall = time.monotonic() - t0
        out_s = out.decode(errors="replace")
        err_s = err.decode(errors="replace")
        if proc.returncode != 0:
            line = next(
                (
                    l.strip()
                    for l in (out_s + "\n" + err_s).splitlines()
                    if l.strip().startswith(("EDGEPIPE-FAULT", "EDGEPIPE-ERROR", "EDGEPIPE-ABORT"))
                ),
                None,
            )
            if line and line.startswith("EDGEPIPE-FAULT"):
                raise McuError(
                    f"firmware fault on {machine}: {line[15:]}",
                    f"look up the pc with arm-none-eabi-addr2line -e {elf}; a stack overflow needs a bigger stack_size",
                )
            if line and "code=3" in line:
                raise McuError(
                    f"AllocateTensors failed: tensor arena of "
                    f"{_read_summary(rd / 'summary.txt').get('arena_size', '?')} B "
                    "is too small",
                    "link with a larger arena (prepare_firmware sizes it)",
                )
            if line and "code=6" in line:
                raise McuError(
                    f"input record size mismatch on the board ({line[15:]})",
                    "pass inputs shaped like the model's input tensors",
                )
            if line:
                raise McuError(
                    f"firmware failed on {machine}: {line[15:]}", "see the harness exit codes in firmware/harness.cc"
                )
            first_err = one_line(err_s or out_s or "no output", 200)
            raise McuError(
                f"QEMU exited with status {proc.returncode} running {elf.name}: {first_err}",
                f"check that qemu-system-arm supports -M {machine} and that the ELF is for this board",
            )
        summary = _read_summary(rd / "summary.txt")
        if summary.get("status") != 0 or "EDGEPIPE-DONE" not in out_s + err_s:
            raise McuError(
                f"firmware on {machine} ended without a summary",
                "check the harness build; console: " + one_line(out_s, 100),
            )
        ob = summary["output_record_bytes"]
        data = (rd / "outputs.bin").read_bytes()
        hdr = data[:16]
        if hdr[:4] != b"EPO1":
            raise McuError("outputs.bin has no EPO1 header", "re-run")
        body = np.frombuffer(data, np.uint8, offset=16)
        if body.size != n * (4 + ob):
            raise McuError(
                f"outputs.bin holds {body.size} bytes, expected {n * (4 + ob)}", "re-run; the disk may be full"
            )
        body = body.reshape(n, 4 + ob)
        ticks = body[:, :4].copy().view("<u4").reshape(n).astype(np.int64)
        outputs = body[:, 4:].copy()
        if summary["calib_ticks"] <= 0:
            raise McuError(
                f"the timer on {machine} did not count", "check the timer base address and -icount in BOARDS"
            )
        calib = summary["calib_instructions"] / summary["calib_ticks"]
        # Boards without a nominal figure use the measured ratio.
        ipt = board["instr_per_tick"] or round(calib, 2)
        if abs(calib - ipt) / ipt > 1e-3:
            raise McuError(
                f"timer calibration on {machine} gives {calib:.3f} instructions per tick, expected {ipt}",
                "this QEMU clocks the timer differently; update BOARDS",
            )
        instr = ticks * ipt
        instr = instr.astype(np.int64) if float(ipt).is_integer() else instr
        res = EmulatorRun(
            outputs=outputs,
            ticks=ticks,
            instructions=instr,
            instr_per_tick=ipt,
            calib_instr_per_tick=calib,
            summary=summary,
            wall_seconds=wall,
            stdout=out_s,
        )
        return res
    finally:
        if tmp_ctx is not None and not keep:
            tmp_ctx.cleanup()


def run_many(
    jobs: Sequence[dict], max_parallel: int | None = None, on_done: Callable[[int, int], None] | None = None
) -> list:
    """Run several :func:`run` calls in parallel (up to the core count).

    Args:
        jobs: keyword-argument dicts for :func:`run`.
        on_done: called in this thread as each run ends, with how many have ended and that job's index.

    Returns:
        a list aligned with *jobs* of :class:`EmulatorRun` or :class:`McuError`.
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
