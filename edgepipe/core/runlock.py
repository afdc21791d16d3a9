"""One process at a time in a run folder: an exclusive lock on a file, on any operating system.

`flock` (POSIX) and `msvcrt.locking` (Windows) are released by the operating system when the process
ends, however it ends, so a killed run never leaves the folder locked. Where neither exists, the lock is
a file created with O_EXCL naming its owner's pid, and a lock whose owner is gone is taken over.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from edgepipe.core.errors import EdgepipeError

try:
    import fcntl
except ImportError:  # Windows, or a Python built without it
    fcntl = None
try:
    import msvcrt
except ImportError:  # everything but Windows
    msvcrt = None


def _busy(path: Path) -> EdgepipeError:
    return EdgepipeError(
        f"another edgepipe run is using {path.parent}", "wait for it to finish (or stop it) and run again"
    )


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block, or raise at once if another
    process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None and msvcrt is None:
        with _exclusive_file(path.with_name(path.name + ".pid")):
            yield
        return
    with open(path, "a+") as f:
        try:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:  # BlockingIOError (flock), PermissionError (msvcrt)
            raise _busy(path) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


@contextlib.contextmanager
def _exclusive_file(path: Path) -> Iterator[None]:
    """The lock as a file that only one process can create (O_EXCL); removed on exit."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if _owner_alive(path):
                raise _busy(path) from None
            path.unlink(missing_ok=True)  # its owner was killed: take the lock over
    else:
        raise _busy(path)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        path.unlink(missing_ok=True)


def _owner_alive(path: Path) -> bool:
    try:
        pid = int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists (this path never runs on Windows)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
