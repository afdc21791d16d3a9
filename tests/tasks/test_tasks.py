"""The task protocol: what a dataset's task means for training targets, loss, metrics and a conversion's parity."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.core.errors import EdgepipeError
from edgepipe.tasks import TASKS, task_of
from edgepipe.tasks.classification import classification_metrics
from edgepipe.tasks.detection_decode import encode_batch

INFO = {"task": "detection", "classes": ["0", "1", "7"], "input_shape": [96, 96, 1]}
DET = TASKS["detection"]


def boxes(*objects, rows=6):
    """One image's padded ground truth from (class, x0, y0, x1, y1) tuples."""
    gt = np.zeros((rows, 5), np.float32)
    gt[:, 0] = -1
    for i, o in enumerate(objects):
        gt[i] = o
    return gt


def perfect_outputs(y, size_head=True):
    """What a perfect model outputs for labels `y`: the encoded heat map (and sizes)."""
    heat, size, _ = encode_batch(y, (12, 12), 3)
    return np.concatenate([heat, size], -1) if size_head else heat


def test_a_dataset_without_a_task_classifies_and_an_unknown_task_is_one_line():
    assert task_of({"classes": ["a", "b"]}).name == "classification"
    with pytest.raises(EdgepipeError, match=r"task 'segmentation' is not one edgepipe knows.*rerun its data stage"):
        task_of({"task": "segmentation"})


def test_classification_is_what_edgepipe_computed_before_tasks():
    c = TASKS["classification"]
    info = {"classes": ["a", "b", "c"]}
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8]], np.float32)
    m = c.metrics(y, probs, info)
    assert m["accuracy"] == 0.75 and m == classification_metrics(y, probs.argmax(1), info["classes"]) | {
        "loss": pytest.approx(-np.mean(np.log([0.8, 0.7, 0.3, 0.8])))
    }
    assert np.array_equal(c.targets(y, info), np.eye(3, dtype=np.float32)[y])
    assert c.agreement(probs, probs[:, [0, 2, 1]], info) == 0.25  # only image 0 (class a) keeps its class
    assert c.check_output((3,), info) is None and c.check_output((4,), info)


def test_detection_of_perfect_outputs_scores_one_and_boxes_match():
    y = np.stack([boxes((0, 10, 10, 30, 34), (2, 60, 50, 80, 80)), boxes(), boxes((1, 40, 40, 52, 70))])
    m = DET.metrics(y, perfect_outputs(y), INFO)
    assert m["f1_d0.2"] == 1.0 and m["f1_1cell"] == 1.0 and m["count_mae"] == 0.0
    # a decoded centre is its cell's centre: these boxes' centres are up to 4 px off it, IoU 0.5-0.85
    assert m["map_iou0.5"] == pytest.approx(1.0) and 0.6 < m["mean_iou_d0.2"] < 0.9
    centred = np.stack([boxes((0, 8, 8, 32, 32))])  # centre (20, 20): a cell's centre
    assert DET.metrics(centred, perfect_outputs(centred), INFO)["mean_iou_d0.2"] == pytest.approx(1.0)
    assert "one prediction per object" in m["definitions"]["precision_d0.2"]
    # no size head: centroids only, no box metrics
    m = DET.metrics(y, perfect_outputs(y, size_head=False), INFO)
    assert m["f1_d0.2"] == 1.0 and "map_iou0.5" not in m
    # a model with a size head that finds nothing scores 0 on the box metrics, it does not lose them
    silent = perfect_outputs(y)
    silent[..., 0], silent[..., 1:4] = 1.0, 0.0
    m = DET.metrics(y, silent, INFO)
    assert m["f1_d0.2"] == 0.0 and m["map_iou0.5"] == 0.0 and m["map_iou0.5-0.95"] == 0.0


