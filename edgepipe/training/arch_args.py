"""Checking a zoo architecture's `arch_args` when the recipe is loaded, against its builder's signature.

Keras refuses a negative kernel size or width only when the model is built, in its own words and without
the recipe's key (`The kernel_size argument must be a tuple of 2 integers...`); this names the key instead:
an argument the builder does not take, or a value of the wrong type or below the least that makes sense
(the least is taken from the builder's default: a count that defaults to 0 may be 0, any other at least 1).
"""

from __future__ import annotations

import inspect

COMMON = ("dropout", "kernel_initializer", "kernel_regularizer")  # given by the stage's own params


def check_arch_args(arch: str, arch_args: dict) -> None:
    """Raise ValueError (`arch_args.<key>: ...; fix: ...`) for an arch_arg the zoo builder `arch` cannot take;
    user builders (`package.module:function`) and unknown names are left to the build."""
    from edgepipe.training.nets import ARCHITECTURES

    if arch not in ARCHITECTURES:
        return
    takes = {
        n: p.default
        for n, p in inspect.signature(ARCHITECTURES[arch]).parameters.items()
        if p.kind is p.KEYWORD_ONLY and n not in COMMON
    }
    for key, value in arch_args.items():
        if key not in takes:
            raise ValueError(
                f"arch_args.{key}: {arch} takes no such argument; fix: use "
                + (f"one of: {', '.join(takes)}" if takes else "arch_args: {} (it takes none)")
            )
        problem = _problem(takes[key], value)
        if problem:
            raise ValueError(
                f"arch_args.{key}: {value!r} {problem}; fix: give {_wanted(takes[key])} (default {takes[key]!r})"
            )


def _problem(default, value) -> str | None:
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "is not true or false"
    if isinstance(default, int) or default is None:
        if default is None and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return "is not a whole number"
        return None if value >= _least(default) else f"is below {_least(default)}"
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            return "is not a number"
        return None if 0 < value < float("inf") else "is not above 0"
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (list, tuple)) or not value:
            return "is not a non-empty list"
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            return "holds a value that is not a whole number of at least 1"
    return None


def _least(default) -> int:
    return 0 if default == 0 else 1


def _wanted(default) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, float):
        return "a number above 0"
    if isinstance(default, (tuple, list)):
        return "a list of whole numbers of at least 1"
    return f"a whole number of at least {_least(default)}"
