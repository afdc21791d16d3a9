"""Small helpers of the MCU target: its cache folder, hashing, atomic writes, niceness."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.core.cache import cache_dir
from edgepipe.core.fsio import sha256_file  # noqa: F401 - one implementation, used by the build

__all__ = [
    "cache_root",
    "sha256_file",
    "sha256_bytes",
    "atomic_write_bytes",
    "atomic_write_text",
    "nice_prefix",
]

#: Niceness applied to every compiler / emulator process (shared machines).
NICENESS = 10


def cache_root() -> Path:
    """The MCU part of edgepipe's cache (`edgepipe.core.cache`): sources, objects, archives, firmware."""
    return cache_dir("mcu")


def work_root() -> Path:
    """Scratch folders for firmware and emulator runs that were given no work folder of their own."""
    return cache_dir("mcu", "work")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: os.PathLike | str, data: bytes) -> None:
    """Write *data* to *path* through a temporary file in the same folder and a rename."""
    with fsio.atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: os.PathLike | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_if_changed(path: os.PathLike | str, text: str) -> bool:
    """Atomically write *text* unless the file already holds it. True if written."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    atomic_write_text(path, text)
    return True


def nice_prefix() -> list[str]:
    """``["nice", "-n", "10"]`` when ``nice`` exists, else ``[]``."""
    exe = shutil.which("nice")
    return [exe, "-n", str(NICENESS)] if exe else []
