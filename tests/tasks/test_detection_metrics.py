"""Detection metrics on small cases computed by hand: Edge Impulse's centroid rule and the one-to-one rule, the
distance bounds, the strict one-cell F1, counts, F1 by size, IoU, COCO AP, and the empty and wrong-class edges."""

import math

import numpy as np
import pytest

from edgepipe.tasks import detection_metrics as dm
from edgepipe.tasks.detection_coco import box_iou, coco_map
from edgepipe.tasks.detection_inputs import per_image
from edgepipe.tasks.detection_metrics import Counts, centroid_counts, counts_by_size

SIZE = (96, 96)
NAN = math.nan


def det(c, score, cx, cy, box=None):
    """One prediction row; `box` [x0, y0, x1, y1] or NaN."""
    return [c, score, cx, cy, *(box if box is not None else [NAN] * 4)]


def preds(*images):
    return [np.array(rows, np.float32).reshape(-1, 8) for rows in images]


def obj(c, cx, cy, size=12.0, h=None):
    """A ground-truth row centred on (cx, cy), `size` wide (and `h` high, default square)."""
    h = size if h is None else h
    return [c, cx - size / 2, cy - h / 2, cx + size / 2, cy + h / 2]


def truth(*images, max_objects=6):
    out = np.full((len(images), max_objects, 5), -1, np.float32)
    for i, rows in enumerate(images):
        out[i, : len(rows)] = np.array(rows, np.float32).reshape(-1, 5)
    return out


def counts(p, g, **kw):
    c = centroid_counts(p, g, image_size=kw.pop("image_size", SIZE), **kw)
    return c.tp, c.fp, c.fn


# -- the ratios -------------------------------------------------------------------------------------------------


def test_the_ratios_follow_edge_impulse_on_empty_and_degenerate_counts():
    assert (Counts(0, 0, 0).precision, Counts(0, 0, 0).recall, Counts(0, 0, 0).f1) == (1.0, 1.0, 1.0)
    assert (Counts(0, 3, 0).precision, Counts(0, 3, 0).recall, Counts(0, 3, 0).f1) == (0.0, 0.0, 0.0)
    assert (Counts(0, 0, 2).precision, Counts(0, 0, 2).recall, Counts(0, 0, 2).f1) == (0.0, 0.0, 0.0)
    c = Counts(3, 1, 2)
    assert (c.precision, c.recall, c.f1) == pytest.approx((0.75, 0.6, 2 * 0.75 * 0.6 / 1.35))
    assert Counts(1, 2, 3) + Counts(4, 5, 6) == Counts(5, 7, 9)


# -- centroid matching ------------------------------------------------------------------------------------------


def test_edge_impulse_lets_several_predictions_match_one_object_one_to_one_does_not():
    g = truth([obj(0, 48, 48)])
    p = preds([det(0, 0.9, 50, 48), det(0, 0.8, 44, 48)])
    assert counts(p, g, max_distance=0.2, rule="ei") == (2, 0, 0)
    assert counts(p, g, max_distance=0.2) == (1, 1, 0)


def test_edge_impulses_recall_counts_predictions_so_duplicates_raise_it():
    """Two predictions on object A and none on B: EI counts TP 2, FN 1 (recall 2/3), one-to-one 1 and 1 (1/2)."""
    g = truth([obj(0, 20, 20), obj(0, 80, 80)])
    p = preds([det(0, 0.9, 21, 20), det(0, 0.8, 19, 20)])
    assert counts(p, g, max_distance=0.2, rule="ei") == (2, 0, 1)
    assert centroid_counts(p, g, image_size=SIZE, max_distance=0.2, rule="ei").recall == pytest.approx(2 / 3)
    assert counts(p, g, max_distance=0.2) == (1, 1, 1)


def test_the_distance_is_euclidean_in_image_fractions_and_inclusive():
    g = truth([obj(0, 48, 48)])
    assert counts(preds([det(0, 1, 48 + 19, 48)]), g, max_distance=0.2) == (1, 0, 0)  # 19/96 = 0.198
    assert counts(preds([det(0, 1, 48 + 20, 48)]), g, max_distance=0.2) == (0, 1, 1)  # 20/96 = 0.208
    assert counts(preds([det(0, 1, 48 + 14, 48 + 14)]), g, max_distance=0.2) == (0, 1, 1)  # hypot: 0.206
    assert counts(preds([det(0, 1, 48 + 24, 48)]), g, max_distance=0.25) == (1, 0, 0)  # exactly 0.25: inclusive


