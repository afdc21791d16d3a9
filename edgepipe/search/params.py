"""The search stage's parameters: the train parameters each trial starts from, the searched space, the
budgets, the sampler and pruner, the study's storage; checked whole at load.

Every searched value, each at its end of the range, is set into the trial's train parameters and
validated at load, so a bad range is one error line before any training (`edgepipe.search.space`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.params import MAX_EPOCHS, build, key_text, param
from edgepipe.search import study
from edgepipe.search.space import AUGMENT_SCALE, TEACHER, Dimension, trial_params
from edgepipe.training import nets
from edgepipe.training.distill import DistillParams

Objective = Literal["val_accuracy", "latency_ms", "instructions", "flash_bytes", "ram_bytes", "params"]
BUDGETS = {"max_latency_ms": "latency_ms", "max_flash_bytes": "flash_bytes", "max_ram_bytes": "ram_bytes"}


@dataclasses.dataclass
class SearchParams:
    """Parameters of the search stage."""

    train: dict[str, Any] = param(
        {},
        "each trial's train parameters, as a train (or distill) stage's params, "
        "before the searched values are set; its epochs are each trial's budget",
    )
    space: dict[str, Dimension] = param(
        {},
        "searched parameters: a dotted path into train (arch_args.widths.0, "
        "lr), or teacher / augment_scale, each with choices or low/high",
    )
    trials: int = param(20, "trials in all, shared by every process working on the study", min=1)
    target: str | None = param(None, "target profile the figures are measured on; null: the recipe's target, else host")
    objectives: list[Objective] = param(
        ["val_accuracy"],
        "what the sampler optimizes; val_accuracy alone "
        "prunes trials early, more objectives make it multi-objective (no pruning)",
    )
    pick: Objective = param("val_accuracy", "which figure picks the chosen model among the feasible trials")
    max_latency_ms: float | Literal["reference"] | None = param(
        None, "budget: latency on the target (ms); reference: the reference input's", min=0.0
    )
    max_flash_bytes: int | Literal["reference"] | None = param(
        None, "budget: flash of the model with its runtime on the target; reference: the reference input's", min=1
    )
    max_ram_bytes: int | Literal["reference"] | None = param(
        None, "budget: RAM used on the target (arena, stack, runtime); reference: the reference input's", min=1
    )
    min_val_accuracy: float | None = param(
        None, "budget: the int8 model's validation accuracy at least this (0..1)", min=0.0, max=1.0
    )
    sampler: Literal["tpe", "nsga2", "random"] = param("tpe", "Optuna sampler")
    pruner: Literal["median", "hyperband", "none"] = param(
        "median", "stops hopeless trials early on their validation accuracy per epoch (single objective)"
    )
    startup_trials: int = param(5, "random trials before the sampler models the space (and before pruning)", min=0)
    seed: int = param(0, "seed of the sampler (each trial's training seed is train.seed)")
    screen: bool = param(True, "measure each architecture untrained first and skip training it when over budget")
    measure_samples: int = param(4, "validation images run on the target per trial (instructions, latency)", min=1)
    representative_samples: int = param(200, "train images calibrating each trial's int8 conversion", min=10)
    final_epochs: int | None = param(
        None,
        "retrain the chosen configuration for this many epochs as the output (null: the chosen trial's own model)",
        min=1,
        max=MAX_EPOCHS,
    )
    compare_distillation: bool = param(
        False,
        "also train the chosen configuration the other way (with the "
        "teacher if it had none, without if it had): did distillation pay?",
    )
    storage: str | None = param(
        None,
        "Optuna storage URL (postgresql://..., sqlite:///..., journal:/path) for "
        "workers on other machines; null: a SQLite file in the stage's work folder",
    )
    study: str | None = param(None, "study name in the storage; null: the stage's name")

    def __post_init__(self):
        for knob in (*BUDGETS, "min_val_accuracy"):
            value = getattr(self, knob)
            if isinstance(value, (int, float)) and not value > 0:  # every trial's excess is relative to it
                raise ValueError(
                    f"{knob}: {value} is no budget (it must be > 0); fix: give a limit above 0, or drop it"
                )
        if not self.space:
            raise ValueError("space is empty: nothing to search; fix: add e.g. lr: {low: 0.001, high: 0.01}")
        if len(self.objectives) != len(set(self.objectives)) or "val_accuracy" not in self.objectives:
            raise ValueError(
                "objectives must list val_accuracy once, and any other figure once; fix: e.g. "
                "[val_accuracy, latency_ms]"
            )
        if len(self.objectives) > 1 and self.pruner != "none":
            raise ValueError(
                "Optuna cannot prune a multi-objective study; fix: set pruner: none, or optimize "
                "val_accuracy alone (the budgets still hold)"
            )
        if self.storage is not None and (problem := study.check_url(self.storage)):
            raise ValueError(f"storage {self.storage!r} {problem}; fix: e.g. sqlite:////shared/study.db")
        check_space(self)

    def trial_train(self, values: dict[str, Any]) -> DistillParams:
        """The train parameters of one trial (validated: a bad value is one error line)."""
        return build(DistillParams, {**trial_params(self.train, values), "tensorboard": False}, "search trial")


def check_space(p: SearchParams) -> None:
    """Every searched value, each at its end of the range, makes valid train parameters; at load."""
    for path in ("folds", "strategy"):
        if path in p.train or path in p.space:
            raise ValueError(f"train.{path} is not available in a search (each trial trains one model); fix: drop it")
    if p.train.get("lr") == "auto" or "arch" not in p.train and "arch" not in p.space:
        raise ValueError(
            "a search's train params need an arch (fixed or searched) and a numeric lr; fix: e.g. "
            "train: {arch: strided_cnn, lr: 0.005}"
        )
    try:
        p.trial_train({})
    except RecipeError as e:
        raise ValueError(f"train: {_unprefixed(e.message)}; fix: {e.fix}") from None
    archs = [p.train["arch"]] if "arch" in p.train else []
    for name, dim in p.space.items():
        for value in dim.values_to_check():
            if name == TEACHER:
                if not isinstance(value, bool):
                    raise ValueError(f"space.teacher: {value!r} is not true or false; fix: choices: [false, true]")
                continue
            if name == AUGMENT_SCALE:
                if not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(
                        f"space.augment_scale: {value!r} is not a factor >= 0; fix: e.g. {{low: 0.5, high: 1.5}}"
                    )
                continue
            try:
                p.trial_train({name: value})
            except RecipeError as e:
                raise ValueError(
                    f"space.{key_text(name)} = {value!r}: {_unprefixed(e.message)}; fix: {e.fix}"
                ) from None
            if name == "arch":
                archs.append(value)
    for arch in archs:
        try:
            nets.resolve(arch)  # an unknown architecture is one line at load, not in trial 7
        except EdgepipeError as e:
            raise ValueError(f"{'space' if 'arch' in p.space else 'train'}.arch: {e.message}; fix: {e.fix}") from None


def _unprefixed(message: str) -> str:
    """A train-params error as the user wrote it: `lr: ...`, not `search trial.lr: ...`."""
    return message.removeprefix("search trial: ").removeprefix("search trial.")
