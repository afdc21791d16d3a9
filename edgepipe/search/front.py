"""A finished search's tables and picture: every trial, the feasible Pareto front, and the choice.

A trial is a row: its number, state (complete, pruned, over budget, failed), searched values, validation
accuracy of its int8 model, its figures on the target and whether they meet the budgets. The front is
the feasible trials no other feasible trial beats on accuracy *and* latency (then flash and RAM, where
measured); the choice is the front's best on the objective the recipe names.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.targets.provenance import PROVENANCE

# figure -> (direction, column title)
OBJECTIVES = {
    "val_accuracy": ("maximize", "val int8 accuracy"),
    "latency_ms": ("minimize", "latency (ms)"),
    "instructions": ("minimize", "instructions"),
    "flash_bytes": ("minimize", "flash (bytes)"),
    "ram_bytes": ("minimize", "RAM (bytes)"),
    "params": ("minimize", "parameters"),
}


def dominates(a: dict, b: dict, keys: list[str]) -> bool:
    """Whether row `a` is at least as good as `b` on every key and better on one (None: not comparable)."""
    better = False
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if va is None or vb is None:
            return False
        sign = 1 if OBJECTIVES[k][0] == "maximize" else -1
        if sign * (va - vb) < 0:
            return False
        better = better or sign * (va - vb) > 0
    return better


def front(rows: list[dict], keys: list[str]) -> list[dict]:
    """The feasible rows no other feasible row dominates on `keys` (figures missing on every row are dropped)."""
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    feasible = [r for r in rows if r["feasible"]]
    return [r for r in feasible if not any(dominates(o, r, keys) for o in feasible if o is not r)]


def choose(rows: list[dict], pick: str, keys: list[str]) -> dict | None:
    """The feasible row best on `pick`, ties broken by the other keys in order; None if none is feasible."""
    feasible = [r for r in rows if r["feasible"] and r.get(pick) is not None]
    if not feasible:
        return None
    order = [pick, *[k for k in keys if k != pick]]

    def rank(r):
        return tuple(
            (-1 if OBJECTIVES[k][0] == "maximize" else 1) * (r.get(k) if r.get(k) is not None else math.inf)
            for k in order
        )

    return min(feasible, key=rank)


def closest(rows: list[dict]) -> dict | None:
    """The measured trial that misses the budgets by the least (the largest relative overshoot smallest)."""
    measured = [r for r in rows if r.get("violation") is not None]
    return min(measured, key=lambda r: r["violation"]) if measured else None


def write_csv(rows: list[dict], searched: list[str], dest: Path) -> None:
    """trials.csv: one row per trial, searched values then figures."""
    cols = [
        "trial",
        "state",
        *searched,
        "val_accuracy",
        "latency_ms",
        "instructions",
        "flash_bytes",
        "ram_bytes",
        "params",
        "macs",
        "feasible",
        "over_budget",
        "epochs",
        "seconds",
        "runner",
        "note",
    ]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                **{k: r.get("values", {}).get(k) for k in searched},
                **{k: r.get(k) for k in cols if k not in searched},
                "over_budget": "; ".join(r.get("over_budget") or []),
            }
        )
    fsio.write_text(dest, out.getvalue())


def plot(
    rows: list[dict], chosen: dict | None, dest: Path, *, x_key: str, budgets: dict, reference: dict | None, title: str
) -> None:
    """pareto.png: validation accuracy against the target figure, every trial, the front drawn, budget lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    style = {"feasible": ("tab:blue", "o"), "infeasible": ("tab:red", "x"), "pruned": ("0.6", ".")}
    for label, (color, marker) in style.items():
        pts = [r for r in rows if r.get(x_key) is not None and r.get("val_accuracy") is not None and _group(r) == label]
        if pts:
            ax.scatter(
                [r[x_key] for r in pts],
                [100 * r["val_accuracy"] for r in pts],
                c=color,
                marker=marker,
                s=28,
                label=f"{label} ({len(pts)})",
                zorder=3,
            )
    f = sorted((r for r in front(rows, ["val_accuracy", x_key]) if r.get(x_key) is not None), key=lambda r: r[x_key])
    if f:
        ax.step(
            [r[x_key] for r in f],
            [100 * r["val_accuracy"] for r in f],
            where="post",
            c="tab:blue",
            lw=1,
            zorder=2,
            label="front",
        )
    if chosen is not None and chosen.get(x_key) is not None:
        ax.scatter(
            [chosen[x_key]],
            [100 * chosen["val_accuracy"]],
            s=160,
            facecolors="none",
            edgecolors="k",
            lw=1.5,
            zorder=4,
            label=f"chosen: trial {chosen['trial']}",
        )
    if reference is not None and reference.get(x_key) is not None:
        ax.axvline(reference[x_key], c="tab:green", ls=":", lw=1, label="reference model")
    limit = budgets.get(x_key)
    if limit is not None:
        ax.axvline(limit, c="tab:red", ls="--", lw=1, label=f"budget {OBJECTIVES[x_key][1]}")
    ax.set_xlabel(OBJECTIVES[x_key][1])
    ax.set_ylabel("validation accuracy, int8 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with fsio.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _group(r: dict) -> str:
    if r["state"] == "pruned":
        return "pruned"
    return "feasible" if r["feasible"] else "infeasible"


def figure_text(figure: str, value: float | None) -> str:
    """A trial's figure as the progress line and the report print it ("-" when not measured)."""
    if value is None:
        return "-"
    if figure == "val_accuracy":
        return f"{100 * value:.2f} %"
    if figure == "latency_ms":
        return f"{value:.2f} ms"
    if figure == "instructions":
        return f"{value / 1e6:.2f} M"
    return fsio.human_size(value)


def row_text(r: dict) -> str:
    """ "val 98.91 %, 7.90 ms, flash 58.2 KB, RAM 9.1 KB [emu] (note)": what a trial measured."""
    labels = {"latency_ms": "", "instructions": "instructions ", "flash_bytes": "flash ", "ram_bytes": "RAM "}
    parts = [f"val {100 * r['val_accuracy']:.2f} %"] if r.get("val_accuracy") is not None else []
    parts += [
        labels[k] + figure_text(k, r[k])
        for k in labels
        if r.get(k) is not None and not (k == "instructions" and r.get("latency_ms") is not None)
    ]
    text = ", ".join(parts)
    if r.get("provenance"):
        text += f" [{PROVENANCE.get(r['provenance'], (r['provenance'],))[0]}]"
    if r.get("note") and r["state"] != "complete":
        text += f" ({r['note']})"
    return text.strip()


def budget_text(budgets: dict) -> str:
    """The budgets as a sentence: "latency_ms <= 8.00 ms, val_accuracy >= 98.00 %", or "no budget"."""
    return (
        ", ".join(f"{k} {'>=' if k == 'val_accuracy' else '<='} {figure_text(k, v)}" for k, v in budgets.items())
        or "no budget"
    )
