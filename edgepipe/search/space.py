"""A search space: which of a trial's training parameters vary, over which values.

A recipe writes the space as dotted paths into the trial's train parameters (the keys of a train or
distill stage's params), each with a `Dimension`:

    space:
      arch_args.widths.0: {low: 8, high: 24, step: 4}     # an element of a list
      lr: {low: 0.001, high: 0.01, log: true}
      teacher: {choices: [false, true]}                   # distil from the `teacher` input, or not
      temperature: {low: 2, high: 8}                      # sampled only when a trial distils

Two keys are not train parameters: `teacher` (whether a trial learns from the teacher input) and
`augment_scale` (a factor on the data stage's rotate, translate, zoom and noise). Every value of every
dimension is checked at load against the train parameters it lands in, so a bad range is one error
line before any training.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any, Literal

from edgepipe.core.errors import RecipeError
from edgepipe.core.params import param

TEACHER, AUGMENT_SCALE = "teacher", "augment_scale"
#: distillation's own knobs: sampled only for a trial that distils
DISTILL_ONLY = ("temperature", "alpha", "teacher_outputs")
SCALED_AUGMENT = ("rotate", "translate", "zoom", "noise")


@dataclasses.dataclass
class Dimension:
    """One searched parameter: a list of choices, or a numeric range."""

    choices: list[Any] | None = param(None, "the values to choose from (numbers, strings or booleans)")
    low: int | float | None = param(None, "smallest value of a range")
    high: int | float | None = param(None, "largest value of a range (inclusive)")
    step: int | float | None = param(None, "grid step of a range (integers: 1 unless given)")
    log: bool = param(False, "sample the range on a log scale (low > 0)")
    type: Literal["auto", "int", "float"] = param(
        "auto", "int or float; auto: int when low, high and step are whole numbers"
    )

    def __post_init__(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give choices or a range (low, high), not both; fix: drop one")
            if not self.choices:
                raise ValueError("choices is empty; fix: list at least two values")
            bad = [c for c in self.choices if not isinstance(c, (bool, int, float, str)) and c is not None]
            if bad:
                raise ValueError(
                    f"choice {bad[0]!r} is not a number, string or boolean; fix: search each element "
                    "of a list on its own (e.g. arch_args.widths.0)"
                )
            if len({json.dumps(c) for c in self.choices}) != len(self.choices):
                raise ValueError("choices repeat a value; fix: list each value once")
            return
        if self.low is None or self.high is None:
            raise ValueError("a dimension needs choices, or low and high; fix: e.g. {low: 8, high: 32}")
        if not self.low < self.high:
            what = "empty (low equals high)" if self.low == self.high else "inverted (low above high)"
            raise ValueError(
                f"the range [{self.low}, {self.high}] is {what}; fix: make low smaller than high, or set "
                "a fixed value in train instead"
            )
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0; fix: raise low or drop log")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step; fix: drop step or log")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive; fix: e.g. step: 4")
        if self.type == "int" and not all(_whole(v) for v in (self.low, self.high, self.step) if v is not None):
            raise ValueError("type int needs whole-number low, high and step; fix: e.g. {low: 8, high: 32, step: 4}")

    @property
    def is_int(self) -> bool:
        if self.type != "auto":
            return self.type == "int"
        return all(_whole(v) for v in (self.low, self.high, self.step) if v is not None)

    def values_to_check(self) -> list[Any]:
        """The values that bound this dimension: its choices, or its two ends."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.is_int else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial, name: str) -> Any:
        """The value of this dimension for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)


def _whole(v: float) -> bool:
    """A whole number as the recipe wrote it: 8 is an int, 8.0 a float."""
    return isinstance(v, int) and not isinstance(v, bool)


def set_path(tree: dict, path: str, value: Any, where: str) -> None:
    """Set `tree[a][b][0] = value` for path "a.b.0"; a number indexes a list the tree already has."""
    keys = path.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError(
                    f"{where}: '{path}' indexes element {key} of a list of {len(node)}",
                    "index within the list train gives (from 0), e.g. arch_args.widths.0",
                )
            key = int(key)
        elif not isinstance(node, dict):
            done = ".".join(keys[:i])
            raise RecipeError(
                f"{where}: '{path}' goes inside '{done}', which is {node!r}, not a mapping or list",
                f"give train.{done} as a mapping or list first",
            )
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = [] if keys[i + 1].isdigit() else {}
                if keys[i + 1].isdigit():
                    raise RecipeError(
                        f"{where}: '{path}' indexes a list that train does not give",
                        f"give train.{'.'.join(keys[: i + 1])} as a full list first",
                    )
            node = node[key]


def trial_params(base: dict, values: dict[str, Any], where: str = "search") -> dict:
    """The train params of one trial: `base` with each searched value set at its path (special keys out)."""
    tree = copy.deepcopy(base)
    for path, value in values.items():
        if path in (TEACHER, AUGMENT_SCALE):
            continue
        set_path(tree, path, value, where)
    return tree


def uses_teacher(values: dict[str, Any], space: dict[str, Dimension], has_teacher: bool) -> bool:
    """Whether a trial distils: its `teacher` value, or every trial when a teacher is given and not searched."""
    if TEACHER in space:
        return bool(values.get(TEACHER))
    return has_teacher


def sample(trial, space: dict[str, Dimension], has_teacher: bool) -> dict[str, Any]:
    """Draw one trial's values; distillation's knobs only when the trial distils (define-by-run)."""
    values: dict[str, Any] = {}
    if TEACHER in space:
        values[TEACHER] = space[TEACHER].suggest(trial, TEACHER)
    distils = uses_teacher(values, space, has_teacher)
    for name, dim in space.items():
        if name == TEACHER or (name in DISTILL_ONLY and not distils):
            continue
        values[name] = dim.suggest(trial, name)
    return values


def fingerprint(*parts: Any) -> str:
    """A short hash of what defines a study's trials (its space, base params, target and budgets)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
