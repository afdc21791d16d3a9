"""The train stage on tiny data: it learns, it is reproducible, and every knob builds."""

import json
import textwrap

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import build
from edgepipe.core.stage import StageIO
from edgepipe.stages.data import DataParams, run_data_stage
from edgepipe.stages.train import TrainParams, run_train_stage
from edgepipe.tasks.classification import classification_metrics
from edgepipe.testing import write_idx_dataset
from edgepipe.training.fit import make_optimizer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("d")
    idx = write_idx_dataset(root / "idx", n_train=200, n_test=60)
    out = root / "data"
    out.mkdir()
    run_data_stage(
        build(DataParams, {"source": f"idx:{idx}", "val_fraction": 0.2}, "t"), StageIO(inputs={}, out=out, work=root)
    )
    return out


def train(tmp_path, data_dir, name="m", **params):
    out, work = tmp_path / name, tmp_path / f"{name}.work"
    out.mkdir()
    work.mkdir()
    base = {
        "arch": "tiny_conv",
        "epochs": 8,
        "batch_size": 16,
        "lr": 0.02,
        "tensorboard": False,
        "schedule": {"kind": "constant"},
        "early_stopping": {"enabled": False},
    }
    p = build(TrainParams, {**base, **params}, "t")
    summary = run_train_stage(p, StageIO(inputs={"data": data_dir}, out=out, work=work))
    return out, json.loads((out / "metrics.json").read_text()), summary


def test_tiny_model_learns_and_writes_outputs(tmp_path, data_dir):
    out, metrics, summary = train(tmp_path, data_dir)
    assert metrics["test"]["accuracy"] > 0.9, metrics["test"]["accuracy"]  # 4 classes: chance is 0.25
    assert summary.startswith("test accuracy")
    assert {p.name for p in out.iterdir()} >= {"model.h5", "history.csv", "curves.png", "metrics.json"}
    assert len((out / "history.csv").read_text().splitlines()) == 9
    cm = np.array(metrics["test"]["confusion_matrix"])
    assert cm.sum() == metrics["test"]["samples"] == 60
    assert len(metrics["test"]["per_class"]) == 4 and "macro" in metrics["test"]


def test_same_seed_same_metrics(tmp_path, data_dir):
    _, a, _ = train(tmp_path, data_dir, "a", seed=3, epochs=3)
    _, b, _ = train(tmp_path, data_dir, "b", seed=3, epochs=3)
    assert a["test"]["loss"] == b["test"]["loss"]
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]


