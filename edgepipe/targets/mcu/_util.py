"""Small helpers of the MCU target: its cache folders, hashing bytes, writing a generated file only when it changed,
niceness."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.core.cache import cache_dir

__all__ = ["cache_root", "work_root", "sha256_bytes", "write_if_changed", "nice_prefix"]

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


def write_if_changed(path: os.PathLike | str, text: str) -> bool:
    """Atomically write *text* unless the file already holds it. True if written."""
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    with fsio.atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
    return True


def nice_prefix() -> list[str]:
    """``["nice", "-n", "10"]`` when ``nice`` exists, else ``[]``."""
    exe = shutil.which("nice")
    return [exe, "-n", str(NICENESS)] if exe else []
