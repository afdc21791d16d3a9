"""Silencing what native code writes to the process's stdout and stderr file descriptors.

TensorFlow, the LiteRT converter and TFLite Micro print from C++ straight to fds 1 and 2 (oneDNN notices,
"fully_quantize: ...", every failed allocation of the arena search), which Python's own redirection
cannot catch and which would bury edgepipe's one-line messages.
"""

from __future__ import annotations

import contextlib
import os
import sys
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
