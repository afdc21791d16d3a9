"""The training doctor: each check on planted histories, then planted problems in real (tiny) training."""

import json

import numpy as np
import pytest

from edgepipe.core.params import build
from edgepipe.core.stage import StageIO
from edgepipe.stages.data import DataParams, run_data_stage
from edgepipe.stages.train import TrainParams, run_train_stage
from edgepipe.testing import synthetic_images, write_idx_dataset
from edgepipe.training.doctor import diagnose


def history(loss, val_loss, acc=None, val_acc=None):
    acc = acc or [0.5 + 0.4 * i / len(loss) for i in range(len(loss))]
    val_acc = val_acc or acc
    return [
        {"epoch": str(i), "loss": str(a), "val_loss": str(b), "accuracy": str(c), "val_accuracy": str(d)}
        for i, (a, b, c, d) in enumerate(zip(loss, val_loss, acc, val_acc))
    ]


HEALTHY = history(
    [1.0, 0.6, 0.4, 0.3, 0.25, 0.2], [0.9, 0.6, 0.45, 0.38, 0.35, 0.34], [0.7, 0.85, 0.9, 0.93, 0.95, 0.96]
)
METRICS = {"test": {"accuracy": 0.95, "per_class": []}}
DATA = {"imbalance_ratio": 1.2, "balance": "none", "counts": {"train": [50, 60]}, "classes": ["a", "b"]}


def codes(findings):
    return [f.code for f in findings]


def test_a_healthy_history_raises_nothing():
    assert diagnose(HEALTHY, METRICS, DATA) == []


def test_overfitting_names_the_epoch_val_loss_was_lowest():
    rows = history(
        [1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03],
        [0.9, 0.5, 0.4, 0.45, 0.5, 0.6, 0.7],
        [0.7, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0],
    )
    [f] = diagnose(rows, METRICS, DATA)
    assert f.code == "overfitting" and f.epoch == 3 and "rose from 0.4 (epoch 3) to 0.7" in f.message
    assert "while train loss fell from 0.3 to 0.03" in f.message  # over the same epochs, not from epoch 1


def test_nan_loss_and_rising_loss_are_divergence():
    nan = history([2.3, float("nan")], [2.3, float("nan")])
    assert codes(diagnose(nan, METRICS, DATA)) == ["diverged"]
    assert diagnose(nan, METRICS, DATA)[0].epoch == 2
    rising = history([2.3, 3.0, 9.0], [2.3, 3.5, 9.5], [0.9, 0.9, 0.9])
    assert "diverged" in codes(diagnose(rising, METRICS, DATA))


def test_a_flat_start_means_the_learning_rate_is_too_low():
    rows = history([2.30, 2.299, 2.298, 2.297], [2.30, 2.30, 2.30, 2.30], [0.1] * 4)
    assert codes(diagnose(rows, {"test": {"accuracy": 0.1}}, DATA)) == ["lr_too_low", "underfitting", "low_accuracy"]


def test_test_accuracy_far_above_training_accuracy_is_a_mismatch():
    rows = history([1.0, 0.9, 0.85], [0.5, 0.45, 0.4], [0.6, 0.65, 0.7])
    found = diagnose(rows, {"test": {"accuracy": 0.9}}, DATA)
    assert codes(found) == ["underfitting", "train_test_mismatch"]


def test_weak_classes_and_imbalance_suggest_class_weights():
    per_class = [
        {"class": "a", "precision": 0.9, "recall": 0.95, "support": 90},
        {"class": "b", "precision": 0.6, "recall": 0.3, "support": 10},
    ]
    data = {**DATA, "imbalance_ratio": 9.0, "counts": {"train": [900, 100]}}
    found = diagnose(HEALTHY, {"test": {"accuracy": 0.9, "per_class": per_class}}, data)
    assert codes(found) == ["weak_classes", "class_imbalance"]
    assert "b (precision 60 %, recall 30 %)" in found[0].message
    assert "class_weights: balanced" in found[1].remedy and "rarest: b with 100 of 1000" in found[1].message
    # already handled: no flag
    assert codes(diagnose(HEALTHY, METRICS, data, {"class_weights": "balanced"})) == []