def test_on_a_wide_image_each_axis_is_a_fraction_of_its_own_side():
    g = truth([obj(0, 100, 20)])
    p = preds([det(0, 1, 100 + 38, 20)])  # 38 px of 192 wide = 0.198; of 96 high it would be 0.396
    assert counts(p, g, max_distance=0.2, image_size=(96, 192)) == (1, 0, 0)
    p = preds([det(0, 1, 100, 20 + 20)])  # 20 px of 96 high = 0.208
    assert counts(p, g, max_distance=0.2, image_size=(96, 192)) == (0, 1, 1)


def test_the_strict_f1_matches_within_one_cell_in_pixels():
    g = truth([obj(0, 48, 48)])
    assert counts(preds([det(0, 1, 56, 48)]), g, max_distance_px=8) == (1, 0, 0)
    assert counts(preds([det(0, 1, 54, 54)]), g, max_distance_px=8) == (0, 1, 1)  # 8.49 px
    assert counts(preds([det(0, 1, 54, 54)]), g, max_distance=0.2) == (1, 0, 0)


def test_one_to_one_goes_by_score_and_takes_the_nearest_free_object():
    """The best-scored prediction takes its nearest object; the next takes the nearest object still free within
    reach, or is a false positive. Greedy, not an optimal assignment: within one cell (8 px) 0.5 -> A and
    0.9 -> B would match both, but 0.9 takes A first and B is 12 px from 0.5."""
    g = truth([obj(0, 40, 40), obj(0, 52, 40)])  # A, B
    p = preds([det(0, 0.5, 40, 40), det(0, 0.9, 44, 40)])
    pred, classes, boxes = per_image(p, g)[0]
    assert dm.match_centroids(pred, classes, boxes, image_size=SIZE, max_distance=0.2).tolist() == [1, 0]
    assert counts(p, g, max_distance=0.2) == (2, 0, 0)
    assert counts(p, g, max_distance_px=8) == (1, 1, 1)
    p = preds([det(0, 0.9, 40, 40), det(0, 0.9, 41, 40)])  # equal scores: the first listed goes first
    pred, classes, boxes = per_image(p, truth([obj(0, 40, 40)]))[0]
    assert dm.match_centroids(pred, classes, boxes, image_size=SIZE, max_distance=0.2).tolist() == [0, -1]


def test_equal_distances_go_to_the_object_listed_first():
    g = truth([obj(0, 40, 40), obj(0, 50, 40)])
    pred, classes, boxes = per_image(preds([det(0, 1, 45, 40)]), g)[0]
    for rule in dm.RULES:
        assert dm.match_centroids(pred, classes, boxes, image_size=SIZE, max_distance=0.2, rule=rule).tolist() == [0]


def test_only_the_same_class_matches():
    g = truth([obj(0, 48, 48), obj(1, 20, 20)])
    p = preds([det(1, 0.9, 48, 48), det(0, 0.9, 20, 20)])
    for rule in dm.RULES:
        assert counts(p, g, max_distance=0.2, rule=rule) == (0, 2, 2)
    s = dm.summary(p, g, image_size=SIZE, num_classes=2)
    assert s["ei_f1_d0.2"] == s["f1_d0.2"] == s["f1_1cell"] == 0.0
    assert s["count_mae"] == 0.0 and s["count_exact"] == 1.0  # the count is right, the classes wrong


def test_no_objects_and_no_predictions_is_perfect_predictions_on_an_empty_image_are_false_positives():
    g = truth([], [obj(0, 48, 48)])
    assert counts(preds([], []), truth([], []), max_distance=0.2) == (0, 0, 0)
    assert dm.summary(preds([], []), truth([], []), image_size=SIZE, num_classes=1)["ei_f1_d0.2"] == 1.0
    assert counts(preds([det(0, 1, 10, 10)], []), g, max_distance=0.2) == (0, 1, 1)
    assert counts(preds([], [det(0, 1, 48, 48)]), g, max_distance=0.2) == (1, 0, 0)
    assert counts(preds([], []), g, max_distance=0.2) == (0, 0, 1)


