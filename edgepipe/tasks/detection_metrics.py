"""Detection metrics: Edge Impulse's centroid precision/recall/F1, a strict F1, count error, F1 by object
size, and with boxes mean IoU, mAP@0.5 and COCO mAP@[.5:.95] (`detection_coco`). Numpy only.

Inputs, for a set of N images:

- **predictions**: one float32 array `(n_i, 8)` per image, as `detection_decode.decode` returns them
  (`class, score, cx, cy, x0, y0, x1, y1`, pixels; the box columns NaN without a size head);
- **ground truth**: `(N, max_objects, 5)` (or one `(max_objects_i, 5)` array per image), rows
  `[class, x0, y0, x1, y1]` in pixels, class -1 for padding; an object's centre is its box's centre;
- **image_size**: `(height, width)` in pixels (96x96 in the digits recipes).

Every threshold is a named argument and appears in the summary's key (`summary`, `DEFINITIONS`).

**Centroid matching** (no boxes needed). A prediction may match a ground-truth object of the *same class*
whose centre is within a distance, either *normalised* (`max_distance`: `hypot(dx / width, dy / height)`,
Edge Impulse's distance between centroids in [0, 1] image coordinates) or in pixels (`max_distance_px`);
the bound is inclusive (`<=`, as Edge Impulse's). Two rules:

- `"ei"`, Edge Impulse's (`ei_tensorflow/constrained_object_detection/metrics.py`, `match_by_near_centroids`):
  each prediction matches its nearest same-class object within the distance, **several predictions may match
  one object**, and each such prediction is a true positive. Unmatched predictions are false positives,
  objects no prediction matched are false negatives;
- `"one_to_one"` (the default elsewhere here): predictions by decreasing score (ties: input order) each take
  the nearest still-unmatched same-class object within the distance, so each object is matched once and a
  duplicate prediction is a false positive (the greedy rule of COCO and VOC, with distance for IoU).

In both, ties in distance go to the object listed first. Counts are summed over all images, then
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean, with Edge Impulse's conventions
(`non_background_metrics_from_confusion`): all three are 1.0 when TP = FP = FN = 0 (nothing to find and
nothing found), and a ratio with a zero denominator is 0.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgepipe.tasks.detection_coco import box_iou, coco_map
from edgepipe.tasks.detection_decode import CLASS, CX, CY, SCORE, STRIDE, X0, Y1, objects
from edgepipe.tasks.detection_inputs import as_predictions, needs_boxes, per_image

#: Edge Impulse's match distance: 0.2 of the image size, between centroids in normalised coordinates
EI_DISTANCE = 0.2
#: object size bins on `max(w, h) / max(image height, width)` of the ground-truth box, `lo <= size < hi`;
#: at 96x96 pixels: small < 16 px <= medium < 24 px <= large (the digits recipes draw 10-32 px objects)
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 1 / 6),
    ("medium", 1 / 6, 1 / 4),
    ("large", 1 / 4, math.inf),
)

RULES = ("ei", "one_to_one")

#: what each key of `summary` means, thresholds included
DEFINITIONS: dict[str, str] = {
    "ei_precision_d0.2": "Edge Impulse's centroid precision: same class, centroid distance <= 0.2 of the image "
    "size, several predictions may match one object (rule 'ei')",
    "ei_recall_d0.2": "Edge Impulse's centroid recall (as ei_precision_d0.2)",
    "ei_f1_d0.2": "Edge Impulse's centroid F1, FOMO's val_f1 (as ei_precision_d0.2)",
    "precision_d0.2": "centroid precision: same class, distance <= 0.2 of the image size, one prediction per "
    "object, greedy by score (rule 'one_to_one')",
    "recall_d0.2": "centroid recall (as precision_d0.2)",
    "f1_d0.2": "centroid F1 (as precision_d0.2)",
    "f1_1cell": "strict centroid F1: same class, distance <= one cell (stride px, 8), one-to-one",
    "count_mae": "mean over images of |number of predictions - number of objects|, all classes together",
    "count_exact": "fraction of images whose number of predictions equals their number of objects",
    **{
        f"{m}_d0.2_{name}": f"centroid {m} of objects whose max(w, h) / image size is in [{lo:.4g}, {hi:.4g}) "
        "(one-to-one, distance <= 0.2; a false positive without a box counts in every bin; "
        "NaN when the bin has no object)"
        for name, lo, hi in SIZE_BINS
        for m in ("recall", "f1")
    },
    "mean_iou_d0.2": "mean IoU of the boxes of the one-to-one centroid matches at distance <= 0.2 (needs boxes)",
    "map_iou0.5": "COCO AP at IoU >= 0.5, 101 recall points, area all, maxDets 100, mean over classes (boxes)",
    "map_iou0.5-0.95": "COCO AP averaged over IoU 0.50:0.05:0.95, as map_iou0.5 otherwise (boxes)",
}


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives, and the ratios Edge Impulse derives from them."""

    tp: int
    fp: int
    fn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when TP = FP = FN = 0, 0.0 when only FN."""
        if self.tp == self.fp == self.fn == 0:
            return 1.0
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 when TP = FP = FN = 0, 0.0 when only FP."""
        if self.tp == self.fp == self.fn == 0:
            return 1.0
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        """2PR / (P + R); 1.0 when TP = FP = FN = 0, 0.0 when P + R = 0."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def _distance_bound(image_size, max_distance, max_distance_px) -> tuple[float, float, float]:
    """(x scale, y scale, bound): a distance is `hypot(dx * sx, dy * sy) <= bound`."""
    if (max_distance is None) == (max_distance_px is None):
        raise ValueError("give one of max_distance (a fraction of the image size) and max_distance_px")
    if max_distance is not None:
        height, width = image_size
        return 1.0 / width, 1.0 / height, float(max_distance)
    return 1.0, 1.0, float(max_distance_px)


def match_centroids(
    pred: np.ndarray,
    gt_classes: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    image_size: tuple[int, int],
    max_distance: float | None = None,
    max_distance_px: float | None = None,
    rule: str = "one_to_one",
) -> np.ndarray:
    """One image's centroid matches: for each prediction, the index of its object, or -1.

    Args:
        pred: `(n, 8)` detections (pixels).
        gt_classes, gt_boxes: the image's objects, `(m,)` and `(m, 4)` `[x0, y0, x1, y1]` pixels
            (`detection_decode.objects` of a padded ground-truth array).
        image_size: `(height, width)` pixels, for `max_distance`.
        max_distance: match within this normalised distance (0.2: Edge Impulse's), inclusive; or
        max_distance_px: within this many pixels (8: one cell), inclusive. Give exactly one.
        rule: `"ei"` (several predictions may match one object) or `"one_to_one"` (greedy by score).
    """
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {', '.join(RULES)}")
    sx, sy, bound = _distance_bound(image_size, max_distance, max_distance_px)
    pred = as_predictions(pred)
    gcx = 0.5 * (gt_boxes[:, 0] + gt_boxes[:, 2])
    gcy = 0.5 * (gt_boxes[:, 1] + gt_boxes[:, 3])
    dist = np.hypot((pred[:, CX, None] - gcx[None, :]) * sx, (pred[:, CY, None] - gcy[None, :]) * sy)
    allowed = (pred[:, CLASS, None] == gt_classes[None, :]) & (dist <= bound)
    match = np.full(len(pred), -1, np.int64)
    taken = np.zeros(len(gt_classes), bool)
    order = range(len(pred)) if rule == "ei" else np.argsort(-pred[:, SCORE], kind="stable")
    for p in order:
        ok = allowed[p] if rule == "ei" else allowed[p] & ~taken
        if ok.any():
            g = int(np.argmin(np.where(ok, dist[p], np.inf)))  # argmin: the first of equal distances
            match[p] = g
            taken[g] = True
    return match


def _counts(match: np.ndarray, n_objects: int) -> Counts:
    tp = int((match >= 0).sum())
    found = len(set(match[match >= 0].tolist()))
    return Counts(tp, len(match) - tp, n_objects - found)


def centroid_counts(
    preds: Sequence,
    gts: Sequence,
    *,
    image_size: tuple[int, int],
    max_distance: float | None = None,
    max_distance_px: float | None = None,
    rule: str = "one_to_one",
) -> Counts:
    """TP, FP and FN of centroid matching (`match_centroids`' arguments) summed over images.

    Edge Impulse's FOMO metric is `centroid_counts(..., max_distance=0.2, rule="ei")` on predictions decoded
    at confidence 0.5; the strict one-cell F1 is `max_distance_px=8` (the stride).
    """
    total = Counts(0, 0, 0)
    for pred, classes, boxes in per_image(preds, gts):
        match = match_centroids(
            pred,
            classes,
            boxes,
            image_size=image_size,
            max_distance=max_distance,
            max_distance_px=max_distance_px,
            rule=rule,
        )
        total += _counts(match, len(classes))
    return total


def _relative_size(boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / max(image_size)


def counts_by_size(
    preds: Sequence,
    gts: Sequence,
    *,
    image_size: tuple[int, int],
    max_distance: float = EI_DISTANCE,
    rule: str = "one_to_one",
    bins: Sequence[tuple[str, float, float]] = SIZE_BINS,
) -> dict[str, Counts]:
    """Centroid counts per object size bin, from one matching of all objects and predictions.

    An object's size is `max(w, h) / max(height, width)` of its box, and it falls in the bin with
    `lo <= size < hi` (`SIZE_BINS`: small < 1/6, medium < 1/4, large; 16 and 24 px at 96 px). A match
    counts as a TP in its object's bin, an unmatched object as an FN in its bin. An unmatched prediction is an
    FP in the bin of its own box's size, or, without a box (a heat map alone), in **every** bin: its size is
    unknown, so each bin's precision is a lower bound then, while recall by size is exact.
    """
    out = {name: Counts(0, 0, 0) for name, _, _ in bins}
    for pred, classes, boxes in per_image(preds, gts):
        match = match_centroids(pred, classes, boxes, image_size=image_size, max_distance=max_distance, rule=rule)
        obj_size = _relative_size(boxes, image_size)
        pred_size = _relative_size(pred[:, X0 : Y1 + 1], image_size)
        found = np.zeros(len(classes), bool)
        found[match[match >= 0]] = True
        for name, lo, hi in bins:
            inside = (obj_size >= lo) & (obj_size < hi)
            tp = int(inside[match[match >= 0]].sum())
            unmatched = match < 0
            fp = int((unmatched & (np.isnan(pred_size) | ((pred_size >= lo) & (pred_size < hi)))).sum())
            out[name] += Counts(tp, fp, int((inside & ~found).sum()))
    return out


def count_mae(preds: Sequence, gts: Sequence) -> float:
    """Mean over images of |predictions - objects| (all classes together); NaN for no image."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} images of predictions but {len(gts)} of ground truth")
    if not len(preds):
        return math.nan
    return float(np.mean([abs(len(as_predictions(p)) - len(objects(g)[0])) for p, g in zip(preds, gts)]))


def count_exact(preds: Sequence, gts: Sequence) -> float:
    """Fraction of images with as many predictions as objects (all classes together); NaN for no image."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} images of predictions but {len(gts)} of ground truth")
    if not len(preds):
        return math.nan
    return float(np.mean([len(as_predictions(p)) == len(objects(g)[0]) for p, g in zip(preds, gts)]))


def mean_iou(
    preds: Sequence, gts: Sequence, *, image_size: tuple[int, int], max_distance: float = EI_DISTANCE
) -> float:
    """Mean IoU of predicted and true boxes over the one-to-one centroid matches at `max_distance`
    (normalised, 0.2); NaN when nothing matches. Matching by centroid, not by IoU, keeps the mean free of an
    IoU threshold's floor: it measures the boxes of the objects that were found."""
    ious = []
    for pred, classes, boxes in per_image(preds, gts):
        needs_boxes(pred)
        match = match_centroids(pred, classes, boxes, image_size=image_size, max_distance=max_distance)
        for p in np.flatnonzero(match >= 0):
            ious.append(box_iou(pred[p, X0 : Y1 + 1], boxes[match[p]])[0, 0])
    return float(np.mean(ious)) if ious else math.nan


def summary(
    preds: Sequence,
    gts: Sequence,
    *,
    image_size: tuple[int, int],
    num_classes: int,
    stride: int = STRIDE,
    boxes: bool | None = None,
) -> dict[str, float]:
    """Every detection metric, keyed as in `DEFINITIONS` (which states each one's thresholds).

    Args:
        preds: per image, `(n, 8)` detections (`detection_decode.decode`, at its threshold 0.5).
        gts: `(N, max_objects, 5)` ground truth, or one `(max_objects_i, 5)` array per image.
        image_size: `(height, width)` pixels.
        num_classes: C (for mAP's class list).
        stride: pixels per heat-map cell, the strict F1's distance (8).
        boxes: include the box metrics (mean IoU, mAP); None: when every prediction has a box and there
            is at least one prediction.
    """
    out: dict[str, float] = {}
    ei = centroid_counts(preds, gts, image_size=image_size, max_distance=EI_DISTANCE, rule="ei")
    greedy = centroid_counts(preds, gts, image_size=image_size, max_distance=EI_DISTANCE)
    strict = centroid_counts(preds, gts, image_size=image_size, max_distance_px=stride)
    out.update(
        {
            "ei_precision_d0.2": ei.precision,
            "ei_recall_d0.2": ei.recall,
            "ei_f1_d0.2": ei.f1,
            "precision_d0.2": greedy.precision,
            "recall_d0.2": greedy.recall,
            "f1_d0.2": greedy.f1,
            "f1_1cell": strict.f1,
            "count_mae": count_mae(preds, gts),
            "count_exact": count_exact(preds, gts),
        }
    )
    for name, c in counts_by_size(preds, gts, image_size=image_size).items():
        empty = c.tp + c.fn == 0  # no object of this size: nothing to say (EI's 1.0 would flatter)
        out[f"recall_d0.2_{name}"] = math.nan if empty else c.recall
        out[f"f1_d0.2_{name}"] = math.nan if empty else c.f1
    if boxes is None:
        all_preds = [as_predictions(p) for p in preds]
        boxes = any(len(p) for p in all_preds) and not any(np.isnan(p[:, X0 : Y1 + 1]).any() for p in all_preds)
    if boxes:
        out["mean_iou_d0.2"] = mean_iou(preds, gts, image_size=image_size)
        out["map_iou0.5"] = coco_map(preds, gts, num_classes, iou_thresholds=(0.5,))
        out["map_iou0.5-0.95"] = coco_map(preds, gts, num_classes)
    return out
