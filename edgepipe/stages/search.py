"""The search stage: the most accurate model that fits the target's budget, found with Optuna, measured.

Each trial sets the searched values (`edgepipe.search.space`) into a train stage's parameters, builds
the model and, when there are budgets, first measures the untrained architecture on the target (a
trial over budget is not trained: latency, flash and RAM depend on the architecture, not on the
weights). It then trains on the train split (distilling from the `teacher` input when the trial says
so), pruned early by its validation accuracy per epoch, converts to int8 and is judged on the whole
validation split (never test) and on its figures on the target, measured from that int8 file
(`edgepipe.search.figures`). Budgets (`max_latency_ms`, `max_flash_bytes`, `max_ram_bytes`,
`min_val_accuracy`) are Optuna constraints; `reference` budgets are the `reference` input's int8
model measured the same way in the same run.

The chosen model, the feasible trial best on `pick` (retrained for `final_epochs` if given), is the
stage's output like a train stage's (`model.h5`, `metrics.json`, ...), so qat, convert, bench and
bundle follow it unchanged; beside it: `trials.csv`, `front.json`, `pareto.png` and `search.json`.
The study is kept in an Optuna storage (`edgepipe.search.study`): a killed search resumes, and
`edgepipe worker RECIPE STAGE` adds a process (on this machine, or on another with `storage:`).

What it is made of lives in `edgepipe.search`: its parameters (`params`), one process's trials (`trials`),
the choice and the files it writes (`outcome`).
"""

from __future__ import annotations

from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.search import figures as target_figures
from edgepipe.search import study
from edgepipe.search.outcome import finish
from edgepipe.search.params import SearchParams
from edgepipe.search.trials import Search
from edgepipe.targets.backends import check_task
from edgepipe.targets.profiles import load_target
from edgepipe.training import nets


def run_search_stage(params: SearchParams, io: StageIO) -> str:
    """Run the study (resuming it), choose, write the chosen model and the search's tables."""
    s = Search(params, io)
    s.run_trials(create=True)
    study.wait_for_others(s.study)
    return finish(s)


def join_search(params: SearchParams, io: StageIO) -> str:
    """`edgepipe worker RECIPE STAGE`: run trials of a study the chief started, until its budget is spent."""
    s = Search(params, io)
    ran = s.run_trials(create=False)
    return f"{ran} trial(s) of study '{s.name}' run in this worker"


def builder_files(p: SearchParams) -> list[Path]:
    """The source files of the user builders the search may build (the fixed arch and every arch choice)."""
    archs = [p.train.get("arch")] + list(p.space["arch"].choices or [] if "arch" in p.space else [])
    return [f for a in dict.fromkeys(archs) if isinstance(a, str) for f in nets.builder_files(a)]


def environment(params: SearchParams) -> dict:
    """The machine facts the figures depend on: the target profile, toolchain and emulator versions."""
    target = load_target(params.target or "host")
    if target_figures.supported(target) is not None:
        return {}
    try:
        return target_figures.environment(target)
    except EdgepipeError:
        return {}  # the stage itself says what is missing, in one line


KIND = StageKind(
    name="search",
    params=SearchParams,
    run=run_search_stage,
    inputs={"data": False, "teacher": False, "reference": False},
    optional_inputs=("teacher", "reference"),
    output="model",
    accepts={"data": ("dataset",), "teacher": ("model",), "reference": ("tflite",)},
    main_output="model.h5",
    environment=environment,
    join=join_search,
    deps=lambda p: builder_files(p),
    needs=lambda p: target_figures.needs(load_target(p.target or "host")),
    check_task=lambda p, task: check_task(load_target(p.target or "host"), task, "search"),
    exclusive=True,
    joinable=lambda p: "own" if p.storage else "chief",  # no storage: the study is a file in the chief's work folder
    doc="search architectures and training knobs for the most accurate model within the target's budget",
)
