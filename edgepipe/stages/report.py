"""The report stage: accuracy against latency, FPS, size and memory for every variant, target by target.

Writes report.md (for people), report.json (rows for machines), pareto.png (accuracy against latency,
marker area by model size), report.html (all of it on one self-contained page, with training curves,
confusion matrices, the doctor's findings and misclassified samples; see report_html.py) and prints
the tables. Accuracy gates make the run fail when a deployable model loses more than a set number of
points against its float source.

The report leads with the targets: its title names those measured, and the first table is a target's
(a microcontroller's first, in its own units: latency in ms and FPS), then this host's, where every
bench also measures; the Pareto plot has a panel per target in that target's units, this host's last.

Two accuracies per model: `val accuracy`, on the data stage's validation split, is what the gates (and
every "most accurate" line) judge by; `test accuracy`, on the test split, is the final figure, reported and
never chosen on, so that it stays an unbiased estimate.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgepipe.core import fsio, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.stages.report_html import write_html
from edgepipe.stages.report_pareto import write_pareto
from edgepipe.stages.report_search import read_search, search_lines
from edgepipe.stages.report_tables import (
    TAG_LEGEND,
    capital,
    columns,
    devices_measured,
    figures_by_target,
    flat_row,
    joined,
    measured_targets,
    metric_of,
    table_row,
    target_tables,
    targets_notes,
    targets_table,
    task_table,
    text_table,
)
from edgepipe.targets.provenance import rows_by_name


@dataclasses.dataclass
class Gate:
    """A deployable model may lose at most `max_drop` validation accuracy points against `against`."""

    model: str = param("", "row name of the deployable model, e.g. student_qat/int8")
    against: str = param("", "row name of its float source, e.g. student/float32")
    max_drop: float = param(0.3, "largest allowed validation accuracy loss, in percentage points", min=0.0)


@dataclasses.dataclass
class ReportParams:
    """Parameters of the report stage."""

    title: str = param(
        "edgepipe report: {metric} vs latency on {targets}",
        "heading of report.md; {targets} becomes the targets measured, microcontrollers first "
        "(e.g. 'Cortex-M4 (emulated) and this host (x86_64, AMD EPYC)'), {metric} the task's "
        "headline metric (accuracy, F1)",
    )
    reference: str | None = param(None, "row the delta column is measured against (e.g. teacher/float32)")
    gates: list[Gate] = param([], "accuracy gates; the run fails if one is not met")


TARGETS, METRIC = "{targets}", "{metric}"  # in the title, replaced by the targets measured and the metric


def run_report_stage(params: ReportParams, io: StageIO) -> str:
    benches = [json.loads((Path(d) / "bench.json").read_text()) for d in io.inputs["benches"]]
    by_name = rows_by_name(benches)  # one row per model; each bench adds its target's figures to it
    rows = list(by_name.values())
    targets = figures_by_target(benches)
    for name in [params.reference] + [n for g in params.gates for n in (g.model, g.against)]:
        if name and name not in by_name:
            raise EdgepipeError(f"report: no benched model named '{name}'", f"use one of: {', '.join(by_name)}")
    ref = by_name[params.reference]["accuracy"] if params.reference else None
    table = [table_row(r, ref) for r in rows]
    gates = _gates(params.gates, by_name)
    provenance = benches[0]["provenance"] if benches else {}
    devices = devices_measured(benches)
    measured = measured_targets(benches, targets)
    metric = metric_of(benches)
    heading = params.title.replace(TARGETS, joined([m["label"] for m in measured])).replace(METRIC, metric["short"])
    report = {
        "title": heading,
        "reference": params.reference,
        "provenance": provenance,
        "devices": devices,
        "rows": [{**flat_row(r, ref), "targets": targets.get(r["name"], {})} for r in rows],
        "gates": gates,
        "targets": [b["target"]["name"] for b in benches if "target" in b],
        "measured_on": measured,
        "metric": metric,
    }
    classes = next((b.get("classes") for b in benches if b.get("classes")), None)
    int8_cost = int8_class_cost(rows, classes, {g.model: g.against for g in params.gates})
    report["int8_class_cost"] = int8_cost
    searches = [read_search(Path(d), io.out) for d in io.inputs.get("searches", [])]
    report["searches"] = [{k: v for k, v in x.items() if k != "png"} for x in searches]
    fsio.write_json(io.out / "report.json", report)
    target_table = targets_table(rows, targets, metric["short"])
    legend = " ".join([TAG_LEGEND + ".", *targets_notes(rows, targets)]) if target_table else TAG_LEGEND
    own = target_tables(rows, targets, measured, devices, metric["short"])
    tasks = task_table(rows, metric)
    host = capital(measured[-1]["label"])
    # a title without {targets} is kept as written; the line under it names them instead
    subtitle = None if TARGETS in params.title else f"Measured on {joined([m['label'] for m in measured])}."
    md = _markdown(
        heading, table, gates, provenance, int8_cost, target_table, own, host, subtitle, metric, tasks, legend
    )
    fsio.write_text(io.out / "report.md", md + "".join("\n" + "\n".join(search_lines(x)) + "\n" for x in searches))
    write_pareto(rows, targets, measured, io.out / "pareto.png", metric["short"])
    write_html(
        io.out / "report.html",
        heading,
        table,
        columns(metric["short"]),
        gates,
        rows,
        benches,
        upstream=io.upstream,
        pareto=io.out / "pareto.png",
        provenance=provenance,
        deployable=params.gates[0].model if params.gates else None,
        int8_cost=int8_cost,
        target_table=target_table,
        legend=legend,
        target_tables=own,
        host_heading=host,
        subtitle=subtitle,
        searches=[(f"Search {x['stage']} on {x['target']}", search_lines(x)[2:], x["png"]) for x in searches],
        metric=metric,
        task_table=tasks,
    )
    _print(table, target_table, own, host, metric["short"], tasks, legend)
    failed = [g for g in gates if not g["passed"]]
    if failed:
        g = failed[0]
        raise EdgepipeError(
            f"{metric['short']} gate failed: {g['model']} loses {g['drop_points']:.2f} validation points "
            f"against {g['against']} (allowed {g['max_drop']})",
            "train longer, use QAT, or relax the gate's max_drop",
        )
    return f"{len(rows)} variants; gates {'passed' if gates else 'none'}"


def _gates(gates: list[Gate], by_name: dict[str, dict]) -> list[dict]:
    """Each gate's validation accuracy drop, in points, and whether it passed (the test split is not
    looked at: a gate is a choice, and the test figure must stay unbiased)."""
    out = []
    for g in gates:
        for name in (g.model, g.against):
            if by_name[name].get("val_accuracy") is None:
                raise EdgepipeError(
                    f"report: gate on '{name}', which has no validation accuracy (its bench "
                    "measured no validation images)",
                    "rerun its bench stage on a data stage with a validation split (val_fraction)",
                )
        drop = 100 * (by_name[g.against]["val_accuracy"] - by_name[g.model]["val_accuracy"])
        out.append(
            {
                "model": g.model,
                "against": g.against,
                "split": "val",
                "drop_points": drop,
                "max_drop": g.max_drop,
                "passed": drop <= g.max_drop,
            }
        )
    return out


def _print(
    table: list[list[str]],
    target_table: list[list[str]],
    own: list[dict],
    host: str,
    short: str = "accuracy",
    tasks: list[list[str]] = (),
    legend: str = TAG_LEGEND,
) -> None:
    """Each target's own table, this host's results table, the task's other metrics, and every target side by
    side when there are any."""
    for t in own:
        ui.say(t["label"])
        for line in text_table(t["table"][1:], t["table"][0]):
            ui.say(line)
        for note in t["notes"]:
            ui.say("  " + note)
        ui.say("")
    if own:
        ui.say(host)
    for line in text_table(table, columns(short)):
        ui.say(line)
    if tasks:
        ui.say("")
        for line in text_table(tasks[1:], tasks[0]):
            ui.say(line)
    if target_table:
        ui.say("")
        for line in text_table(target_table[1:], target_table[0]):
            ui.say(line)
        ui.say("  " + legend)


def int8_class_cost(rows: list[dict], classes: list[str] | None, pairs: dict[str, str] | None = None) -> list[dict]:
    """For each int8 model with a float32 source: overall and per-class accuracy lost, worst first.

    The source is the same stage's float32 model, or the one `pairs` names (a gate's `against`, which
    is how a QAT model, whose stage has no float32 export, meets its float source).
    """
    by_name = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        float_row = by_name.get((pairs or {}).get(r["name"], f"{r['name'].split('/')[0]}/float32"))
        if r["variant"] != "int8" or not float_row or not r.get("per_class_accuracy"):
            continue
        drops = sorted(
            (
                (100 * (f - q), classes[c] if classes else str(c))
                for c, (f, q) in enumerate(zip(float_row["per_class_accuracy"], r["per_class_accuracy"]))
                if f is not None
            ),
            reverse=True,
        )
        out.append(
            {
                "model": r["name"],
                "against": float_row["name"],
                "points_lost": 100 * (float_row["accuracy"] - r["accuracy"]),
                "classes": [{"class": c, "points_lost": d} for d, c in drops],
            }
        )
    return out


def _markdown(
    heading: str,
    table,
    gates,
    provenance,
    int8_cost,
    target_table=(),
    own=(),
    host="This host",
    subtitle=None,
    metric=None,
    tasks=(),
    legend=TAG_LEGEND + ".",
) -> str:
    """The heading, each target's own table, this host's results table, gates, int8's cost per class, and
    every target side by side."""
    lines = [f"# {heading}", ""] + ([subtitle, ""] if subtitle else [])
    for t in own:
        lines += [f"## {t['label']}", "", "| " + " | ".join(t["table"][0]) + " |", "|" + "---|" * len(t["table"][0])]
        lines += ["| " + " | ".join(r) + " |" for r in t["table"][1:]]
        lines += [""] + [f"- {note}" for note in t["notes"]] + [""]
    if own:
        lines += [f"## {host}", ""]
    metric = metric or {"short": "accuracy", "label": "accuracy"}
    head = columns(metric["short"])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    what = "Accuracy" if metric["short"] == "accuracy" else f"{metric['short']}, {metric['label']},"
    lines += [
        "",
        f"{what} is measured by running each exported `.tflite` in the LiteRT interpreter: val "
        f"{metric['short']} on the data stage's validation split (what the gates judge by), test {metric['short']} "
        "on the full test split "
        "(the final figure, never chosen on); delta = test points against the reference; latency is single-image invoke time after warm-up (p50/p99), 1T = one thread, "
        "all = every core; arena = smallest TFLite Micro tensor arena in which the int8 model runs.",
        "",
    ]
    for g in gates:
        lines.append(
            f"- gate {'PASSED' if g['passed'] else 'FAILED'}: {g['model']} loses {g['drop_points']:.2f} "
            f"validation points against {g['against']} (allowed {g['max_drop']})"
        )
    if tasks:
        lines += [
            "",
            f"Every {metric['short']} figure and these are the task's metrics on the test split (their "
            "thresholds: the bench's `task_metrics` definitions):",
            "",
            "| " + " | ".join(tasks[0]) + " |",
            "|" + "---|" * len(tasks[0]),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in tasks[1:]]
    if int8_cost:
        lines += ["", "Classes int8 hurt most (accuracy points lost against the same stage's float32 model):", ""]
        for c in int8_cost:
            worst = ", ".join(f"{x['class']} {x['points_lost']:+.2f}" for x in c["classes"][:3])
            lines.append(f"- {c['model']} ({c['points_lost']:+.2f} overall): {worst}")
    if target_table:
        lines += [
            "",
            "## Every target side by side",
            "",
            "Each figure tagged with where it comes from:",
            "",
            "| " + " | ".join(target_table[0]) + " |",
            "|" + "---|" * len(target_table[0]),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in target_table[1:]]
        lines += ["", legend]
    if provenance:
        lines += ["", "Measured on: " + ", ".join(f"{k} {v}" for k, v in provenance.items() if v is not None)]
    return "\n".join(lines) + "\n"


KIND = StageKind(
    name="report",
    params=ReportParams,
    run=run_report_stage,
    inputs={"benches": True, "searches": True},
    light=True,
    output="report",
    accepts={"benches": ("bench",), "searches": ("model",)},
    optional_inputs=("searches",),
    main_output="report.md",
    reads_upstream=True,
    resets_keras=False,
    doc="accuracy vs latency/FPS, size and memory table, Pareto plot, accuracy gates",
)
