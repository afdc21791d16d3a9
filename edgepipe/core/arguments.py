"""The Python API's boundary: each argument checked where it enters, as one edgepipe error line.

A caller's `edgepipe.run(recipe, set="model.epochs=3", jobs="2")` would otherwise fail deep inside (an
AttributeError in the recipe loader, a TypeError comparing "2" with 1, pathlib refusing an int). Here it is
an `ArgumentTypeError` (a TypeError) or `ArgumentValueError` (a ValueError), both EdgepipeErrors whose one
line names the function, the argument, what it got and what it takes, with a fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgepipe.core.errors import ArgumentTypeError, ArgumentValueError

PATH = (str, os.PathLike)


def _show(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _parsed(text: str) -> Any:
    """A `--set` value as the CLI reads it (YAML), to show the mapping the caller meant."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _bad_type(function: str, name: str, value: Any, expected: str, fix: str) -> ArgumentTypeError:
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return ArgumentTypeError(f"{function}: {name}={_show(value)} is {article} {kind}, not {expected}", fix)


def check(function: str, name: str, value: Any, kinds: tuple[type, ...], expected: str, fix: str) -> None:
    """Refuse `value` unless it is one of `kinds` (None only if NoneType is among them; a bool is not an int)."""
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise _bad_type(function, name, value, expected, fix)


def text(function: str, name: str, value: Any, what: str, *, optional: bool = True) -> None:
    """A string argument (a stage, a profile, a target's name), None allowed when `optional`."""
    example = {"until": "'model'", "only": "'model'", "profile": "'smoke'", "target": "'cortex-m4'"}
    fix = f"pass {what} as a string, e.g. {name}={example.get(name, repr('...'))}" + (", or None" if optional else "")
    check(
        function,
        name,
        value,
        (str, type(None)) if optional else (str,),
        "a string" + (" or None" if optional else ""),
        fix,
    )


def flag(function: str, name: str, value: Any) -> None:
    check(function, name, value, (bool,), "True or False", f"pass {name}=True or {name}=False")


def path(function: str, name: str, value: Any, what: str) -> None:
    check(function, name, value, PATH, "a path (a str or a pathlib.Path)", f"pass {what} as a path, e.g. {name}='.'")


def count(function: str, name: str, value: Any, *, least: int, what: str) -> None:
    """A whole number of at least `least` (jobs, bytes)."""
    check(function, name, value, (int,), "an integer", f"pass {what} as a whole number, e.g. {name}={max(least, 1)}")
    if value < least:
        raise ArgumentValueError(
            f"{function}: {name}={value}: must be at least {least}", f"pass {name}={max(least, 1)} or more"
        )


def recipe(function: str, value: Any) -> None:
    check(
        function,
        "recipe",
        value,
        (*PATH, dict),
        "a recipe (a name in recipes/, a YAML file's path, or a mapping)",
        "pass a recipe's name ('mnist_student'), its path, or the recipe as a dict with a name",
    )


def overrides(function: str, name: str, value: Any) -> None:
    """`set=`: a mapping of dotted keys to values already parsed; the CLI's `KEY=VALUE` text is not one."""
    if value is None:
        return
    if isinstance(value, (str, list, tuple)):
        items = [value] if isinstance(value, str) else list(value)
        pairs = [i.partition("=") for i in items if isinstance(i, str)]
        example = "{'model.epochs': 3}"
        if items and len(pairs) == len(items) and all(eq for _, eq, _ in pairs):  # the CLI's --set KEY=VALUE
            example = "{" + ", ".join(f"{k.strip()!r}: {_parsed(v)!r}" for k, _, v in pairs) + "}"
        raise _bad_type(function, name, value, "a mapping of stage.key to value", f"pass {name}={example}")
    check(function, name, value, (dict,), "a mapping of stage.key to value", f"pass {name}={{'model.epochs': 3}}")
    for key in value:
        if not isinstance(key, str):
            raise ArgumentTypeError(
                f"{function}: {name} has the key {_show(key)}, a {type(key).__name__}, not a dotted stage.key string",
                f"write its keys as strings, e.g. {name}={{'model.epochs': 3}}",
            )


def strings(function: str, name: str, value: Any, example: str) -> None:
    """A list or tuple of strings (the CLI's repeated option), not one string."""
    fix = f"pass a list of strings, e.g. {name}=[{example}]"
    check(function, name, value, (list, tuple), "a list of strings", fix)
    for item in value:
        if not isinstance(item, str):
            raise ArgumentTypeError(
                f"{function}: {name} holds {_show(item)}, a {type(item).__name__}, not a string", fix
            )


def mapping_of_text(function: str, name: str, value: Any, example: str) -> None:
    """None, or a mapping of strings to strings (target name -> user@address)."""
    if value is None:
        return
    fix = f"pass a mapping of strings, e.g. {name}={example}, or None"
    check(function, name, value, (dict,), "a mapping of strings to strings", fix)
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ArgumentTypeError(f"{function}: {name} holds {_show(k)}: {_show(v)}, not strings", fix)


def callback(function: str, name: str, value: Any, what: str) -> None:
    """None, or something to call."""
    if value is not None and not callable(value):
        raise _bad_type(function, name, value, "a callable or None", f"pass {what}, or None")


# -- the public functions' arguments -------------------------------------------------------------------------


def find_recipe_arguments(name_or_path: Any, recipes_dir: Any) -> Path:
    """`edgepipe.find_recipe`'s arguments; returns `recipes_dir` as a Path."""
    path("edgepipe.find_recipe", "name_or_path", name_or_path, "a recipe's name or its YAML file's path")
    path("edgepipe.find_recipe", "recipes_dir", recipes_dir, "the folder of recipes")
    return Path(recipes_dir)


def load_recipe_arguments(source, profile, sets, target, host, default_target, hosts, values) -> None:
    """`edgepipe.load_recipe`'s arguments (the CLI passes them typed; a script may not)."""
    f = "edgepipe.load_recipe"
    check(
        f,
        "path",
        source,
        (*PATH, dict),
        "a recipe YAML file's path or a recipe mapping",
        "pass the recipe's path (edgepipe.find_recipe('mnist_student')) or the recipe as a dict with a name",
    )
    text(f, "profile", profile, "a profile's name")
    strings(f, "sets", sets, "'model.epochs=3'")
    text(f, "target", target, "a target's name or profile path")
    text(f, "host", host, "user@address[:port]")
    text(f, "default_target", default_target, "a target's name")
    mapping_of_text(f, "hosts", hosts, "{'pi': 'me@10.0.0.2'}")
    overrides(f, "values", values)


def runner_arguments(recipe, recipe_type: type, root, cache_size, isolate, track, on_progress) -> None:
    """`edgepipe.Runner`'s arguments; `recipe_type` is the loaded recipe's class (pipeline's, not core's)."""
    f = "edgepipe.Runner"
    check(
        f,
        "recipe",
        recipe,
        (recipe_type,),
        "a loaded recipe",
        "load it first: edgepipe.Runner(edgepipe.load_recipe(edgepipe.find_recipe('mnist_student')))",
    )
    path(f, "root", root, "the folder that holds runs/ and models/")
    count(f, "cache_size", cache_size, least=0, what="the run cache's size in bytes")
    flag(f, "isolate", isolate)
    text(f, "track", track, "an MLflow tracking URI")
    callback(f, "on_progress", on_progress, "a function taking a progress event")
