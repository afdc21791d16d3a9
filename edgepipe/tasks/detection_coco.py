"""COCO AP on detections, equal to pycocotools' (the inputs: `detection_metrics`). Numpy only.

**COCO AP** follows pycocotools' `COCOeval` (bbox, area range all, maxDets 100, no crowd or ignored
objects) step for step: per image and class, detections sorted by score (stable) and cut at 100, each
matched to the unmatched object of highest IoU >= t (`min(t, 1 - 1e-10)`; an equal IoU later in the list
wins, as in COCOeval); per class, all images' detections sorted by score (stable mergesort, images in input
order), precision made monotone from the right and read at the 101 recall points 0, 0.01, ..., 1
(`searchsorted` left; 0 past the last recall reached); mAP is the mean over IoU thresholds, recall points
and the classes that have at least one object. A class with no object anywhere is left out (COCO's -1),
even if it has predictions. An unmatched detection whose area `w * h` is outside COCO's range "all",
[0, 1e10] (an inverted box, `x1 < x0`), is ignored, as COCOeval ignores it; ground-truth boxes are assumed
inside that range (`objects` refuses inverted ones). IoU is pycocotools' `bbIou` on `[x, y, w, h]` boxes, `w = x1 - x0`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgepipe.tasks.detection_decode import CLASS, SCORE, X0, X1, Y0, Y1
from edgepipe.tasks.detection_inputs import needs_boxes, per_image

#: COCO's IoU thresholds 0.50, 0.55, ..., 0.95, built as pycocotools builds them (so equal bit for bit)
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: COCO's 101 recall points 0, 0.01, ..., 1 (pycocotools' `recThrs`)
COCO_RECALL_POINTS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
#: COCO's area range "all" (`areaRng[0]`), in square pixels
COCO_AREA_RANGE = (0**2, 1e5**2)
#: COCO's cap on detections per image and class (`maxDets[-1]`)
COCO_MAX_DETS = 100


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU `(len(a), len(b))` of `[x0, y0, x1, y1]` boxes, computed as pycocotools' `bbIou` does (on
    `[x, y, w, h]` with `w = x1 - x0`, in float64), so the IoUs compared with a threshold are the same."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax, ay, aw, ah = a[:, 0, None], a[:, 1, None], (a[:, 2] - a[:, 0])[:, None], (a[:, 3] - a[:, 1])[:, None]
    bx, by, bw, bh = b[None, :, 0], b[None, :, 1], (b[:, 2] - b[:, 0])[None, :], (b[:, 3] - b[:, 1])[None, :]
    w = np.minimum(aw + ax, bw + bx) - np.maximum(ax, bx)
    h = np.minimum(ah + ay, bh + by) - np.maximum(ay, by)
    inter = w * h
    union = aw * ah + bw * bh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def coco_precision(
    preds: Sequence,
    gts: Sequence,
    num_classes: int,
    *,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_dets: int = COCO_MAX_DETS,
) -> np.ndarray:
    """COCOeval's precision table `(T, 101, num_classes)`: interpolated precision per IoU threshold, recall
    point and class; -1 for a class without objects (the module docstring's rules)."""
    thresholds = np.asarray(iou_thresholds, np.float64)
    pairs = per_image(preds, gts)
    for pred, _, _ in pairs:
        needs_boxes(pred)
    n_t, n_r = len(thresholds), len(COCO_RECALL_POINTS)
    precision = -np.ones((n_t, n_r, num_classes))
    for k in range(num_classes):
        scores, matched, ignored, n_objects = [], [], [], 0
        for pred, classes, boxes in pairs:
            det = pred[pred[:, CLASS] == k]
            obj = boxes[classes == k]
            if not len(det) and not len(obj):
                continue
            det = det[np.argsort(-det[:, SCORE], kind="mergesort")[:max_dets]]
            iou = box_iou(det[:, X0 : Y1 + 1], obj)
            det_matched = np.zeros((n_t, len(det)), bool)
            obj_taken = np.zeros((n_t, len(obj)), bool)
            for t, threshold in enumerate(thresholds):
                for d in range(len(det)):
                    best, m = min(threshold, 1 - 1e-10), -1
                    for g in range(len(obj)):
                        if obj_taken[t, g] or iou[d, g] < best:
                            continue
                        best, m = iou[d, g], g
                    if m >= 0:
                        det_matched[t, d] = obj_taken[t, m] = True
            # COCOeval ignores an unmatched detection whose area w * h is outside the area range [0, 1e5 ** 2]:
            # an inverted box (x1 < x0) has a negative area, so it is neither a TP nor an FP
            area = (det[:, X1] - det[:, X0]) * (det[:, Y1] - det[:, Y0])
            outside = (area < COCO_AREA_RANGE[0]) | (area > COCO_AREA_RANGE[1])
            scores.append(det[:, SCORE])
            matched.append(det_matched)
            ignored.append(~det_matched & outside[None, :])
            n_objects += len(obj)
        if n_objects == 0:
            continue
        all_scores = np.concatenate(scores)
        order = np.argsort(-all_scores, kind="mergesort")
        tps = np.concatenate(matched, axis=1)[:, order]
        counted = ~np.concatenate(ignored, axis=1)[:, order]
        tp_sum = np.cumsum(tps & counted, axis=1).astype(float)
        fp_sum = np.cumsum(~tps & counted, axis=1).astype(float)
        for t in range(n_t):
            tp, fp = tp_sum[t], fp_sum[t]
            recall = tp / n_objects
            prec = tp / (fp + tp + np.spacing(1))
            prec = np.maximum.accumulate(prec[::-1])[::-1]  # the precision envelope, from the right
            at = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
            q = np.zeros(n_r)
            reached = at < len(prec)
            q[reached] = prec[at[reached]]
            precision[t, :, k] = q
    return precision


def coco_map(
    preds: Sequence,
    gts: Sequence,
    num_classes: int,
    *,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_dets: int = COCO_MAX_DETS,
) -> float:
    """COCO mAP: the mean of `coco_precision` over IoU thresholds, recall points and classes with objects.

    `iou_thresholds=(0.5,)` gives mAP@0.5 (COCOeval's `stats[1]`), the default COCO's mAP@[.5:.95]
    (`stats[0]`). NaN (COCOeval: -1) when no class has an object.
    """
    table = coco_precision(preds, gts, num_classes, iou_thresholds=iou_thresholds, max_dets=max_dets)
    present = table[table > -1]
    return float(np.mean(present)) if present.size else math.nan
