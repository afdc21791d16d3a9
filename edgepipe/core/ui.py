"""What the user is shown, kept apart from diagnostics (those go to module loggers)."""

from __future__ import annotations

import sys

_live = None  # while live progress lines are drawn: their rich console, which prints lines above them
_live_stderr = False  # whether warnings go through it too (stderr is the same terminal)


def print_through(console, stderr: bool = False) -> None:
    """Print through `console` (a live display's, so lines land above its live lines), or plainly (None)."""
    global _live, _live_stderr
    _live, _live_stderr = console, stderr


def say(message: str = "") -> None:
    """One line to stdout, flushed so progress shows up in logs and pipes at once."""
    if _live is not None:
        _live.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return
    print(message, flush=True)


def warn(message: str) -> None:
    """One warning line to stderr."""
    if _live is not None and _live_stderr:
        _live.print(f"edgepipe: warning: {message}", markup=False, highlight=False, emoji=False, soft_wrap=True)
        return
    print(f"edgepipe: warning: {message}", file=sys.stderr, flush=True)
