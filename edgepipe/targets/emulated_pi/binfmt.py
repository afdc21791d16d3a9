"""binfmt_misc for aarch64: the kernel running arm64 programs through qemu-user, machine-wide.

mmdebstrap configures the system variant's arm64 packages in a chroot, which runs them through
binfmt_misc. Enabling it changes the whole machine (every aarch64 ELF file then runs under qemu-user), so
nothing here runs at import time; only `ensure_binfmt_aarch64`, called by an explicit request to build
the system image, mounts or registers anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgepipe.targets.emulated_pi.tools import BuildError, Progress, run_step, show_progress


def binfmt_aarch64_enabled() -> bool:
    """Whether the kernel runs aarch64 ELF files through qemu (binfmt_misc), as mmdebstrap's chroot needs."""
    p = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    return p.is_file() and p.read_text().startswith("enabled")


def ensure_binfmt_aarch64(progress: Progress = print) -> None:
    """Mount binfmt_misc and enable Debian's qemu-aarch64 entry if they are not (root only).

    A machine-wide change (every aarch64 ELF file then runs under qemu-user), which is why the system
    build says so when it does it, and does it only with `setup_binfmt=True`.
    """
    if binfmt_aarch64_enabled():
        return
    if os.geteuid() != 0:
        raise BuildError(
            "aarch64 binfmt_misc emulation is not enabled and this is not root",
            "as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64",
        )
    show_progress(progress, "pi: system: enabling binfmt_misc for qemu-aarch64 (machine-wide)")
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        run_step(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], what="mount binfmt_misc")
    run_step(["update-binfmts", "--enable", "qemu-aarch64"], what="update-binfmts --enable qemu-aarch64")
    if not binfmt_aarch64_enabled():
        raise BuildError("qemu-aarch64 binfmt entry still not enabled", "apt-get install qemu-user-static")