def test_counts_sum_over_images():
    g = truth([obj(0, 20, 20)], [obj(0, 20, 20), obj(1, 70, 70)])
    p = preds([det(0, 1, 20, 20), det(0, 1, 80, 80)], [det(1, 1, 71, 70)])
    assert counts(p, g, max_distance=0.2) == (2, 1, 1)


def test_matching_refuses_a_bad_rule_or_two_distances_and_mismatched_lengths():
    with pytest.raises(ValueError, match="rule 'nearest'"):
        centroid_counts(preds([]), truth([]), image_size=SIZE, max_distance=0.2, rule="nearest")
    with pytest.raises(ValueError, match="one of max_distance"):
        centroid_counts(preds([]), truth([]), image_size=SIZE, max_distance=0.2, max_distance_px=8)
    with pytest.raises(ValueError, match="one of max_distance"):
        centroid_counts(preds([]), truth([]), image_size=SIZE)
    with pytest.raises(ValueError, match="2 images of predictions but 1"):
        centroid_counts(preds([], []), truth([]), image_size=SIZE, max_distance=0.2)
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        centroid_counts([np.zeros((1, 5))], truth([]), image_size=SIZE, max_distance=0.2)


# -- counts -----------------------------------------------------------------------------------------------------


def test_count_error_is_the_mean_absolute_difference_per_image():
    g = truth([obj(0, 10, 10)] * 3, [], [obj(1, 50, 50)])
    p = preds([det(0, 1, 10, 10)] * 2, [], [det(0, 1, 1, 1)] * 4)
    assert dm.count_mae(p, g) == pytest.approx((1 + 0 + 3) / 3)
    assert dm.count_exact(p, g) == pytest.approx(1 / 3)
    assert math.isnan(dm.count_mae([], truth()[:0])) and math.isnan(dm.count_exact([], truth()[:0]))


# -- by size ----------------------------------------------------------------------------------------------------


def test_f1_by_size_puts_objects_in_bins_by_their_longer_side():
    """At 96 px: a 10x10 is small, a 4x20 (a thin "1") medium, 24x12 large (the bound goes up: 24 px = 1/4)."""
    g = truth([obj(0, 20, 20, 10), obj(0, 50, 50, 4, 20), obj(0, 80, 80, 24, 12), obj(1, 80, 20, 15.9)])
    p = preds([det(0, 0.9, 20, 20), det(0, 0.9, 80, 80), det(1, 0.9, 40, 80)])
    by = counts_by_size(p, g, image_size=SIZE)
    # the prediction at (40, 80) matches nothing and has no box: a false positive in every bin
    assert by == {"small": Counts(1, 1, 1), "medium": Counts(0, 1, 1), "large": Counts(1, 1, 0)}
    s = dm.summary(p, g, image_size=SIZE, num_classes=2)
    assert s["recall_d0.2_small"] == 0.5 and s["recall_d0.2_medium"] == 0.0 and s["recall_d0.2_large"] == 1.0
    assert s["f1_d0.2_large"] == pytest.approx(2 / 3)


def test_with_boxes_a_false_positive_counts_in_its_own_bin_and_an_empty_bin_is_nan():
    g = truth([obj(0, 20, 20, 10)])
    p = preds([det(0, 0.9, 20, 20, [15, 15, 25, 25]), det(0, 0.8, 70, 70, [60, 60, 90, 90])])
    assert counts_by_size(p, g, image_size=SIZE) == {
        "small": Counts(1, 0, 0),
        "medium": Counts(0, 0, 0),
        "large": Counts(0, 1, 0),
    }
    s = dm.summary(p, g, image_size=SIZE, num_classes=1)
    assert s["f1_d0.2_small"] == 1.0
    assert math.isnan(s["f1_d0.2_medium"]) and math.isnan(s["f1_d0.2_large"])


# -- IoU --------------------------------------------------------------------------------------------------------


