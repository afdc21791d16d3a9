"""Where edgepipe keeps what is expensive to build and safe to share between runs and projects.

Target runtimes (TensorFlow Lite Micro compiled for a Cortex-M), unpacked source mirrors and emulated
devices' root file systems live under the user's cache directory, each entry keyed by everything that
went into it, so a second build is a lookup and a changed input builds anew beside the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "EDGEPIPE_CACHE"


def cache_dir(*parts: str) -> Path:
    """`$EDGEPIPE_CACHE/<parts>`, else `$XDG_CACHE_HOME/edgepipe/<parts>`, else `~/.cache/edgepipe/<parts>`;
    created if missing."""
    base = os.environ.get(ENV)
    if not base:
        base = os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgepipe"
        )
    path = Path(base).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