def test_detection_training_targets_carry_the_size_and_its_mask():
    y = np.stack([boxes((2, 60, 50, 84, 74))])
    t = DET.targets(y, INFO)
    assert t.shape == (1, 12, 12, 3 + 1 + 2 + 1)
    r, c = 62 // 8, 72 // 8  # the cell of the centre (72, 62)
    assert t[0, r, c, 3] == 1 and t[0, r, c, 0] == 0 and t[0, r, c, 6] == 1
    assert t[0, r, c, 4:6] == pytest.approx([24 / 96, 24 / 96])
    # the margin (3 px): the centre is on column 8's edge and 2 px from row 8's, so those cells are the
    # object's too, with its class, size and mask; row 6 (6 px away) and column 10 (8 px) are not
    claimed = {(int(i), int(j)) for i, j in zip(*np.nonzero(t[0, :, :, 0] == 0))}
    assert claimed == {(7, 8), (7, 9), (8, 8), (8, 9)}
    for i, j in claimed:
        assert t[0, i, j, 3] == 1 and t[0, i, j, 6] == 1 and t[0, i, j, 4:6] == pytest.approx([0.25, 0.25])
    assert t[..., 0].sum() == 140 and t[..., 6].sum() == 4


def test_detection_targets_with_no_margin_are_fomos_single_cell(monkeypatch):
    from edgepipe.tasks import detection

    monkeypatch.setattr(detection, "CENTRE_MARGIN_PX", 0.0)
    y = np.stack([boxes((2, 60, 50, 84, 74))])
    t = DET.targets(y, INFO)
    assert t[..., 0].sum() == 143 and t[..., 6].sum() == 1 and t[0, 7, 9, 3] == 1
    assert np.array_equal(t[..., :4], encode_batch(y, (12, 12), 3)[0])


def test_a_cell_two_objects_claim_goes_to_the_nearest_centre_and_no_centre_cell_is_taken():
    # centres (22, 20) and (34, 20): cells (2, 2) and (2, 4); column 3 (24-32 px) is 2 px from both
    y = np.stack([boxes((0, 12, 10, 32, 30), (1, 24, 8, 44, 32)), boxes((0, 13, 10, 31, 30), (1, 25, 8, 45, 32))])
    t = DET.targets(y, INFO)
    assert t[0, 2, 2, 1] == 1 and t[0, 2, 4, 2] == 1  # each centre's own cell is its own
    assert t[0, 2, 3, 1] == 1  # equally near: the first object listed
    assert t[1, 2, 3, 1] == 1  # 2 px from (22, 20), 3 px from (35, 20): the nearer
    assert t[1, 2, 3, 4:6] == pytest.approx([18 / 96, 20 / 96])


def test_detection_loss_weighs_object_cells_and_learns_sizes_only_where_objects_are():
    tf = pytest.importorskip("edgepipe.core._tf").tf
    y = np.stack([boxes((0, 10, 10, 30, 34))])
    t = DET.targets(y, INFO)
    perfect = t[..., :6].copy()  # what the targets ask for: the centre's cell and the cell 2 px below it
    assert t[..., 6].sum() == 2
    loss = DET.loss(INFO)
    assert float(loss(tf.constant(t), tf.constant(perfect))) == pytest.approx(0.0, abs=1e-4)
    missed = perfect.copy()
    r, c = 22 // 8, 20 // 8
    missed[0, r, c, :4] = [1, 0, 0, 0]  # the object's cell called background
    wrong_bg = perfect.copy()
    wrong_bg[0, 0, 11, :4] = [0, 1, 0, 0]  # one background cell called an object
    l_missed = float(loss(tf.constant(t), tf.constant(missed)))
    l_bg = float(loss(tf.constant(t), tf.constant(wrong_bg)))
    assert l_missed == pytest.approx(100 * l_bg, rel=1e-3)  # FOMO's object weight
    moved = perfect.copy()
    moved[0, 5, 5, 4:] = 0.9  # a size where no object is: not learnt
    assert float(loss(tf.constant(t), tf.constant(moved))) == pytest.approx(0.0, abs=1e-4)
    moved[t[..., 6] == 1, 4:] += 0.1  # the object's size off by 0.1 in w and h: L1 0.2
    assert float(loss(tf.constant(t), tf.constant(moved))) == pytest.approx(0.2, abs=1e-3)


