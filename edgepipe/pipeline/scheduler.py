"""Starting stages: each once its inputs are done, up to `--jobs` at once, in worker processes or here.

Whether a stage is stale is `edgepipe.pipeline.keys`'; what happens to its outputs once it finished (or
is fresh, or in the run cache) is `edgepipe.pipeline.outputs`'. A stage runs in ``runs/R/.tmp/<stage>/``
with its checkpoints in ``runs/R/.work/<stage>/`` and TensorBoard's logs in ``runs/R/.tb/<stage>/``;
a worker's output goes to ``runs/R/.logs/<stage>.log``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from edgepipe.core import live, progress, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import library_noise_to_log
from edgepipe.core.stage import StageIO
from edgepipe.pipeline.keys import CodeVersion, stage_key, why_stale
from edgepipe.pipeline.lock import Lock
from edgepipe.pipeline.outputs import Job, Outputs, Result, rel
from edgepipe.pipeline.recipe import Recipe, Stage
from edgepipe.pipeline.runcache import when

log = logging.getLogger(__name__)


class Scheduler:
    """Decides, for one recipe's run folder, what each planned stage needs, and runs those that are stale."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        lock: Lock,
        code: dict[str, CodeVersion],
        outputs: Outputs,
        isolate: bool,
        on_progress: progress.Sink | None,
    ):
        self.recipe = recipe
        self.run_dir = run_dir
        self.lock = lock
        self.code = code
        self.outputs = outputs
        self.isolate = isolate
        self.on_progress = on_progress
        self._sink: progress.Sink | None = None  # where this run's stages report, while it runs

    # -- what is stale ------------------------------------------------------------------------------

    def reason(self, stage: Stage, forced: bool) -> tuple[str | None, str, dict]:
        """(why the stage must run, or None if it is fresh; its key; the parts of its key)."""
        key, parts = stage_key(stage, self.lock, self.run_dir, self.code[stage.kind.module])
        reason = "forced (--force)" if forced else why_stale(stage, key, parts, self.lock, self.run_dir / stage.name)
        return reason, key, parts

    def forecast(self, plan: list[str], force: bool, forced: set[str] = frozenset()) -> Iterator[tuple]:
        """What a run would do with each planned stage, in order: (name, "skip" | "restore" | "run", why,
        the run cache entry it would restore or None). Reads only: nothing is written."""
        rerun: set[str] = set()
        for name in plan:
            stage = self.recipe.stages[name]
            pending = [u for u in stage.upstream() if u in rerun]
            again = force or name in forced
            reason = f"upstream '{pending[0]}' reruns first" if pending else self.reason(stage, again)[0]
            if reason is None:
                yield name, "skip", "up to date", None
                continue
            rerun.add(name)
            entry = None if pending or again else self.outputs.cache.lookup(self.reason(stage, False)[1])
            yield name, "run" if entry is None else "restore", reason, entry

    def dry_run(self, plan: list[str], force: bool) -> list[Result]:
        """Say what a run would do with each planned stage, and why."""
        results: list[Result] = []
        for i, (name, action, reason, entry) in enumerate(self.forecast(plan, force), 1):
            tag = f"[{i}/{len(plan)}] {name:<14}"
            results.append(Result(name, f"would {action}", reason))
            if action == "skip":
                ui.say(f"{tag} fresh: up to date")
            elif action == "restore":
                ui.say(f"{tag} stale: {reason}; in the run cache (run of {when(entry.created)})")
            else:
                ui.say(f"{tag} stale: {reason}")
        return results

    # -- a stage's folders --------------------------------------------------------------------------

    def stage_io(self, stage: Stage, out: Path, work: Path, logs: Path | None = None) -> StageIO:
        """What the stage function is handed: its inputs (and, if its kind reads them, the outputs they
        were made from) as the upstream stages' output folders."""
        inputs = {
            role: [self.run_dir / u for u in ups] if isinstance(ups, list) else self.run_dir / ups
            for role, ups in stage.inputs.items()
        }
        upstream = (
            {n: self.run_dir / n for n in self.recipe.ancestors(stage.name) if n != stage.name}
            if stage.kind.reads_upstream
            else {}
        )
        return StageIO(inputs=inputs, out=out, work=work, logs=logs, upstream=upstream)

    def work_matches(self, stage: Stage, key: str) -> bool:
        """Whether the stage's checkpoint folder was made under this same key."""
        marker = self.run_dir / ".work" / stage.name / "KEY"
        return marker.is_file() and marker.read_text() == key

    def _prepare(self, stage: Stage, key: str) -> StageIO:
        """A fresh temporary output directory, and the checkpoint directory (kept if the key is the same)."""
        tmp = self.run_dir / ".tmp" / stage.name
        work = self.run_dir / ".work" / stage.name
        logs = self.run_dir / ".tb" / stage.name  # TensorBoard's, outside the output (event files hold wall times)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.work_matches(stage, key):
            log.info("resuming %s from %s", stage.name, work)
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)  # a fresh start: TensorBoard shows this training, not the last
            work.mkdir(parents=True)
            (work / "KEY").write_text(key)
        return self.stage_io(stage, tmp, work, logs)

    # -- running ------------------------------------------------------------------------------------

    def execute(self, plan: list[str], force: set[str], jobs: int, results: dict[str, Result]) -> list[Result]:
        """Start each stage once everything it depends on in the plan has finished, up to `jobs` at once;
        `results` gets what happened to each as it happens.

        If a stage fails, the stages already running finish and are recorded, nothing new starts, and
        the first failure is raised.
        """
        shutil.rmtree(self.run_dir / ".tmp", ignore_errors=True)  # half outputs of a killed run
        waiting = list(plan)
        running: dict[concurrent.futures.Future, Job] = {}
        failure: BaseException | None = None
        display = live.LiveProgress() if self.on_progress is None and live.wanted() else None
        self._sink = self.on_progress or display
        context = multiprocessing.get_context("spawn")
        channel = (
            progress.Channel(context, self._sink) if self._sink is not None and (jobs > 1 or self.isolate) else None
        )  # the workers' progress events, to the sink in this process
        pool = (
            concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_start_worker, initargs=(os.getpid(), channel and channel.queue)
            )
            if jobs > 1 or self.isolate
            else None
        )
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

    def _start_ready(
        self, plan: list[str], waiting: list[str], running: dict, results: dict, force: set[str], jobs: int, pool
    ) -> None:
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
            reason, key, parts = self.reason(stage, name in force)
            if reason is None:
                results[name] = self.outputs.skipped(stage, key, tag)
                continue
            restored = None if name in force else self.outputs.restored(stage, key, parts, reason, tag)
            if restored is not None:
                results[name] = restored
                continue
            if self.work_matches(stage, key) and len(list((self.run_dir / ".work" / name).iterdir())) > 1:
                reason += "; resuming from its checkpoint"
            io = self._prepare(stage, key)
            job = Job(stage, key, parts, reason, tag, time.perf_counter())
            if pool is None or stage.kind.light:
                results[name] = self._run_here(job, io)
                return
            log_file = self.run_dir / ".logs" / f"{name}.log"
            ui.say(f"{tag} running: {reason}  (log: {rel(log_file)})")
            running[pool.submit(_run_in_worker, stage.kind.name, stage.params, io, log_file, name)] = job
            busy.add(name)
            if stage.kind.exclusive:
                return

    def _run_here(self, job: Job, io: StageIO) -> Result:
        """Run the job's stage in this process."""
        stage = job.stage
        ui.say(f"{job.tag} running: {job.reason}")
        try:
            if stage.kind.resets_keras:
                _fresh_keras_session()
            with progress.reporting(stage.name, self._sink), library_noise_to_log():
                summary = stage.kind.run(stage.params, io) or ""
        except BaseException as e:  # noqa: BLE001 - whatever stopped the stage (Ctrl-C too), its half output goes
            shutil.rmtree(io.out, ignore_errors=True)
            raise _named(e, stage, io.out) from None
        return self.outputs.finished(job, summary)

    def _collect(self, running: dict, results: dict, failure: BaseException | None) -> BaseException | None:
        """Wait for a worker to finish; record what finished; return the first failure seen."""
        done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            job = running.pop(future)
            try:
                results[job.stage.name] = self.outputs.finished(job, future.result() or "")
            except BaseException as e:  # noqa: BLE001 - the first failure is raised once the rest finish
                shutil.rmtree(self.run_dir / ".tmp" / job.stage.name, ignore_errors=True)
                failure = failure or _named(e, job.stage, self.run_dir / ".tmp" / job.stage.name)
                if not isinstance(e, EdgepipeError):
                    ui.warn(
                        f"stage '{job.stage.name}' failed; its log: "
                        f"{rel(self.run_dir / '.logs' / (job.stage.name + '.log'))}"
                    )
        return failure


def _fresh_keras_session() -> None:
    """Reset Keras' global state between stages run in one process (see `StageKind.resets_keras`)."""
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

    kind = kinds()[kind_name]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with quiet_native(log_file), progress.reporting(name, _events and _events.put):
        if kind.resets_keras:
            _fresh_keras_session()
        return kind.run(params, io) or ""
