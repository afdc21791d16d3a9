"""Loading a recipe: YAML in, a validated DAG of stages out, or one RecipeError line.

Everything is checked here, once: YAML syntax, top-level and stage keys, stage kinds, parameter names,
types and ranges, `${var}` references (`edgepipe.pipeline.overrides` substitutes them, after a profile's
and `--set`'s overrides), input roles, references to unknown stages, and cycles. The runner never sees
an invalid recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml

from edgepipe.core import arguments
from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.params import build
from edgepipe.core.paths import relative_pattern, safe_name
from edgepipe.core.stage import StageKind
from edgepipe.core.yamlio import load_yaml
from edgepipe.pipeline import overrides
from edgepipe.pipeline.recipe_file import find_recipe, read_text  # noqa: F401 - find_recipe: callers import it from here
from edgepipe.pipeline.tracking import TrackingParams
from edgepipe.stages.registry import kinds
from edgepipe.targets.backends import backend_for, measured_as
from edgepipe.targets.profiles import load_target
from edgepipe.targets.remote import check_addresses

# The keys a recipe may have at its top level, and in each stage (their meanings: docs/recipes.md).
TOP_KEYS = ("name", "description", "vars", "profiles", "target", "tracking", "stages")
STAGE_KEYS = ("kind", "params", "inputs", "publish", "description")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One validated stage of a recipe."""

    name: str
    kind: StageKind
    params: Any
    inputs: dict[str, str | list[str]]
    publish: tuple[str, ...]

    def upstream(self) -> list[str]:
        """Names of the stages this one reads from, in declaration order."""
        names: list[str] = []
        for value in self.inputs.values():
            names.extend([value] if isinstance(value, str) else value)
        return names


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe; `stages` is in topological order."""

    name: str
    path: Path
    description: str
    stages: dict[str, Stage]
    tracking: TrackingParams | None = None  # the `tracking:` block (MLflow), None if the recipe has none
    profile: str | None = None  # how it was loaded (the run history records it)
    overrides: tuple[str, ...] = ()  # the --set overrides, as given

    def ancestors(self, name: str) -> list[str]:
        """`name` and every stage it depends on, in run order."""
        wanted: set[str] = set()
        todo = [name]
        while todo:
            n = todo.pop()
            if n not in wanted:
                wanted.add(n)
                todo.extend(self.stages[n].upstream())
        return [n for n in self.stages if n in wanted]


def load_recipe(
    path: Path | dict,
    profile: str | None = None,
    sets: tuple[str, ...] = (),
    target: str | None = None,
    host: str | None = None,
    default_target: str | None = None,
    hosts: dict[str, str] | None = None,
    values: dict[str, Any] | None = None,
) -> Recipe:
    """Read, override, substitute and validate a recipe.

    Args:
        path: the recipe YAML file, or a recipe as a mapping (it must then have a `name`).
        profile: name of an entry under `profiles:` whose overrides to apply.
        sets: ``stage.key=value`` or ``vars.name=value`` overrides (value parsed as YAML), applied last.
        target: replaces the recipe's top-level `target:` (`--target`).
        host: `user@address` for the stages whose target is reached over SSH (`--host`).
        default_target: the target when neither `target` nor the recipe names one (the project config's).
        hosts: target name -> `user@address`, for SSH targets `host` and the stage leave without one (the
            project config's).
        values: ``{"stage.key": value}`` overrides with values already parsed (the Python API's `set`),
            applied after `sets`.

    Raises:
        RecipeError: on anything invalid, naming the file and the key (an `ArgumentTypeError`, also a
            TypeError, for an argument of the wrong type).
    """
    arguments.load_recipe_arguments(path, profile, sets, target, host, default_target, hosts, values)
    if isinstance(path, dict):
        raw, path = _from_mapping(path)
    else:
        path = Path(path)
        raw = _read(path)
    where = str(path)
    changes = overrides.collect(raw, profile, sets, where)
    changes += [(k, copy.deepcopy(v), f"set[{k!r}]") for k, v in (values or {}).items()]
    for key, value, origin in changes:
        overrides.apply(raw, key, value, origin)
    variables = raw.get("vars") or {}
    if not isinstance(variables, dict):
        raise RecipeError(f"{where}: vars must be a mapping of name: value", "e.g. vars: {seed: 0}")
    raw_stages = overrides.substitute(raw["stages"], variables, f"{where}: stages")
    table = kinds()
    stages = {name: _build_stage(name, spec, table, raw_stages, where) for name, spec in raw_stages.items()}
    _apply_target(stages, target or raw.get("target"), host, where, default_target, hosts or {})
    _check_tasks(stages, where)
    order = _topological(stages, where)
    given = raw.get("name")  # runs/<name>/ and models/<name>/ are the run's folders: one safe name
    if given is None:
        name = safe_name(path.stem, f"{where}: the recipe name (its file name)")
    else:
        name = safe_name(str(given) if type(given) is int else given, f"{where}: name")
    tracking = build(TrackingParams, raw["tracking"], f"{where}: tracking") if "tracking" in raw else None
    return Recipe(
        name=name,
        path=path,
        description=" ".join(str(raw.get("description") or "").split()),
        stages={n: stages[n] for n in order},
        tracking=tracking,
        profile=profile,
        overrides=tuple(sets) + tuple(f"{k}={json.dumps(v, default=str)}" for k, v in (values or {}).items()),
    )


def _from_mapping(recipe: dict) -> tuple[dict, Path]:
    """A recipe given as a mapping (the Python API): a deep copy, checked as a file's would be, and the
    stand-in path messages and the lock name it by."""
    name = recipe.get("name")
    if not isinstance(name, str) or not name:
        raise RecipeError(
            "a recipe given as a mapping has no name", "add a name, e.g. {'name': 'smoke', 'stages': ...}"
        )
    where = Path(f"<recipe {name}>")
    try:
        raw = copy.deepcopy(recipe)
    except Exception as e:  # noqa: BLE001 - a value that cannot be copied (a model object, a generator)
        raise RecipeError(
            f"{where}: cannot copy the recipe ({type(e).__name__})",
            "use plain values: dicts, lists, strings, numbers, booleans",
        ) from None
    _check_top(raw, str(where))
    return raw, where


def _read(path: Path) -> dict:
    """The recipe file as a mapping, its top-level keys and stage names checked."""
    where = str(path)
    try:
        raw = load_yaml(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        fix = (
            "each key may appear once in a mapping: rename or remove one"
            if "duplicate key" in problem
            else "fix the YAML syntax there"
        )
        raise RecipeError(f"{where}: malformed YAML{at}: {problem}", fix) from None
    except UnicodeDecodeError as e:
        raise RecipeError(
            f"{where}: not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r})",
            "save the recipe as UTF-8",
        ) from None
    except OSError as e:
        raise RecipeError(f"{where}: cannot read recipe: {e.strerror}", "check the path and its permissions") from None
    _check_top(raw, where)
    return raw


def _check_top(raw: Any, where: str) -> None:
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{where}: a recipe is a mapping with a 'stages' key, got {type(raw).__name__}",
            "start from a shipped recipe in recipes/ (e.g. smoke.yaml)",
        )
    _only_keys(raw, TOP_KEYS, where)
    if "stages" not in raw or not isinstance(raw["stages"], dict) or not raw["stages"]:
        raise RecipeError(
            f"{where}: 'stages' must be a non-empty mapping of stage name -> stage",
            "add stages: with at least one stage (see recipes/smoke.yaml)",
        )
    for name in raw["stages"]:
        if not isinstance(name, str) or not NAME.match(name):
            raise RecipeError(
                f"{where}: stages.{name}: invalid stage name",
                "use lower-case letters, digits and _ and start with a letter",
            )


def _build_stage(name: str, spec: Any, table: dict[str, StageKind], raw_stages: dict, where: str) -> Stage:
    """One stage: its kind, validated params, inputs and publish patterns."""
    at = f"{where}: stages.{name}"
    if not isinstance(spec, dict):
        raise RecipeError(f"{at}: expected a mapping with 'kind' and 'params'", "e.g. {kind: train, params: {...}}")
    _only_keys(spec, STAGE_KEYS, at)
    kind_name = spec.get("kind")
    if not isinstance(kind_name, str) or kind_name not in table:
        raise RecipeError(f"{at}.kind: unknown stage kind {kind_name!r}", f"use one of: {', '.join(table)}")
    kind = table[kind_name]
    params = build(kind.params, spec.get("params"), f"{at}.params")
    inputs = _check_inputs(spec.get("inputs"), kind, raw_stages, name, at, table)
    publish = spec.get("publish") or []
    if not isinstance(publish, list):
        raise RecipeError(f"{at}.publish: expected a list of file names", "e.g. publish: [report.md]")
    for i, pattern in enumerate(publish):
        relative_pattern(pattern, f"{at}.publish[{i}]")
    return Stage(name, kind, params, inputs, tuple(publish))


def _apply_target(
    stages: dict[str, Stage],
    default: Any,
    host: str | None,
    where: str,
    fallback: str | None = None,
    hosts: dict[str, str] | None = None,
) -> None:
    """Give stages with a `target` param the recipe's target unless they name one; check every target exists.

    `--host` goes to the stages whose target is reached over SSH; it is an error if none is, so a
    mistyped command does not silently bench on this machine.
    """
    if default is not None and not isinstance(default, str):
        raise RecipeError(
            f"{where}: target must be a profile name or a .yaml path, got {default!r}", "see `edgepipe targets`"
        )
    if default is not None:
        try:
            backend_for(load_target(default))  # the profile is whole for its kind of device, used or not
        except EdgepipeError as e:
            raise RecipeError(f"{where}: target: {e.message}", e.fix) from None
        if not any(hasattr(s.params, "target") for s in stages.values()):
            raise RecipeError(
                f"target {default}: no bench or bundle stage in {where} uses a target",
                "add a bench stage, or drop --target",
            )
    took_host = False
    for name, stage in stages.items():
        if not hasattr(stage.params, "target"):
            continue
        if stage.params.target is None:
            stage.params.target = default or fallback or "host"
        try:
            profile = load_target(stage.params.target)
            backend_for(profile)  # which also checks what its kind of device needs from the profile
            # a bench's measure may move the device to another backend (rpi4 measured emulated: no SSH)
            backend = measured_as(profile, getattr(stage.params, "measure", None))[1]
        except EdgepipeError as e:
            raise RecipeError(f"{where}: stages.{name}.target: {e.message}", e.fix) from None
        if host and hasattr(stage.params, "host") and backend.takes_host:
            stage.params.host, took_host = host, True
        elif hasattr(stage.params, "host") and backend.takes_host and stage.params.host is None:
            given = (hosts or {}).get(stage.params.target) or (hosts or {}).get(profile.name)
            if given:
                stage.params.host = given
        if backend.takes_host:
            check_addresses(stage.params, f"{where}: stages.{name}.params", from_cli=bool(host))
    if host and not took_host:
        raise RecipeError(
            f"--host {host}: no stage of {where} benches an SSH target",
            "add --target rpi4 (or another SSH target), or drop --host",
        )


def _check_tasks(stages: dict[str, Stage], where: str) -> None:
    """Refuse a stage that cannot work on its data's task (a detection dataset into a classifier's
    distillation, or benched on a device that scores class scores only) at load, not after the training."""
    for name, stage in stages.items():
        ref = stage.inputs.get("data")
        if stage.kind.check_task is None or not isinstance(ref, str) or ref not in stages:
            continue
        source = stages[ref]
        if source.kind.output_task is None:
            continue
        try:
            stage.kind.check_task(stage.params, source.kind.output_task(source.params))
        except EdgepipeError as e:
            raise RecipeError(f"{where}: stages.{name}: {e.message}", e.fix) from None


def _only_keys(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise RecipeError(f"{where}: unknown key '{key}'", f"use one of: {', '.join(allowed)}")


OUTPUT_WORDS = {
    "dataset": "a dataset",
    "model": "a Keras model",
    "tflite": "converted .tflite models",
    "bench": "bench figures",
    "bundle": "a firmware bundle",
    "report": "a report",
}


def _check_inputs(raw: Any, kind: StageKind, all_stages: dict, name: str, at: str, table: dict) -> dict:
    """The stage's inputs, role by role: each role known, each reference a stage of this recipe whose
    output the role accepts; a list only where the role takes many, and never an empty one."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{at}.inputs: expected a mapping of role -> stage name", "e.g. inputs: {data: data}")
    for role in raw:
        if role not in kind.inputs:
            roles = ", ".join(kind.inputs) or "none (this kind takes no inputs)"
            raise RecipeError(f"{at}.inputs: unknown role {role!r} for kind {kind.name}", f"use: {roles}")
    inputs: dict[str, str | list[str]] = {}
    for role, many in kind.inputs.items():
        if role not in raw:
            if role in kind.optional_inputs:
                continue
            raise RecipeError(f"{at}.inputs: missing input '{role}'", f"add inputs: {{{role}: <stage name>}}")
        value = raw[role]
        if isinstance(value, list) and not value:
            raise RecipeError(
                f"{at}.inputs.{role}: the list is empty", f"name at least one stage, e.g. {role}: [<stage name>]"
            )
        refs = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not many:
            raise RecipeError(
                f"{at}.inputs.{role}: expected one stage name, got a list",
                f"this role takes a single stage, e.g. {role}: {refs[0]}",
            )
        for ref in refs:
            _check_reference(ref, role, kind, all_stages, name, at, table)
        inputs[role] = list(refs) if many else refs[0]
    return inputs


def _check_reference(ref: Any, role: str, kind: StageKind, all_stages: dict, name: str, at: str, table: dict):
    if not isinstance(ref, str) or ref not in all_stages or ref == name:
        others = ", ".join(s for s in all_stages if s != name)
        what = f"no stage named {ref!r}" if ref != name else "a stage cannot read its own output"
        raise RecipeError(
            f"{at}.inputs.{role}: {what}", f"use one of: {others}" if others else "add the stage it reads to the recipe"
        )
    wanted = kind.accepts.get(role)
    spec = all_stages[ref]
    given = table.get(spec.get("kind")) if isinstance(spec, dict) and isinstance(spec.get("kind"), str) else None
    output = given.output if given is not None else None
    if wanted and given is not None and given.output_for is not None:  # an import stage: what its file is
        output = given.produces(build(given.params, spec.get("params"), f"{_where_of(at)}: stages.{ref}.params"))
    if wanted and given is not None and output not in wanted:
        makers = [k.name for k in table.values() if k.output in wanted or set(k.also_outputs) & set(wanted)]
        article = "an" if given.name[0] in "aeiou" else "a"
        raise RecipeError(
            f"{at}.inputs.{role}: stage '{ref}' is {article} {given.name} stage, which outputs "
            f"{OUTPUT_WORDS.get(output, output)}; the role {role} takes "
            f"{' or '.join(OUTPUT_WORDS.get(w, w) for w in wanted)}",
            f"name a {' or '.join(makers)} stage",
        )


def _where_of(at: str) -> str:
    """The file part of a location `FILE: stages.NAME`."""
    return at.rsplit(": stages.", 1)[0]


def _topological(stages: dict[str, Stage], where: str) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = path[path.index(n) :] + [n]
            raise RecipeError(f"{where}: input cycle {' -> '.join(cycle)}", "remove one of these inputs")
        state[n] = 1
        for up in stages[n].upstream():
            visit(up, path + [n])
        state[n] = 2
        order.append(n)

    for n in stages:
        visit(n, [])
    return order