def test_box_iou_by_hand():
    a = [[0, 0, 10, 10]]
    iou = box_iou(a, [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10], [2, 2, 7, 7], [30, 30, 40, 40]])
    assert iou.shape == (1, 5) and iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 25 / 100, 0.0])
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 1)
    assert box_iou([[5, 5, 5, 5]], a).tolist() == [[0.0]]  # a zero-area box overlaps nothing,
    assert box_iou([[5, 5, 5, 5]], [[5, 5, 5, 5]]).tolist() == [[0.0]]  # not even itself (COCO: 0, not 0/0)


def test_mean_iou_is_over_the_centroid_matches():
    g = truth([obj(0, 5, 5, 10), obj(0, 60, 60, 10)])
    p = preds(
        [
            det(0, 0.9, 10, 5, [5, 0, 15, 10]),
            det(0, 0.9, 60, 60, [55, 55, 65, 65]),
            det(0, 0.5, 90, 90, [85, 85, 95, 95]),
        ]
    )
    assert dm.mean_iou(p, g, image_size=SIZE) == pytest.approx((1 / 3 + 1) / 2)
    assert math.isnan(dm.mean_iou(preds([det(0, 1, 90, 90, [85, 85, 95, 95])]), truth([obj(0, 5, 5)]), image_size=SIZE))
    with pytest.raises(ValueError, match="no boxes"):
        dm.mean_iou(preds([det(0, 1, 5, 5)]), truth([obj(0, 5, 5)]), image_size=SIZE)


# -- COCO AP ----------------------------------------------------------------------------------------------------


def test_ap_by_hand_with_101_point_interpolation():
    """Two objects; detections by score TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. The envelope
    is 1 up to recall 0.5 (51 points: 0, ..., 0.50) and 2/3 above (50 points): AP = (51 + 50 * 2/3) / 101."""
    g = truth([obj(0, 20, 20, 10), obj(0, 60, 60, 10)])
    p = preds(
        [
            det(0, 0.9, 20, 20, [15, 15, 25, 25]),
            det(0, 0.8, 80, 20, [75, 15, 85, 25]),
            det(0, 0.7, 60, 60, [55, 55, 65, 65]),
        ]
    )
    assert coco_map(p, g, 1, iou_thresholds=(0.5,)) == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert coco_map(p, g, 1) == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)  # exact boxes: every IoU


def test_ap_reads_the_precision_envelope_so_a_false_positive_ranked_first_costs_nothing():
    """By score FP, TP, TP on two objects: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. The envelope (the best
    precision at this recall or beyond) is 2/3 everywhere, so AP = 2/3; the raw curve would give less."""
    g = truth([obj(0, 20, 20, 10), obj(0, 60, 60, 10)])
    p = preds(
        [
            det(0, 0.9, 80, 20, [75, 15, 85, 25]),
            det(0, 0.8, 20, 20, [15, 15, 25, 25]),
            det(0, 0.7, 60, 60, [55, 55, 65, 65]),
        ]
    )
    assert coco_map(p, g, 1, iou_thresholds=(0.5,)) == pytest.approx(2 / 3, abs=1e-12)


def test_ap_averages_the_iou_thresholds_each_box_passes():
    """One object, one detection of IoU 0.8 (a 10x10 box and its 10x8 part): it is a TP for thresholds 0.50
    to 0.80 (7 of 10; 0.80 itself is `>=`), so AP@[.5:.95] = 0.7 and AP@0.5 = 1."""
    g = truth([obj(0, 20, 20, 10)])
    p = preds([det(0, 0.9, 20, 19, [15, 15, 25, 23])])
    assert box_iou([[15, 15, 25, 23]], [[15, 15, 25, 25]])[0, 0] == 0.8
    assert coco_map(p, g, 1, iou_thresholds=(0.5,)) == pytest.approx(1.0)
    assert coco_map(p, g, 1) == pytest.approx(0.7)


