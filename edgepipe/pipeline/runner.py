"""The make-like runner: decides which stages are stale, runs them, and records what they produced.

Keys and freshness are `edgepipe.pipeline.keys`'; this module schedules: it plans the stages, starts
each once its inputs are done (up to `--jobs` at once, in worker processes), moves finished outputs into
place and publishes them. The reason a stage runs or is skipped is always printed.

Layout, for recipe R: ``runs/R/<stage>/`` holds each stage's outputs, ``runs/R/lock.json`` the keys and
output hashes, ``runs/R/.tmp/`` a stage's output while it runs (renamed into place on success), and
``runs/R/.work/<stage>/`` checkpoints that let a killed stage resume, ``runs/R/.tb/<stage>/`` TensorBoard's
logs (outside the output, so they never enter its digest), ``runs/R/.cache/`` the run cache (every
finished stage's outputs by key, `edgepipe.pipeline.runcache`). ``models/R/`` gets the files stages publish.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from edgepipe.core import fsio, live, progress, runlock, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.paths import inside
from edgepipe.core.stage import StageIO
from edgepipe.pipeline import history, tracking
from edgepipe.pipeline.keys import CodeVersion, stage_key, why_stale
from edgepipe.pipeline.lock import Lock
from edgepipe.pipeline.runcache import DEFAULT_SIZE, RunCache, when
from edgepipe.pipeline.recipe import Recipe, Stage

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Result:
    """What happened to one stage in a run (or would happen, in a dry run)."""

    stage: str
    action: str  # "ran", "restored" (from the run cache), "skipped", "would run", "would restore", "would skip"
    reason: str
    seconds: float = 0.0
    summary: str = ""


@dataclasses.dataclass
class _Job:
    """A stage that is running: what its lock entry will record, and how to say it finished."""

    stage: Stage
    key: str
    parts: dict
    reason: str
    tag: str
    start: float


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
        on_progress: receives the running stages' progress events (`edgepipe.core.progress.Event`), from
            worker processes too; None: live lines in the terminal when stdout is one (`edgepipe.core.live`).
    """

    def __init__(self, recipe: Recipe, root: Path = Path("."), cache_size: int = DEFAULT_SIZE,
                 isolate: bool = False, track: str | None = None, on_progress: progress.Sink | None = None):
        self.recipe = recipe
        self.root = Path(root)
        self.track = track
        self.tracker = None
        self.run_dir = self.root / "runs" / recipe.name
        self.models_dir = self.root / "models" / recipe.name
        self.lock = Lock(self.run_dir / "lock.json", recipe)
        self.cache = RunCache(self.run_dir / ".cache", cache_size)
        self.isolate = isolate
        self.on_progress = on_progress
        self._sink: progress.Sink | None = None  # where this run's stages report, while it runs
        self.record_number: int | None = None  # the run history's number of the last run
        self._results: dict[str, Result] = {}
        # Hashed once, now: the code that runs is the code imported at start, even if a source file
        # is edited while a long run is under way.
        modules = {s.kind.module for s in recipe.stages.values()}
        self.code = {m: CodeVersion.of(m) for m in sorted(modules)}

    # -- public -----------------------------------------------------------------------------------

    def plan(self, until: str | None = None, only: str | None = None) -> list[str]:
        """Names of the stages a run would consider, in order."""
        for flag, name in (("--until", until), ("--only", only)):
            if name is not None and name not in self.recipe.stages:
                raise EdgepipeError(f"{flag} {name}: no such stage in {self.recipe.path}",
                                    f"use one of: {', '.join(self.recipe.stages)}", exit_code=2)
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

    def run(self, until: str | None = None, only: str | None = None, force: bool = False,
            dry_run: bool = False, jobs: int = 1) -> list[Result]:
        """Run the stale stages of the plan; return what happened to each, in plan order.

        With `jobs` > 1, stages whose inputs are ready run at the same time in worker processes (tiny
        models use about one core each, so two trainings on two cores can take little longer than one;
        how much that gains depends on the host, see docs/runner.md, "Parallel stages").
        Each worker's output goes to ``runs/R/.logs/<stage>.log``. Stages of an `exclusive` kind (the
        bench, which times things) run alone.
        """
        if jobs < 1:
            raise EdgepipeError(f"--jobs {jobs}: must be at least 1", "use --jobs 1 (default) or more", exit_code=2)
        plan = self.plan(until, only)
        if dry_run:
            with self._exclusive(dry_run):
                return self._dry_run(plan, force)
        self.preflight(plan, force)
        self.tracker = tracking.start(self.recipe, self.root, self.track)  # before anything is written
        ok = False
        try:
            with self._exclusive(dry_run):
                self._clean_scratch(dry_run)
                results = self._recorded("run", plan, set(plan) if force else set(), jobs)
            ok = True
            return results
        finally:
            if self.tracker is not None:
                ui.say(self.tracker.finish(ok))

    def run_kind(self, kind: str, force: bool = False, jobs: int = 1) -> list[Result]:
        """Run every stage of `kind`, whatever stale stage it needs and what depends on it (the report);
        `force` reruns only the stages of `kind`."""
        targets = [n for n, s in self.recipe.stages.items() if s.kind.name == kind]
        if not targets:
            raise EdgepipeError(f"{self.recipe.path} has no {kind} stage", f"add a stage of kind {kind}",
                                exit_code=2)
        downstream = set(targets)
        for name, stage in self.recipe.stages.items():  # topological order: upstream first
            if downstream & set(stage.upstream()):
                downstream.add(name)
        wanted = {a for t in downstream for a in self.recipe.ancestors(t)}
        plan = [n for n in self.recipe.stages if n in wanted]
        self.preflight(plan, force=False, forced=set(targets) if force else set())
        with self._exclusive(False):
            self._clean_scratch(False)
            return self._recorded(kind, plan, set(targets) if force else set(), jobs)

    def run_as_worker(self, name: str) -> str:
        """Run stage `name` as one more worker of a stage running elsewhere: its share of the work only.

        A multi-worker training (`strategy: multi_worker`, TF_CONFIG names this machine) trains its share;
        a search (a kind with `join`) runs trials of the chief's study, in the chief's work folder on this
        machine or in the `storage` the stage names. Its inputs must already be there (the chief's machine,
        or a shared file system, has them); it writes nothing under runs/ and no lock entry. The chief
        runs `edgepipe run RECIPE --only NAME`.
        """
        import tempfile

        if name not in self.recipe.stages:
            raise EdgepipeError(f"no stage named '{name}' in {self.recipe.path}",
                                f"use one of: {', '.join(self.recipe.stages)}", exit_code=2)
        stage = self.recipe.stages[name]
        joins = stage.kind.join is not None
        if not joins and getattr(stage.params, "strategy", "default") != "multi_worker":
            raise EdgepipeError(f"stage '{name}' can have no workers: it is neither a search nor a multi-worker "
                                "training (strategy: multi_worker)",
                                "set strategy: multi_worker on a train stage, or run it with edgepipe run",
                                exit_code=2)
        missing = [u for u in stage.upstream() if not (self.run_dir / u).is_dir()]
        if missing:
            raise EdgepipeError(f"stage '{name}' needs '{missing[0]}', which is not in {_rel(self.run_dir)}",
                                f"run `edgepipe run {self.recipe.path} --until {missing[0]}` on this machine first")
        inputs = self._input_dirs(stage)
        with tempfile.TemporaryDirectory(prefix=f"edgepipe-worker-{name}-") as tmp:
            out, work = Path(tmp) / "out", Path(tmp) / name
            out.mkdir()
            work.mkdir()
            if not joins:
                return stage.kind.run(stage.params, StageIO(inputs=inputs, out=out, work=work))
            if getattr(stage.params, "storage", None) is None:  # the study is in the chief's work folder here
                work = self.run_dir / ".work" / name
                key, _ = stage_key(stage, self.lock, self.run_dir, self.code[stage.kind.module])
                if not self._work_matches(stage, key):
                    raise EdgepipeError(f"no run of stage '{name}' with these inputs and params is going on in "
                                        f"{_rel(self.run_dir)}",
                                        f"start it first (edgepipe run {self.recipe.path} --only {name}), or give "
                                        "the stage a shared storage: URL")
            return stage.kind.join(stage.params, StageIO(inputs=inputs, out=out, work=work))

    def preflight(self, plan: list[str], force: bool = False, forced: set[str] = frozenset()) -> None:
        """Refuse the run, before anything is written, if a stage that will run lacks what it needs from this
        machine (each kind's `needs`: a toolchain, an emulator, a device, a dataset), so that a missing
        tool is said in seconds rather than after the stages before it have trained."""
        problems: list[tuple[str, str, str, str]] = []
        asked: set[str] = set()
        for name, action, _, _ in self._forecast(plan, force, forced):
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

    def _forecast(self, plan: list[str], force: bool, forced: set[str] = frozenset()) -> Iterator[tuple]:
        """What a run would do with each planned stage, in order: (name, "skip" | "restore" | "run", why,
        the run cache entry it would restore or None). Reads only: nothing is written."""
        rerun: set[str] = set()
        for name in plan:
            stage = self.recipe.stages[name]
            pending = [u for u in stage.upstream() if u in rerun]
            again = force or name in forced
            reason = f"upstream '{pending[0]}' reruns first" if pending else self._reason(stage, again)[0]
            if reason is None:
                yield name, "skip", "up to date", None
                continue
            rerun.add(name)
            entry = None if pending or again else self.cache.lookup(self._reason(stage, False)[1])
            yield name, "run" if entry is None else "restore", reason, entry

    def _dry_run(self, plan: list[str], force: bool) -> list[Result]:
        results: list[Result] = []
        for i, (name, action, reason, entry) in enumerate(self._forecast(plan, force), 1):
            tag = f"[{i}/{len(plan)}] {name:<14}"
            results.append(Result(name, f"would {action}", reason))
            if action == "skip":
                ui.say(f"{tag} fresh: up to date")
            elif action == "restore":
                ui.say(f"{tag} stale: {reason}; in the run cache (run of {when(entry.created)})")
            else:
                ui.say(f"{tag} stale: {reason}")
        return results

    def _recorded(self, command: str, plan: list[str], force: set[str], jobs: int) -> list[Result]:
        """`_execute`, then one record of the run (finished or failed) appended to runs/R/history.jsonl."""
        self._results: dict[str, Result] = {}
        try:
            results = self._execute(plan, force, jobs)
        except Exception as e:
            self._record(command, plan, error=str(e))
            raise
        self._record(command, plan)
        return results

    def _record(self, command: str, plan: list[str], error: str | None = None) -> None:
        results = [self._results[n] for n in plan if n in self._results]
        keys = {n: e["key"] for n in self.recipe.stages if (e := self.lock.entry(n))}
        try:
            self.record_number = history.append(
                self.run_dir, history.record(self.recipe, self.run_dir, results, command, keys, error))
        except OSError as e:  # the history is a record of the run, not the run: say so and go on
            if error is None:
                ui.warn(f"could not append to the run history ({EdgepipeError.from_os_error(e)})")
            else:  # the run's own error (a full disk, often the same cause) stays the one line on stderr
                log.info("could not append to the run history: %s", e)

    def _execute(self, plan: list[str], force: set[str], jobs: int) -> list[Result]:
        """Start each stage once everything it depends on in the plan has finished, up to `jobs` at once.

        If a stage fails, the stages already running finish and are recorded, nothing new starts, and
        the first failure is raised.
        """
        results = self._results = {}
        waiting = list(plan)
        running: dict[concurrent.futures.Future, _Job] = {}
        failure: BaseException | None = None
        display = live.LiveProgress() if self.on_progress is None and live.wanted() else None
        self._sink = self.on_progress or display
        context = multiprocessing.get_context("spawn")
        channel = (progress.Channel(context, self._sink) if self._sink is not None and (jobs > 1 or self.isolate)
                   else None)  # the workers' progress events, to the sink in this process
        pool = (concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                                       initargs=(os.getpid(), channel and channel.queue))
                if jobs > 1 or self.isolate else None)
        shown = contextlib.ExitStack()  # closed last first: the workers' last events are in before the lines go
        if display is not None:
            shown.enter_context(display)
        if channel is not None:
            shown.callback(channel.close)
        try:
            while waiting or running:
                if failure is None:
                    self._start_ready(plan, waiting, running, results, force, jobs, pool)
                if not running:
                    continue
                failure = self._collect(running, results, failure)
                if failure is not None and not running:
                    break
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI raises it for both): stop, leave nothing half
            if pool is not None:
                _stop_workers(pool)
            for job in running.values():
                shutil.rmtree(self.run_dir / ".tmp" / job.stage.name, ignore_errors=True)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            shown.close()
            self._sink = None
        if failure is not None:
            raise failure
        return [results[name] for name in plan if name in results]

    def _start_ready(self, plan: list[str], waiting: list[str], running: dict, results: dict, force: set[str],
                     jobs: int, pool) -> None:
        """Start, in plan order, the waiting stages whose inputs are done, until `jobs` run, an exclusive
        stage started, or a stage ran in this process (what it unblocked is then next, in plan order)."""
        busy = {job.stage.name for job in running.values()}
        if any(job.stage.kind.exclusive for job in running.values()):
            return
        for name in list(waiting):
            stage = self.recipe.stages[name]
            if any(u in waiting or u in busy for u in stage.upstream()):
                continue
            if (stage.kind.exclusive and running) or len(running) >= jobs:
                return  # an exclusive stage waits for the others; nothing after it jumps the queue
            waiting.remove(name)
            tag = f"[{plan.index(name) + 1}/{len(plan)}] {name:<14}"
            reason, key, parts = self._reason(stage, name in force)
            if reason is None:
                self._publish(stage, only_if_changed=True)
                self._keep(stage, key)
                results[name] = Result(name, "skipped", "up to date")
                ui.say(f"{tag} skipped: up to date")
                if self.tracker is not None:
                    self.tracker.stage(stage, "skipped")
                continue
            restored = None if name in force else self._restore(stage, key, parts, reason, tag)
            if restored is not None:
                results[name] = restored
                if self.tracker is not None:
                    self.tracker.stage(stage, "restored")
                continue
            if self._resumable(stage, key):
                reason += "; resuming from its checkpoint"
            io = self._prepare(stage, key)
            job = _Job(stage, key, parts, reason, tag, time.perf_counter())
            if pool is None or stage.kind.light:
                ui.say(f"{tag} running: {reason}")
                try:
                    _fresh_keras_session()
                    with progress.reporting(name, self._sink):
                        summary = stage.kind.run(stage.params, io) or ""
                except BaseException as e:
                    shutil.rmtree(io.out, ignore_errors=True)
                    raise _named(e, stage, io.out) from None
                results[name] = self._finish(job, summary)
                return
            log_file = self.run_dir / ".logs" / f"{name}.log"
            ui.say(f"{tag} running: {reason}  (log: {_rel(log_file)})")
            running[pool.submit(_run_in_worker, stage.kind.name, stage.params, io, log_file, name)] = job
            busy.add(name)
            if stage.kind.exclusive:
                return

    def _collect(self, running: dict, results: dict, failure: BaseException | None) -> BaseException | None:
        """Wait for a worker to finish; record what finished; return the first failure seen."""
        done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            job = running.pop(future)
            try:
                results[job.stage.name] = self._finish(job, future.result() or "")
            except BaseException as e:  # noqa: BLE001 - the first failure is raised once the rest finish
                shutil.rmtree(self.run_dir / ".tmp" / job.stage.name, ignore_errors=True)
                failure = failure or _named(e, job.stage, self.run_dir / ".tmp" / job.stage.name)
                if not isinstance(e, EdgepipeError):
                    ui.warn(f"stage '{job.stage.name}' failed; its log: "
                            f"{_rel(self.run_dir / '.logs' / (job.stage.name + '.log'))}")
        return failure

    # -- freshness ----------------------------------------------------------------------------------

    def _reason(self, stage: Stage, forced: bool) -> tuple[str | None, str, dict]:
        """(why the stage must run, or None if it is fresh; its key; the parts of its key)."""
        key, parts = stage_key(stage, self.lock, self.run_dir, self.code[stage.kind.module])
        reason = "forced (--force)" if forced else why_stale(stage, key, parts, self.lock, self.run_dir / stage.name)
        return reason, key, parts

    # -- running ------------------------------------------------------------------------------------

    def _input_dirs(self, stage: Stage) -> dict:
        """Role -> the output folder (or folders) of the upstream stages, as the stage function sees them."""
        return {role: [self.run_dir / u for u in ups] if isinstance(ups, list) else self.run_dir / ups
                for role, ups in stage.inputs.items()}

    def _work_matches(self, stage: Stage, key: str) -> bool:
        """Whether the stage's checkpoint folder was made under this same key."""
        marker = self.run_dir / ".work" / stage.name / "KEY"
        return marker.is_file() and marker.read_text() == key

    def _resumable(self, stage: Stage, key: str) -> bool:
        work = self.run_dir / ".work" / stage.name
        return self._work_matches(stage, key) and len(list(work.iterdir())) > 1

    def _prepare(self, stage: Stage, key: str) -> StageIO:
        """A fresh temporary output directory, and the checkpoint directory (kept if the key is the same)."""
        tmp = self.run_dir / ".tmp" / stage.name
        work = self.run_dir / ".work" / stage.name
        logs = self.run_dir / ".tb" / stage.name  # TensorBoard's, outside the output (event files hold wall times)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self._work_matches(stage, key):
            log.info("resuming %s from %s", stage.name, work)
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)  # a fresh start: TensorBoard shows this training, not the last
            work.mkdir(parents=True)
            (work / "KEY").write_text(key)
        return StageIO(inputs=self._input_dirs(stage), out=tmp, work=work, logs=logs)

    def _finish(self, job: _Job, summary: str) -> Result:
        """Move a finished stage's output into place, record it in the lock file, publish it."""
        stage = job.stage
        tmp = self.run_dir / ".tmp" / stage.name
        out_dir = self.run_dir / stage.name
        try:
            fsio.replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        records = self._store(stage, job.key, fsio.dir_records(out_dir), seconds=time.perf_counter() - job.start,
                              summary=summary)
        self.lock.record(stage.name, job.key, job.parts, records)
        self._publish(stage)
        shutil.rmtree(self.run_dir / ".work" / stage.name, ignore_errors=True)
        seconds = time.perf_counter() - job.start
        main = out_dir / stage.kind.main_output
        size = f" ({fsio.human_size(main.stat().st_size)})" if main.is_file() else ""
        ui.say(f"{job.tag} done in {seconds:.1f} s -> {_rel(main)}{size}" + (f"  | {summary}" if summary else ""))
        self._say_findings(out_dir)
        self._evict(keep={job.key})
        if self.tracker is not None:
            self.tracker.stage(stage, "ran")
        return Result(stage.name, "ran", job.reason, seconds, summary)

    @staticmethod
    def _say_findings(out_dir: Path) -> None:
        diagnostics = out_dir / "diagnostics.json"
        for finding in json.loads(diagnostics.read_text()) if diagnostics.is_file() else []:
            ui.say(f"    {finding.get('source', 'doctor')}: {finding['line']}")

    # -- the run cache ------------------------------------------------------------------------------

    def _restore(self, stage: Stage, key: str, parts: dict, reason: str, tag: str) -> Result | None:
        """Put the run cache's outputs for `key` in place as a finished run would (through .tmp, renamed),
        record and publish them; None if the cache has no usable entry."""
        entry = self.cache.lookup(key)
        if entry is None:
            return None
        start = time.perf_counter()
        tmp = self.run_dir / ".tmp" / stage.name
        out_dir = self.run_dir / stage.name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            records = self.cache.restore(entry, tmp)
            if records is None:
                ui.say(f"{tag} run cache entry of {when(entry.created)} no longer matches its files (edited in "
                       "place?); dropped it")
                return None
            fsio.replace_dir(tmp, out_dir)
        except OSError as e:  # a cache that cannot be read is a miss: the stage runs as if it were not there
            ui.say(f"{tag} could not restore from the run cache ({EdgepipeError.from_os_error(e)}); running it")
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.lock.record(stage.name, key, parts, fsio.dir_records(out_dir, records))
        self._publish(stage)
        shutil.rmtree(self.run_dir / ".work" / stage.name, ignore_errors=True)
        seconds = time.perf_counter() - start
        took = f"; it took {entry.seconds:.1f} s" if entry.seconds else ""
        ui.say(f"{tag} restored from run cache (run of {when(entry.created)}{took}) in {seconds:.1f} s: {reason}"
               + (f"  | {entry.summary}" if entry.summary else ""))
        self._say_findings(out_dir)
        return Result(stage.name, "restored", reason, seconds, entry.summary)

    def _store(self, stage: Stage, key: str, records: dict, seconds: float, summary: str,
               created: float | None = None) -> dict:
        """Put a finished stage's outputs in the run cache; return their records as they now are. The cache
        is a convenience: if the disk refuses, the run goes on without it, saying so."""
        if not self.cache.enabled:
            return records
        try:
            return self.cache.store(key, stage.name, self.run_dir / stage.name, records, seconds, summary, created)
        except OSError as e:
            # stdout, not a warning: should the run then fail (a full disk), its error stays the one line on stderr
            ui.say(f"    run cache: could not keep the outputs of '{stage.name}' ({EdgepipeError.from_os_error(e)})")
            self.cache.drop(key)
            return fsio.dir_records(self.run_dir / stage.name, records)

    def _keep(self, stage: Stage, key: str) -> None:
        """Put a fresh stage's outputs in the run cache if they are not there (a run folder from before
        the cache, or an entry evicted since)."""
        entry = self.lock.entry(stage.name)
        if not self.cache.enabled or self.cache.lookup(key) is not None or not entry:
            return
        out_dir = self.run_dir / stage.name
        main = out_dir / stage.kind.main_output
        created = main.stat().st_mtime if main.is_file() else None
        records = self._store(stage, key, entry["outputs"], 0.0, "", created=created)
        if records != entry["outputs"]:  # outputs now linked to cached objects: same content, new mtimes
            self.lock.record(stage.name, key, entry["parts"], records)
        self._evict(keep={key})

    def _evict(self, keep: set[str]) -> None:
        gone = self.cache.evict(keep)
        if gone:
            what = ", ".join(f"{e.stage} of {when(e.created)}" for e in gone[:3])
            more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
            ui.say(f"    run cache: evicted {len(gone)} least recently used entr{'y' if len(gone) == 1 else 'ies'} "
                   f"({what}{more}) to stay under {fsio.human_size(self.cache.limit)} (run_cache_size in "
                   "edgepipe.toml)")

    def gc(self, keep: int) -> tuple[list, int]:
        """Keep the `keep` most recently used run cache entries of each stage, drop the others; returns
        (the dropped entries, the bytes freed)."""
        if keep < 0:
            raise EdgepipeError(f"--keep {keep}: must be 0 or more", "use --keep 0 to empty the cache", exit_code=2)
        with self._exclusive(False):
            before = self.cache.size()
            gone = self.cache.prune(keep)
            return gone, before - self.cache.size()

    def _published(self, stage: Stage) -> list[Path]:
        """Output files matching the stage's `publish:` patterns (`cortex-m4/*` keeps its folder)."""
        out_dir = self.run_dir / stage.name
        files: list[Path] = []
        for pattern in stage.publish:  # relative, no `..` (checked at load); a link must not lead out either
            matches = sorted(p for p in out_dir.glob(pattern) if p.is_file()
                             and inside(out_dir, p, f"stage '{stage.name}': published file"))
            if not matches:
                raise EdgepipeError(f"stage '{stage.name}': publish pattern '{pattern}' matched no output file",
                                    f"use one of: {', '.join(sorted(self.lock.entry(stage.name)['outputs']))}",
                                    exit_code=2)
            files.extend(matches)
        return files

    def _publish(self, stage: Stage, only_if_changed: bool = False) -> None:
        """Copy the stage's published files to models/R/; for a skipped stage, only those missing or
        of another size (a fresh stage's files are as recorded, so a size check finds a stale copy)."""
        for src in self._published(stage):
            dest = self.models_dir / src.relative_to(self.run_dir / stage.name)
            inside(self.models_dir, dest, f"stage '{stage.name}': published copy")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if only_if_changed and dest.is_file() and dest.stat().st_size == src.stat().st_size:
                continue
            fsio.copy_file(src, dest)
            if only_if_changed:
                ui.say(f"    republished {_rel(dest)}")

    # -- scratch and the run lock -------------------------------------------------------------------

    def _clean_scratch(self, dry_run: bool) -> None:
        if not dry_run:
            shutil.rmtree(self.run_dir / ".tmp", ignore_errors=True)  # half outputs of a killed run

    @contextlib.contextmanager
    def _exclusive(self, dry_run: bool) -> Iterator[None]:
        if dry_run:
            yield
            return
        with runlock.exclusive(self.run_dir / ".runlock"):
            yield


