"""The lock file `runs/R/lock.json`: each stage's key (`edgepipe.pipeline.keys`), the parts it hashes,
and the outputs it produced, with their hashes.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgepipe.core import fsio, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.pipeline import schema
from edgepipe.pipeline.recipe import Recipe

LOCK_VERSION = 1


class Lock:
    """The lock file of one recipe's run folder, read once and rewritten after every finished stage."""

    def __init__(self, path: Path, recipe: Recipe):
        self.path = Path(path)
        self.recipe = recipe
        self.stages: dict[str, dict] = self._read()

    def entry(self, name: str) -> dict | None:
        return self.stages.get(name)

    def record(self, name: str, key: str, parts: dict, records: dict[str, dict]) -> None:
        """Record a finished stage's key and outputs, and write the lock file (atomically)."""
        self.stages[name] = {"key": key, "parts": parts, "digest": fsio.digest_of(records), "outputs": records}
        # Keep only stages of this recipe so a renamed stage does not linger in the lock forever.
        kept = {k: v for k, v in self.stages.items() if k in self.recipe.stages}
        fsio.write_json(self.path, {"version": LOCK_VERSION, "recipe": str(self.recipe.path), "stages": kept})

    def _read(self) -> dict[str, dict]:
        if self.path.exists() and not self.path.is_file():  # refused before a stage runs: it could never be written
            raise EdgepipeError(
                f"{self.path} is not a file (a folder or a device), so the run's lock file cannot be written there",
                f"remove it (rm -r '{self.path}'); every stage then reruns",
            )
        if not self.path.is_file():
            return {}
        try:
            lock = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            ui.warn(f"{self.path} is unreadable; every stage will rerun")
            return {}
        if not isinstance(lock, dict) or lock.get("version") != LOCK_VERSION:
            return {}
        stages = lock.get("stages") or {}
        if not isinstance(stages, dict) or not all(_well_formed(e) for e in stages.values()):
            ui.warn(f"{self.path} is not a lock file edgepipe wrote; every stage will rerun")
            return {}
        return stages


def _well_formed(entry) -> bool:
    """A lock entry as `Lock.record` writes it (a hand-edited or foreign file is treated as unreadable): its
    output paths inside the stage's folder, as the run cache needs them (`edgepipe.pipeline.schema`)."""
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and isinstance(entry.get("digest"), str)
        and isinstance(entry.get("parts", {}), dict)
    ):
        return False
    try:
        schema.file_records(entry.get("outputs"))
    except schema.Damaged:
        return False
    return True
