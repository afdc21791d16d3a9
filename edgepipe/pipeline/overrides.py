"""What changes a recipe before it is validated: a profile's and `--set`'s overrides, then `${var}`.

Overrides write into the raw mapping (a stage's params, or `vars`); nothing is checked here but their
shape, since the whole recipe is validated afterwards (`edgepipe.pipeline.recipe`), so a mistyped key
is still caught there.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from edgepipe.core.errors import RecipeError

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def collect(raw: dict, profile: str | None, sets: tuple[str, ...], where: str) -> list[tuple[str, Any, str]]:
    """(dotted key, value, where it came from) of the profile's overrides, then of each --set, in order."""
    overrides: list[tuple[str, Any, str]] = []
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if not isinstance(profiles, dict) or profile not in profiles:
            names = ", ".join(profiles) if isinstance(profiles, dict) and profiles else ""
            raise RecipeError(
                f"{where}: unknown profile '{profile}'",
                f"use one of: {names}" if names else "define it under profiles: in the recipe",
            )
        if not isinstance(profiles[profile], dict):
            raise RecipeError(
                f"{where}: profiles.{profile} must be a mapping of stage.key: value",
                "e.g. profiles: {smoke: {teacher.epochs: 1}}",
            )
        overrides += [(k, v, f"{where}: profiles.{profile}.{k}") for k, v in profiles[profile].items()]
    for s in sets:
        if "=" not in s:
            raise RecipeError(f"--set {s}: expected stage.key=value", "e.g. --set teacher.epochs=3")
        key, value = s.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            raise RecipeError(
                f"--set {key}: the value {value!r} is not valid YAML",
                f"quote it for your shell and for YAML, e.g. --set '{key}=\"{value}\"'",
            ) from None
        overrides.append((key, parsed, f"--set {key}"))
    return overrides


def apply(raw: dict, key: Any, value: Any, origin: str) -> None:
    """Write one override, `stage.param[.key...]` or `vars.name`, into the raw recipe."""
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) < 2 or not all(parts):
        raise RecipeError(f"{origin}: expected stage.param", "e.g. teacher.epochs")
    if parts[0] == "vars":
        if raw.get("vars") is None:
            raw["vars"] = {}
        if not isinstance(raw["vars"], dict):
            raise RecipeError(f"{origin}: vars must be a mapping", "e.g. vars: {seed: 0}")
        raw["vars"][".".join(parts[1:])] = value
        return
    stage = raw["stages"].get(parts[0])
    if not isinstance(stage, dict):
        raise RecipeError(f"{origin}: no stage named '{parts[0]}'", f"use one of: {', '.join(map(str, raw['stages']))}")
    if stage.get("params") is None:
        stage["params"] = {}
    node = stage["params"]
    for part in parts[1:-1]:
        if not isinstance(node, dict):
            break
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict):
        raise RecipeError(
            f"{origin}: '{'.'.join(parts[1:-1]) or 'params'}' is not a mapping",
            "override a key inside a mapping parameter",
        )
    node[parts[-1]] = value  # validated with everything else, so a typo is still caught


def substitute(node: Any, variables: dict, where: str) -> Any:
    """`node` with every `${var}` replaced by its value in `variables` (a whole `${var}` keeps its type)."""
    if isinstance(node, dict):
        return {k: substitute(v, variables, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, variables, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node
    for var in VAR.findall(node):
        if var not in variables:
            known = ", ".join(variables) or "none defined"
            raise RecipeError(f"{where}: unknown variable ${{{var}}}", f"define it under vars: ({known})")
    whole = VAR.fullmatch(node)
    if whole:  # "${epochs}" keeps the variable's type
        return variables[whole.group(1)]
    return VAR.sub(lambda m: str(variables[m.group(1)]), node)
