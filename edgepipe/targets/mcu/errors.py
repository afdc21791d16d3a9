"""The one exception type of the MCU target.

Every failure that a user can cause or meet (missing toolchain, missing
sources, a model that does not fit, an emulator crash, a time-out ...) is
raised as :class:`McuError`.  Its ``str()`` is always ONE line of the form::

    <what went wrong>; fix: <how to fix it>

so a caller can print it as is, or map it onto its own error type using the
``message`` and ``fix`` attributes.  Multi-line details (compiler output,
emulator logs) are never put in the message; they are kept in ``detail`` and,
where useful, written to a log file whose path is named in the message.
"""

from __future__ import annotations

from edgepipe.core.errors import EdgepipeError

__all__ = ["McuError", "one_line"]


def one_line(text: str, limit: int = 300) -> str:
    """Collapse *text* to a single line of at most *limit* characters."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


class McuError(EdgepipeError):
    """A user-facing failure: ``what; fix: how``, on one line (an `EdgepipeError`, exit code 1).

    Attributes:
        message: what went wrong (one line).
        fix: how to fix it (one line).
        detail: optional multi-line diagnostic text (never shown by ``str``).
    """

    def __init__(self, message: str, fix: str, detail: str | None = None):
        super().__init__(one_line(message), one_line(fix))
        self.detail = detail