def _fresh_keras_session() -> None:
    """Reset Keras' global state between stages run in one process.

    Keras numbers auto-named layers per process (conv2d, conv2d_1, ...), and the names are saved in
    model.h5: without a reset, a stage's output bytes would depend on which stages ran before it in
    the same process, and an unchanged stage would look changed to everything downstream.
    """
    import sys

    if "tf_keras" in sys.modules:
        sys.modules["tf_keras"].backend.clear_session()


def _end_with_runner(runner_pid: int) -> None:
    """Make this worker process end when the runner does, however the runner ends.

    Without it, a runner killed outright (SIGKILL, the OOM killer, `kill` of its pid) leaves its workers
    training to the end of their stage, writing into runs/R/.tmp and .work beside the next run, which no
    longer sees the run lock they were started under. Linux: prctl(PR_SET_PDEATHSIG); elsewhere a no-op.
    """
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != runner_pid:  # the runner died before the line above took effect
        os._exit(1)


_events = None  # in a worker process: the queue its stages' progress events go to the runner through


def _start_worker(runner_pid: int, events) -> None:
    """A worker process's initializer: it ends with the runner, and reports progress to `events` (a queue
    the runner reads; None: nobody watches)."""
    global _events
    _end_with_runner(runner_pid)
    _events = events


def _named(e: BaseException, stage: Stage, out: Path) -> BaseException:
    """An operating-system error in a stage (a full disk, a read-only folder) as one line naming the stage
    and the path; anything else unchanged."""
    if isinstance(e, OSError) and not isinstance(e, (BlockingIOError, InterruptedError)):
        error = EdgepipeError.from_os_error(e)
        where = "" if e.filename else f" writing {out}"
        return EdgepipeError(f"stage '{stage.name}'{where}: {error.message}", error.fix)
    return e


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Kill the pool's worker processes now: on an interrupt their stages' outputs are thrown away (their
    checkpoints in .work stay, so the rerun resumes), and waiting for them would take a stage's time."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.join(timeout=10)


def _run_in_worker(kind_name: str, params, io: StageIO, log_file: Path, name: str) -> str:
    """Run stage `name` in a worker process, with everything it prints (native code included) in `log_file`
    and its progress events sent to the runner."""
    from edgepipe.core.native import quiet_native
    from edgepipe.stages.registry import kinds

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with quiet_native(log_file), progress.reporting(name, _events and _events.put):
        _fresh_keras_session()
        return kinds()[kind_name].run(params, io) or ""


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
