"""What every training-type stage writes when it has trained its model.

`write_training_outputs` saves the model and writes metrics.json, curves.png, the confusion matrix and
the doctor's diagnostics.json.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.stage import FINDINGS, StageIO
from edgepipe.datasets.artifact import Dataset
from edgepipe.tasks import task_of
from edgepipe.training import doctor, nets
from edgepipe.training.evaluate import evaluate
from edgepipe.training.fit import Fit
from edgepipe.training.history import read_history
from edgepipe.training.modelio import save_model
from edgepipe.training.probes import batchnorm_modes, dead_relus

#: test images a task draws its pictures from (a detector's predictions over them)
PICTURED = 32


def write_training_outputs(
    model, ds: Dataset, stage_io: StageIO, params: Fit, *, extra: dict | None = None, title: str = ""
) -> dict:
    """Save the model; write metrics.json (plus `extra`), curves.png, confusion_matrix.csv/.png (test split)
    and the doctor's diagnostics.json."""
    save_model(model, stage_io.out / "model.h5")
    rows = read_history(stage_io.out / "history.csv")
    task = task_of(ds.info)
    metrics = {
        "test": evaluate(model, ds, "test"),
        "val": {k: v for k, v in evaluate(model, ds, "val").items() if k in (task.headline, "loss")},
        "epochs_run": len(rows),
        "metric": task.headline,
        "metric_label": task.headline_label,
        "params": int(model.count_params()),
        "macs": nets.count_macs(model),
        **(extra or {}),
    }
    fsio.write_json(stage_io.out / "metrics.json", metrics)
    plot_curves(rows, stage_io.out / "curves.png", title)
    if "confusion_matrix" in metrics["test"]:
        write_confusion(metrics["test"]["confusion_matrix"], ds.classes, stage_io.out)
    x, y = ds.splits["test"]
    task.pictures(x, y, model.predict(ds.preprocess(x[:PICTURED]), verbose=0), ds.info, stage_io.out)
    es = params.early_stopping
    gradients = stage_io.out / "gradients.json"
    findings = doctor.diagnose(
        rows,
        metrics,
        ds.info,
        {"class_weights": params.class_weights, "restore_best": es.enabled and es.restore_best},
        gradients=json.loads(gradients.read_text()) if gradients.is_file() else [],
        dead=dead_relus(model, ds),
        batchnorm=batchnorm_modes(model, ds),
    )
    fsio.write_json(stage_io.out / FINDINGS, [dataclasses.asdict(f) | {"line": f.line()} for f in findings])
    return metrics


def test_figure(metrics: dict) -> str:
    """A training stage's headline on the test split as its summary line says it: "test accuracy 99.20 %"."""
    test = metrics["test"]
    name = metrics.get("metric", "accuracy")
    return f"test {metrics.get('metric_label', name)} {100 * test[name]:.2f} %"


def write_confusion(cm: list, classes: list[str], out: Path) -> None:
    """confusion_matrix.csv and .png: test images by true (rows) and predicted (columns) class."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    writer.writerows([c, *r] for c, r in zip(classes, cm))
    fsio.write_text(out / "confusion_matrix.csv", table.getvalue())
    plot_confusion(cm, classes, out / "confusion_matrix.png")


def plot_curves(rows: list[dict], dest: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train against validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "val")):
            values = [float(r[prefix + metric]) for r in rows if r.get(prefix + metric) not in (None, "")]
            if values:
                ax.plot(epochs[: len(values)], values, marker="o", ms=3, label=label)
        for i in range(1, len(rows)):  # multi-phase training (transfer): mark where each phase starts
            if rows[i].get("phase") != rows[i - 1].get("phase"):
                ax.axvline(epochs[i] - 0.5, color="grey", ls="--", lw=1)
                ax.text(epochs[i] - 0.4, ax.get_ylim()[1], rows[i]["phase"], va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:  # a detector: Keras computes no accuracy while it trains; its task metric comes after
            ax.text(0.5, 0.5, f"no {metric} while training", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with fsio.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def plot_confusion(cm, classes, dest: Path) -> None:
    """The test confusion matrix as a picture (colour on a log scale, so that small counts show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    k = len(cm)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.2, 0.45 * k + 1.8))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set_xticks(range(k), [str(c)[:10] for c in classes], rotation=90, fontsize=7)
    ax.set_yticks(range(k), [str(c)[:10] for c in classes], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)", fontsize=9)
    fig.tight_layout()
    with fsio.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
