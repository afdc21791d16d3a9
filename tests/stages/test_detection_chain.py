"""A detection recipe through the real `edgepipe` command: drawn scenes -> a tiny centroid net with boxes ->
float32 and int8 -> host bench -> report, judged by the task's metric everywhere; stages that cannot work on
detection refuse the recipe at load; a search ranks detectors by F1; the shipped recipe's smoke profile."""

import csv
import json

import numpy as np
import pytest

from edgepipe.testing import write_recipe
from tests.test_cli import one_error_line

RECIPE = {
    "stages": {
        "data": {
            "kind": "data",
            "params": {"source": "synth:digits", "task": "detection", "synth": {"train": 64, "val": 16, "test": 16}},
        },
        "model": {
            "kind": "train",
            "inputs": {"data": "data"},
            "params": {
                "arch": "centroid_net",
                "arch_args": {"widths": [4, 8, 8], "head_filters": 8, "size_head": True},
                "epochs": 1,
                "batch_size": 16,
                "object_weight": 2,
                "schedule": {"kind": "constant"},
                "early_stopping": {"enabled": False},
                "tensorboard": False,
            },
        },
        "tflite": {
            "kind": "convert",
            "inputs": {"data": "data", "model": "model"},
            "params": {
                "variants": ["float32", "int8"],
                "representative_samples": 16,
                "parity_samples": 16,
                "tolerance": {"int8_top1": 0.0},  # one epoch leaves borderline cells: agreement is recorded
            },
        },
        "bench": {
            "kind": "bench",
            "inputs": {"data": "data", "models": ["tflite"]},
            "params": {"warmup": 1, "runs": 5, "rounds": 1, "threads": [1]},
        },
        "report": {"kind": "report", "inputs": {"benches": ["bench"]}},
    }
}


# A detector by hand (96x96 grey in, 12x12 cells of background + 3 classes and sizes out): a cell darker or
# brighter than middle grey is class '0' (unless `dark_bias` is very negative) or '1'. Trained with a learning rate of 0, it stays as made.
CONTRAST_DETECTOR = """
import numpy as np
from edgepipe.core._tf import keras


def build(input_shape, num_classes, dark_bias=9.0, **_):
    L = keras.layers
    inputs = L.Input(tuple(input_shape))
    cells = L.AveragePooling2D(8)(inputs)
    logits = L.Conv2D(4, 1, name="logits")(cells)
    size = L.Conv2D(2, 1, activation="sigmoid", name="size")(cells)
    model = keras.Model(inputs, L.Concatenate()([L.Softmax()(logits), size]))
    w = np.array([[[[0.0, -30.0, 30.0, -5.0]]]], np.float32)
    model.get_layer("logits").set_weights([w, np.array([0.0, dark_bias, -21.0, -5.0], np.float32)])
    model.get_layer("size").set_weights([np.full((1, 1, 1, 2), 2.0, np.float32), np.full(2, -1.0, np.float32)])
    return model
"""


def test_a_detector_is_trained_converted_benched_and_reported_by_its_task_metric(cli, tmp_path, mnist_dir):
    write_recipe(tmp_path / "det.yaml", RECIPE)
    done = cli("run", "det.yaml", "--until", "report")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test F1 (centroid within 0.2 of the image, one-to-one)" in done.stdout  # the train stage's summary
    side = json.loads((tmp_path / "runs/det/tflite/model_int8.json").read_text())
    assert 0.0 <= side["parity"]["detections_agreement"] <= 1.0 and "top1_agreement" not in side["parity"]
    bench = json.loads((tmp_path / "runs/det/bench/bench.json").read_text())
    assert bench["metric"]["name"] == "f1_d0.2" and bench["metric"]["short"] == "F1"
    for row in bench["rows"]:  # the headline is the task's metric of the .tflite's raw outputs
        m = row["task_metrics"]
        assert row["accuracy"] == m["f1_d0.2"] and {"map_iou0.5", "ei_f1_d0.2", "count_mae"} <= set(m)
        assert len(row["detections_shown"]) == 16 and "predictions_sha256" not in row
    int8 = next(r for r in bench["rows"] if r["variant"] == "int8")
    assert int8["tflm"]["ok"] and int8["tflm"]["arena_bytes"] > 0 and 0 <= int8["tflm"]["agreement_with_litert"] <= 1
    md = (tmp_path / "runs/det/report/report.md").read_text()
    assert md.startswith("# edgepipe report: F1 vs latency on this host")
    assert "| val F1 | test F1 |" in md and "| precision_d0.2 | recall_d0.2 | ei_f1_d0.2 |" in md
    html = (tmp_path / "runs/det/report/report.html").read_text()
    assert "id='task'" in html and "What the deployable model finds" in html and "detections on test scenes" in html


