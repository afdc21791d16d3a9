"""Image classification: one class per image, a softmax over the classes, judged by top-1 accuracy."""

from __future__ import annotations

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.tasks.protocol import Task


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1 with macro and weighted averages, and the confusion matrix."""
    k = len(classes)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "samples": int(cm.sum()),
        "per_class": [
            {
                "class": c,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        ],
        "macro": {m: float(v[present].mean()) for m, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted": {
            m: float((v * support).sum() / max(1, support.sum()))
            for m, v in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "confusion_matrix": cm.tolist(),
    }


class Classification(Task):
    name = "classification"
    headline = "accuracy"
    headline_label = "accuracy"
    headline_short = "accuracy"
    agreement_name = "top1_agreement"
    agreement_label = "top-1 agreement"
    distils = True

    def check_labels(self, y, classes, where):
        y = np.asarray(y)
        if y.ndim > 1 and y.size != len(y):
            raise EdgepipeError(
                f"{where}: labels have shape {list(y.shape)}, not one class per image",
                "give one class index per image (a detection dataset says task: detection)",
            )
        y = y.reshape(-1)
        if len(y) and not np.issubdtype(y.dtype, np.integer):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise EdgepipeError(f"{where}: labels are not whole numbers", "labels must be 0..num_classes-1")
        y = y.astype(np.int64)
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise EdgepipeError(
                f"{where}: labels run {y.min()}..{y.max()} for {len(classes)} classes",
                "labels must be 0..num_classes-1",
            )
        return y

    def targets(self, y, info):
        return np.eye(len(info["classes"]), dtype=np.float32)[np.asarray(y, np.int64)]

    def loss(self, info, fit=None):
        from edgepipe.core._tf import keras

        return keras.losses.CategoricalCrossentropy(label_smoothing=fit.label_smoothing if fit else 0.0)

    def keras_metrics(self):
        from edgepipe.core._tf import keras

        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    def metrics(self, y, outputs, info):
        y = np.asarray(y, np.int64)
        metrics = classification_metrics(y, outputs.argmax(1), info["classes"])
        metrics["loss"] = float(-np.mean(np.log(np.clip(outputs[np.arange(len(y)), y], 1e-7, 1.0))))
        return metrics

    def agreement(self, reference, outputs, info):
        return float(np.mean(outputs.argmax(1) == reference.argmax(1)))
