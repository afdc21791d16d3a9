"""Paths derived from user input, kept inside the folder they are meant for.

Every file edgepipe writes goes under a run's folders (`runs/<recipe>/`, `models/<recipe>/`) or its
cache; a name taken from a recipe, a target profile or the command line (a recipe name, a publish pattern,
a bundle's target folder, a file-name prefix) must not climb out of them, through `..`, an absolute
path or a symbolic link. `safe_name` checks a name that becomes one path component; `inside` resolves a
path and checks where it lands.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from edgepipe.core.errors import EdgepipeError, RecipeError

# One path component: letters, digits, `_`, `-`, `.`; not starting with a dot (no `..`, no hidden files).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
CPP_KEYWORDS = frozenset(
    """alignas alignof and asm auto bool break case catch char class const constexpr continue
default delete do double else enum explicit extern false float for friend goto if inline int long mutable
namespace new noexcept not nullptr operator or private protected public register return short signed sizeof
static struct switch template this throw true try typedef typename union unsigned using virtual void volatile
while""".split()
)


def safe_name(value: object, what: str) -> str:
    """`value` if it is a string usable as one file or folder name, else one RecipeError line."""
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        raise RecipeError(
            f"{what}: {_show(value)} is not a usable file name",
            "use letters, digits, _, - and . (not first), at most 100 characters, no / or ..",
        )
    return value


def relative_pattern(pattern: object, what: str) -> str:
    """A glob pattern relative to a stage's output folder: no absolute path, no `..`, no empty part."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise RecipeError(f"{what}: {_show(pattern)} is not a file pattern", "e.g. publish: [report.md, 'cortex-m4/*']")
    parts = PurePosixPath(pattern).parts
    if pattern.startswith(("/", "\\", "~")) or "\\" in pattern or ".." in parts or ":" in pattern:
        raise RecipeError(
            f"{what}: {_show(pattern)} points outside the stage's output folder",
            "name files inside it, relative to it, e.g. report.md or 'cortex-m4/*'",
        )
    return pattern


def inside(base: Path, path: Path, what: str) -> Path:
    """`path` resolved (symbolic links followed) if it lies in `base`, else one EdgepipeError line."""
    resolved, root = Path(path).resolve(), Path(base).resolve()
    if resolved != root and root not in resolved.parents:
        raise EdgepipeError(f"{what} {path} leads outside {base}", "keep it inside that folder (no .. or links out)")
    return resolved


def c_identifier(value: str, what: str) -> str:
    """`value` if it is a valid C identifier (a name for generated source code), else one RecipeError line."""
    if not isinstance(value, str) or not C_IDENTIFIER.match(value) or value in CPP_KEYWORDS:
        raise RecipeError(
            f"{what}: {_show(value)} is not a C identifier",
            "use letters, digits and _, not starting with a digit (e.g. g_model_data)",
        )
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
