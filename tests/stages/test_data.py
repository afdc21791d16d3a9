"""The data stage on real files: canonical MNIST IDX, keras:NAME via the mirror, PNG folders, npz."""

import gzip
import json

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import build
from edgepipe.core.stage import StageIO
from edgepipe.datasets.artifact import load_dataset, preprocess
from edgepipe.stages.data import DataParams, dataset_files, run_data_stage
from edgepipe.testing import write_idx, write_idx_dataset, write_png_folder


def stage(tmp_path, **params):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    p = build(DataParams, params, "test")
    summary = run_data_stage(p, StageIO(inputs={}, out=out, work=tmp_path))
    return load_dataset(out), json.loads((out / "dataset.json").read_text()), summary


def test_canonical_mnist_idx_keeps_official_test_split(tmp_path, mnist_dir):
    ds, info, summary = stage(tmp_path, source=f"idx:{mnist_dir}", limit_train=1000, val_fraction=0.2)
    assert info["sizes"] == {"train": 800, "val": 200, "test": 10000}
    assert info["input_shape"] == [28, 28, 1]
    assert ds.splits["test"][0].dtype == np.uint8
    # stratified: every class in val, in proportion
    assert min(info["counts"]["val"]) >= 15
    assert (tmp_path / "out/samples.png").stat().st_size > 1000
    assert "800 train / 200 val / 10000 test" in summary


def test_keras_source_uses_the_offline_mirror(tmp_path, mnist_dir):
    ds, info, _ = stage(tmp_path, source="keras:mnist", mirror=[str(mnist_dir.parent)], limit_train=200, limit_test=100)
    assert info["sizes"]["test"] == 100 and info["classes"][0] == "0"
    files = dataset_files(build(DataParams, {"source": "keras:mnist", "mirror": [str(mnist_dir.parent)]}, "t"))
    assert [f.name for f in files][0] == "train-images-idx3-ubyte.gz"


def test_fashion_mnist_from_mirror_has_names(tmp_path, mnist_dir):
    _, info, _ = stage(
        tmp_path, source="keras:fashion_mnist", mirror=[str(mnist_dir.parent)], limit_train=100, limit_test=50
    )
    assert info["classes"][-1] == "ankle boot"


def test_standardize_records_train_statistics(tmp_path):
    d = write_idx_dataset(tmp_path / "idx")
    ds, info, _ = stage(tmp_path, source=f"idx:{d}", normalize="standardize")
    x = ds.preprocess(ds.splits["train"][0])
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    assert info["preprocessing"]["formula"] == "x = (pixel * scale - mean) / std"
    assert np.allclose(preprocess(ds.splits["train"][0][:3], info["preprocessing"]), x[:3])


def test_png_folder_source_without_test_split_is_60_20_20(tmp_path):
    root = write_png_folder(tmp_path / "imgs", per_class=20)
    ds, info, _ = stage(tmp_path, source=f"folder:{root}", val_fraction=0.25, test_fraction=0.2, channels=3)
    assert info["classes"] == ["circle", "square", "stripe"]
    assert info["sizes"] == {"train": 36, "val": 12, "test": 12}
    assert info["input_shape"] == [16, 16, 3]


def test_folder_resize_and_grayscale(tmp_path):
    root = write_png_folder(tmp_path / "imgs", per_class=6)
    ds, info, _ = stage(tmp_path, source=f"folder:{root}", image_size=[8, 10], channels=1)
    assert info["input_shape"] == [8, 10, 1]


def test_corrupt_png_names_the_file(tmp_path):
    root = write_png_folder(tmp_path / "imgs", per_class=4)
    bad = root / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(EdgepipeError, match=r"broken.png: corrupt or unreadable image"):
        stage(tmp_path, source=f"folder:{root}")


def test_empty_class_folder_and_single_class(tmp_path):
    root = write_png_folder(tmp_path / "imgs", per_class=4)
    (root / "empty").mkdir()
    with pytest.raises(EdgepipeError, match="class folder 'empty' has no PNG"):
        stage(tmp_path, source=f"folder:{root}")
    one = tmp_path / "npz.npz"
    np.savez(one, x=np.zeros((10, 4, 4), np.uint8), y=np.zeros(10, np.int64))
    with pytest.raises(EdgepipeError, match="only one class"):
        stage(tmp_path, source=f"npz:{one}")


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(EdgepipeError, match=r"idx:.*nowhere: dataset directory not found; fix: check the path"):
        dataset_files(build(DataParams, {"source": f"idx:{tmp_path / 'nowhere'}"}, "t"))


def test_bad_idx_magic_and_count_mismatch(tmp_path):
    d = write_idx_dataset(tmp_path / "idx")
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 16))
    with pytest.raises(EdgepipeError, match="bad magic number"):
        stage(tmp_path, source=f"idx:{d}")
    d = write_idx_dataset(tmp_path / "idx2")
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(EdgepipeError, match="train has 120 images but 7 labels"):
        stage(tmp_path, source=f"idx:{d}")


