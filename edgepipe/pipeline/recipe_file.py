"""Finding a recipe file and reading its text: a regular file of a sane size, or one RecipeError line.

A FIFO or a device (`/dev/null`, `/dev/zero`) given as a recipe is named for what it is, not "not found",
and is never opened (reading a FIFO would wait for a writer). A recipe over `MAX_BYTES` is refused before
it is read or parsed: the shipped recipes are under 10 KB, and YAML takes minutes on tens of megabytes.
"""

from __future__ import annotations

import stat
from pathlib import Path

from edgepipe.core import arguments
from edgepipe.core.errors import RecipeError

MAX_BYTES = 1024**2  # the largest recipe file read (1 MB); the shipped ones are under 10 KB


def find_recipe(name_or_path: str, recipes_dir: Path = Path("recipes")) -> Path:
    """Resolve `mnist_student`, `recipes/mnist_student.yaml` or any path to an existing file."""
    recipes_dir = arguments.find_recipe_arguments(name_or_path, recipes_dir)
    p = Path(name_or_path)
    candidates = [p, recipes_dir / p, recipes_dir / f"{name_or_path}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    for c in candidates:
        if c.exists():
            raise RecipeError(
                f"recipe '{name_or_path}' is {_kind(c.stat().st_mode)}, not a file",
                "give the path of a recipe YAML file",
            )
    known = sorted(x.stem for x in recipes_dir.glob("*.yaml")) if recipes_dir.is_dir() else []
    fix = f"use one of: {', '.join(known)}" if known else "give the path of a recipe YAML file"
    raise RecipeError(f"recipe '{name_or_path}' not found", fix)


def read_text(path: Path) -> str:
    """The recipe's text; a folder, FIFO or device, or a file over `MAX_BYTES`, is refused unread.

    Raises:
        OSError: the file cannot be read; UnicodeDecodeError: it is not UTF-8 (the caller words both).
    """
    mode, size = (s := path.stat()).st_mode, s.st_size
    if not stat.S_ISREG(mode):
        raise RecipeError(f"{path}: is {_kind(mode)}, not a recipe file", "give the path of a recipe YAML file")
    if size > MAX_BYTES:
        raise RecipeError(
            f"{path}: {size / 1024**2:.1f} MB is too large for a recipe (at most {MAX_BYTES // 1024**2} MB is read)",
            "give the recipe file itself; a recipe names its data and models by path, never holds them",
        )
    return path.read_text(encoding="utf-8")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"
