"""A model's firmware: its bundle written, its tensor arena sized on the emulated board, and the final link."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgepipe.targets.mcu._util import work_root
from edgepipe.targets.mcu.arena import smallest_arena
from edgepipe.targets.mcu.build import BuildResult
from edgepipe.targets.mcu.bundle import ALIGN, write_bundle, write_model_io
from edgepipe.targets.mcu.cores import BOARDS
from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.link import Firmware, link_firmware
from edgepipe.targets.mcu.model import ModelInfo, read_model
from edgepipe.targets.mcu.run import run

__all__ = ["prepare_firmware"]


def prepare_firmware(
    model: str | Path | ModelInfo,
    build: BuildResult,
    *,
    work_dir: str | Path | None = None,
    int8_kernels: bool | None = None,
    probe_arena: int | None = None,
    flash_size: int | None = None,
    ram_size: int | None = None,
    timeout: float = 120.0,
) -> tuple[Firmware, dict]:
    """Bundle *model*, size its arena on the board, and link the final firmware.

    The firmware is first linked with a generous arena, which reports
    ``arena_used_bytes()``; from there :func:`~edgepipe.targets.mcu.arena.smallest_arena`
    grows the arena in steps until AllocateTensors succeeds (planning can ask
    for scratch the report left out) and bisects to the smallest working size,
    in 16-byte units.  The figure compiled in is one that works.

    Returns:
        ``(firmware, info)`` with ``info = {"arena_size", "arena_used_bytes",
        "probe_arena", "tries"}``.
    """
    info = model if isinstance(model, ModelInfo) else read_model(model)
    t = build.core
    board = BOARDS[t.machine]
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="fw-", dir=work_root()))
    int8 = build.int8_kernels if int8_kernels is None else int8_kernels
    ram = ram_size or board["ram"][1]
    probe = probe_arena or max(64 * 1024, min(ram - 64 * 1024, 4 * info.size + 512 * 1024))
    bundle = write_bundle(info, work / "bundle", build.sources.root, arena_size=probe, int8_kernels=int8)
    fw = link_firmware(bundle, t, build, work_dir=work, flash_size=flash_size, ram_size=ram_size)
    r = run(fw, inputs=None, timeout=timeout)
    used = r.summary["arena_used_bytes"]
    tries = 0
    last = [None, None]  # every link overwrites work/fw.elf: the size and the firmware of the latest one

    def works(size: int) -> bool:
        nonlocal tries
        tries += 1
        write_model_io(bundle.dir, size)
        last[:] = [size, link_firmware(bundle, t, build, work_dir=work, flash_size=flash_size, ram_size=ram_size)]
        try:
            run(last[1], inputs=None, timeout=timeout)
            return True
        except McuError as e:
            if "AllocateTensors" not in e.message:
                raise
            return False

    # A try here is a link and an emulator boot, and the firmware's arena a whole number of ALIGN-byte units:
    # the search starts from what TFLM reported using, grows by steps for scratch it left out, and bisects on
    # those units.
    first = -(-used // ALIGN) * ALIGN
    growth = (0, 16, 64, 256, 1024, 4096, 16384, 65536)
    arena = smallest_arena(works, first, failing=first - ALIGN, growth=growth, multiple=ALIGN)
    if arena is None:
        raise McuError(
            f"AllocateTensors still fails with a {first + growth[-1]:,} B arena "
            f"(arena_used_bytes() reported {used:,} B)",
            "report this model; TFLM needs far more scratch than it reports",
        )
    if last[0] != arena:  # the ELF on disk is from a failed try: relink
        works(arena)
    fw = last[1]
    return fw, {"arena_size": fw.arena_size, "arena_used_bytes": used, "probe_arena": probe, "tries": tries}
