"""Strict, typed stage parameters.

Each stage kind declares its parameters as a dataclass whose fields carry their default and a one-line
meaning (`param(...)`). `build()` turns the recipe's mapping into that dataclass once, at load time:
unknown keys are rejected with the list of valid ones, and values are checked against the field's type,
range and choices, so a stage never sees a value it did not declare.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Union

from edgepipe.core.errors import RecipeError

FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


# The most epochs any stage trains for: a bound so that a typo (epochs: 1000000000) is refused at load, not run
# for years; no edgepipe recipe needs more than a few hundred.
MAX_EPOCHS = 10_000


def param(default: Any, doc: str, *, min: float | None = None, max: float | None = None) -> Any:
    """A parameter field: its default, its one-line meaning and an optional inclusive range."""
    meta = {"doc": doc, "min": min, "max": max}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def key_text(k) -> str:
    """A mapping key as an error names it: as written when it is a plain name, quoted when it holds spaces,
    line breaks or other characters that would break the one error line."""
    text = str(k)
    return text if text and all(c.isalnum() or c in "_-." for c in text) else repr(text)


def build(cls: type, raw: Any, where: str) -> Any:
    """Validate `raw` (a mapping from YAML) against dataclass `cls` and return an instance.

    Args:
        cls: a dataclass whose fields were declared with `param`.
        raw: the user's mapping, or None for all defaults.
        where: the location for error messages, e.g. ``recipes/x.yaml: stages.teacher.params``.

    Raises:
        RecipeError: naming the key, the bad value and the valid choices.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping, got {_show(raw)}", "write key: value pairs under it")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise RecipeError(f"{where}: unknown key {str(unknown[0])!r}", f"use one of: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        f = fields[name]
        values[name] = _check(hints[name], value, f"{where}.{name}", f.metadata)
    try:
        return cls(**values)
    except ValueError as e:  # a dataclass's __post_init__ checks values that depend on each other
        problem, _, fix = str(e).partition("; fix: ")
        raise RecipeError(f"{where}: {problem}", fix or "see `edgepipe kinds` for each parameter's meaning") from None


def to_dict(obj: Any) -> Any:
    """A dataclass instance as plain JSON-able data (for cache keys and records)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, meaning) of every parameter of `cls`, nested groups expanded."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((prefix + f.name, repr(to_dict(default)), f.metadata.get("doc", "")))
    return rows


def _check(tp: Any, value: Any, where: str, meta: Any = None) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, where, meta)
            except RecipeError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(
                f"{where}: {_show(value)} is not a valid choice", f"use one of: {', '.join(map(str, choices))}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {_show(value)}", "write it as [a, b, ...]")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {_show(value)}", "write it as {key: value, ...}")
        args = typing.get_args(tp)
        vtype = args[1] if args else Any
        return {str(k): _check(vtype, v, f"{where}.{key_text(k)}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {_show(value)}", "write true or false, unquoted")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(
                f"{where}: expected an integer, got {_show(value)}", "write a whole number, unquoted (e.g. 10)"
            )
    elif tp is float:
        if isinstance(value, str) and FLOAT_TEXT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; the user meant the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(
                f"{where}: expected a number, got {_show(value)}", "write a number, unquoted (e.g. 0.001)"
            )
        value = float(value)
        if not math.isfinite(value):
            raise RecipeError(f"{where}: {value} is not a finite number", "write a finite number (e.g. 0.001)")
    elif tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {_show(value)}", "quote it")
    if meta and isinstance(value, (int, float)):
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{'' if lo is None else lo} .. {'' if hi is None else hi}".strip()
            raise RecipeError(f"{where}: {value} is out of range", f"use a value in [{bounds}]")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