def test_keras_offline_without_files_names_what_to_place(tmp_path, monkeypatch):
    from edgepipe.datasets import sources

    monkeypatch.setenv("EDGEPIPE_DATA_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setattr(sources, "SYSTEM_DIRS", ())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # keras' real download runs and fails here (no network); the error names the files and the mirror
    with pytest.raises(EdgepipeError, match=r"keras:cifar10: not found locally.*cifar-10-python.tar.gz"):
        stage(tmp_path, source="keras:cifar10")


def test_npz_source_and_balance(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (100, 6, 6, 3), np.uint8)
    y = np.array([0] * 80 + [1] * 20)
    f = tmp_path / "d.npz"
    np.savez(f, x_train=x, y_train=y, class_names=np.array(["common", "rare"]))
    _, info, _ = stage(tmp_path, source=f"npz:{f}", balance="oversample", val_fraction=0.1, test_fraction=0.2)
    assert info["counts"]["train"][0] == info["counts"]["train"][1]
    assert info["classes"] == ["common", "rare"]
    _, info, _ = stage(tmp_path, source=f"npz:{f}")
    assert info["imbalance_ratio"] == pytest.approx(4.0, rel=0.1)
    assert info["class_weights_balanced"][1] > info["class_weights_balanced"][0]


def test_augmentation_changes_train_batches_only(tmp_path):
    d = write_idx_dataset(tmp_path / "idx")
    ds, _, _ = stage(tmp_path, source=f"idx:{d}", augment={"rotate": 0.1, "translate": 0.2, "noise": 0.1})
    from edgepipe.datasets.augment import tf_dataset

    train = next(iter(tf_dataset(ds, "train", 8, training=True, seed=1)))[0].numpy()
    plain = ds.preprocess(ds.splits["train"][0])
    assert not any(np.allclose(train[0], p, atol=1e-3) for p in plain)
    test = next(iter(tf_dataset(ds, "test", 8, training=False)))[0].numpy()
    assert np.allclose(test, ds.preprocess(ds.splits["test"][0][:8]))


def test_tfds_source_reads_prepared_data_from_the_mirror(tmp_path):
    from edgepipe.testing import write_tfds_dataset

    write_tfds_dataset(tmp_path / "mirror" / "tfds")
    ds, info, _ = stage(tmp_path, source="tfds:tiny_shapes", mirror=[str(tmp_path / "mirror")])
    assert info["classes"] == ["nw", "ne", "sw", "se"]
    assert info["sizes"]["test"] == 20 and info["sizes"]["train"] + info["sizes"]["val"] == 60
    assert info["input_shape"] == [12, 12, 1]


def test_keras_cache_npz_layout_and_class_names(tmp_path):
    """keras' own download (~/.keras/datasets/mnist.npz) is found in a mirror too; class_names override."""
    from edgepipe.testing import synthetic_images

    x, y = synthetic_images(60, 4, 28)
    np.savez(tmp_path / "mnist.npz", x_train=x[:40, ..., 0], y_train=y[:40], x_test=x[40:, ..., 0], y_test=y[40:])
    _, info, _ = stage(
        tmp_path,
        source="keras:mnist",
        mirror=[str(tmp_path)],
        class_names=["zero", "one", "two", "three", "4", "5", "6", "7", "8", "9"],
    )
    assert info["sizes"]["test"] == 20 and info["input_shape"] == [28, 28, 1]
    assert info["classes"][:2] == ["zero", "one"]
    with pytest.raises(EdgepipeError, match="class_names lists 2 names for 10 classes"):
        stage(tmp_path, source="keras:mnist", mirror=[str(tmp_path)], class_names=["a", "b"])


def test_folder_with_train_and_test_subfolders_keeps_the_official_test_split(tmp_path):
    root = tmp_path / "imgs"
    write_png_folder(root / "train", per_class=10, ext=".jpg", seed=3)
    write_png_folder(root / "test", per_class=4, seed=4)
    ds, info, _ = stage(tmp_path, source=f"folder:{root}", val_fraction=0.2)
    assert info["sizes"] == {"train": 24, "val": 6, "test": 12}
    assert info["classes"] == ["circle", "square", "stripe"]
    assert np.bincount(ds.splits["test"][1]).tolist() == [4, 4, 4]


def test_folder_test_split_with_other_classes_is_refused(tmp_path):
    root = tmp_path / "imgs"
    write_png_folder(root / "train", per_class=4)
    write_png_folder(root / "test", per_class=4, classes=("circle", "square", "zigzag"))
    with pytest.raises(EdgepipeError, match=r"class folders .* differ from train's"):
        stage(tmp_path, source=f"folder:{root}")


def _blob_batch(n, size, row, col):
    """n copies of a size x size image, black but for a 3x3 white blob centred at (row, col)."""
    x = np.zeros((n, size, size, 1), np.float32)
    x[:, row - 1 : row + 2, col - 1 : col + 2] = 255.0
    return x


def _centroids(images):
    """(row, col) of each image's brightness centroid."""
    rows, cols = np.mgrid[: images.shape[1], : images.shape[2]]
    mass = images[..., 0].sum(axis=(1, 2))
    return (images[..., 0] * rows).sum(axis=(1, 2)) / mass, (images[..., 0] * cols).sum(axis=(1, 2)) / mass


@pytest.mark.parametrize("kind", ["rotate", "translate", "zoom", "flip"])
def test_random_affine_moves_pixels_as_each_keras_layer_would(kind):
    """One fused resampling per image, with tf_keras' ranges: rotation keeps the distance to the centre and
    turns by at most rotate x 360 deg; translation shifts by at most translate x size; zoom scales the
    distance to the centre by 1 +- zoom (keras' factor maps output to input); a flip mirrors or keeps."""
    from edgepipe.datasets.augment import Augment, random_affine

    size, n, c = 29, 256, 14.0  # odd size: the centre is a pixel
    x = _blob_batch(n, size, 14, 22)  # 8 px right of the centre
    aug = {
        "rotate": Augment(rotate=0.05),
        "translate": Augment(translate=0.1),
        "zoom": Augment(zoom=0.2),
        "flip": Augment(flip="horizontal"),
    }[kind]
    out = random_affine(x, aug, seed=3).numpy()
    r, k = _centroids(out)
    dist, angle = np.hypot(r - c, k - c), np.degrees(np.arctan2(r - c, k - c))
    if kind == "rotate":
        assert np.allclose(dist, 8.0, atol=0.3)
        assert np.abs(angle).max() <= 0.05 * 360 + 1 and np.abs(angle).max() > 0.05 * 360 * 0.8
        assert (angle > 2).any() and (angle < -2).any()
    elif kind == "translate":
        assert np.abs(r - 14).max() <= 0.1 * size + 0.3 and np.abs(k - 22).max() <= 0.1 * size + 0.3
        assert np.abs(r - 14).max() > 2 and np.abs(k - 22).max() > 2
    elif kind == "zoom":
        assert np.allclose(r, 14, atol=0.2) and np.all(np.abs(angle) < 2)
        assert dist.min() >= 8 / 1.2 - 0.3 and dist.max() <= 8 / 0.8 + 0.3
        assert dist.min() < 7.3 and dist.max() > 9.2
    else:
        mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
        kept = np.all(out == x, axis=(1, 2, 3))
        assert np.all(mirrored | kept) and 0.3 < mirrored.mean() < 0.7


def test_augmentation_is_deterministic_per_seed_and_differs_by_epoch(tmp_path):
    """As the train stage sees it: seeded, with op determinism on (training must be byte-identical)."""
    from edgepipe.datasets.augment import tf_dataset
    from edgepipe.training.fit import seed_everything

    d = write_idx_dataset(tmp_path / "idx")
    ds, _, _ = stage(tmp_path, source=f"idx:{d}", augment={"rotate": 0.05, "translate": 0.1, "zoom": 0.1})

    def two_epochs(seed):
        seed_everything(0)
        pipeline = tf_dataset(ds, "train", 16, training=True, seed=seed)
        return [np.concatenate([b[0].numpy() for b in pipeline]) for _ in range(2)]

    first, again, other = two_epochs(1), two_epochs(1), two_epochs(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], other[0])