def test_steps_per_execution_trains_the_same_model(tmp_path, data_dir, steps_per_execution_seen):
    # 160 train images in batches of 16: 10 steps an epoch, which 3 does not divide, so the last call of
    # each epoch runs a shorter loop; every step must still run once, in order, with the same updates.
    seen = steps_per_execution_seen
    _, one, _ = train(tmp_path, data_dir, "one", seed=1, epochs=3, steps_per_execution=1)
    _, three, _ = train(tmp_path, data_dir, "three", seed=1, epochs=3, steps_per_execution=3)
    assert seen == [1, 3], "the parameter reaches the training loop"
    assert one["epochs_run"] == three["epochs_run"] == 3
    assert three["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-5)
    assert three["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]


def test_early_stopping_stops(tmp_path, data_dir):
    _, m, _ = train(
        tmp_path, data_dir, epochs=50, lr=1e-7, early_stopping={"enabled": True, "patience": 1, "min_delta": 0.01}
    )
    assert m["epochs_run"] < 50


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize(
    "schedule", [{"kind": "step", "step_epochs": 1}, {"kind": "cosine", "warmup_epochs": 1}, {"kind": "constant"}]
)
def test_every_optimizer_and_schedule_builds(optimizer, schedule):
    p = build(TrainParams, {"optimizer": optimizer, "schedule": schedule, "clipnorm": 1.0, "epochs": 3}, "t")
    from edgepipe.core._tf import keras

    opt = make_optimizer(p, steps_per_epoch=10)
    config = opt.get_config()
    assert config["clipnorm"] == 1.0
    lr = config["learning_rate"]
    if schedule["kind"] == "constant":
        assert lr == pytest.approx(1e-3)
    else:
        lr = keras.optimizers.schedules.deserialize(lr)
        # step 25 is past any warm-up and before the end: a decayed, non-zero rate
        assert 0 < float(lr(25)) < 0.9e-3


def test_regularisation_knobs_and_plateau_schedule_train(tmp_path, data_dir):
    _, m, _ = train(
        tmp_path,
        data_dir,
        epochs=2,
        l1=1e-5,
        l2=1e-4,
        dropout=0.2,
        label_smoothing=0.1,
        class_weights="balanced",
        initializer="glorot_uniform",
        schedule={"kind": "plateau"},
        arch="ds_student",
        arch_args={"alpha": 0.5},
    )
    assert m["epochs_run"] == 2 and m["macs"] > 0


def test_user_builder_module_function(tmp_path, data_dir, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        textwrap.dedent("""
        import tf_keras as keras
        def small(input_shape, num_classes, **kw):
            i = keras.Input(input_shape)
            x = keras.layers.Flatten()(i)
            return keras.Model(i, keras.layers.Dense(num_classes, activation="softmax")(x))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _, m, _ = train(tmp_path, data_dir, arch="mynets:small", epochs=2)
    assert m["params"] == 12 * 12 * 4 + 4
    with pytest.raises(EdgepipeError, match="module mynets has no function nothere"):
        train(tmp_path, data_dir, "x", arch="mynets:nothere")
    with pytest.raises(EdgepipeError, match="unknown architecture 'resnet9000'"):
        train(tmp_path, data_dir, "y", arch="resnet9000")


def test_classification_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    a, b, c = m["per_class"]
    assert (a["precision"], a["recall"]) == (0.5, 0.5)
    assert (b["precision"], b["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert (c["precision"], c["recall"]) == (1.0, 0.5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_lr_auto_runs_a_range_test_and_trains_with_its_suggestion(tmp_path):
    import json

    from edgepipe.core.params import build
    from edgepipe.core.stage import StageIO
    from edgepipe.stages.data import DataParams, run_data_stage
    from edgepipe.stages.train import TrainParams, run_train_stage
    from edgepipe.testing import write_idx_dataset

    data, out = tmp_path / "data", tmp_path / "model"
    data.mkdir()
    out.mkdir()
    run_data_stage(
        build(DataParams, {"source": f"idx:{write_idx_dataset(tmp_path / 'idx', n_train=240)}"}, "d"),
        StageIO({}, data, tmp_path / ".d"),
    )
    params = build(
        TrainParams,
        {
            "arch": "tiny_conv",
            "lr": "auto",
            "epochs": 4,
            "batch_size": 16,
            "tensorboard": False,
            "early_stopping": {"enabled": False},
        },
        "m",
    )
    summary = run_train_stage(params, StageIO({"data": data}, out, tmp_path / ".m"))
    sweep = json.loads((out / "lr_range.json").read_text())
    assert (out / "lr_range.png").is_file() and sweep["steps_run"] > 20
    assert min(sweep["losses"]) < sweep["losses"][0], "the loss falls somewhere in the sweep"
    assert 1e-5 < sweep["suggested_lr"] < 1.0
    assert sweep["suggested_lr"] == sweep["steepest_lr"] <= sweep["min_loss_lr"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["lr"] == sweep["suggested_lr"] and "from the range test" in summary
    assert metrics["test"]["accuracy"] > 0.5, "4 classes: the suggested rate trains well above chance"


def test_lr_must_be_a_number_or_auto():
    from edgepipe.core.errors import RecipeError
    from edgepipe.core.params import build
    from edgepipe.stages.train import TrainParams

    with pytest.raises(RecipeError, match="expected a number"):
        build(TrainParams, {"lr": "fast"}, "stages.t.params")


def test_k_fold_cross_validation_reports_mean_and_std_over_disjoint_folds(tmp_path):
    import json

    from edgepipe.core.params import build
    from edgepipe.core.stage import StageIO
    from edgepipe.stages.data import DataParams, run_data_stage
    from edgepipe.stages.train import TrainParams, run_train_stage
    from edgepipe.testing import write_idx_dataset

    data, out = tmp_path / "data", tmp_path / "model"
    data.mkdir()
    out.mkdir()
    run_data_stage(
        build(
            DataParams, {"source": f"idx:{write_idx_dataset(tmp_path / 'idx', n_train=150)}", "val_fraction": 0.2}, "d"
        ),
        StageIO({}, data, tmp_path / ".d"),
    )
    params = build(
        TrainParams,
        {
            "arch": "tiny_conv",
            "lr": 0.02,
            "folds": 3,
            "epochs": 3,
            "batch_size": 16,
            "tensorboard": False,
            "early_stopping": {"enabled": False},
        },
        "m",
    )
    summary = run_train_stage(params, StageIO({"data": data}, out, tmp_path / ".m"))
    cv = json.loads((out / "metrics.json").read_text())["cross_validation"]
    sizes = [f["val_samples"] for f in cv["folds"]]
    assert len(sizes) == 3 and sum(sizes) == 150 and max(sizes) - min(sizes) <= 4  # a partition of train+val
    accuracies = np.array([f["accuracy"] for f in cv["folds"]])
    assert cv["mean"] == pytest.approx(accuracies.mean()) and cv["std"] == pytest.approx(accuracies.std(ddof=1))
    assert "3-fold val accuracy" in summary


def test_training_curves_of_a_model_without_an_accuracy_column_draw_without_a_warning(tmp_path):
    """A detector's history has losses only: the picture says so, and nothing reaches stderr."""
    import warnings

    from edgepipe.training.outputs import plot_curves

    rows = [{"epoch": str(i), "loss": str(1 / (i + 1)), "val_loss": str(1.2 / (i + 1))} for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves(rows, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
