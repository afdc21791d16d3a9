"""history.csv: one row per training epoch, as Keras' CSVLogger writes it and the doctor and plots read it."""

from __future__ import annotations

import csv
from pathlib import Path

from edgepipe.core import fsio


def read_history(path: Path) -> list[dict]:
    """The rows of a history.csv, one per epoch (a resumed run's repeated epochs keep their last row)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_epoch: dict[str, dict] = {}
    for r in rows:  # a resumed run may log an epoch twice: keep the last
        if r.get("epoch") not in (None, "", "epoch"):
            by_epoch[r["epoch"]] = r
    return [by_epoch[k] for k in sorted(by_epoch, key=int)]


def write_history(rows: list[dict], dest: Path) -> None:
    """Write history rows as CSV, atomically; the columns are the union of the rows' keys."""
    if not rows:
        fsio.write_text(dest, "")
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(fields)] + [",".join(str(r.get(f, "")) for f in fields) for r in rows]
    fsio.write_text(dest, "\n".join(lines) + "\n")
