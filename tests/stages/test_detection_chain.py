"""A detection recipe through the real `edgepipe` command: drawn scenes -> a tiny centroid net with boxes ->
float32 and int8 -> host bench -> report, judged by the task's metric everywhere; a target whose backend
scores class scores only refuses the detection bench in one line."""

import json

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
