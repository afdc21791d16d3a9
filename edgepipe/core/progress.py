"""Progress events from a stage's long loops, for whoever runs the stage to show (or not).

Stage code calls `update(done, total, unit, note)` (epoch 3/12, trial 4/20, model 1/2); it never knows
how, or whether, the events are shown. The runner decides, by wrapping each stage in `reporting(stage,
sink)`: in its own process the sink is a live display (`edgepipe.core.live`) or a test's list, in a
worker process a `Channel` back to the runner. With no sink, `update` does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
from typing import Callable, Iterator

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Event:
    """Where one running stage is.

    Attributes:
        stage: the stage's name.
        done: units finished.
        total: units in all; None while the stage has said nothing (the event `reporting` sends first).
        unit: what is counted ("epoch", "trial", "model"); "" before the stage's first update.
        note: the latest figure worth a glance ("val_accuracy 0.981", "best 98.10 %").
        detail: progress of a loop inside the counted unit (a trial's "epoch 2/5 val_accuracy 0.95").
        ended: the stage has finished (or failed): its line goes.
    """

    stage: str
    done: int = 0
    total: int | None = None
    unit: str = ""
    note: str = ""
    detail: str = ""
    ended: bool = False


Sink = Callable[[Event], None]

_sink: Sink | None = None
_stage: str | None = None
_line: Event | None = None  # the outer loop's latest event, which inner loops' updates become details of
_inner = 0


def update(done: int, total: int, unit: str, note: str = "") -> None:
    """Report that `done` of `total` units are finished, with an optional short note; never fails."""
    global _line
    if _sink is None or _stage is None:
        return
    if _inner and _line is not None:
        event = dataclasses.replace(_line, detail=f"{unit} {done}/{total}" + (f" {note}" if note else ""))
    else:
        event = _line = Event(_stage, done, total, unit, note)
    _send(event)


@contextlib.contextmanager
def inner() -> Iterator[None]:
    """Within this block, updates describe a loop inside the current unit (a trial's epochs), shown beside
    the outer count instead of replacing it."""
    global _inner
    _inner += 1
    try:
        yield
    finally:
        _inner -= 1


def active() -> bool:
    """Whether updates go anywhere: a caller drawing its own progress bar (Keras' per batch) leaves the
    terminal to the runner's display when they do."""
    return _sink is not None


@contextlib.contextmanager
def reporting(stage: str, sink: Sink | None) -> Iterator[None]:
    """Send the updates made while stage `stage` runs to `sink`: one event with no total first, then each
    update, then an `ended` one (also when the stage fails)."""
    global _sink, _stage, _line, _inner
    saved = _sink, _stage, _line, _inner
    _sink, _stage, _line, _inner = sink, stage, None, 0
    try:
        if sink is not None:
            _send(Event(stage))
        yield
    finally:
        if sink is not None:
            _send(Event(stage, ended=True))
        _sink, _stage, _line, _inner = saved


def _send(event: Event) -> None:
    try:
        _sink(event)
    except Exception:  # progress is for watching: it must never fail the stage it watches
        log.debug("progress event %s not delivered", event, exc_info=True)


class Channel:
    """Events from worker processes to a sink in the runner's process: a queue the workers put into (handed
    to them at start), and a thread in the runner feeding the sink from it until `close`."""

    def __init__(self, context, sink: Sink):
        self.queue = context.Queue()
        self._sink = sink
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="edgepipe-progress", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        while True:
            try:
                event = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                self._sink(event)
            except Exception:  # a display that cannot draw must not stop the run
                log.debug("progress event %s not shown", event, exc_info=True)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what the workers sent before they exited, then stop the thread. A poll, not a message to
        stop: the runner never writes to the queue, so a worker killed mid-write cannot block it."""
        self._closing.set()
        self._thread.join(timeout)
