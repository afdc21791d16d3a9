"""A model's firmware: its bundle written, its tensor arena sized on the emulated board, and the final link."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgepipe.targets.mcu._util import work_root
from edgepipe.targets.mcu.build import BuildResult
from edgepipe.targets.mcu.bundle import write_bundle, write_model_io
from edgepipe.targets.mcu.cores import BOARDS
from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.link import Firmware, link_firmware
from edgepipe.targets.mcu.model import ModelInfo, read_model
from edgepipe.targets.mcu.run import run

__all__ = ["prepare_firmware"]


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
    t = build.core
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
