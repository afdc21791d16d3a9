"""The make-like runner: the public face of a run of one recipe (`edgepipe run`, `status`, `bench`,
`worker`, `gc`, and the Python API).

It plans the stages and holds the run folder's lock; `edgepipe.pipeline.scheduler` starts each stale
stage once its inputs are done (up to `--jobs` at once, in worker processes), `edgepipe.pipeline.outputs`
puts what they produced in place, publishes it and records the run, and `edgepipe.pipeline.keys` says
why a stage runs or is skipped, which is always printed.

Layout, for recipe R: ``runs/R/<stage>/`` holds each stage's outputs, ``runs/R/lock.json`` the keys and
output hashes, ``runs/R/.tmp/`` a stage's output while it runs (renamed into place on success), and
``runs/R/.work/<stage>/`` checkpoints that let a killed stage resume, ``runs/R/.tb/<stage>/`` TensorBoard's
logs (outside the output, so they never enter its digest), ``runs/R/.cache/`` the run cache (every
finished stage's outputs by key, `edgepipe.pipeline.runcache`). ``models/R/`` gets the files stages publish.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from edgepipe.core import arguments, progress, runlock
from edgepipe.core.errors import ArgumentValueError, EdgepipeError
from edgepipe.pipeline.keys import CodeVersion, stage_key
from edgepipe.pipeline.lock import Lock
from edgepipe.pipeline.outputs import Outputs, Result, rel
from edgepipe.pipeline.recipe import Recipe
from edgepipe.pipeline.runcache import DEFAULT_SIZE, RunCache
from edgepipe.pipeline.scheduler import Scheduler


class Runner:
    """Runs a validated recipe under `root` (which holds runs/ and models/).

    Args:
        recipe: a validated recipe (`load_recipe`).
        root: the folder that holds runs/ and models/.
        cache_size: bytes the run cache of this recipe may hold; 0 turns it off.
        isolate: run every TensorFlow stage in a worker process, even with one job, so this process's
            TensorFlow state (op determinism, the Keras session) is left as it was (the Python API).
        track: `--track`; None tracks as the recipe's `tracking:` block says, "" tracks to the default
            URI, anything else is the MLflow tracking URI (see `edgepipe.pipeline.tracking`).
        tracking_uri: the project config's tracking store (`ProjectConfig.tracking_store`), for runs that
            track without a URI of their own.
        on_progress: receives the running stages' progress events (`edgepipe.core.progress.Event`), from
            worker processes too; None: live lines in the terminal when stdout is one (`edgepipe.core.live`).
    """

    def __init__(
        self,
        recipe: Recipe,
        root: Path = Path("."),
        cache_size: int = DEFAULT_SIZE,
        isolate: bool = False,
        track: str | None = None,
        tracking_uri: str | None = None,
        on_progress: progress.Sink | None = None,
    ):
        arguments.runner_arguments(recipe, Recipe, root, cache_size, isolate, track, on_progress)
        self.recipe = recipe
        self.root = Path(root)
        self.track, self.tracking_uri = track, tracking_uri
        self.run_dir = self.root / "runs" / recipe.name
        self.lock = Lock(self.run_dir / "lock.json", recipe)
        self.cache = RunCache(self.run_dir / ".cache", cache_size)
        self.record_number: int | None = None  # the run history's number of the last run
        # Hashed once, now: the code that runs is the code imported at start, even if a source file
        # is edited while a long run is under way.
        modules = {s.kind.module for s in recipe.stages.values()}
        self.code = {m: CodeVersion.of(m) for m in sorted(modules)}
        self.outputs = Outputs(recipe, self.root, self.lock, self.cache)
        self.scheduler = Scheduler(recipe, self.run_dir, self.lock, self.code, self.outputs, isolate, on_progress)

    # -- public -----------------------------------------------------------------------------------

    def plan(self, until: str | None = None, only: str | None = None) -> list[str]:
        """Names of the stages a run would consider, in order."""
        arguments.text("Runner.plan", "until", until, "a stage's name")
        arguments.text("Runner.plan", "only", only, "a stage's name")
        for flag, name in (("--until", until), ("--only", only)):
            if name is not None and name not in self.recipe.stages:
                raise EdgepipeError(
                    f"{flag} {name}: no such stage in {self.recipe.path}",
                    f"use one of: {', '.join(self.recipe.stages)}",
                    exit_code=2,
                )
        if until and only:
            raise EdgepipeError("--until and --only cannot be combined", "use one of them", exit_code=2)
        if only:
            return [only]
        if until:
            return self.recipe.ancestors(until)
        return list(self.recipe.stages)

    def status(self, until: str | None = None, only: str | None = None) -> list[Result]:
        """Each planned stage as fresh or stale, with the reason; runs nothing."""
        return self.run(until=until, only=only, dry_run=True)

    def run(
        self,
        until: str | None = None,
        only: str | None = None,
        force: bool = False,
        dry_run: bool = False,
        jobs: int = 1,
    ) -> list[Result]:
        """Run the stale stages of the plan; return what happened to each, in plan order.

        With `jobs` > 1, stages whose inputs are ready run at the same time in worker processes (tiny
        models use about one core each, so two trainings on two cores can take little longer than one;
        how much that gains depends on the host, see docs/runner.md, "Parallel stages").
        Each worker's output goes to ``runs/R/.logs/<stage>.log``. Stages of an `exclusive` kind (the
        bench, which times things) run alone.
        """
        arguments.text("Runner.run", "until", until, "a stage's name")
        arguments.text("Runner.run", "only", only, "a stage's name")
        arguments.flag("Runner.run", "force", force)
        arguments.flag("Runner.run", "dry_run", dry_run)
        arguments.check("Runner.run", "jobs", jobs, (int,), "an integer", "pass jobs=1 (default) or more")
        if jobs < 1:
            raise ArgumentValueError(f"--jobs {jobs}: must be at least 1", "use --jobs 1 (default) or more")
        plan = self.plan(until, only)
        if dry_run:
            return self.scheduler.dry_run(plan, force)
        self.preflight(plan, force)
        with self.outputs.tracked(self.track, self.tracking_uri), self._exclusive():
            return self._recorded("run", plan, set(plan) if force else set(), jobs)

    def run_kind(self, kind: str, force: bool = False, jobs: int = 1) -> list[Result]:
        """Run every stage of `kind`, whatever stale stage it needs and what depends on it (the report);
        `force` reruns only the stages of `kind`."""
        targets = [n for n, s in self.recipe.stages.items() if s.kind.name == kind]
        if not targets:
            raise EdgepipeError(f"{self.recipe.path} has no {kind} stage", f"add a stage of kind {kind}", exit_code=2)
        downstream = set(targets)
        for name, stage in self.recipe.stages.items():  # topological order: upstream first
            if downstream & set(stage.upstream()):
                downstream.add(name)
        wanted = {a for t in downstream for a in self.recipe.ancestors(t)}
        plan = [n for n in self.recipe.stages if n in wanted]
        self.preflight(plan, force=False, forced=set(targets) if force else set())
        with self._exclusive():
            return self._recorded(kind, plan, set(targets) if force else set(), jobs)

    def run_as_worker(self, name: str) -> str:
        """Run stage `name` as one more worker of a stage running elsewhere: its share of the work only.

        Which stages take workers, and where a worker works, is the kind's to say (`StageKind.joinable`): a
        multi-worker training's worker trains its share; a search's runs trials of the chief's study, in the
        chief's work folder on this machine or in the `storage` the stage names. Its inputs must already be
        there (the chief's machine, or a shared file system, has them); it writes nothing under runs/ and no
        lock entry. The chief runs `edgepipe run RECIPE --only NAME`.
        """
        import tempfile

        if name not in self.recipe.stages:
            raise EdgepipeError(
                f"no stage named '{name}' in {self.recipe.path}",
                f"use one of: {', '.join(self.recipe.stages)}",
                exit_code=2,
            )
        stage = self.recipe.stages[name]
        where = stage.kind.joinable(stage.params) if stage.kind.joinable else None
        if where is None:
            raise EdgepipeError(
                f"stage '{name}' can have no workers: it is neither a search nor a multi-worker "
                "training (strategy: multi_worker)",
                "set strategy: multi_worker on a train stage, or run it with edgepipe run",
                exit_code=2,
            )
        missing = [u for u in stage.upstream() if not (self.run_dir / u).is_dir()]
        if missing:
            raise EdgepipeError(
                f"stage '{name}' needs '{missing[0]}', which is not in {rel(self.run_dir)}",
                f"run `edgepipe run {self.recipe.path} --until {missing[0]}` on this machine first",
            )
        with tempfile.TemporaryDirectory(prefix=f"edgepipe-worker-{name}-") as tmp:
            out, work = Path(tmp) / "out", Path(tmp) / name
            out.mkdir()
            work.mkdir()
            if where == "chief":
                work = self.run_dir / ".work" / name
                key, _ = stage_key(stage, self.lock, self.run_dir, self.code[stage.kind.module])
                if not self.scheduler.work_matches(stage, key):
                    raise EdgepipeError(
                        f"no run of stage '{name}' with these inputs and params is going on in {rel(self.run_dir)}",
                        f"start it first (edgepipe run {self.recipe.path} --only {name}), or give "
                        "the stage a shared storage: URL",
                    )
            return stage.kind.join(stage.params, self.scheduler.stage_io(stage, out, work))

    def preflight(self, plan: list[str], force: bool = False, forced: set[str] = frozenset()) -> None:
        """Refuse the run, before anything is written, if a stage that will run lacks what it needs from this
        machine (each kind's `needs`: a toolchain, an emulator, a device, a dataset), so that a missing
        tool is said in seconds rather than after the stages before it have trained."""
        problems: list[tuple[str, str, str, str]] = []
        asked: set[str] = set()
        for name, action, _, _ in self.scheduler.forecast(plan, force, forced):
            stage = self.recipe.stages[name]
            if action != "run" or stage.kind.needs is None:
                continue
            for need in stage.kind.needs(stage.params):
                if need.what in asked:
                    continue
                asked.add(need.what)
                if (unmet := need.unmet()) is not None:
                    problems.append((name, need.what, unmet, need.fix))
        if problems:
            what = "; ".join(f"stage '{n}' needs {w} ({u})" for n, w, u, _ in problems)
            raise EdgepipeError(what, "; ".join(dict.fromkeys(f for *_, f in problems)), exit_code=2)

    def gc(self, keep: int) -> tuple[list, list[str], int]:
        """Keep the `keep` most recently used run cache entries of each stage, drop the others and every
        damaged entry; returns (the dropped entries, the damaged ones removed, the bytes freed)."""
        if keep < 0:
            raise EdgepipeError(f"--keep {keep}: must be 0 or more", "use --keep 0 to empty the cache", exit_code=2)
        with self._exclusive():
            before = self.cache.size()
            gone, damaged = self.cache.prune(keep)
            return gone, damaged, before - self.cache.size()

    def _recorded(self, command: str, plan: list[str], force: set[str], jobs: int) -> list[Result]:
        """Run the plan, then append one record of the run (finished or failed) to the run history."""
        results: dict[str, Result] = {}
        try:
            done = self.scheduler.execute(plan, force, jobs, results)
        except Exception as e:
            self.record_number = self.outputs.record(command, plan, results, error=str(e))
            raise
        self.record_number = self.outputs.record(command, plan, results)
        return done

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the run folder's lock: one run (or gc) of a recipe at a time."""
        with runlock.exclusive(self.run_dir / ".runlock"):
            yield
