"""The report's section on each search stage: its summary and front read, its picture copied beside the report.

Kept apart from the stage, as the tables are, so the results page (`tools/results_page.py`) prints a search
exactly as the report does.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.search.front import figure_text
from edgepipe.stages.report_tables import short


def read_search(stage_dir: Path, out: Path) -> dict:
    """A search stage's summary and front, its picture copied beside the report as search_<stage>.png."""
    summary = stage_dir / "search.json"
    if not summary.is_file():
        raise EdgepipeError(
            f"report: stage '{stage_dir.name}' given as a search has no search.json",
            "list search stages under searches, benches under benches",
        )
    png = out / f"search_{stage_dir.name}.png"
    if (stage_dir / "pareto.png").is_file():
        fsio.copy_file(stage_dir / "pareto.png", png)
    return {
        "stage": stage_dir.name,
        **json.loads(summary.read_text()),
        "front": json.loads((stage_dir / "front.json").read_text()),
        "png": png,
    }


def search_lines(s: dict) -> list[str]:
    """The report's section on one search: trials, budgets, the choice, distillation, the front."""
    t = s["trials"]
    budgets = ", ".join(
        f"{k} {'>=' if k == 'val_accuracy' else '<='} {figure_text(k, v)}" for k, v in s["budgets"].items()
    )
    ref = s.get("reference")
    lines = [
        f"## Search `{s['stage']}` on {s['target']}",
        "",
        f"{sum(t.values())} trials: {t['complete']} trained to the end, {t['pruned']} pruned, {t['over budget']} "
        f"over budget before training, {t['failed']} failed; budgets: {budgets or 'none'}"
        + (
            f" (reference {ref['file']}: {figure_text('latency_ms', ref.get('latency_ms'))}, flash "
            f"{figure_text('flash_bytes', ref.get('flash_bytes'))}, RAM {figure_text('ram_bytes', ref.get('ram_bytes'))})"
            if ref
            else ""
        )
        + ".",
    ]
    c = s["chosen"]
    chosen_values = ", ".join(f"{k}={short(v)}" for k, v in c["values"].items())
    lines += [
        "",
        f"Chosen: trial {c['trial']}, validation int8 accuracy {figure_text('val_accuracy', c['val_accuracy'])}, "
        f"{figure_text('latency_ms', c.get('latency_ms'))}, flash {figure_text('flash_bytes', c.get('flash_bytes'))}, RAM "
        f"{figure_text('ram_bytes', c.get('ram_bytes'))} ({c.get('provenance')}): {chosen_values}.",
    ]
    d = s.get("distillation")
    if d:
        lines += [
            "",
            f"Distillation for this configuration ({d['epochs']} epochs, int8, validation): with the teacher "
            f"{figure_text('val_accuracy', d['with_teacher'])}, without {figure_text('val_accuracy', d['without_teacher'])}: "
            f"{'paid' if d['paid'] else 'did not pay'} ({d['distillation_gain_points']:+.2f} points).",
        ]
    lines += [
        "",
        "The feasible front (no other trial is both more accurate and cheaper on the target):",
        "",
        "| trial | val int8 | latency | instructions | flash | RAM | values |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["front"]:
        values = ", ".join(f"{k}={short(v)}" for k, v in r.get("values", {}).items())
        lines.append(
            f"| {r['trial']} | {figure_text('val_accuracy', r.get('val_accuracy'))} | "
            f"{figure_text('latency_ms', r.get('latency_ms'))} | {figure_text('instructions', r.get('instructions'))} | "
            f"{figure_text('flash_bytes', r.get('flash_bytes'))} | {figure_text('ram_bytes', r.get('ram_bytes'))} | "
            f"{values} |"
        )
    lines += ["", f"![search front](search_{s['stage']}.png)"]
    return lines
