"""The built-in COCO AP equals pycocotools' COCOeval on the same boxes and scores: mAP@0.5, mAP@[.5:.95] and the
whole precision table, on hypothesis-drawn images (ties in score and IoU, empty images, absent classes)."""

import contextlib
import io
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from edgepipe.tasks.detection_coco import coco_map, coco_precision

pycocotools = pytest.importorskip("pycocotools", reason="the COCO reference: pip install -e '.[test]'")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

# a coordinate: whole pixels (exact IoU ties and IoUs equal to a threshold) or arbitrary floats
coord = st.one_of(st.integers(0, 80).map(float), st.floats(0, 80, width=32))
extent = st.one_of(st.integers(1, 30).map(float), st.floats(0.5, 30, width=32))
score = st.one_of(st.sampled_from([0.25, 0.5, 0.75, 1.0]), st.floats(0, 1, width=32))


@st.composite
def image(draw, num_classes):
    """(ground truth (m, 5), predictions (n, 8)): predictions are near-copies of objects, with a shifted edge
    or another class, or boxes anywhere."""
    gt = [
        [draw(st.integers(0, num_classes - 1)), x, y, x + w, y + h]
        for x, y, w, h in draw(st.lists(st.tuples(coord, coord, extent, extent), max_size=5))
    ]
    preds = []
    for _ in range(draw(st.integers(0, 8))):
        if gt and draw(st.booleans()):
            c, x0, y0, x1, y1 = draw(st.sampled_from(gt))
            x0 += draw(st.sampled_from([0.0, 0.0, 1.0, -2.0, 3.5]))
            x1 += draw(st.sampled_from([0.0, 1.0, 5.0]))
            if draw(st.integers(0, 5)) == 0:
                c = draw(st.integers(0, num_classes - 1))
        else:
            c, x0, y0 = draw(st.integers(0, num_classes - 1)), draw(coord), draw(coord)
            x1, y1 = x0 + draw(extent), y0 + draw(extent)
        preds.append([c, draw(score), 0.5 * (x0 + x1), 0.5 * (y0 + y1), x0, y0, x1, y1])
    padded = np.full((max(len(gt), 1) + draw(st.integers(0, 2)), 5), -1, np.float32)
    padded[: len(gt)] = np.array(gt, np.float32).reshape(-1, 5)
    return padded, np.array(preds, np.float32).reshape(-1, 8)


@st.composite
def dataset(draw):
    num_classes = draw(st.integers(1, 3))
    images = draw(st.lists(image(num_classes), min_size=1, max_size=4))
    return num_classes, [g for g, _ in images], [p for _, p in images]


def _xywh(box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def cocoeval(num_classes, gts, preds) -> COCOeval:
    """COCOeval (bbox) on the same boxes: image ids 1.., category id = class + 1, annotation ids 1.."""
    annotations = []
    for i, gt in enumerate(gts):
        for c, *box in gt[gt[:, 0] != -1].tolist():
            xywh = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": i + 1, "category_id": int(p[0]) + 1, "bbox": _xywh(p[4:8]), "score": float(p[1])}
        for i, pred in enumerate(preds)
        for p in pred
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {
            "images": [{"id": i + 1} for i in range(len(gts))],
            "annotations": annotations,
            "categories": [{"id": k + 1} for k in range(num_classes)],
        }
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _same(ours: float, theirs: float) -> bool:
    return (math.isnan(ours) and theirs == -1) or abs(ours - theirs) <= 1e-12


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dataset())
@example(
    (
        1,
        [np.array([[0, 0, 0, 10, 10], [0, 4, 0, 14, 10]], np.float32)],  # equal IoUs: the later object wins
        [np.array([[0, 0.9, 7, 5, 2, 0, 12, 10], [0, 0.8, 4, 5, -1, 0, 9, 10]], np.float32)],
    )
)
@example(
    (
        2,
        [np.array([[1, 0, 0, 10, 10]], np.float32)] * 2,  # an inverted box (ignored) before a TP of equal score
        [np.array([[1, 0.5, 5, 5, 9, 0, 1, 10]], np.float32), np.array([[1, 0.5, 5, 5, 0, 0, 10, 10]], np.float32)],
    )
)
@example(
    (
        1,
        [np.array([[0, 0, 0, 10, 10]], np.float32)] * 2,  # equal scores across images: image order first
        [
            np.array([[0, 0.5, 55, 55, 50, 50, 60, 60]], np.float32),
            np.array([[0, 0.5, 5, 5, 0, 0, 10, 10]], np.float32),
        ],
    )
)
def test_the_built_in_map_equals_pycocotools(data):
    num_classes, gts, preds = data
    if not any(len(p) for p in preds):
        return  # pycocotools' loadRes cannot take an empty result list; the no-prediction case is hand-checked
    reference = cocoeval(num_classes, gts, preds)
    ours = coco_precision(preds, gts, num_classes)
    theirs = reference.eval["precision"][:, :, :, 0, -1]  # area all, maxDets 100
    assert np.array_equal(ours, theirs), np.abs(ours - theirs).max()
    assert _same(coco_map(preds, gts, num_classes), reference.stats[0])
    event("mAP@[.5:.95] strictly between 0 and 1" if 0 < reference.stats[0] < 1 else f"mAP {reference.stats[0]:g}")
    assert _same(coco_map(preds, gts, num_classes, iou_thresholds=(0.5,)), reference.stats[1])


def test_the_comparison_sees_a_difference():
    """The harness is not vacuous: a prediction moved off its object changes both sides, and they still agree,
    while ours on the moved one differs from pycocotools' on the original."""
    gt = np.array([[[0, 10, 10, 30, 30], [0, 50, 50, 70, 70]]], np.float32)
    good = [np.array([[0, 0.9, 20, 20, 10, 10, 30, 30], [0, 0.8, 60, 60, 50, 50, 70, 70]], np.float32)]
    moved = [good[0].copy()]
    moved[0][1, 4:8] += 12
    assert coco_map(good, gt, 1) == pytest.approx(cocoeval(1, gt, good).stats[0], abs=1e-12) == pytest.approx(1.0)
    assert coco_map(moved, gt, 1) == pytest.approx(cocoeval(1, gt, moved).stats[0], abs=1e-12)
    assert coco_map(moved, gt, 1) < 0.6
