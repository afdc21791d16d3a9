"""Atomic file output and content hashing.

Everything edgepipe writes goes to a temporary name in the destination folder and is renamed into
place, so a run killed at any instant leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on normal exit, fsync it and rename it onto `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are for other people too
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _umask()


def write_text(dest: Path, text: str) -> None:
    """Write `text` to `dest` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: Path, data: Any) -> None:
    """Write `data` as indented JSON to `dest` atomically."""
    write_text(dest, json.dumps(data, indent=2, sort_keys=False) + "\n")


def copy_file(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` atomically (metadata included)."""
    with atomic_path(dest) as tmp:
        shutil.copy2(src, tmp)


def replace_dir(new: Path, dest: Path) -> None:
    """Move the finished directory `new` onto `dest`, replacing what was there.

    POSIX cannot rename a directory over a non-empty one, so the old one is moved aside first. A kill
    between the two renames leaves no `dest` at all, which the runner treats as "output missing".
    """
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()


def file_record(path: Path, known: dict | None = None) -> dict:
    """{sha256, size, mtime_ns} of a file, reusing `known`'s hash when size and mtime still match.

    Hashing a large model or dataset once per (size, mtime) keeps "nothing changed" checks cheap.
    """
    st = path.stat()
    if known and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        return known
    return {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def dir_records(root: Path, known: dict | None = None) -> dict[str, dict]:
    """file_record() of every file under `root`, by POSIX relative path, sorted."""
    known = known or {}
    records = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            records[rel] = file_record(p, known.get(rel))
    return records


def digest_of(records: dict[str, dict]) -> str:
    """One hash for a set of files: what downstream stages key on."""
    return sha256_text(json.dumps({k: v["sha256"] for k, v in sorted(records.items())}))


def human_size(n: float) -> str:
    """1536 -> '1.5 KB' (powers of 1024, as firmware teams count flash)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