# -- planted problems in real training ---------------------------------------------------------------------


def train(tmp_path, data_params, train_params):
    data, model = tmp_path / "data", tmp_path / "model"
    for d in (data, model):
        d.mkdir()
    run_data_stage(build(DataParams, data_params, "data"), StageIO({}, data, tmp_path / ".d"))
    run_train_stage(
        build(
            TrainParams,
            {
                "tensorboard": False,
                "schedule": {"kind": "constant"},
                "early_stopping": {"enabled": False},
                **train_params,
            },
            "model",
        ),
        StageIO({"data": data}, model, tmp_path / ".m"),
    )
    return json.loads((model / "diagnostics.json").read_text())


def test_planted_fifty_image_subset_trained_long_is_overfitting(tmp_path, mnist_dir):
    found = train(
        tmp_path,
        {"source": f"idx:{mnist_dir}", "limit_train": 100, "val_fraction": 0.5, "limit_test": 200},
        {
            "arch": "cnn_teacher",
            "arch_args": {"width": 0.25},
            "dropout": 0.0,
            "epochs": 40,
            "batch_size": 10,
            "lr": 0.003,
        },
    )
    assert "overfitting" in [f["code"] for f in found], found


def test_planted_learning_rate_of_ten_is_divergence(tmp_path):
    found = train(
        tmp_path,
        {"source": f"idx:{write_idx_dataset(tmp_path / 'idx')}"},
        {"arch": "tiny_conv", "optimizer": "sgd", "lr": 10.0, "epochs": 5, "batch_size": 16},
    )
    assert [f["code"] for f in found][0] == "diverged", found
    assert "lower lr" in found[0]["remedy"]


def test_planted_rare_class_is_flagged_with_class_weights_suggested(tmp_path):
    x, y = synthetic_images(400, 4, 12, seed=5)
    keep = np.concatenate([np.flatnonzero(y == 0)[:5], np.flatnonzero(y != 0)])  # class 0: 5 of ~305
    np.savez(tmp_path / "rare.npz", x=x[keep], y=y[keep])
    found = train(
        tmp_path,
        {"source": f"npz:{tmp_path / 'rare.npz'}", "test_fraction": 0.2},
        {"arch": "tiny_conv", "lr": 0.02, "epochs": 6, "batch_size": 16},
    )
    rare = [f for f in found if f["code"] == "class_imbalance"]
    assert rare and "class_weights: balanced" in rare[0]["remedy"], found


def test_a_healthy_real_run_raises_no_flag(tmp_path):
    found = train(
        tmp_path,
        {"source": f"idx:{write_idx_dataset(tmp_path / 'idx', n_train=240)}"},
        {"arch": "tiny_conv", "lr": 0.02, "epochs": 8, "batch_size": 16},
    )
    assert found == []


def test_memorising_without_a_rising_val_loss_is_overfitting_too():
    rows = history([2.3, 1.5, 0.8, 0.4, 0.2, 0.15], [2.2, 2.1, 2.05, 2.1, 2.15, 2.2], [0.2, 0.5, 0.8, 0.9, 1, 1])
    [f] = diagnose(rows, METRICS, DATA)
    assert f.code == "overfitting" and "stayed at 2.2 (best 2.05, epoch 3)" in f.message


def test_validation_loss_far_above_chance_is_divergence():
    rows = history([1.4, 0.0, 0.0], [5659.4, 6111.0, 3990.9], [0.8, 1.0, 1.0], [0.17, 0.0, 0.08])
    [f] = diagnose(rows, METRICS, {**DATA, "num_classes": 4})
    assert f.code == "diverged" and f.epoch == 1 and "far above uniform guessing (1.39)" in f.message


def dead_net(input_shape, num_classes, **_):
    """Every ReLU unit starts (and stays) silent: a bias of -50 under a small conv."""
    from edgepipe.core._tf import keras

    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(8, 3, bias_initializer=keras.initializers.Constant(-50.0))(inputs)
    x = L.ReLU()(x)
    x = L.Flatten()(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, L.Softmax()(x))


