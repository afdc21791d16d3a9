"""Write docs/results.md, the one page of measured figures, from the recipes' report.json files.

    .venv/bin/python tools/results_page.py                    # every runs/<recipe>/<stage>/report.json
    .venv/bin/python tools/results_page.py runs/mnist_student runs/mnist_search/report/report.json

The page is stamped once, at the top: the date and time (UTC) it was written, the git commit of the
checkout (marked when it has uncommitted changes) and the machine (`edgepipe.pipeline.history.machine`,
as the run history records it). Then, per recipe, the report's rows in the report's own formatting
(`edgepipe.stages.report`), so the figures and their provenance tags read as the run printed them. Run it
on the machine and checkout that ran the recipes, right after the runs: a report whose figures were
measured on another CPU is refused, since one stamp cannot describe it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python tools/results_page.py"


class ResultsError(Exception):
    """One line for the user: what is wrong and how to fix it."""


def find_reports(paths: tuple[Path, ...], root: Path) -> list[Path]:
    """report.json files: those named, those in the run folders named, or every one under root/runs."""
    if not paths:
        return sorted((root / "runs").glob("*/*/report.json"))
    found = []
    for p in paths:
        if p.is_file():
            found.append(p)
        elif p.is_dir() and sorted(p.glob("*/report.json")):
            found += sorted(p.glob("*/report.json"))
        else:
            raise ResultsError(
                f"{p}: neither a report.json nor a run folder holding <stage>/report.json; fix: run "
                "the recipe first (make recipe=NAME), or name runs/<recipe>"
            )
    return found


def stamp(root: Path, host: dict) -> str:
    """The page's one stamp: when, which commit, on what."""
    commit = _git(root, "rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs/results.md")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"Written {when} from commit `{commit}`{' with uncommitted changes' if dirty else ''}, on "
        f"{host['cpu']} ({host['cores']} cores), {host['os']}, Python {host['python']}, "
        f"edgepipe {host['edgepipe']}."
    )


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def recipe_section(path: Path, report: dict, host: dict) -> list[str]:
    """A recipe's figures as its report prints them: each target's own table first (a microcontroller's,
    with its tags), then this host's results table, the devices, the gates and any search."""
    from edgepipe.stages.report_search import search_lines
    from edgepipe.stages.report_tables import ACCURACY, columns, row_cells, target_tables, task_table

    recipe, stage = path.parent.parent.name, path.parent.name
    measured_on = report.get("provenance") or {}
    if measured_on.get("target", "host") == "host" and measured_on.get("cpu") not in (None, host["cpu"]):
        raise ResultsError(
            f"{path}: measured on {measured_on['cpu']}, but this page is stamped {host['cpu']}; fix: "
            "write the page on the machine that ran the recipe"
        )
    rows = report.get("rows") or []
    runtimes = ", ".join(
        f"{k} {v}"
        for k, v in measured_on.items()
        if k not in ("target", "cpu", "cores", "machine", "python") and v is not None
    )
    lines = [
        f"## {recipe}" + ("" if stage == "report" else f" (stage {stage})"),
        "",
        f'From `runs/{recipe}/{stage}/report.json`, the report "{report.get("title", "")}"'
        + (f"; runtimes {runtimes}." if runtimes else "."),
    ]
    devices = report.get("devices") or {}
    measured = report.get("measured_on") or []
    targets = {r["name"]: r.get("targets") or {} for r in rows}
    metric = report.get("metric") or ACCURACY  # a detector's F1, a classifier's accuracy
    head = columns(metric["short"])
    for own in target_tables(rows, targets, measured, devices, metric["short"]):
        lines += [
            "",
            f"### {own['label']}",
            "",
            "| " + " | ".join(own["table"][0]) + " |",
            "|" + "---|" * len(own["table"][0]),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in own["table"][1:]]
        lines += ["", *(f"- {note}" for note in own["notes"])]
    lines += [
        "",
        "### This host (the machine stamped above)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    tasks = task_table(rows, metric)  # the task's other metrics (a detector's precision, recall, mAP)
    if tasks:
        lines += ["", "| " + " | ".join(tasks[0]) + " |", "|" + "---|" * len(tasks[0])]
        lines += ["| " + " | ".join(r) + " |" for r in tasks[1:]]
    gates = report.get("gates") or []
    if devices or gates:
        lines.append("")
    lines += [f"- {name}: {text}" for name, text in devices.items()]
    lines += [
        f"- gate {'PASSED' if g['passed'] else 'FAILED'}: {g['model']} loses {g['drop_points']:.2f} validation "
        f"points against {g['against']} (allowed {g['max_drop']})"
        for g in gates
    ]
    for s in report.get("searches") or []:
        body = [line for line in search_lines(s) if not line.startswith("![")]  # its picture stays in the run
        lines += ["", "#" + body[0], *body[1:]]
    return lines


def page(paths: list[Path], root: Path) -> str:
    from edgepipe.pipeline.history import machine

    host = machine()
    sections = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ResultsError(f"{path}: not a readable report.json ({e}); fix: rerun the recipe's report stage")
        if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
            raise ResultsError(f"{path}: has no rows; fix: name a report stage's report.json")
        sections += ["", *recipe_section(path, report, host)]
    head = [
        "# Results",
        "",
        "<!-- Written by tools/results_page.py from the runs' report.json files; edit the script, not this page. -->",
        "",
        stamp(root, host),
        "",
        "The figures the shipped recipes measured, copied from each recipe's `report.json` and formatted as its "
        "report prints them. Accuracies (a detector's F1) are from the `.tflite` files (`val accuracy` on the validation split, "
        "what the gates judge; `test accuracy` on the test split, the final figure: see "
        "[Validation and test](recipes.md#validation-and-test-which-figure-is-which)); `delta` is test points "
        "against the report's reference; latency is single-image invoke time after warm-up at one thread (1T) "
        "and at every core (all); arena is the smallest TFLite Micro tensor arena the int8 model runs in.",
        "",
        "This page is never edited by hand. After running the recipes, regenerate it with",
        "",
        "```sh",
        f"{COMMAND}          # every runs/<recipe>/<stage>/report.json; or name runs/<recipe> folders",
        "```",
    ]
    return "\n".join(head + sections) + "\n"


@click.command()
@click.argument("reports", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=REPO,
    show_default=True,
    help="the checkout whose runs/ is read (by default) and whose commit is stamped",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="the page to write [default: ROOT/docs/results.md]",
)
def main(reports: tuple[Path, ...], root: Path, out: Path | None) -> None:
    """Write the results page from REPORTS (report.json files or runs/<recipe> folders; default: every one)."""
    sys.path.insert(0, str(REPO))
    from edgepipe.core import fsio

    try:
        paths = find_reports(reports, root)
        if not paths:
            raise ResultsError(
                f"no report.json under {root / 'runs'}; fix: run the recipes first "
                "(make recipe=NAME), or name the reports"
            )
        text = page(paths, root)
    except ResultsError as e:
        click.echo(f"results_page: error: {e}", err=True)
        sys.exit(2)
    dest = out or root / "docs" / "results.md"
    fsio.write_text(dest, text)
    click.echo(f"{dest}: {len(paths)} report(s), {len(text):,} bytes")


if __name__ == "__main__":
    main()