def test_stages_that_cannot_work_on_detection_refuse_the_recipe_at_load(cli, tmp_path):
    """Before anything trains: a device that scores class scores only, a classifier's transfer learning."""
    estimate = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {"target": "cortex-m4", "measure": "estimate"},
    }
    write_recipe(tmp_path / "m4.yaml", {"stages": {**RECIPE["stages"], "bench_m4": estimate}})
    one_error_line(
        cli("run", "m4.yaml"),
        "m4.yaml: stages.bench_m4: bench: cortex-m4 (microcontroller (estimated)) scores a classifier's class scores",
        "fix: bench detection models on a target measured by microcontroller (emulated) or this host",
    )
    transfer = {"kind": "transfer", "inputs": {"data": "data"}, "params": {"backbone": "MobileNetV2", "weights": None}}
    write_recipe(tmp_path / "tl.yaml", {"stages": {"data": RECIPE["stages"]["data"], "tl": transfer}})
    one_error_line(cli("run", "tl.yaml"), "stages.tl: transfer learning is built for classifiers")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()


def test_a_search_on_detection_ranks_its_trials_by_the_tasks_metric(cli, tmp_path, mnist_dir):
    """The objective is the int8 model's F1 on the validation scenes: of two made detectors (trained at a
    learning rate of 0, so they stay as made), the search chooses the one that finds more."""
    from edgepipe.datasets.artifact import load_dataset
    from edgepipe.targets import litert
    from edgepipe.tasks import task_of

    (tmp_path / "contrast_det.py").write_text(CONTRAST_DETECTOR)
    search = {
        "kind": "search",
        "inputs": {"data": "data"},
        "params": {
            "target": "host",
            "trials": 2,
            "startup_trials": 2,
            "measure_samples": 2,
            "representative_samples": 16,
            "train": {"arch": "contrast_det:build", "epochs": 1, "lr": 0.0, "batch_size": 16},
            "space": {"arch_args.dark_bias": {"choices": [9.0, -100.0]}},
        },
    }
    convert = {**RECIPE["stages"]["tflite"], "inputs": {"data": "data", "model": "search"}}
    write_recipe(
        tmp_path / "s.yaml", {"stages": {"data": RECIPE["stages"]["data"], "search": search, "tflite": convert}}
    )
    done = cli("run", "s.yaml", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test F1 (centroid within 0.2 of the image, one-to-one)" in done.stdout
    trials = list(csv.DictReader((tmp_path / "runs/s/search/trials.csv").open()))
    f1 = {float(t["arch_args.dark_bias"]): float(t["val_accuracy"]) for t in trials}
    assert len(f1) == 2 and f1[9.0] != f1[-100.0], f1  # the two detectors are told apart
    chosen = json.loads((tmp_path / "runs/s/search/search.json").read_text())["chosen"]
    assert chosen["val_accuracy"] == max(f1.values()) and chosen["values"]["arch_args.dark_bias"] == max(f1, key=f1.get)
    metrics = json.loads((tmp_path / "runs/s/search/metrics.json").read_text())
    assert metrics["metric"] == "f1_d0.2" and "accuracy" not in metrics["test"]
    # the chosen figure is the F1 of an int8 model of the chosen detector on the validation scenes (the
    # convert stage's: the same converter, another representative sample)
    ds = load_dataset(tmp_path / "runs/s/data")
    x_val, y_val = ds.splits["val"]
    tflite = tmp_path / "runs/s/tflite/search_int8.tflite"
    got = task_of(ds.info).metrics(y_val, litert.predict(tflite, ds.preprocess(x_val)), ds.info)["f1_d0.2"]
    assert abs(got - chosen["val_accuracy"]) <= 0.05, (got, chosen["val_accuracy"])


def test_cross_validation_of_a_detector_deals_whole_scenes_into_folds_and_scores_them_by_f1(tmp_path, monkeypatch):
    """k folds over train+val: each scene with all its boxes in exactly one fold, each fold judged by F1."""
    from edgepipe.core.params import build
    from edgepipe.core.stage import StageIO
    from edgepipe.datasets.artifact import Dataset
    from edgepipe.stages import train as train_stage
    from edgepipe.tasks import TASKS

    rng = np.random.default_rng(0)
    n = 20
    x = rng.integers(0, 255, (n, 96, 96, 1), dtype=np.uint8)
    y = np.full((n, 6, 5), -1.0, np.float32)
    y[:, 0] = [[i % 3, 10, 10, 30, 30] for i in range(n)]
    y[:, 0, 1] = np.arange(n)  # x0 names the scene: a fold that split a scene from its boxes would show it
    x[:, 0, 0, 0] = np.arange(n)
    info = {
        "task": "detection",
        "classes": ["0", "1", "7"],
        "input_shape": [96, 96, 1],
        "augment": {},
        "preprocessing": {"scale": 1 / 255.0, "mean": 0.0, "std": 1.0},
    }
    ds = Dataset(info, {"train": (x[:15], y[:15]), "val": (x[15:], y[15:]), "test": (x[:2], y[:2])})
    seen = []

    def fake_fit(model, fold, params, io):  # what each fold trains on and is judged on, without training
        xv, yv = fold.splits["val"]
        assert np.array_equal(xv[:, 0, 0, 0], yv[:, 0, 1].astype(np.uint8))  # every scene with its own boxes
        seen.append(sorted(yv[:, 0, 1].astype(int)))
        (io.out / "history.csv").write_text("epoch,loss\n0,1.0\n")

    params = build(train_stage.TrainParams, {"folds": 3, "epochs": 1, "seed": 0}, "test")
    io = StageIO(inputs={}, out=tmp_path, work=tmp_path)
    model = type("M", (), {"predict": lambda self, x, **_: np.zeros((len(x), 12, 12, 4), np.float32)})()
    monkeypatch.setattr(train_stage, "fit", fake_fit)
    cv = train_stage.cross_validate(lambda: model, ds, params, io)
    assert sorted(sum(seen, [])) == list(range(n)) and len(seen) == 3  # each scene in one fold exactly
    assert cv["metric"] == TASKS["detection"].headline and [f["val_samples"] for f in cv["folds"]] == [7, 7, 6]


@pytest.mark.recipe
def test_digits_detect_smoke_profile_end_to_end(tmp_path, cli):
    """The shipped detection recipe in its smoke profile: both models, host and emulated-board figures by F1,
    the firmware bundle with its C decoding checked on the board over every test image, the report."""
    from tests.conftest import REPO
    from tests.targets.mcu.conftest import have_toolchain

    if not have_toolchain():
        pytest.skip("no Cortex-M toolchain or QEMU: the recipe benches on the emulated board")
    p = cli("run", REPO / "recipes/digits_detect.yaml", "--profile", "smoke")
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "models/digits_detect/report.json").read_text())
    assert {r["name"] for r in report["rows"]} == {"fomo/int8", "cand/float32", "cand/int8", "cand_qat/int8"}
    bench = json.loads((tmp_path / "runs/digits_detect/bench_m4/bench.json").read_text())
    for row in bench["rows"]:  # the emulated board's figures are the task's, from the board's own outputs
        board = row["target"]["emulated"]
        assert row["target"]["accuracy"]["provenance"] == "emulated" and "f1_d0.2" in board["task_metrics"]
        assert board["instructions"]["median"] > 0 and board["fits"]
    fit = json.loads((tmp_path / "models/digits_detect/cortex-m4/fit.json").read_text())
    assert fit["detect"]["every_test_image"]["images"] == 100 == fit["detect"]["every_test_image"]["equal"]
    assert (tmp_path / "models/digits_detect/cortex-m4/detect_decode.c").is_file()


def test_a_task_no_target_scores_is_refused_with_a_fix_that_says_so():
    from edgepipe.core.errors import EdgepipeError
    from edgepipe.targets.backends import check_task
    from edgepipe.targets.profiles import load_target

    check_task(load_target("host"), "detection", "bench")  # the host scores detectors
    with pytest.raises(EdgepipeError, match=r"fix: no target edgepipe knows scores segmentation models yet"):
        check_task(load_target("host"), "segmentation", "bench")
