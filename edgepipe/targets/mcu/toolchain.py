"""Find the cross toolchain and the emulator, and report their versions.

The versions go into every cache key, so a toolchain upgrade never reuses an
object or archive built by another compiler.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgepipe.core import system
from edgepipe.core.requirements import Requirement
from edgepipe.targets.mcu.errors import McuError

__all__ = ["Toolchain", "find_toolchain", "requirement"]

_TOOLS = {
    "gcc": "arm-none-eabi-gcc",
    "gxx": "arm-none-eabi-g++",
    "ar": "arm-none-eabi-ar",
    "size": "arm-none-eabi-size",
    "nm": "arm-none-eabi-nm",
    "qemu": "qemu-system-arm",
}


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of the tools and their version strings.

    Attributes:
        gcc, gxx, ar, size, nm, qemu: absolute paths.
        gcc_version: first line of ``arm-none-eabi-gcc --version``.
        qemu_version: first line of ``qemu-system-arm --version``.
    """

    gcc: str
    gxx: str
    ar: str
    size: str
    nm: str
    qemu: str
    gcc_version: str
    qemu_version: str

    @property
    def compiler_id(self) -> str:
        """String identifying the compiler for cache keys."""
        return self.gcc_version

    def versions(self) -> dict:
        return {"arm-none-eabi-gcc": self.gcc_version, "qemu-system-arm": self.qemu_version}


def _first_line(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise McuError(f"cannot run {exe} --version ({e})", f"reinstall it: {_fix()}")
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


@functools.lru_cache(maxsize=8)
def _find(search_path: str | None) -> Toolchain:
    found: dict[str, str] = {}
    missing = []
    for key, name in _TOOLS.items():
        exe = shutil.which(name, path=search_path)
        if exe is None:
            missing.append(name)
        else:
            found[key] = str(Path(exe).resolve()) if key != "qemu" else exe
    if missing:
        raise McuError(
            f"measuring on an emulated Cortex-M needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
            " not installed",
            f"{_fix()}; or bench with measure: estimate (no toolchain)",
        )
    return Toolchain(gcc_version=_first_line(found["gcc"]), qemu_version=_first_line(found["qemu"]), **found)


def find_toolchain(search_path: str | None = None) -> Toolchain:
    """Locate ``arm-none-eabi-{gcc,g++,ar,size,nm}`` and ``qemu-system-arm``.

    Args:
        search_path: a ``PATH``-style string to search instead of ``$PATH``.

    Returns:
        a :class:`Toolchain` (cached per search path).

    Raises:
        McuError: a tool is missing; the fix names the Debian packages.
    """
    return _find(search_path if search_path is not None else os.environ.get("PATH"))


def _fix() -> str:
    return system.fix_for([p for p in system.PACKAGES if p.group == "run"])


def _unmet() -> str | None:
    """What keeps the firmware from being built and run here, or None."""
    gone = [name for name in _TOOLS.values() if shutil.which(name) is None]
    if gone:
        return f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} not installed"
    tc = find_toolchain()
    # The C and C++ libraries come in packages of their own; ask the compiler where it would link them from.
    for lib in ("libc_nano.a", "libstdc++_nano.a"):
        found = subprocess.run(
            [tc.gcc, "-mthumb", "-mcpu=cortex-m4", f"-print-file-name={lib}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        if not Path(found).is_absolute():
            return f"the Arm toolchain has no {lib} (newlib's C{'++' if 'stdc' in lib else ''} library)"
    return None


def requirement(cpu: str) -> Requirement:
    """What measuring on an emulated core needs from this machine (for the runner's preflight)."""
    return Requirement(f"the Arm toolchain and QEMU to emulate the {cpu}", _unmet, _fix())
