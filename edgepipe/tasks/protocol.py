"""What every task implements: what its labels are, what a model is trained to output, and how it is judged.

A task is one class in one module of this package (`classification`, `detection`). A dataset artifact
names its task (`dataset.json`'s `task`); training, conversion, benches, search and the report ask the task
instead of assuming class labels and top-1. The task judges a model by its **raw outputs** (what Keras, LiteRT,
TFLite Micro or a device returns, dequantised to float): decoding them into predictions is the task's
business, so every runtime is scored by the same code.
"""

from __future__ import annotations

import abc

import numpy as np


class Task(abc.ABC):
    """One task family: labels, training targets, loss, decoding and metrics."""

    #: the name a dataset records (`dataset.json` `task`)
    name: str = ""
    #: the metric gates, searches and the report rank by (a key of `metrics`' result), higher is better
    headline: str = ""
    #: how the headline is shown, thresholds included ("accuracy", "F1 (centroid within 0.2 of the image)")
    headline_label: str = ""
    #: the headline in a column's title ("accuracy", "F1")
    headline_short: str = ""
    #: the metrics (keys of `metrics`' result) a report's task table shows beside the headline, in order
    report_metrics: tuple[str, ...] = ()
    #: the key and words of a conversion's parity figure (`agreement`)
    agreement_name: str = ""
    agreement_label: str = ""
    #: a distill stage can train a student of this task (`soft_loss`, or a classifier's logits)
    distils: bool = False

    @abc.abstractmethod
    def check_labels(self, y: np.ndarray, classes: list[str], where: str) -> np.ndarray:
        """`y` as this task stores it; raises EdgepipeError (one line: what is wrong where; fix) otherwise."""

    @abc.abstractmethod
    def targets(self, y: np.ndarray, info: dict) -> np.ndarray:
        """What a model is trained to output for labels `y` (one row per sample): one-hot classes, heat maps."""

    @abc.abstractmethod
    def loss(self, info: dict, fit=None):
        """The Keras loss between `targets` and a model's outputs; `fit` (a training stage's `Fit` knobs) may
        shape it (label smoothing, a detector's object weight); None: the defaults."""

    def soft_loss(self, info: dict, fit, temperature: float):
        """Distillation's term between a frozen teacher's and a student's raw outputs, `(teacher, student) ->
        loss` on Keras tensors; None: this task's models are not distilled this way (a classifier distils its
        logits: `edgepipe.training.distill.make_distiller`)."""
        return None

    def keras_metrics(self) -> list:
        """What Keras reports during training beside the loss (its history's columns)."""
        return []

    @abc.abstractmethod
    def metrics(self, y: np.ndarray, outputs: np.ndarray, info: dict) -> dict:
        """Every metric of raw `outputs` against labels `y`; `self.headline` among them."""

    @abc.abstractmethod
    def agreement(self, reference: np.ndarray, outputs: np.ndarray, info: dict) -> float:
        """The fraction of samples on which two runtimes' raw outputs decode to the same prediction (a
        conversion's parity check: Keras against its `.tflite`)."""

    def pictures(self, x: np.ndarray, y: np.ndarray, outputs: np.ndarray, info: dict, out) -> None:
        """Draw what a model of this task does on the first `len(outputs)` images of `x` (uint8) into folder
        `out`; nothing by default (a classifier's confusion matrix comes with its metrics)."""

    def examples(self, outputs: np.ndarray, info: dict) -> dict:
        """What a bench row keeps of raw `outputs` (on the first test images) for the report's pictures; nothing
        by default (a classifier's bench keeps its misclassified images)."""
        return {}

    def output_shape(self, info: dict) -> tuple[int, ...]:
        """The shape of one sample's model output (without the batch axis)."""
        return (len(info["classes"]),)

    def check_output(self, shape: tuple[int, ...], info: dict) -> str | None:
        """None when a model whose output is `shape` (without the batch axis) fits this task and dataset,
        else what it should output."""
        want = self.output_shape(info)
        return None if tuple(shape)[-1:] == want[-1:] else f"{want[-1]} class scores"
