"""The one exception type users see.

An `EdgepipeError` carries a single line: what is wrong, where, and how to fix it. The CLI prints it
without a traceback and exits non-zero; anything else that escapes a stage is a bug in edgepipe.
"""


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
