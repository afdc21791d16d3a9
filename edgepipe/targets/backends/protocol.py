"""What every backend implements: how edgepipe measures on one kind of device, and what it needs to.

A backend is one class in one module of this package. The bench, search and bundle stages call these
methods and never look at a profile's `kind`, `reach` or `measure` themselves; `backend_for` (this
package's `__init__`) is where a profile meets its backend.

Figures (one schema for bench, search and report): every accuracy, latency and memory figure is
`{"value": ..., "provenance": a key of edgepipe.targets.provenance.PROVENANCE}`, with `"what"` on a
memory figure (RSS growth, RAM, arena) and `"not_measured"` when the value is None for a reason. The
names are `accuracy`, `latency_p50_us`, `instructions`, `flash` and `memory`; beside them `fits` (a
verdict), `why_not` (why a figure is missing) and what a backend measured in full (`emulated`, `mcu`,
`latency`, `edgetpu`, ...).
"""

from __future__ import annotations

import abc
import shutil
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.requirements import Requirement
from edgepipe.targets.lint import Runtime
from edgepipe.targets.profiles import Target


class Backend(abc.ABC):
    """One kind of device: what measuring on it needs, how it is measured, and its figures.

    `params` is a bench's `BenchParams`; a search passes None (it calls a searchable backend's `needs`,
    `environment` and `search_figures` only, and those do not read them).
    """

    #: a name for messages ("SSH Linux device")
    name: str = ""
    #: the device is reached at an address given with --host (and a bench's fleet)
    takes_host: bool = False
    #: the values of a bench's `measure` param this device accepts instead of its profile's (microcontrollers)
    measure_choices: tuple[str, ...] = ()
    #: a search can measure every trial on it from here
    searchable: bool = False
    #: it scores any task's raw outputs on the device (a detector's heat maps), not only a classifier's class
    #: scores: the tasks (`edgepipe.tasks`) it can bench, besides classification
    tasks: tuple[str, ...] = ()
    #: what the device's runtime runs, for the lint (`edgepipe.targets.lint`); None: any operator LiteRT has
    runtime: Runtime | None = None

    def check_profile(self, target: Target) -> None:
        """Refuse a profile this backend cannot measure with (RecipeError: what is missing; fix)."""

    def needs(self, target: Target, params) -> list[Requirement]:
        """What measuring on `target` needs from this machine, checked before the run starts."""
        return []

    def check(self, target: Target, params) -> None:
        """Refuse a bench's params that do not fit this device (EdgepipeError), before anything is measured."""

    def environment(self, target: Target, params) -> dict:
        """What the figures depend on besides the models and this host's runtime (part of the stage's cache
        key). Raises EdgepipeError when this machine lacks what reads them: the preflight says which."""
        return {}

    def measure(
        self,
        target: Target,
        params,
        models: list[Path],
        x: np.ndarray,
        y: np.ndarray,
        *,
        work: Path,
        host_top1: dict[str, np.ndarray],
        out: Path,
    ) -> dict:
        """Figures measured on the device itself or its emulator, by model file name, plus `_provenance` (what
        they were measured on) and `_fleet` (every device, when several were); nothing when the host's own
        figures are the target's. `models` are the files the target runs; `out` is the bench's output folder
        (for what a bundle ships later, such as a compiled model)."""
        return {}

    @abc.abstractmethod
    def figures(self, target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray) -> dict:
        """The tagged figures of one model the target runs: its bench row (host figures), its file, what
        `measure` returned for it (None if nothing), and the test split (`x` preprocessed)."""

    def missing_figure(self, target: Target, figure: str) -> str | None:
        """Why `target` gives no `figure` (a figure name of the schema), or None when it gives it."""
        return None

    def search_figures(self, target: Target, tflite: Path, x_float: np.ndarray, *, macs: int, work: Path) -> dict:
        """A search trial's tagged figures for int8 model `tflite` (`latency_p50_us`, `instructions`, `flash`,
        `memory`, `fits`), from a few preprocessed validation images. Only a `searchable` backend has them."""
        raise EdgepipeError(
            f"a search cannot measure on {target.name} ({self.name})",
            "search for host or a microcontroller profile; bench on the device afterwards",
        )

    def bundle_needs(self, target: Target) -> list[Requirement]:
        """What writing this device's bundle needs from this machine, checked before the run starts."""
        return []

    def bundle_files(
        self, target: Target, out: Path, model: Path, side: dict, ds, *, symbol: str, bench_dirs: list[Path]
    ) -> dict | None:
        """Write what this device needs beside the `.tflite` into the bundle folder `out`; returns its fit
        verdict for the model card when it has one."""
        return None


def command(name: str, what: str, fix: str) -> Requirement:
    """The requirement that command `name` is on PATH."""
    return Requirement(what, lambda: None if shutil.which(name) else f"{name} is not installed", fix)