def test_ap_edge_cases_no_object_no_prediction_wrong_class():
    box = [15, 15, 25, 25]
    g = truth([obj(0, 20, 20, 10)])
    assert math.isnan(coco_map(preds([det(0, 1, 20, 20, box)]), truth([]), 1))  # no object: undefined (COCO -1)
    assert coco_map(preds([]), g, 1) == 0.0
    assert coco_map(preds([det(1, 1, 20, 20, box)]), g, 2) == 0.0  # all wrong class
    # a class with predictions but no object is left out of the mean, as COCO leaves it out
    assert coco_map(preds([det(0, 1, 20, 20, box), det(1, 1, 70, 70, [65, 65, 75, 75])]), g, 2) == pytest.approx(1)
    with pytest.raises(ValueError, match="no boxes"):
        coco_map(preds([det(0, 1, 20, 20)]), g, 1)


def test_ap_keeps_the_100_best_detections_per_image_and_class():
    g = truth([obj(0, 20, 20, 10)])
    fps = [det(0, 0.9, 80, 80, [75, 75, 85, 85])]
    hit = det(0, 0.1, 20, 20, [15, 15, 25, 25])
    assert coco_map(preds(fps * 99 + [hit]), g, 1, iou_thresholds=(0.5,)) == pytest.approx(0.01)
    assert coco_map(preds(fps * 100 + [hit]), g, 1, iou_thresholds=(0.5,)) == 0.0
    assert coco_map(preds(fps * 100 + [hit]), g, 1, iou_thresholds=(0.5,), max_dets=101) == pytest.approx(1 / 101)


def test_ap_matches_each_detection_to_the_free_object_of_highest_iou():
    """The 0.9 detection overlaps both objects, B more; it takes B, and the 0.8 detection, which fits A only
    at IoU 0.6, still finds A free: AP 1. Matching the first object above the threshold would give A to 0.9
    and leave 0.8 without a match."""
    a, b = [0, 0, 10, 10], [4, 0, 14, 10]
    g = truth([[0, *a], [0, *b]])
    p = preds([det(0, 0.9, 8.5, 5, [3, 0, 14, 10]), det(0, 0.8, 4, 5, [-1, 0, 9, 10])])
    iou = box_iou([[3, 0, 14, 10], [-1, 0, 9, 10]], [a, b])
    assert iou[0, 1] > iou[0, 0] >= 0.5 and iou[1, 0] >= 0.5 > iou[1, 1]
    assert coco_map(p, g, 1, iou_thresholds=(0.5,)) == pytest.approx(1.0)


def test_ap_gives_a_detection_with_equal_ious_the_last_such_object_as_cocoeval_does():
    """The 0.9 detection overlaps A and B equally (IoU 2/3); COCOeval's `<` lets the later object, B, win the tie,
    which leaves A for the 0.8 detection (IoU 9/11 with A, 1/3 with B): AP 1. The first-wins reading gives 51/101."""
    a, b = [0, 0, 10, 10], [4, 0, 14, 10]
    g = truth([[0, *a], [0, *b]])
    p = preds([det(0, 0.9, 7, 5, [2, 0, 12, 10]), det(0, 0.8, 4, 5, [-1, 0, 9, 10])])
    iou = box_iou([[2, 0, 12, 10], [-1, 0, 9, 10]], [a, b])
    assert iou[0, 0] == iou[0, 1] and iou[1, 0] >= 0.5 > iou[1, 1]
    assert coco_map(p, g, 1, iou_thresholds=(0.5,)) == pytest.approx(1.0)


# -- the summary ------------------------------------------------------------------------------------------------


def test_the_summary_names_every_metric_with_its_threshold_and_defines_it():
    g = truth([obj(0, 20, 20, 10)])
    with_boxes = dm.summary(preds([det(0, 0.9, 20, 20, [15, 15, 25, 25])]), g, image_size=SIZE, num_classes=1)
    assert list(with_boxes) == list(dm.DEFINITIONS)
    without = dm.summary(preds([det(0, 0.9, 20, 20)]), g, image_size=SIZE, num_classes=1)
    assert set(with_boxes) - set(without) == {"mean_iou_d0.2", "map_iou0.5", "map_iou0.5-0.95"}
    for key in with_boxes:
        assert any(t in key for t in ("d0.2", "1cell", "iou0.5")) or key.startswith("count_"), key
    with pytest.raises(ValueError, match="no boxes"):
        dm.summary(preds([det(0, 0.9, 20, 20)]), g, image_size=SIZE, num_classes=1, boxes=True)
