"""What the user is shown, kept apart from diagnostics (those go to module loggers)."""

from __future__ import annotations

import sys


def say(message: str = "") -> None:
    """One line to stdout, flushed so progress shows up in logs and pipes at once."""
    print(message, flush=True)


def warn(message: str) -> None:
    """One warning line to stderr."""
    print(f"edgepipe: warning: {message}", file=sys.stderr, flush=True)
