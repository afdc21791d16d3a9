"""The one exception type users see.

An `EdgepipeError` carries a single line: what is wrong, where, and how to fix it. The CLI prints it
without a traceback and exits non-zero; anything else that escapes a stage is a bug in edgepipe.
"""

from __future__ import annotations

import errno

# errno -> how to get past what the operating system refused
FIXES = {
    errno.ENOSPC: "free space on that disk, or give --root a folder on another",
    errno.EFBIG: "free space on that disk, or give --root a folder on another",
    errno.EDQUOT: "free space within your quota, or give --root a folder on another disk",
    errno.EACCES: "make it readable and writable for you, or give --root a folder you may write",
    errno.EPERM: "make it readable and writable for you, or give --root a folder you may write",
    errno.EROFS: "the file system is read-only: give --root a folder on a writable one",
    errno.ENOENT: "check that the path exists",
    errno.ENOTDIR: "a part of the path is a file where a folder is needed: check the path",
    errno.EISDIR: "the path is a folder where a file is needed: check the path",
}


class EdgepipeError(Exception):
    """A problem with the user's input (recipe, dataset, model, target), reported as one line.

    Args:
        message: what is wrong and where (a file, a key, a stage).
        fix: how to fix it, appended after ``; fix: `` when given.
        exit_code: process exit code the CLI uses (2 for recipe/usage errors, 1 otherwise).
    """

    def __init__(self, message: str, fix: str | None = None, exit_code: int = 1):
        self.message = message
        self.fix = fix
        self.exit_code = exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        line = self.message if not self.fix else f"{self.message}; fix: {self.fix}"
        return " ".join(line.split())  # one line, always

    @classmethod
    def from_os_error(cls, e: OSError) -> EdgepipeError:
        """What the operating system refused (a full disk, a read-only folder), naming the path."""
        where = e.filename if e.filename is not None else "a file"
        fix = FIXES.get(e.errno, "check the path, its permissions and the free space on its disk")
        return cls(f"{where}: {e.strerror or type(e).__name__}", fix)

    def __reduce__(self):  # keep message, fix and exit code across processes (parallel runs)
        return _rebuild, (type(self), self.message, self.fix, self.exit_code)


def _rebuild(cls, message, fix, exit_code):
    error = cls.__new__(cls)
    EdgepipeError.__init__(error, message, fix, exit_code)
    return error


class RecipeError(EdgepipeError):
    """A recipe that does not validate: malformed YAML, unknown key or kind, bad value, cycle."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message, fix, exit_code=2)


class ArgumentTypeError(RecipeError, TypeError):
    """A Python API argument of the wrong type (`edgepipe.run(jobs="2")`): a TypeError, as Python's own are,
    and an EdgepipeError with the one line the CLI would print."""


class ArgumentValueError(RecipeError, ValueError):
    """A Python API argument of the right type but a value it cannot take (`edgepipe.run(jobs=0)`): a
    ValueError, as Python's own are, and an EdgepipeError with the one line the CLI would print."""
