"""The live lines a terminal shows while stages run: one per running stage, redrawn in place.

Each line is the stage's name, where it is (epoch 3/12, trial 4/20, model 1/2) with a bar, its latest
note (val_accuracy 0.981), the time since it started and an ETA. Drawn with rich, only when stdout is a
terminal outside CI (`wanted`); the runner's plain lines are printed through the same console, above
the live ones, and the live lines are erased when the run ends, so the scrollback holds plain lines only.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from edgepipe.core import ui
from edgepipe.core.progress import Event


def wanted() -> bool:
    """Whether to draw live lines: stdout is a terminal, not a CI job's, and one that can move its cursor."""
    return sys.stdout.isatty() and not os.environ.get("CI") and os.environ.get("TERM", "") not in ("dumb", "unknown")


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, int(seconds))))


def _times(task) -> str:
    """Time since the stage started and, once a unit of its count is done, an ETA from this count's rate."""
    f = task.fields
    text = f"elapsed {_clock(time.monotonic() - f['began'])}"
    done = task.completed - f["first"] if f["first"] is not None else 0
    if task.total and done > 0:
        text += f"  ETA {_clock((time.monotonic() - f['since']) / done * (task.total - task.completed))}"
    return text


class LiveProgress:
    """A sink for `edgepipe.core.progress` events that draws them; use as a context manager around the run.

    Events may come from any thread (the runner's, and the one relaying its workers' events).
    """

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
        from rich.text import Text

        class Times(ProgressColumn):  # rendered on every refresh, so the clocks move between events
            def render(self, task):
                return Text(_times(task), style="progress.elapsed")

        self.console = Console(highlight=False)
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=16),
            TextColumn("{task.fields[where]}", markup=False),
            Times(),
            console=self.console,
            transient=True,
            refresh_per_second=4,
            redirect_stdout=True,
            redirect_stderr=sys.stderr.isatty(),
        )
        self._tasks: dict[str, object] = {}  # stage -> its rich task id
        self._counts: dict[str, tuple] = {}  # stage -> (unit, total) of the count its ETA is for

    def __enter__(self) -> LiveProgress:
        self._progress.start()
        ui.print_through(self.console, stderr=sys.stderr.isatty())
        return self

    def __exit__(self, *exc) -> None:
        ui.print_through(None)
        self._progress.stop()  # erases the live lines and shows the cursor again, on an error or Ctrl-C too

    def __call__(self, event: Event) -> None:
        task = self._tasks.get(event.stage)
        if event.ended:
            if task is not None:
                self._progress.remove_task(self._tasks.pop(event.stage))
                self._counts.pop(event.stage, None)
            return
        if task is None:
            task = self._tasks[event.stage] = self._progress.add_task(
                f"{event.stage:<14}", total=None, where="running", began=time.monotonic(), since=None, first=None
            )
        fields = {}
        if event.total is not None and self._counts.get(event.stage) != (event.unit, event.total):
            # a new count (the trials are done, the chosen model's epochs begin): its ETA starts afresh
            self._counts[event.stage] = (event.unit, event.total)
            fields = {"since": time.monotonic(), "first": event.done}
        where = f"{event.unit} {event.done}/{event.total}" if event.total is not None else "running"
        where += (f"  {event.note}" if event.note else "") + (f"  ({event.detail})" if event.detail else "")
        self._progress.update(task, total=event.total, completed=event.done, where=where, **fields)
