"""Scoring a Keras model on a split of the dataset artifact: accuracy, per-class scores, confusion matrix."""

from __future__ import annotations

import numpy as np

from edgepipe.datasets.artifact import Dataset


def predict(model, ds: Dataset, split: str, batch_size: int = 512) -> np.ndarray:
    """Class probabilities for a whole split (preprocessed as recorded)."""
    x, _ = ds.splits[split]
    return model.predict(ds.preprocess(x), batch_size=batch_size, verbose=0)



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
        "per_class": [{"class": c, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(support[i])} for i, c in enumerate(classes)],
        "macro": {m: float(v[present].mean()) for m, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted": {m: float((v * support).sum() / max(1, support.sum()))
                     for m, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "confusion_matrix": cm.tolist(),
    }



def evaluate(model, ds: Dataset, split: str = "test") -> dict:
    """classification_metrics() of `model` on a split, plus the cross-entropy loss."""
    probs = predict(model, ds, split)
    y = ds.splits[split][1]
    metrics = classification_metrics(y, probs.argmax(1), ds.classes)
    metrics["loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))
    return metrics
