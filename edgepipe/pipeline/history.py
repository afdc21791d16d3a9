"""Run history: one JSON line per `edgepipe run` in `runs/R/history.jsonl`, listed and compared.

Each record holds when the run was, how the recipe was given (profile, overrides), every stage's
resolved params and key, what happened to each stage, the headline figures of every report row (and of
every training stage), and the machine. A record is appended as one `write` of a whole line to a file
opened with O_APPEND, so concurrent writers (two recipes never share the file; a record is written under
the run folder's lock anyway) cannot interleave, and a run killed mid-write leaves at most a torn last
line, which reading skips.

The history is a file anything can damage, so each line is read through
`edgepipe.pipeline.schema.history_record`: one that is not a record edgepipe wrote (a time that is a
number, no metrics, a torn line in the middle) keeps its number but is a damaged record, shown as one
line by `edgepipe runs` and refused in one line by `edgepipe compare`; the rest stay usable.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import to_dict
from edgepipe.pipeline import schema
from edgepipe.pipeline.keys import changed_keys
from edgepipe.pipeline.recipe import Recipe

try:
    import fcntl
except ImportError:  # Windows, or a Python built without it: appends are then not serialised across processes
    fcntl = None

FILE = "history.jsonl"
HEADLINE = schema.HEADLINE  # the report row fields a record keeps (validation figures first)


def record(
    recipe: Recipe, run_dir: Path, results: list, command: str, keys: dict[str, str], error: str | None = None
) -> dict:
    """The record of one run: `results` are the runner's `Result`s, `keys` each stage's cache key."""
    actions = {r.stage: r.action for r in results}
    metrics: dict = {"reports": {}, "models": {}}
    for name, stage in recipe.stages.items():
        if actions.get(name) not in ("ran", "restored", "skipped"):
            continue
        out = run_dir / name
        if stage.kind.name == "report" and (out / "report.json").is_file():
            report = _json(out / "report.json")
            metrics["reports"][name] = {
                "rows": [
                    {"name": r.get("name"), **{k: r[k] for k in HEADLINE if k in r}} for r in report.get("rows", [])
                ],
                "gates": [
                    {k: g.get(k) for k in ("model", "against", "drop_points", "passed")}
                    for g in report.get("gates", [])
                ],
            }
        elif (out / "metrics.json").is_file():
            m = _json(out / "metrics.json")
            figures = {
                "val_accuracy": (m.get("val") or {}).get("accuracy"),
                "test_accuracy": (m.get("test") or {}).get("accuracy"),
            }
            if any(v is not None for v in figures.values()):
                metrics["models"][name] = figures
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "recipe": recipe.name,
        "recipe_path": str(recipe.path),
        "command": command,
        "profile": recipe.profile,
        "overrides": list(recipe.overrides),
        "status": "failed" if error else "ok",
        "error": error,
        "params": {name: to_dict(s.params) for name, s in recipe.stages.items()},
        "keys": keys,
        "stages": [
            {"stage": r.stage, "action": r.action, "reason": r.reason, "seconds": round(r.seconds, 2)} for r in results
        ],
        "metrics": metrics,
        "machine": machine(),
    }


def machine() -> dict:
    """Where the run happened: enough to tell two hosts (and two Pythons) apart."""
    import importlib.metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "edgepipe": importlib.metadata.version("edgepipe"),
    }


def append(run_dir: Path, rec: dict) -> int:
    """Append `rec` to the history as one line; return its number (1 for the first)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(rec, sort_keys=False, default=str) + "\n").encode()
    fd = os.open(run_dir / FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:  # so that no other append is half-way through while the end is read
            fcntl.flock(fd, fcntl.LOCK_EX)
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":  # a torn last line: end it, or this record would join it
            line = b"\n" + line
        written = os.write(fd, line)
        while written < len(line):  # a regular file takes it whole; this is for the file system that does not
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(read(run_dir))


def read(run_dir: Path) -> list[dict]:
    """Every record, numbered from 1 (`number`), as `schema.history_record` returns it; a line that is not
    one is `{"number": n, "damaged": why}`. A torn last line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append({**schema.history_record(json.loads(line)), "number": n})
        except schema.Damaged as e:
            out.append({"number": n, "damaged": str(e)})
        except ValueError:
            out.append({"number": n, "damaged": "not JSON (a torn or foreign line)"})
    return out


def pick(records: list[dict], which: str, recipe: str) -> dict:
    """Record `which` (a number, or `last`: the last undamaged one) of `records`, or one error line saying
    which exist."""
    if not records:
        raise EdgepipeError(
            f"{recipe} has no run history yet (runs/{recipe}/{FILE})", f"run `edgepipe run {recipe}` first", exit_code=2
        )
    if which == "last":
        usable = [r for r in records if "damaged" not in r]
        if not usable:
            raise EdgepipeError(
                f"{recipe}: every run record is damaged (runs/{recipe}/{FILE})",
                f"run `edgepipe run {recipe}` to record a new one",
                exit_code=2,
            )
        return usable[-1]
    try:
        n = int(which)
    except ValueError:
        n = None
    if n is None or not 1 <= n <= len(records):
        raise EdgepipeError(
            f"{recipe}: no run record {which!r} (there {'is' if len(records) == 1 else 'are'} {len(records)})",
            f"use a number from 1 to {len(records)}, or last (`edgepipe runs {recipe}` lists them)",
            exit_code=2,
        )
    if "damaged" in records[n - 1]:
        raise EdgepipeError(
            f"{recipe}: run record {n} is damaged ({records[n - 1]['damaged']})",
            f"compare other records (`edgepipe runs {recipe}` lists them)",
            exit_code=2,
        )
    return records[n - 1]


def changes(old: dict | None, new: dict) -> str:
    """What changed from record `old` to `new`, in one short phrase."""
    if old is None:
        return "first run"
    keys = changed_keys(old["params"], new["params"])
    stages = set(old["params"]) ^ set(new["params"])
    parts = [k for k in keys if k.split(".")[0] not in stages][:3] + [
        f"stage {s} {'added' if s in new['params'] else 'removed'}" for s in sorted(stages)
    ]
    if len(keys) > 3:
        parts.append(f"{len(keys) - 3} more")
    if not parts:
        ran = [s["stage"] for s in new.get("stages", []) if s["action"] == "ran"]
        return f"params unchanged; reran {', '.join(ran)}" if ran else "params unchanged"
    return "; ".join(parts)


def headline(rec: dict) -> str:
    """The record's headline figure: the deployable model's accuracy (the first gate's model) of the
    first report, else the last training stage's validation and test accuracy."""
    for report in rec.get("metrics", {}).get("reports", {}).values():
        rows = {r["name"]: r for r in report.get("rows", [])}
        gates = report.get("gates") or []
        name = gates[0]["model"] if gates and gates[0].get("model") in rows else next(iter(rows), None)
        if name is not None and rows[name].get("accuracy") is not None:
            return f"{name} {100 * rows[name]['accuracy']:.2f} %"
    models = rec.get("metrics", {}).get("models", {})
    if models:
        name, m = list(models.items())[-1]
        return f"{name} val {_pct(m.get('val_accuracy'))} test {_pct(m.get('test_accuracy'))}"
    return "-" if rec.get("status") == "ok" else "failed"


def listing(records: list[dict]) -> list[str]:
    """`edgepipe runs`: one line per record, oldest first; a damaged record says so, and what changed is
    told against the last undamaged record before it."""
    heads = {rec["number"]: headline(rec) for rec in records if "damaged" not in rec}
    width = max([len("headline"), *map(len, heads.values())])
    lines = [f"{'#':>3}  {'date (UTC)':<16}  {'status':<6}  {'headline':<{width}}  changed vs previous"]
    previous = None
    for rec in records:
        if "damaged" in rec:
            lines.append(f"{rec['number']:>3}  damaged record, skipped: {rec['damaged']}")
            continue
        lines.append(
            f"{rec['number']:>3}  {_date(rec):<16}  {rec['status']:<6}  {heads[rec['number']]:<{width}}  "
            f"{changes(previous, rec)}"
        )
        previous = rec
    return lines


LABELS = {
    "accuracy": "test accuracy",
    "val_accuracy": "val accuracy",
    "test_accuracy": "test accuracy",
    "size_bytes": "size",
    "latency_p50_us": "p50 1T",
    "arena_bytes": "arena",
}
# compare prints validation before test: the figure a choice is made on, then the final one
_COMPARED = ("val_accuracy", "accuracy", "test_accuracy", "size_bytes", "latency_p50_us", "arena_bytes")


def comparison(a: dict, b: dict) -> list[str]:
    """`edgepipe compare`: the params that differ, then every figure side by side, with the change."""
    na, nb = f"#{a['number']}", f"#{b['number']}"

    def row(label: str, x: str, y: str, change: str = "") -> str:
        return f"  {label:<38}{x:>18}{y:>18}  {change}".rstrip()

    lines = [row("", na, nb), row("date (UTC)", _date(a), _date(b))]
    diffs = _flat_diff(a["params"], b["params"])
    lines.append("params that differ:" if diffs else "params: identical")
    lines += [row(k, _short(x), _short(y)) for k, x, y in diffs]
    for report in sorted(set(a["metrics"]["reports"]) | set(b["metrics"]["reports"])):
        ra = {r["name"]: r for r in a["metrics"]["reports"].get(report, {}).get("rows", [])}
        rb = {r["name"]: r for r in b["metrics"]["reports"].get(report, {}).get("rows", [])}
        lines.append(f"report rows (stage {report}):")
        for name in list(dict.fromkeys([*ra, *rb])):
            x, y = ra.get(name) or {}, rb.get(name) or {}
            for i, field in enumerate(f for f in _COMPARED if f in x or f in y):
                label = f"{name if i == 0 else '':<24}{LABELS[field]:<14}"
                lines.append(
                    row(
                        label,
                        _figure(field, x.get(field)),
                        _figure(field, y.get(field)),
                        _change(field, x.get(field), y.get(field)),
                    )
                )
    models = list(dict.fromkeys([*a["metrics"]["models"], *b["metrics"]["models"]]))
    if models:
        lines.append("training stages:")
        for name in models:
            x, y = a["metrics"]["models"].get(name) or {}, b["metrics"]["models"].get(name) or {}
            for i, field in enumerate(("val_accuracy", "test_accuracy")):
                label = f"{name if i == 0 else '':<24}{LABELS[field]:<14}"
                lines.append(
                    row(label, _pct(x.get(field)), _pct(y.get(field)), _change(field, x.get(field), y.get(field)))
                )
    return lines


def _date(rec: dict) -> str:
    return rec.get("time", "?").replace("T", " ")[:16]


def _change(field: str, x, y) -> str:
    if not isinstance(x, (int, float)) or not isinstance(y, (int, float)) or x == y:
        return ""
    if field.endswith("accuracy"):
        return f"{100 * (y - x):+.2f} points"
    return f"{100 * (y - x) / x:+.0f} %" if x else ""


def _flat_diff(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for k in list(dict.fromkeys([*a, *b])):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _flat_diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append((f"{prefix}{k}", x, y))
    return out


def _figure(field: str, v) -> str:
    if v is None:
        return "-"
    if field.endswith("accuracy"):
        return _pct(v)
    if field.endswith("bytes"):
        return f"{v / 1024:.1f} KB"
    if field.endswith("_us"):
        return f"{v:.0f} us"
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def _short(v) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 15 else text[:14] + "…"


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
