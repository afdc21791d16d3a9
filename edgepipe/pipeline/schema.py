"""What a run's stored state must look like to be trusted: one small validating function per record type.

The run cache's manifests, the lock file's output records and the run history are files any crash, disk
fault, sync tool or person can damage. Their readers pass what they read through these functions and
treat anything that fails as a miss (the cache, the lock) or as a damaged record (the history), never
as an instruction: a path in a manifest names a file inside a stage's output folder or nothing.
Each function returns the value as its readers may use it, or raises `Damaged` saying what is wrong.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath

HEX64 = re.compile(r"^[0-9a-f]{64}$")  # a SHA-256 digest: a cache key, an object's name
LATEST = 2**34  # epoch seconds (year 2514): a later time is damage, and `time.gmtime` would overflow
HEADLINE = ("accuracy", "val_accuracy", "test_accuracy", "size_bytes", "latency_p50_us", "arena_bytes")


class Damaged(ValueError):
    """A stored record that is not what edgepipe writes; the message says what is wrong with it."""


def file_records(files: object) -> dict[str, dict]:
    """A stage's output files as the lock and the cache record them: relative path -> {sha256, size,
    mtime_ns}. A path must stay inside the output folder (relative, no `..` or `.`, no empty part), and
    no file may be another's folder."""
    if not isinstance(files, dict):
        raise Damaged(f"files is {_kind(files)}, not a mapping")
    for rel, rec in files.items():
        relative_file(rel)
        if not isinstance(rec, dict):
            raise Damaged(f"the record of {rel!r} is {_kind(rec)}, not a mapping")
        if not isinstance(rec.get("sha256"), str) or not HEX64.match(rec["sha256"]):
            raise Damaged(f"the sha256 of {rel!r} is not a SHA-256 digest")
        if not _int(rec.get("size")) or rec["size"] < 0 or not _int(rec.get("mtime_ns")):
            raise Damaged(f"the size or mtime_ns of {rel!r} is not a whole number")
    folders = {str(p) for rel in files for p in PurePosixPath(rel).parents} - {"."}
    if clash := sorted(folders & set(files)):
        raise Damaged(f"{clash[0]!r} is both a file and a folder")
    return files


def relative_file(rel: object) -> str:
    """`rel` if it names a file inside a folder (POSIX, relative, no `..`, `.` or empty part), else Damaged."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or len(rel) > 4096:
        raise Damaged(f"{_show(rel)} is not a file name")
    if rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
        raise Damaged(f"{_show(rel)} points outside the stage's output folder")
    return rel


def manifest(data: object, key: str) -> dict:
    """A run cache entry's manifest (`runs/R/.cache/<key>/manifest.json`): the fields of
    `edgepipe.pipeline.runcache.Entry`, its key the name of the folder it is in."""
    if not isinstance(data, dict):
        raise Damaged(f"the manifest is {_kind(data)}, not a mapping")
    if data.get("key") != key:
        raise Damaged(f"its key {_show(data.get('key'))} is not the name of its folder")
    if not isinstance(data.get("stage"), str) or not isinstance(data.get("summary", ""), str):
        raise Damaged("its stage or summary is not text")
    for field in ("created", "used"):
        if not _number(data.get(field)) or not 0 <= data[field] < LATEST:
            raise Damaged(f"its {field} time {_show(data.get(field))} is not a time")
    if not _number(data.get("seconds")) or not 0 <= data["seconds"] < LATEST:
        raise Damaged(f"its seconds {_show(data.get('seconds'))} is not a duration")
    fields = ("key", "stage", "created", "used", "seconds", "summary")
    return {**{f: data[f] for f in fields if f in data}, "files": file_records(data.get("files"))}


def history_record(rec: object) -> dict:
    """One run history record (`runs/R/history.jsonl`), with the parts its readers index filled in:
    `status` ("?"), `stages` ([]), `metrics.reports` and `metrics.models` ({}), a report's `rows` and `gates`."""
    if not isinstance(rec, dict):
        raise Damaged(f"it is {_kind(rec)}, not a record")
    if not isinstance(rec.get("time"), str):
        raise Damaged(f"its time is {_kind(rec.get('time'))}, not a date")
    status = rec.get("status", "?")
    if not isinstance(status, str):
        raise Damaged(f"its status is {_kind(status)}, not text")
    params = rec.get("params")
    if not isinstance(params, dict):
        raise Damaged(f"its params are {_kind(params)}, not a mapping")
    stages = rec.get("stages", [])
    if not isinstance(stages, list) or not all(
        isinstance(s, dict) and isinstance(s.get("stage"), str) and isinstance(s.get("action"), str) for s in stages
    ):
        raise Damaged("its stages are not a list of {stage, action}")
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict):
        raise Damaged(f"its metrics are {_kind(metrics)}, not a mapping")
    reports, models = metrics.get("reports", {}), metrics.get("models", {})
    if not isinstance(reports, dict) or not isinstance(models, dict):
        raise Damaged("its metrics.reports or metrics.models is not a mapping")
    checked = {name: _report(name, r) for name, r in reports.items()}
    for name, m in models.items():
        if not isinstance(m, dict) or not all(_figure(m.get(f)) for f in ("val_accuracy", "test_accuracy")):
            raise Damaged(f"the figures of training stage {_show(name)} are not numbers")
    return {**rec, "status": status, "stages": stages, "metrics": {**metrics, "reports": checked, "models": models}}


def _report(name: str, report: object) -> dict:
    if not isinstance(report, dict):
        raise Damaged(f"report {_show(name)} is {_kind(report)}, not a mapping")
    rows, gates = report.get("rows", []), report.get("gates", [])
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("name"), str) and all(_figure(r.get(f)) for f in HEADLINE)
        for r in rows
    ):
        raise Damaged(f"the rows of report {_show(name)} are not named rows of numbers")
    if not isinstance(gates, list) or not all(
        isinstance(g, dict) and isinstance(g.get("model"), (str, type(None))) for g in gates
    ):
        raise Damaged(f"the gates of report {_show(name)} are not a list of gates")
    return {**report, "rows": rows, "gates": gates}


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _figure(v: object) -> bool:
    """A measured figure: None, or any number, NaN included (json writes a diverged model's NaN as NaN)."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _kind(v: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number"}
    return "missing" if v is None else names.get(type(v), type(v).__name__)


def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