@pytest.mark.parametrize("flip, axes", [("vertical", [(), (1,)]), ("both", [(), (1,), (2,), (1, 2)])])
def test_random_affine_flips_each_named_axis_with_probability_one_half(flip, axes):
    """vertical mirrors rows, both mirrors rows and columns each on its own coin, as tf_keras' RandomFlip."""
    from edgepipe.datasets.augment import Augment, random_affine

    x = _blob_batch(400, 29, 6, 22)  # off-centre on both axes: every mirror image is a different image
    out = random_affine(x, Augment(flip=flip), seed=3).numpy()
    seen = [np.all(out == np.flip(x, a) if a else out == x, axis=(1, 2, 3)) for a in axes]
    assert np.all(np.any(seen, axis=0)), "an output is neither the image nor one of its mirrors"
    assert all(abs(s.mean() - 1 / len(axes)) < 0.1 for s in seen), [s.mean() for s in seen]


@pytest.mark.parametrize("fill", ["constant", "nearest", "reflect"])
def test_random_affine_fills_uncovered_pixels_as_asked(fill):
    """Shifting a white image brings in black with fill constant, white with nearest and reflect."""
    from edgepipe.datasets.augment import Augment, random_affine

    x = np.full((64, 28, 28, 1), 255.0, np.float32)
    out = random_affine(x, Augment(translate=0.2, fill=fill), seed=1).numpy()
    assert (out.min() < 1) == (fill == "constant")
