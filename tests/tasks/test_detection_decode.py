"""Heat map to detections and boxes to targets: thresholds, 8-connected fusion, weighted centres, the size head,
the order of the output, and the round trip encode -> perfect heat map -> decode -> F1 1.0."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.tasks import detection_metrics as dm
from edgepipe.tasks.detection_decode import (
    CLASS,
    CX,
    CY,
    DETECTION_COLUMNS,
    SCORE,
    X0,
    X1,
    Y0,
    Y1,
    centre_cell,
    decode,
    decode_batch,
    encode,
    encode_batch,
    objects,
)

GRID = (12, 12)  # a 96x96 image at stride 8


def heat(cells: dict, classes: int = 2, grid=GRID) -> np.ndarray:
    """A heat map with `{(class, row, col): probability}` set; background takes the rest of each cell."""
    h = np.zeros(grid + (classes + 1,), np.float32)
    for (c, r, q), p in cells.items():
        h[r, q, c + 1] = p
    h[:, :, 0] = 1 - h[:, :, 1:].sum(-1)
    return h


def padded(rows, max_objects=8) -> np.ndarray:
    gt = np.full((max_objects, 5), -1, np.float32)
    gt[: len(rows)] = np.array(rows, np.float32).reshape(-1, 5)
    return gt


# -- decoding ---------------------------------------------------------------------------------------------------


def test_a_cold_map_decodes_to_no_detection():
    out = decode(heat({}))
    assert out.shape == (0, len(DETECTION_COLUMNS)) and out.dtype == np.float32


def test_a_single_hot_cell_is_one_detection_at_the_cell_centre():
    out = decode(heat({(1, 3, 5): 0.9}))
    assert out.shape == (1, 8)
    assert out[0].tolist() == pytest.approx([1, 0.9, 5.5 * 8, 3.5 * 8] + [math.nan] * 4, nan_ok=True)


def test_hot_means_strictly_above_the_threshold():
    """0.5 is an exact int8 output value (scale 1/256): Edge Impulse keeps cells with p > 0.5, not >= 0.5."""
    assert len(decode(heat({(0, 1, 1): 0.5}))) == 0
    assert len(decode(heat({(0, 1, 1): np.nextafter(np.float32(0.5), np.float32(1))}))) == 1
    assert len(decode(heat({(0, 1, 1): 0.45}), threshold=0.4)) == 1
    assert len(decode(heat({(0, 1, 1): 0.45}), threshold=0.45)) == 0


def test_the_threshold_is_compared_in_float32():
    """float32(0.3) is slightly above the double 0.3: a C port comparing `p > 0.3f` drops it, so Python must too."""
    assert float(np.float32(0.3)) > 0.3
    assert len(decode(heat({(0, 1, 1): 0.3}), threshold=0.3)) == 0


def test_cells_touching_by_a_side_or_a_corner_fuse_into_one_detection():
    """8-connectivity: a diagonal chain is one blob; score is its maximum; centre the probability-weighted mean."""
    out = decode(heat({(0, 2, 2): 0.6, (0, 3, 3): 0.9, (0, 4, 4): 0.6, (0, 4, 5): 0.7}))
    assert len(out) == 1
    weights = [0.6, 0.9, 0.6, 0.7]
    cx = 8 * np.dot(weights, [2.5, 3.5, 4.5, 5.5]) / sum(weights)
    cy = 8 * np.dot(weights, [2.5, 3.5, 4.5, 4.5]) / sum(weights)
    assert out[0, [CLASS, SCORE, CX, CY]].tolist() == pytest.approx([0, 0.9, cx, cy], rel=1e-6)


def test_cells_a_cell_apart_or_of_other_classes_stay_apart():
    out = decode(heat({(0, 2, 2): 0.9, (0, 2, 4): 0.9, (1, 3, 3): 0.9, (0, 9, 9): 0.8, (1, 9, 10): 0.7}))
    assert out[:, [CLASS, CX, CY]].tolist() == [[0, 20, 20], [0, 36, 20], [0, 76, 76], [1, 28, 28], [1, 84, 76]]


def test_a_ring_is_one_blob_and_its_hole_is_not_a_detection():
    ring = {(0, r, q): 0.8 for r in range(2, 5) for q in range(2, 5) if (r, q) != (3, 3)}
    out = decode(heat(ring))
    assert out[:, [CLASS, CX, CY]].tolist() == [[0, 28, 28]]


def test_detections_come_by_class_then_by_the_raster_position_of_their_first_cell():
    """The order is part of the contract (the C port lists them the same way): class 0 before 1, and within a
    class the blob whose top-most, then left-most cell comes first in raster order."""
    cells = {(1, 0, 0): 0.9, (0, 5, 1): 0.9, (0, 4, 7): 0.6, (0, 5, 6): 0.99, (0, 1, 11): 0.7}
    out = decode(heat(cells))
    assert out[:, CLASS].tolist() == [0, 0, 0, 1]
    assert out[:, SCORE].tolist() == pytest.approx([0.7, 0.99, 0.9, 0.9])  # (1,11) < {(4,7),(5,6)} < (5,1)


def test_the_size_head_gives_a_box_centred_on_the_centre_read_at_the_peak_cell():
    h = heat({(0, 4, 4): 0.6, (0, 4, 5): 0.9, (0, 4, 6): 0.9})
    size = np.zeros(GRID + (2,), np.float32)
    size[4, 4] = (0.5, 0.5)
    size[4, 5] = (0.25, 0.125)  # the first of the two peaks in raster order
    size[4, 6] = (1.0, 1.0)
    (det,) = decode(h, size)
    cx, cy = det[CX], det[CY]
    assert det[[X0, Y0, X1, Y1]].tolist() == pytest.approx([cx - 12, cy - 6, cx + 12, cy + 6], abs=1e-4)


def test_a_negative_size_is_a_zero_size_box():
    size = np.full(GRID + (2,), -0.1, np.float32)
    (det,) = decode(heat({(0, 4, 4): 0.9}), size)
    assert det[[X0, Y0, X1, Y1]].tolist() == [36, 36, 36, 36]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="heat map"):
        decode(np.zeros((12, 12, 1), np.float32))
    with pytest.raises(ValueError, match="size map"):
        decode(heat({}), np.zeros((12, 12, 3), np.float32))
    with pytest.raises(ValueError, match="2 heat maps but 1 size maps"):
        decode_batch(np.stack([heat({})] * 2), np.zeros((1, 12, 12, 2), np.float32))


def test_decoding_is_deterministic_and_the_batch_is_the_images():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (5, 12, 12, 4)).astype(np.float32)
    maps = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    sizes = rng.uniform(0, 0.3, (5, 12, 12, 2)).astype(np.float32)
    batch = decode_batch(maps, sizes, threshold=0.3)
    assert sum(len(b) for b in batch) > 5
    for m, s, b in zip(maps, sizes, batch):
        assert np.array_equal(decode(m, s, threshold=0.3), b)
        assert np.array_equal(decode(m.copy(), s.copy(), threshold=0.3), b)


# -- encoding ---------------------------------------------------------------------------------------------------


def test_an_object_lights_the_cell_holding_its_centre_with_its_class_and_size():
    heat_t, size_t, mask = encode(padded([[1, 10, 20, 30, 44]]), GRID, num_classes=2)
    assert heat_t.shape == (12, 12, 3) and size_t.shape == (12, 12, 2) and mask.shape == (12, 12)
    assert np.argwhere(heat_t[:, :, 0] == 0).tolist() == [[4, 2]]  # centre (20, 32): col 20 // 8, row 32 // 8
    assert heat_t[4, 2].tolist() == [0, 0, 1]
    assert size_t[4, 2].tolist() == pytest.approx([20 / 96, 24 / 96])
    assert mask.sum() == 1 and mask[4, 2] == 1
    assert heat_t.sum(-1).tolist() == np.ones(GRID).tolist()


def test_a_centre_on_a_cell_edge_goes_right_and_down_and_the_image_edge_stays_inside():
    assert centre_cell([8, 8, 8, 8], GRID) == (1, 1)
    assert centre_cell([90, 90, 96, 96], GRID) == (11, 11)
    assert centre_cell([-10, -10, 0, 0], GRID) == (0, 0)


def test_a_shared_cell_keeps_the_larger_object_then_the_earlier_row():
    heat_t, size_t, _ = encode(padded([[0, 0, 0, 10, 10], [1, 2, 2, 8, 8]]), GRID, 2)
    assert heat_t[0, 0].tolist() == [0, 1, 0]
    heat_t, size_t, _ = encode(padded([[0, 2, 2, 8, 8], [1, 0, 0, 10, 10]]), GRID, 2)
    assert heat_t[0, 0].tolist() == [0, 0, 1] and size_t[0, 0].tolist() == pytest.approx([10 / 96] * 2)
    heat_t, _, _ = encode(padded([[1, 0, 0, 10, 10], [0, 0, 0, 10, 10]]), GRID, 2)
    assert heat_t[0, 0].tolist() == [0, 0, 1]


def test_padding_rows_are_skipped_wherever_they_are_and_bad_rows_refused():
    gt = padded([[-1, 0, 0, 0, 0], [0, 40, 40, 50, 50]])
    assert objects(gt)[0].tolist() == [0]
    assert encode(gt, GRID, 1)[2].sum() == 1
    with pytest.raises(ValueError, match="class 2.0"):
        encode(padded([[2, 0, 0, 8, 8]]), GRID, 2)
    with pytest.raises(ValueError, match="class 0.5"):
        encode(padded([[0.5, 0, 0, 8, 8]]), GRID, 2)
    with pytest.raises(ValueError, match="x1 < x0"):
        encode(padded([[0, 9, 0, 8, 8]]), GRID, 2)
    with pytest.raises(ValueError, match=r"\(max_objects, 5\)"):
        encode(np.zeros((3, 4), np.float32), GRID, 2)


def test_the_batch_encoding_is_the_images():
    gts = np.stack([padded([[0, 0, 0, 10, 10]]), padded([]), padded([[1, 50, 60, 70, 90], [0, 1, 2, 3, 4]])])
    heat_b, size_b, mask_b = encode_batch(gts, GRID, 2)
    for i, gt in enumerate(gts):
        h, s, m = encode(gt, GRID, 2)
        assert np.array_equal(heat_b[i], h) and np.array_equal(size_b[i], s) and np.array_equal(mask_b[i], m)


# -- the round trip ---------------------------------------------------------------------------------------------


@st.composite
def separated_objects(draw):
    """Up to 8 objects, 10-32 px, centres in distinct cells of even row and column (no two cells touch, so no
    two objects fuse), any class of 3."""
    cells = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=8, unique=True))
    rows = []
    for r, q in cells:
        cx = 16 * q + draw(st.floats(0.5, 7.5))  # clear of the cell edges, which float32 boxes could cross
        cy = 16 * r + draw(st.floats(0.5, 7.5))
        w, h = draw(st.floats(10, 32)), draw(st.floats(10, 32))
        rows.append([draw(st.integers(0, 2)), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return padded(rows, max_objects=10)


@settings(max_examples=60, deadline=None)
@given(st.lists(separated_objects(), min_size=1, max_size=4))
def test_encoding_then_decoding_a_perfect_heat_map_scores_f1_one(gts):
    """Every object comes back once, in its own cell, with its class and its size: every F1 is 1.0, the count
    is exact; the decoded box has the object's size (its centre is the cell's centre)."""
    gts = np.stack(gts)
    heat_t, size_t, _ = encode_batch(gts, GRID, 3)
    preds = decode_batch(heat_t, size_t)
    metrics = dm.summary(preds, gts, image_size=(96, 96), num_classes=3, boxes=False)
    for key in ("ei_f1_d0.2", "f1_d0.2", "f1_1cell", "count_exact"):
        assert metrics[key] == 1.0, key
    assert metrics["count_mae"] == 0.0
    for gt, pred in zip(gts, preds):
        classes, boxes = objects(gt)
        match = dm.match_centroids(pred, classes, boxes, image_size=(96, 96), max_distance_px=4 * math.sqrt(2))
        assert sorted(match.tolist()) == list(range(len(classes)))
        got = pred[:, [X1, Y1]] - pred[:, [X0, Y0]]
        want = (boxes[:, 2:] - boxes[:, :2])[match]
        assert got == pytest.approx(want, abs=1e-4)


def test_same_class_objects_in_touching_cells_fuse_into_one_detection_fomos_known_merge():
    gt = padded([[0, 10, 10, 22, 22], [0, 18, 10, 30, 22], [1, 34, 10, 46, 22]])  # centres x 16, 24, 40: cells
    h, s, _ = encode(gt, GRID, 2)  # (2, 2), (2, 3), (2, 5)
    assert np.argwhere(h[:, :, 0] == 0).tolist() == [[2, 2], [2, 3], [2, 5]]
    (pred,) = preds = [decode(h, s)]
    assert pred[:, [CLASS, CX, CY]].tolist() == [[0, 24, 20], [1, 44, 20]]
    counts = dm.centroid_counts(preds, gt[None], image_size=(96, 96), max_distance=0.2)
    assert (counts.tp, counts.fp, counts.fn) == (2, 0, 1)
