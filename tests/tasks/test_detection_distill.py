"""Distilling a detector: the task's soft loss between heat maps, and a student that learns its teacher's outputs."""

import numpy as np
import pytest

from edgepipe.tasks import TASKS
from tests.tasks.test_tasks import INFO, boxes

DET = TASKS["detection"]


def heat_maps(seed, size_head=True, n=2):
    """Random per-cell class distributions over background and 3 classes (and sizes in 0..1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, 12, 12, 4)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return np.concatenate([probs, rng.uniform(0, 1, (n, 12, 12, 2)).astype(np.float32)], -1) if size_head else probs


def soft(teacher, student, temperature=2.0, object_weight=1.0):
    from types import SimpleNamespace

    fn = DET.soft_loss(INFO, SimpleNamespace(object_weight=object_weight), temperature)
    return float(fn(teacher, student))


def test_the_soft_loss_is_zero_on_the_teachers_own_outputs_and_grows_with_the_distance():
    pytest.importorskip("edgepipe.core._tf")
    t, s = heat_maps(0), heat_maps(1)
    assert soft(t, t) == pytest.approx(0.0, abs=1e-5)
    near = t.copy()
    near[..., :4] = 0.8 * t[..., :4] + 0.2 * s[..., :4]
    assert 0 < soft(t, near) < soft(t, s)
    # the size term: only where the teacher sees an object, only when both models have sizes
    moved = t.copy()
    moved[..., 4:] = 1 - t[..., 4:]
    assert soft(t, moved) > 0.1 and soft(t[..., :4], moved[..., :4]) == pytest.approx(0.0, abs=1e-5)
    background = t.copy()
    background[..., :4] = [1, 0, 0, 0]
    shifted = background.copy()
    shifted[..., 4:] = 1 - background[..., 4:]
    assert soft(background, shifted) == pytest.approx(0.0, abs=1e-5)


def test_the_soft_targets_are_the_teachers_logits_softened_by_the_temperature():
    """softmax(log p / T) == softmax(logits / T): KL computed from probabilities equals Hinton's on logits."""
    tf = pytest.importorskip("edgepipe.core._tf").tf
    rng = np.random.default_rng(3)
    zt, zs = rng.normal(0, 3, (1, 12, 12, 4)), rng.normal(0, 3, (1, 12, 12, 4))
    pt, ps = tf.nn.softmax(zt).numpy(), tf.nn.softmax(zs).numpy()
    T = 4.0
    ref = tf.reduce_mean(tf.keras.losses.kl_divergence(tf.nn.softmax(zt / T), tf.nn.softmax(zs / T))).numpy()
    assert soft(pt.astype(np.float32), ps.astype(np.float32), temperature=T) == pytest.approx(T**2 * ref, rel=1e-3)


def test_a_detector_distilled_from_its_teacher_alone_comes_to_output_what_the_teacher_does(tmp_path):
    pytest.importorskip("edgepipe.core._tf")
    from edgepipe.core.params import build
    from edgepipe.core.stage import StageIO
    from edgepipe.datasets.artifact import Dataset
    from edgepipe.training.distill import DistillParams, distil
    from edgepipe.training.fit import seed_everything
    from edgepipe.training.nets import build_model

    seed_everything(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 96, 96, 1), dtype=np.uint8)
    y = np.stack([boxes((k % 3, 10, 10, 30, 34)) for k in range(64)])
    info = dict(INFO, preprocessing={"scale": 1 / 255.0, "mean": 0.0, "std": 1.0}, augment={})
    ds = Dataset(info, {"train": (x[:48], y[:48]), "val": (x[48:], y[48:]), "test": (x[48:], y[48:])})
    args = {"widths": [4, 8, 8], "head_filters": 8, "size_head": True}
    grid = {"check_output": lambda shape: DET.check_output(shape, INFO)}
    teacher = build_model("centroid_net", (96, 96, 1), 3, dict(args, widths=[8, 8, 8]), **grid)
    student = build_model("centroid_net", (96, 96, 1), 3, args, **grid)
    xs = ds.preprocess(x[48:])
    before = soft(teacher.predict(xs, verbose=0), student.predict(xs, verbose=0), object_weight=2.0)
    params = build(
        DistillParams,
        {
            "arch": "centroid_net",
            "epochs": 6,
            "batch_size": 16,
            "lr": 0.01,
            "alpha": 0.0,
            "temperature": 2.0,
            "object_weight": 2,
            "schedule": {"kind": "constant"},
            "early_stopping": {"enabled": False},
            "tensorboard": False,
        },
        "test",
    )
    (tmp_path / "out").mkdir()
    rows = distil(student, teacher, ds, params, StageIO(inputs={}, out=tmp_path / "out", work=tmp_path))
    after = soft(teacher.predict(xs, verbose=0), student.predict(xs, verbose=0), object_weight=2.0)
    assert len(rows) == 6 and after < 0.5 * before, (before, after)  # on held-back images, not only the trained
