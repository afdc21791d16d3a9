"""Silencing what native code writes to the process's stdout and stderr file descriptors, and what libraries
say through Python's warnings and logging.

TensorFlow, the LiteRT converter and TFLite Micro print from C++ straight to fds 1 and 2 (oneDNN notices,
"fully_quantize: ...", every failed allocation of the arena search), which Python's own redirection
cannot catch and which would bury edgepipe's one-line messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path


@contextlib.contextmanager
def quiet_native(dest: str | Path = os.devnull):
    """Send what Python and C++ code write to fds 1 and 2 to `dest` (/dev/null unless given).

    Failures still surface, as exceptions with their message. With a file as `dest` (a parallel run's
    stage log), it is truncated first.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    target = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


@contextlib.contextmanager
def library_noise_to_log():
    """Send what libraries say through Python's warnings and logging (tfmot's "does not have enough weights to
    implement clustering", TensorFlow's deprecation notes) to edgepipe's log while the block runs, not to
    stderr: a successful run ends with its one summary line. `--debug` (the log at INFO) shows them; an
    error a library logs (ERROR and above) still reaches stderr."""
    noise = logging.getLogger("edgepipe.library")

    def show(message, category, filename, lineno, file=None, line=None):
        noise.info("%s: %s (%s:%s)", category.__name__, " ".join(str(message).split()), filename, lineno)

    quiet = _LibraryRecords()
    handlers = list(logging.getLogger().handlers)
    with warnings.catch_warnings():  # restores warnings.showwarning and the filters after the block
        warnings.showwarning = show
        for handler in handlers:
            handler.addFilter(quiet)
        try:
            yield
        finally:
            for handler in handlers:
                handler.removeFilter(quiet)


class _LibraryRecords(logging.Filter):
    """Drops a library's (not edgepipe's) records below ERROR, unless the log shows INFO (`--debug`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("edgepipe") or record.levelno >= logging.ERROR:
            return True
        return logging.getLogger().getEffectiveLevel() <= logging.INFO
