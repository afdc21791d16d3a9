"""The Python API: `edgepipe.run(...)` from a notebook or a script, the same run `edgepipe run` makes."""

from __future__ import annotations

import concurrent.futures.process
import dataclasses
import json
import multiprocessing
from pathlib import Path
from typing import Any

from edgepipe.core import arguments
from edgepipe.core.errors import EdgepipeError
from edgepipe.pipeline import config as project_config
from edgepipe.pipeline.outputs import Result
from edgepipe.pipeline.recipe import find_recipe, load_recipe
from edgepipe.pipeline.runner import Runner


@dataclasses.dataclass
class RunResult:
    """What `edgepipe.run` did.

    Attributes:
        recipe: the recipe's name (its folders are runs/<recipe>/ and models/<recipe>/).
        stages: what happened to each stage, in run order: `Result(stage, action, reason, seconds,
            summary)`, action being "ran", "restored" (from the run cache) or "skipped".
        rows: the report's rows (report.json's `rows`, one dict per benched model: name, quantization,
            accuracy, size_bytes, latency_p50_us, arena_bytes, ...) of the recipe's first report stage;
            empty if the recipe has none or it did not run.
        reports: every report stage's rows, by stage name.
        run_dir: runs/<recipe>/, where each stage's outputs are.
        record: this run's number in the run history (`edgepipe runs RECIPE`).
    """

    recipe: str
    stages: list[Result]
    rows: list[dict]
    reports: dict[str, list[dict]]
    run_dir: Path
    record: int | None

    def __repr__(self) -> str:
        done = ", ".join(f"{r.stage} {r.action}" for r in self.stages)
        return f"RunResult({self.recipe}: {done}; {len(self.rows)} report rows)"


def run(
    recipe: str | Path | dict,
    set: dict[str, Any] | None = None,
    profile: str | None = None,
    *,
    until: str | None = None,
    only: str | None = None,
    force: bool = False,
    jobs: int = 1,
    root: str | Path = ".",
    target: str | None = None,
    host: str | None = None,
    isolate: bool = True,
) -> RunResult:
    """Run a recipe's stale stages, as `edgepipe run` does, and return what happened and the report's rows.

    The project config (edgepipe.toml) is read from the current folder up, as every command does; the
    run is recorded in the run history, and the run cache restores any stage whose key it has seen.

    TensorFlow side effects: a training stage turns on TensorFlow's op determinism (process-wide, and
    TensorFlow cannot turn it off again) and every stage starts from a cleared Keras session
    (`tf_keras.backend.clear_session()`, which drops the auto-naming state of models built before). With
    `isolate=True` (the default) every stage that uses TensorFlow runs in a worker process, so neither
    touches the caller's process: a notebook's own models and TensorFlow settings are left as they were
    (TensorFlow is not even imported here). The price is one worker start (a few seconds, importing
    TensorFlow); a script, as with any multiprocessing code, must then call `run` under
    ``if __name__ == "__main__":``. `isolate=False` runs the stages in this process, with both effects.

    Args:
        recipe: a name in recipes/, a path to a recipe YAML file, or a recipe as a dict (with a `name`).
        set: overrides, ``{"teacher.epochs": 3, "vars.seed": 1}``, validated like the recipe.
        profile: a profile of the recipe to apply (e.g. "smoke").
        until: run this stage and what it depends on.
        only: run just this stage, on existing inputs.
        force: rerun the selected stages even if up to date.
        jobs: stages run at once when their inputs are ready.
        root: the folder that holds runs/ and models/.
        target: the device to bench and bundle for (a target name or profile .yaml).
        host: user@address[:port] of an SSH target.
        isolate: run TensorFlow stages in a worker process (see above).

    Returns:
        A `RunResult`: `.stages` (what ran and why), `.rows` (the report's rows), ...

    Raises:
        EdgepipeError: any bad input (a RecipeError for the recipe or an override), a failed stage or a
            failed accuracy gate, as one line with its fix; never SystemExit. An argument of the wrong
            type is an `ArgumentTypeError` (also a TypeError), a value it cannot take an
            `ArgumentValueError` (also a ValueError), raised before anything runs.
    """
    _check_arguments(recipe, set, profile, until, only, force, jobs, root, target, host, isolate)
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # multiprocessing's own "still starting" test
        raise EdgepipeError(
            "edgepipe.run was called while a worker process of a run was starting (a script calling it at import time)",
            'call it under if __name__ == "__main__":, or pass isolate=False',
        )
    cfg = project_config.load()
    source = recipe if isinstance(recipe, dict) else find_recipe(str(recipe))
    r = load_recipe(
        source, profile=profile, target=target, host=host, default_target=cfg.target, hosts=cfg.hosts, values=set
    )
    runner = Runner(r, Path(root), cache_size=cfg.cache_bytes, isolate=isolate, tracking_uri=cfg.tracking_store)
    with project_config.environment(cfg):
        try:
            results = runner.run(until=until, only=only, force=force, jobs=jobs)
        except concurrent.futures.process.BrokenProcessPool:
            raise EdgepipeError(
                f"a worker process of the run of {r.name} died before its stage finished",
                f'see runs/{r.name}/.logs/; in a script, call edgepipe.run under if __name__ == "__main__":',
            ) from None
    reports = {}
    for result in results:
        report = runner.run_dir / result.stage / "report.json"
        if r.stages[result.stage].kind.name == "report" and report.is_file():
            reports[result.stage] = json.loads(report.read_text()).get("rows", [])
    return RunResult(r.name, results, next(iter(reports.values()), []), reports, runner.run_dir, runner.record_number)


def _check_arguments(recipe, overrides, profile, until, only, force, jobs, root, target, host, isolate) -> None:
    """Each of `run`'s arguments, where it enters: the one line the CLI would print for a bad option."""
    f = "edgepipe.run"
    arguments.recipe(f, recipe)
    arguments.overrides(f, "set", overrides)
    arguments.text(f, "profile", profile, "a profile's name")
    arguments.text(f, "until", until, "a stage's name")
    arguments.text(f, "only", only, "a stage's name")
    arguments.flag(f, "force", force)
    arguments.count(f, "jobs", jobs, least=1, what="the stages to run at once")
    arguments.path(f, "root", root, "the folder that holds runs/ and models/")
    arguments.text(f, "target", target, "a target's name or profile path")
    arguments.text(f, "host", host, "user@address[:port]")
    arguments.flag(f, "isolate", isolate)
