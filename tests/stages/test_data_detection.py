"""The data stage for detection: scenes drawn from the MNIST mirror, a user's COCO and YOLO files, boxes kept
with their images through splits, and the parameters that would move objects without their boxes refused."""

import json

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import build
from edgepipe.core.stage import StageIO
from edgepipe.datasets import synth_digits
from edgepipe.datasets.artifact import load_dataset
from edgepipe.stages.data import DataParams, dataset_files, run_data_stage
from tests.datasets.test_boxes import write_coco, write_yolo

SMALL = {"train": 40, "val": 10, "test": 12}


def stage(tmp_path, **params):
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    p = build(DataParams, params, "test")
    summary = run_data_stage(p, StageIO(inputs={}, out=out, work=tmp_path))
    return load_dataset(out), json.loads((out / "dataset.json").read_text()), summary


@pytest.fixture(scope="module")
def scenes():
    """30 drawn scenes of fake digits (one grey rectangle per digit), without the mirror."""
    rng = np.random.default_rng(0)
    digits = np.zeros((50, 28, 28), np.uint8)
    for i in range(50):
        h, w = rng.integers(12, 21), rng.integers(8, 19)
        digits[i, (28 - h) // 2 : (28 - h) // 2 + h, (28 - w) // 2 : (28 - w) // 2 + w] = 80 + 15 * (i % 10)
    images, boxes = synth_digits.generate(digits, np.arange(50) % 10, 30, seed=1, classes=["0", "1", "7"])
    return images[..., None], boxes


def test_synth_digits_draws_each_split_from_its_own_digits_and_tests_on_the_held_out_family(tmp_path, mnist_dir):
    mirror = [str(mnist_dir.parent)]
    ds, info, summary = stage(tmp_path, source="synth:digits", task="detection", mirror=mirror, synth=SMALL)
    assert info["task"] == "detection" and info["classes"] == ["0", "1", "7"] and info["input_shape"] == [96, 96, 1]
    assert info["sizes"] == SMALL and info["grid_stride"] == 8 and info["max_objects"] == 6
    assert info["synth"]["generator_version"] == synth_digits.VERSION
    assert info["synth"]["families"] == {"train": "base", "val": "base", "test": "heldout"}
    x, y = ds.splits["train"]
    assert x.dtype == np.uint8 and y.shape == (40, 6, 5) and y.dtype == np.float32
    assert info["counts"]["train"] == np.bincount(y[..., 0][y[..., 0] >= 0].astype(int), minlength=3).tolist()
    assert "40 train / 10 val / 12 test scenes" in summary and (tmp_path / "out/samples.png").stat().st_size > 5000
    again, *_ = stage(tmp_path / "again", source="synth:digits", task="detection", mirror=mirror, synth=SMALL)
    assert all(np.array_equal(a, b) for s in SMALL for a, b in zip(ds.splits[s], again.splits[s]))
    other, *_ = stage(tmp_path / "seed", source="synth:digits", task="detection", mirror=mirror, synth=SMALL, seed=1)
    assert not np.array_equal(other.splits["train"][0], x)
    base, *_ = stage(
        tmp_path / "base", source="synth:digits", task="detection", mirror=mirror, synth=SMALL | {"test_family": "base"}
    )
    assert np.array_equal(base.splits["train"][0], x) and not np.array_equal(
        base.splits["test"][0], ds.splits["test"][0]
    )
    # the key hashes MNIST's files: the scenes are drawn from them
    p = build(DataParams, {"source": "synth:digits", "task": "detection", "mirror": mirror}, "t")
    assert {f.name for f in dataset_files(p)} >= {"train-images-idx3-ubyte.gz"}


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_a_users_coco_or_yolo_files_are_split_with_their_boxes(tmp_path, scenes, fmt):
    images, boxes = scenes
    write = write_coco if fmt == "coco" else write_yolo
    where = write(tmp_path / "set", images, boxes, ["zero", "one", "seven"])
    ds, info, _ = stage(tmp_path, source=f"{fmt}:{where}", task="detection", val_fraction=0.2, test_fraction=0.2)
    assert info["sizes"] == {"train": 18, "val": 6, "test": 6} and info["classes"] == ["zero", "one", "seven"]
    rows = int((boxes[..., 0] >= 0).sum(1).max())  # as many rows as the most crowded image needs
    got = {
        ds.splits[s][0][i].tobytes(): ds.splits[s][1][i]
        for s in ("train", "val", "test")
        for i in range(len(ds.splits[s][0]))
    }
    for image, want in zip(images, boxes):  # every image kept its own boxes through the shuffle
        np.testing.assert_allclose(got[image.tobytes()], want[:rows], atol=1e-4)
    assert len(dataset_files(build(DataParams, {"source": f"{fmt}:{where}", "task": "detection"}, "t"))) >= 30


def test_yolo_split_folders_are_kept_and_a_missing_test_split_is_carved_from_train(tmp_path, scenes):
    images, boxes = scenes
    write_yolo(tmp_path / "set/train_tmp", images[:24], boxes[:24], ["a", "b", "c"])
    write_yolo(tmp_path / "set/val_tmp", images[24:], boxes[24:], ["a", "b", "c"])
    root = tmp_path / "set"
    for split in ("train", "val"):
        for part in ("images", "labels"):
            (root / part).mkdir(exist_ok=True)
            (root / f"{split}_tmp" / part).rename(root / part / split)
    (root / "train_tmp/classes.txt").rename(root / "classes.txt")
    ds, info, _ = stage(tmp_path, source=f"yolo:{root}", task="detection", test_fraction=0.25)
    assert info["sizes"] == {"train": 18, "val": 6, "test": 6}
    assert {i.tobytes() for i in ds.splits["val"][0]} == {i.tobytes() for i in images[24:]}


@pytest.mark.parametrize(
    "params, says",
    [
        ({"source": "keras:mnist", "task": "detection"}, r"gives no boxes; fix: for task: detection use synth:digits"),
        ({"source": "synth:digits"}, r"synth:digits is a detection source: add task: detection"),
        (
            {"source": "synth:digits", "task": "detection", "image_size": [64, 64]},
            r"image_size does not apply to synth",
        ),
        ({"source": "coco:x.json", "task": "detection", "image_size": [60, 60]}, r"not a multiple of 8"),
        ({"source": "synth:digits", "task": "detection", "augment": {"rotate": 0.1}}, r"no geometric augmentation"),
        (
            {"source": "synth:digits", "task": "detection", "balance": "oversample"},
            r"no geometric augmentation or balance",
        ),
        ({"source": "synth:digits", "task": "detection", "synth": {"classes": ["0", "0"]}}, r"distinct digits"),
        (
            {"source": "synth:digits", "task": "detection", "synth": {"draw": {"family": "moon"}}},
            r"data.synth.draw.family: 'moon' is not a valid choice",
        ),
    ],
)
def test_parameters_that_cannot_make_a_detection_dataset_are_refused_at_load(params, says):
    with pytest.raises((ValueError, EdgepipeError), match=says) as e:
        build(DataParams, params, "data")
    assert "\n" not in str(e.value) and "fix:" in str(e.value)


def test_missing_files_are_refused_before_anything_is_read(tmp_path):
    p = build(DataParams, {"source": f"yolo:{tmp_path / 'nowhere'}", "task": "detection"}, "t")
    with pytest.raises(EdgepipeError, match=r"yolo:.*nowhere: no such folder; fix: give the path"):
        dataset_files(p)


def test_drawn_scenes_need_mnist_and_the_preflight_says_so_before_the_run(tmp_path):
    from edgepipe.datasets import sources

    need = sources.requirement("synth:digits", [str(tmp_path)])
    assert need is not None and need.what == "the mnist dataset"
    assert sources.requirement("synth:digits", [str(tmp_path)]).fix == sources.requirement("keras:mnist", []).fix