def sigmoid_tower(input_shape, num_classes, **_):
    """Ten sigmoid layers with small weights: the textbook vanishing gradient."""
    from edgepipe.core._tf import keras

    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Flatten()(inputs)
    for _ in range(10):
        x = L.Dense(32, activation="sigmoid", kernel_initializer=keras.initializers.RandomNormal(stddev=0.05))(x)
    x = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, L.Softmax()(x))


def lagging_bn_net(input_shape, num_classes, **_):
    """BatchNorm whose moving averages start far from the data (mean 100) and barely move (momentum
    0.999): in inference every ReLU input is negative, while each batch's own statistics work."""
    from edgepipe.core._tf import keras

    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Conv2D(8, 3, use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization(momentum=0.999, moving_mean_initializer=keras.initializers.Constant(100.0))(x))
    x = L.Dense(num_classes, name="logits")(L.Flatten()(x))
    return keras.Model(inputs, L.Softmax()(x))


def dense_net(input_shape, num_classes, **_):
    from edgepipe.core._tf import keras

    L = keras.layers
    inputs = keras.Input(input_shape)
    x = L.Dense(num_classes, name="logits")(L.Flatten()(inputs))
    return keras.Model(inputs, L.Softmax()(x))


@pytest.mark.parametrize(
    "arch, data, optimizer, expected",
    [
        ("tests.stages.test_doctor:dead_net", {}, {"lr": 0.01}, "dead_relus"),
        ("tests.stages.test_doctor:sigmoid_tower", {}, {"lr": 0.01}, "vanishing_gradients"),
        ("tests.stages.test_doctor:lagging_bn_net", {}, {"lr": 0.01}, "batchnorm_lag"),
        # raw 0..255 pixels into a dense layer: the first-layer gradient scales with the input
        (
            "tests.stages.test_doctor:dense_net",
            {"normalize": "none"},
            {"optimizer": "sgd", "lr": 1e-7},
            "exploding_gradients",
        ),
    ],
)
def test_planted_gradient_and_activation_problems(tmp_path, arch, data, optimizer, expected):
    found = train(
        tmp_path,
        {"source": f"idx:{write_idx_dataset(tmp_path / 'idx', n_train=160)}", **data},
        {"arch": arch, "epochs": 2, "batch_size": 16, **optimizer},
    )
    assert expected in [f["code"] for f in found], found


def test_batchnorm_gap_is_a_finding_only_when_large():
    [f] = diagnose(HEALTHY, METRICS, DATA, batchnorm={"moving": 0.50, "batch": 0.66, "samples": 512})
    assert (
        f.code == "batchnorm_lag" and "50.0 % with BatchNorm's moving statistics" in f.message and "66.0 %" in f.message
    )
    assert diagnose(HEALTHY, METRICS, DATA, batchnorm={"moving": 0.88, "batch": 0.92, "samples": 512}) == []
    assert diagnose(HEALTHY, METRICS, DATA, batchnorm=None) == []


def test_measuring_batchnorm_modes_changes_no_variable(tmp_path):
    from edgepipe.datasets.artifact import load_dataset
    from edgepipe.training.probes import batchnorm_modes

    data = tmp_path / "data"
    data.mkdir()
    run_data_stage(
        build(DataParams, {"source": f"idx:{write_idx_dataset(tmp_path / 'idx', n_train=160)}"}, "data"),
        StageIO({}, data, tmp_path / ".d"),
    )
    ds = load_dataset(data)
    model = lagging_bn_net(ds.splits["train"][0].shape[1:], len(ds.classes))
    before = [v.numpy().copy() for v in model.variables]
    modes = batchnorm_modes(model, ds, samples=64, batch=16)
    assert modes["samples"] == 64 and 0 <= modes["moving"] <= 1 and 0 <= modes["batch"] <= 1
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables))
    assert batchnorm_modes(dense_net(ds.splits["train"][0].shape[1:], len(ds.classes)), ds) is None  # no BatchNorm
