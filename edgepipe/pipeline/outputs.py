"""What happens to a stage's outputs once they exist, and what a run leaves on record.

A finished stage's output is renamed into place from ``runs/R/.tmp/<stage>/``, recorded in the lock file,
kept in the run cache (`edgepipe.pipeline.runcache`) and published to ``models/R/``; a stale stage whose
key the cache has seen is restored the same way instead of run. Every stage's outcome goes to the
tracking (`edgepipe.pipeline.tracking`) from `Outputs._noted`, and every run to the run history
(`edgepipe.pipeline.history`) from `Outputs.record`: one place each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Iterator

from edgepipe.core import fsio, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.paths import inside
from edgepipe.pipeline import history, tracking
from edgepipe.pipeline.lock import Lock
from edgepipe.pipeline.recipe import Recipe, Stage
from edgepipe.pipeline.runcache import RunCache, when

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
class Job:
    """A stage that is running: what its lock entry will record, and how to say it finished."""

    stage: Stage
    key: str
    parts: dict
    reason: str
    tag: str
    start: float


class Outputs:
    """The outputs of one recipe's stages: ``runs/R/<stage>/``, its lock file, run cache and ``models/R/``."""

    def __init__(self, recipe: Recipe, root: Path, lock: Lock, cache: RunCache):
        self.recipe = recipe
        self.root = root
        self.run_dir = root / "runs" / recipe.name
        self.models_dir = root / "models" / recipe.name
        self.lock = lock
        self.cache = cache
        self.tracker = None

    # -- the run's record ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def tracked(self, track: str | None, configured: str | None = None) -> Iterator[None]:
        """Track the stages run inside (`--track`, the recipe's `tracking:` block, into the `configured`
        store unless they or the environment name one); say how it ended."""
        self.tracker = tracking.start(self.recipe, self.root, track, configured)  # before anything is written
        ok = False
        try:
            yield
            ok = True
        finally:
            if self.tracker is not None:
                ui.say(self.tracker.finish(ok))
            self.tracker = None

    def _noted(self, stage: Stage, result: Result) -> Result:
        if self.tracker is not None:
            self.tracker.stage(stage, result.action)
        return result

    def record(self, command: str, plan: list[str], results: dict[str, Result], error: str | None = None) -> int | None:
        """Append one record of the run (finished or failed) to runs/R/history.jsonl; its number, or None."""
        done = [results[n] for n in plan if n in results]
        keys = {n: e["key"] for n in self.recipe.stages if (e := self.lock.entry(n))}
        try:
            return history.append(self.run_dir, history.record(self.recipe, self.run_dir, done, command, keys, error))
        except OSError as e:  # the history is a record of the run, not the run: say so and go on
            if error is None:
                ui.warn(f"could not append to the run history ({EdgepipeError.from_os_error(e)})")
            else:  # the run's own error (a full disk, often the same cause) stays the one line on stderr
                log.info("could not append to the run history: %s", e)
            return None

    # -- a stage's outputs --------------------------------------------------------------------------

    def skipped(self, stage: Stage, key: str, tag: str) -> Result:
        """A fresh stage: its published copies checked, its outputs kept in the run cache."""
        self._publish(stage, only_if_changed=True)
        self._keep(stage, key)
        ui.say(f"{tag} skipped: up to date")
        return self._noted(stage, Result(stage.name, "skipped", "up to date"))

    def finished(self, job: Job, summary: str) -> Result:
        """Move a finished stage's output into place, record it in the lock file, publish it."""
        stage = job.stage
        tmp = self.run_dir / ".tmp" / stage.name
        out_dir = self.run_dir / stage.name
        try:
            fsio.replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        records = self._store(
            stage, job.key, fsio.dir_records(out_dir), seconds=time.perf_counter() - job.start, summary=summary
        )
        self.lock.record(stage.name, job.key, job.parts, records)
        self._publish(stage)
        shutil.rmtree(self.run_dir / ".work" / stage.name, ignore_errors=True)
        seconds = time.perf_counter() - job.start
        main = out_dir / stage.kind.main_output
        size = f" ({fsio.human_size(main.stat().st_size)})" if main.is_file() else ""
        ui.say(f"{job.tag} done in {seconds:.1f} s -> {rel(main)}{size}" + (f"  | {summary}" if summary else ""))
        self._say_findings(stage, out_dir)
        self._evict(keep={job.key})
        return self._noted(stage, Result(stage.name, "ran", job.reason, seconds, summary))

    def restored(self, stage: Stage, key: str, parts: dict, reason: str, tag: str) -> Result | None:
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
                ui.say(
                    f"{tag} run cache entry of {when(entry.created)} no longer matches its files (edited in "
                    "place?); dropped it"
                )
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
        ui.say(
            f"{tag} restored from run cache (run of {when(entry.created)}{took}) in {seconds:.1f} s: {reason}"
            + (f"  | {entry.summary}" if entry.summary else "")
        )
        self._say_findings(stage, out_dir)
        return self._noted(stage, Result(stage.name, "restored", reason, seconds, entry.summary))

    @staticmethod
    def _say_findings(stage: Stage, out_dir: Path) -> None:
        for line in stage.kind.findings(out_dir):
            ui.say(f"    {line}")

    # -- the run cache ------------------------------------------------------------------------------

    def _store(
        self, stage: Stage, key: str, records: dict, seconds: float, summary: str, created: float | None = None
    ) -> dict:
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
            ui.say(
                f"    run cache: evicted {len(gone)} least recently used entr{'y' if len(gone) == 1 else 'ies'} "
                f"({what}{more}) to stay under {fsio.human_size(self.cache.limit)} (run_cache_size in "
                "edgepipe.toml)"
            )

    # -- publishing ---------------------------------------------------------------------------------

    def _published(self, stage: Stage) -> list[Path]:
        """Output files matching the stage's `publish:` patterns (`cortex-m4/*` keeps its folder)."""
        out_dir = self.run_dir / stage.name
        files: list[Path] = []
        for pattern in stage.publish:  # relative, no `..` (checked at load); a link must not lead out either
            matches = sorted(
                p
                for p in out_dir.glob(pattern)
                if p.is_file() and inside(out_dir, p, f"stage '{stage.name}': published file")
            )
            if not matches:
                raise EdgepipeError(
                    f"stage '{stage.name}': publish pattern '{pattern}' matched no output file",
                    f"use one of: {', '.join(sorted(self.lock.entry(stage.name)['outputs']))}",
                    exit_code=2,
                )
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
                ui.say(f"    republished {rel(dest)}")


def find_report(recipe: Recipe, root: Path) -> Path:
    """models/<recipe>/report.html if a stage published it, else the newest report stage's output."""
    root = Path(root)
    published = root / "models" / recipe.name / "report.html"
    if published.is_file():
        return published
    built = [
        root / "runs" / recipe.name / name / "report.html"
        for name, stage in recipe.stages.items()
        if stage.kind.produces(stage.params) == "report"
    ]
    built = [p for p in built if p.is_file()]
    if not built:
        raise EdgepipeError(f"{recipe.name} has no HTML report yet", f"run it first: edgepipe run {recipe.name}")
    return max(built, key=lambda p: p.stat().st_mtime)


def rel(p: Path) -> str:
    """`p` as the user is shown it: relative to the current folder when inside it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
