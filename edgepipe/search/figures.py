"""A trial's figures on the search's target, measured from its int8 `.tflite`, cached by the file's hash.

The target's backend (`edgepipe.targets.backends`) measures them, in the figure schema the bench and the
report use (`{"value", "provenance"}` per figure): on an emulated microcontroller, TFLite Micro + CMSIS-NN
on QEMU (instructions, latency when calibrated, flash and RAM of the linked firmware); on one estimated,
TFLite Micro's arena on this host with flash and latency estimated; on the host, LiteRT's median latency
at one thread and the file's size as its flash. `budget_values` turns them into the flat figures a
search bounds and ranks (`latency_ms`, `instructions`, `flash_bytes`, `ram_bytes`).

Each result is kept under the user's cache (`target-figures/`), keyed by the model bytes and what made
the figures (the target profile, the toolchain and QEMU versions), so a resumed or repeated search does
not measure a model twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.cache import cache_dir
from edgepipe.targets.backends import backend_for
from edgepipe.targets.profiles import Target

# the search's flat figure -> the figure of the schema it is read from
TAGGED = {"latency_ms": "latency_p50_us", "instructions": "instructions", "flash_bytes": "flash", "ram_bytes": "memory"}


def supported(target: Target) -> str | None:
    """None if a search can measure on `target`, else why not."""
    if backend_for(target).searchable:
        return None
    return (
        f"a search measures every trial, so it needs a target it can reach from here: a microcontroller "
        f"profile (emulated or estimated) or host, not {target.name} ({target.reach})"
    )


def environment(target: Target) -> dict:
    """What the figures depend on besides the model (for the cache key and the stage's key)."""
    return {"target": dataclasses.asdict(target), **backend_for(target).environment(target, None)}


def needs(target: Target) -> list:
    """What measuring a search's trials on `target` needs from this machine (nothing, where it cannot)."""
    backend = backend_for(target)
    return backend.needs(target, None) if backend.searchable else []


def missing_figure(target: Target, figure: str) -> str | None:
    """Why `target` gives no flat `figure` (`latency_ms`, ...), or None when it gives it."""
    return backend_for(target).missing_figure(target, TAGGED[figure])


def measure(tflite: Path, target: Target, x_float: np.ndarray, *, macs: int, work: Path, env_key: str) -> dict:
    """The flat figures of int8 model `tflite` on `target` (`budget_values`). `x_float`: a few preprocessed
    validation images."""
    blob = tflite.read_bytes()
    key = hashlib.sha256(blob + env_key.encode()).hexdigest()[:24]
    cached = cache_dir("target-figures") / f"{key}.json"
    if cached.is_file():
        figures = json.loads(cached.read_text())
    else:
        figures = backend_for(target).search_figures(target, tflite, x_float, macs=macs, work=work)
        fsio.write_json(cached, figures)
    return budget_values(figures)


def budget_values(figures: dict) -> dict:
    """A target's tagged figures as the flat ones a search bounds and ranks: latency in ms, flash and RAM
    in bytes, the instruction count; `fits`, and the provenance they share (None when nothing ran)."""

    def value(name: str):
        return (figures.get(name) or {}).get("value")

    us = value("latency_p50_us")
    tags = [f["provenance"] for f in figures.values() if isinstance(f, dict) and "provenance" in f]
    flat = {
        "latency_ms": None if us is None else us / 1000,
        "instructions": value("instructions"),
        "flash_bytes": value("flash"),
        "ram_bytes": value("memory"),
        "fits": figures.get("fits"),
        "provenance": tags[0] if tags else None,
    }
    return flat | ({"why_not": figures["why_not"]} if "why_not" in figures else {})