def test_detection_agreement_is_on_decoded_detections_not_raw_values():
    y = np.stack([boxes((0, 10, 10, 30, 34)), boxes((1, 40, 40, 52, 70))])
    a = perfect_outputs(y)
    b = a.copy()
    b[..., :4] = np.where(a[..., :4] == 1, 0.9, 0.1 / 3)  # other probabilities, the same detections
    assert DET.agreement(a, b, INFO) == 1.0
    b[1, :, :, 0], b[1, :, :, 1:4] = 1.0, 0.0  # the second image's object lost
    assert DET.agreement(a, b, INFO) == 0.5


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 5)), r"shape \[2, 5\], not \(images, max_objects, 5\)"),
        (np.array([[[3, 0, 0, 5, 5]]], np.float32), r"box classes run 3..3 for 3 classes"),
        (np.array([[[0.5, 0, 0, 5, 5]]], np.float32), r"box classes run"),
        (np.array([[[0, 5, 0, 5, 5]]], np.float32), r"a box has no area"),
        (np.array([[[0, 0, 0, np.nan, 5]]], np.float32), r"NaN or infinity"),
    ],
)
def test_detection_labels_are_refused_in_one_line(bad, message):
    with pytest.raises(EdgepipeError, match=message) as e:
        DET.check_labels(bad, INFO["classes"], "synth:digits: train")
    assert "\n" not in str(e.value) and "synth:digits: train" in str(e.value)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=5, max_size=5),
        min_size=1,
        max_size=4,
    )
)
def test_any_box_array_is_accepted_or_refused_in_one_line(rows):
    y = np.array([rows], np.float32)
    try:
        out = DET.check_labels(y, INFO["classes"], "here")
    except EdgepipeError as e:
        assert "\n" not in str(e)
        return
    real = out[..., 0] >= 0
    assert np.all(out[..., 0] == np.round(out[..., 0])) and np.all((out[..., 3] > out[..., 1])[real])


def test_stages_built_for_classifiers_refuse_a_detection_dataset_in_one_line(tmp_path):
    from types import SimpleNamespace

    from edgepipe.core.params import build
    from edgepipe.core.stage import StageIO
    from edgepipe.datasets.artifact import Dataset, write_npz
    from edgepipe.stages.transfer import TransferParams, run_transfer_stage
    from edgepipe.training.distill import check_teacher

    y = np.stack([boxes((0, 10, 10, 30, 34))])
    ds = Dataset(dict(INFO), {s: (np.zeros((1, 96, 96, 1), np.uint8), y) for s in ("train", "val", "test")})
    classifier = SimpleNamespace(input_shape=(None, 96, 96, 1), output_shape=(None, 3))
    with pytest.raises(EdgepipeError, match=r"^teacher maps .* not what a detection model of this data outputs"):
        check_teacher(classifier, ds)  # a detector distils from a detector
    for shape in [(None, 12, 12, 4), (None, 12, 12, 6)]:  # with or without sizes
        check_teacher(SimpleNamespace(input_shape=(None, 96, 96, 1), output_shape=shape), ds)
    (tmp_path / "data").mkdir()
    write_npz(tmp_path / "data/dataset.npz", {f"{k}_{s}": a for s, xy in ds.splits.items() for k, a in zip("xy", xy)})
    (tmp_path / "data/dataset.json").write_text(json.dumps(INFO))
    io = StageIO(inputs={"data": str(tmp_path / "data")}, out=tmp_path / "out", work=tmp_path)
    with pytest.raises(EdgepipeError, match=r"^transfer learning is built for classifiers; .*fix: train the detection"):
        run_transfer_stage(build(TransferParams, {}, "t"), io)
    assert not (tmp_path / "out").exists()


def test_the_detection_nets_output_the_task_grid_and_fomo_keeps_fast_batchnorm_statistics():
    keras = pytest.importorskip("edgepipe.core._tf").keras
    from edgepipe.training.nets import build_model

    fomo = build_model("fomo", (96, 96, 1), 3, {}, check_output=lambda s: DET.check_output(s, INFO))
    assert fomo.output_shape == (None, 12, 12, 4)
    norms = [layer for layer in fomo.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 for layer in norms)  # not Keras' 0.999: see fomo's docstring
    cand = build_model(
        "centroid_net",
        (96, 96, 1),
        3,
        {"size_head": True, "widths": [8, 24, 32, 32, 32]},
        check_output=lambda s: DET.check_output(s, INFO),
    )
    assert cand.output_shape == (None, 12, 12, 6)
