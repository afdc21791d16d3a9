"""A detector benched on the emulated Cortex-M4: the board's int8 heat maps come back whole, dequantized, and
are judged by the task's metric (F1), exactly as TFLite Micro's Python interpreter's outputs would be."""

import json

import numpy as np

from edgepipe.testing import write_recipe
from tests.stages.test_detection_chain import CONTRAST_DETECTOR, RECIPE
from tests.targets.mcu.conftest import needs_toolchain

SAMPLES = 8


@needs_toolchain
def test_the_emulated_board_reports_the_detectors_f1_from_its_own_outputs(cli, tmp_path, mnist_dir):
    from edgepipe.datasets.artifact import load_dataset
    from edgepipe.targets import device_runner, litert
    from edgepipe.targets.mcu.reference import tflm_python
    from edgepipe.tasks import task_of

    bench_m4 = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {"target": "cortex-m4", "measure": "emulated", "max_test_samples": SAMPLES, "warmup": 1, "runs": 5},
    }
    # a made detector, not a trained one: a few steps of training find nothing, and figures of no detection
    # would not show a misread output
    (tmp_path / "contrast_det.py").write_text(CONTRAST_DETECTOR)
    stages = {k: v for k, v in RECIPE["stages"].items() if k in ("data", "model", "tflite")}
    made = {"arch": "contrast_det:build", "epochs": 1, "lr": 0.0, "batch_size": 16, "tensorboard": False}
    stages["model"] = {"kind": "train", "inputs": {"data": "data"}, "params": made}
    write_recipe(tmp_path / "det.yaml", {"stages": {**stages, "bench_m4": bench_m4}})
    done = cli("run", "det.yaml", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]

    bench = json.loads((tmp_path / "runs/det/bench_m4/bench.json").read_text())
    (row,) = [r for r in bench["rows"] if r["variant"] == "int8"]
    board = row["target"]["emulated"]
    assert row["target"]["accuracy"]["provenance"] == "emulated" and board["test_samples"] == SAMPLES
    assert board["instructions"]["median"] > 0 and board["ram_used_bytes"] > 0 and board["flash_bytes"] > 0
    assert board["outputs_bit_exact_with_tflite_micro"] and "predictions_sha256" not in board

    # the board's figure is the task's metric of TFLite Micro's outputs on the same images, dequantized
    ds = load_dataset(tmp_path / "runs/det/data")
    model = tmp_path / "runs/det/tflite" / row["file"]
    x, y = ds.splits["test"][0][:SAMPLES], ds.splits["test"][1][:SAMPLES]
    din, dout = litert.io_details(litert.interpreter(model))
    q = tflm_python(model, device_runner.quantize_input(ds.preprocess(x), din))
    outputs = device_runner.dequantize_output(q.view(np.int8).reshape((SAMPLES, *dout["shape"][1:])), dout)
    expected = task_of(ds.info).metrics(y, outputs, ds.info)
    assert sum(len(d) for d in task_of(ds.info).decode(outputs, ds.info)) >= SAMPLES  # it detects: a real check
    assert board["task_metrics"]["f1_d0.2"] == expected["f1_d0.2"] == row["target"]["accuracy"]["value"]
    assert board["task_metrics"]["count_mae"] == expected["count_mae"]
    host = litert.predict(model, ds.preprocess(x))
    agree = task_of(ds.info).agreement(host, outputs, ds.info)
    assert board["detections_agreement_with_host_litert"] == agree
    assert np.isfinite(board["task_metrics"]["map_iou0.5"])
