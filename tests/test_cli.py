"""What a user sees from the `edgepipe` command: exit codes, one-line errors, no tracebacks."""

import json

import numpy as np
import pytest

from edgepipe.testing import tiny_recipe, write_idx_dataset, write_png_folder, write_recipe


def one_error_line(proc, *fragments):
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgepipe: error: ") and "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_recipes_give_one_line_and_exit_2(tmp_path, cli):
    (tmp_path / "bad.yaml").write_text("stages:\n  data: {kind: data\n")
    one_error_line(cli("run", "bad.yaml"), "bad.yaml: malformed YAML at line")
    r = tiny_recipe(tmp_path / "idx")
    r["stages"]["model"]["kind"] = "tran"
    write_recipe(tmp_path / "kind.yaml", r)
    p = cli("run", "kind.yaml")
    one_error_line(p, "unknown stage kind 'tran'", "use one of: data, train")
    assert p.returncode == 2
    r = tiny_recipe(tmp_path / "idx")
    r["stages"]["model"]["params"]["learning_rate"] = 0.1
    write_recipe(tmp_path / "param.yaml", r)
    one_error_line(cli("run", "param.yaml"), "stages.model.params: unknown key 'learning_rate'")
    r = tiny_recipe(tmp_path / "idx")
    r["stages"]["data"]["inputs"] = {}
    r["stages"]["model"]["inputs"] = {"data": "model"}
    write_recipe(tmp_path / "cycle.yaml", r)
    one_error_line(cli("run", "cycle.yaml"), "stages.model.inputs.data: a stage cannot read its own output")
    one_error_line(cli("run", "nothere"), "recipe 'nothere' not found")


def test_missing_dataset_directory(tmp_path, cli):
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "no_such_dir"))
    p = cli("run", "r.yaml")
    one_error_line(p, "no_such_dir: dataset directory not found")
    assert p.returncode == 1
    assert not (tmp_path / "runs/r/data").exists()


def test_run_status_graph_kinds(tmp_path, cli):
    write_idx_dataset(tmp_path / "idx")
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "idx", epochs=1))
    status = cli("status", "r.yaml")
    assert status.returncode == 0
    assert "data           stale: never run" in status.stdout
    assert "model          stale: upstream 'data' reruns first" in status.stdout
    first = cli("run", "r.yaml", "--until", "data")
    assert first.returncode == 0 and "done in" in first.stdout and "dataset.npz" in first.stdout
    assert "data           fresh: up to date" in cli("status", "r.yaml").stdout
    graph = cli("graph", "r.yaml").stdout
    assert "model" in graph and "data<-data" in graph
    kinds = cli("kinds", "train").stdout
    assert "early_stopping.patience" in kinds and "optimizer" in kinds
    one_error_line(cli("run", "r.yaml", "--until", "nope"), "--until nope: no such stage")
    one_error_line(cli("run", "r.yaml", "--set", "model.epochs=zero"), "expected an integer, got 'zero'")


def test_smoke_recipe_end_to_end(tmp_path, cli):
    """The shipped smoke recipe, exactly as a user runs it, on real MNIST from ../shared/datasets."""
    from tests.conftest import REPO

    p = cli("run", REPO / "recipes/smoke.yaml")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "smoke: 9 ran" in p.stdout and "gates passed" in p.stdout
    assert "fits cortex-m4" in p.stdout and (tmp_path / "models/smoke/cortex-m4/model_data.cc").is_file()
    assert (tmp_path / "models/smoke/student_qat_int8.json").is_file()
    again = cli("run", REPO / "recipes/smoke.yaml")
    assert "smoke: 0 ran, 9 skipped" in again.stdout
    assert (tmp_path / "models/smoke/report.md").is_file() and (
        tmp_path / "models/smoke/student_qat_int8.tflite"
    ).is_file()


def test_png_folder_dataset_trains_converts_and_benches(tmp_path, cli):
    """A user's own PNG folder, through every stage a deployable model needs, from the command line."""
    root = write_png_folder(tmp_path / "shapes", per_class=30, size=16)
    recipe = write_recipe(
        tmp_path / "shapes.yaml",
        {
            "stages": {
                "data": {
                    "kind": "data",
                    "params": {"source": f"folder:{root}", "val_fraction": 0.2, "test_fraction": 0.2},
                },
                "model": {
                    "kind": "train",
                    "inputs": {"data": "data"},
                    "params": {
                        "arch": "tiny_conv",
                        "epochs": 6,
                        "lr": 0.02,
                        "batch_size": 16,
                        "tensorboard": False,
                        "schedule": {"kind": "constant"},
                        "early_stopping": {"enabled": False},
                    },
                },
                "tflite": {
                    "kind": "convert",
                    "inputs": {"data": "data", "model": "model"},
                    "params": {"variants": ["float32", "int8"], "representative_samples": 20, "parity_samples": 18},
                },
                "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["tflite"]}, "params": {"runs": 20}},
                "report": {"kind": "report", "inputs": {"benches": ["bench"]}},
            }
        },
    )
    p = cli("run", recipe)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "runs/shapes/report/report.json").read_text())["rows"]}
    assert set(rows) == {"model/float32", "model/int8"}
    assert (
        rows["model/int8"]["test_samples"] == 18
        and rows["model/int8"]["tflm_ok"]
        and rows["model/int8"]["arena_bytes"] > 0
    )
    assert rows["model/float32"]["accuracy"] > 0.6, "three shapes, 72 training images: far above chance (1/3)"
    labels = (tmp_path / "runs/shapes/tflite/labels.txt").read_text().split()
    assert labels == ["circle", "square", "stripe"]


def test_offline_imagenet_weights_is_one_line(tmp_path, cli):
    root = write_png_folder(tmp_path / "shapes", per_class=4, size=32)
    recipe = write_recipe(
        tmp_path / "tl.yaml",
        {
            "stages": {
                "data": {
                    "kind": "data",
                    "params": {"source": f"folder:{root}", "val_fraction": 0.25, "test_fraction": 0.25},
                },
                "tl": {
                    "kind": "transfer",
                    "inputs": {"data": "data"},
                    "params": {"backbone": "MobileNetV2", "alpha": 0.35, "input_size": [96, 96], "epochs": 1},
                },
            }
        },
    )
    p = cli(
        "run",
        recipe,
        env={
            "KERAS_HOME": str(tmp_path / "keras"),
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
        },
    )
    one_error_line(
        p,
        "MobileNetV2 imagenet weights mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5",
        f"place it at {tmp_path / 'keras' / 'models'}",
    )
    assert not (tmp_path / "runs/tl/tl").exists(), "a failed stage leaves no output"


@pytest.mark.recipe
def test_mnist_student_smoke_profile_end_to_end(tmp_path, cli):
    """The first recipe users type, in its smoke profile: every stage runs and the report has every variant."""
    from tests.conftest import REPO

    p = cli("run", REPO / "recipes/mnist_student.yaml", "--profile", "smoke", "--jobs", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "models/mnist_student/report.json").read_text())
    assert {r["name"] for r in report["rows"]} == {
        "teacher/float32",
        "teacher/float16",
        "teacher/dynamic",
        "teacher/int8",
        "student/float32",
        "student/int8",
        "student_scratch/float32",
        "student_scratch/int8",
        "student_qat/int8",
        "tfmot_ref_qat/int8",
    }
    assert (tmp_path / "models/mnist_student/student_qat_int8.tflite").is_file()


@pytest.mark.recipe
def test_fashion_transfer_smoke_profile_end_to_end(tmp_path, cli):
    """The shipped transfer recipe on a few hundred images: MNIST backbone -> Fashion-MNIST, QAT, int8, report."""
    from tests.conftest import REPO

    p = cli("run", REPO / "recipes/fashion_transfer.yaml", "--profile", "smoke")
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "models/fashion_transfer/report.json").read_text())
    assert {r["name"] for r in report["rows"]} == {
        "scratch/float32",
        "head_only/float32",
        "fine_tuned/float32",
        "fine_tuned/int8",
        "fine_tuned_qat/int8",
        "scratch_10/float32",
        "fine_tuned_10/float32",
    }
    sidecar = json.loads((tmp_path / "models/fashion_transfer/fine_tuned_qat_int8.json").read_text())
    assert sidecar["input_adapter"] == {"in_model": False} and sidecar["qat"]


REPORT_SECTIONS = ("results", "gates", "pareto", "int8", "training", "misclassified", "provenance")


def _shapes_report(tmp_path, cli):
    root = write_png_folder(tmp_path / "shapes", per_class=30, size=16)
    recipe = write_recipe(
        tmp_path / "shapes.yaml",
        {
            "stages": {
                "data": {
                    "kind": "data",
                    "params": {"source": f"folder:{root}", "val_fraction": 0.2, "test_fraction": 0.2},
                },
                "model": {
                    "kind": "train",
                    "inputs": {"data": "data"},
                    "params": {"arch": "tiny_conv", "epochs": 3, "lr": 0.02, "batch_size": 16, "tensorboard": False},
                },
                "tflite": {
                    "kind": "convert",
                    "inputs": {"data": "data", "model": "model"},
                    "params": {
                        "variants": ["float32", "int8"],
                        "representative_samples": 20,
                        "parity_samples": 18,
                        "tolerance": {"int8_top1": 0.5},
                    },
                },
                "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["tflite"]}, "params": {"runs": 20}},
                "report": {
                    "kind": "report",
                    "inputs": {"benches": ["bench"]},
                    "publish": ["report.html"],
                    "params": {"gates": [{"model": "model/int8", "against": "model/float32", "max_drop": 100}]},
                },
            }
        },
    )
    p = cli("run", recipe)
    assert p.returncode == 0, p.stderr[-2000:]
    where = cli("report", recipe)
    assert where.returncode == 0 and where.stdout.strip() == str(tmp_path / "models/shapes/report.html")
    return tmp_path / "models/shapes/report.html"


def test_html_report_is_one_self_contained_page(tmp_path, cli):
    import os

    path = _shapes_report(tmp_path, cli)
    umask = os.umask(0)
    os.umask(umask)
    for published in path.parent.iterdir():  # written atomically, yet as readable as any file the user makes
        assert published.stat().st_mode & 0o777 == 0o666 & ~umask, published
    page = path.read_text()
    for section in REPORT_SECTIONS:
        assert f"id='{section}'" in page, section
    # pareto, curves, confusion matrix, and a grid of misclassified samples unless the model made none
    mistakes = "no mistakes on the test split" not in page
    assert page.count("src='data:image/png;base64,") == 3 + mistakes
    assert "src='http" not in page and "href='http" not in page, "nothing fetched from outside"
    assert "model/int8" in page and "PASSED" in page


def test_html_report_renders_in_headless_chromium(tmp_path, cli):
    import shutil
    import subprocess

    import pytest

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (Debian package chromium; .ci/run installs it)")
    page = _shapes_report(tmp_path, cli)
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    for section in REPORT_SECTIONS:
        assert f'id="{section}"' in dom, section
    shot = tmp_path / "report.png"
    subprocess.run(
        [*args, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.shape == (2400, 1200) and pixels.std() > 10, "the page rendered something, not a blank sheet"


def test_parallel_run_keeps_the_bench_alone_and_prints_the_report(tmp_path, cli):
    """--jobs 2: the bench waits for an unrelated training still running; the report's table reaches the terminal."""
    data = write_idx_dataset(tmp_path / "idx")
    recipe = tiny_recipe(data)
    fast = recipe["stages"]["model"]["params"]
    recipe["stages"].update(
        {
            "slow": {"kind": "train", "inputs": {"data": "data"}, "params": {**fast, "epochs": 120, "batch_size": 8}},
            "tflite": {
                "kind": "convert",
                "inputs": {"data": "data", "model": "model"},
                "params": {"variants": ["float32"], "representative_samples": 10, "parity_samples": 10},
            },
            "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["tflite"]}, "params": {"runs": 10}},
            "report": {"kind": "report", "inputs": {"benches": ["bench"]}},
        }
    )
    p = cli("run", write_recipe(tmp_path / "par.yaml", recipe), "--jobs", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    at = lambda stage, what: next(i for i, l in enumerate(lines) if l.split()[1:3] == [stage, what])  # noqa: E731
    assert at("tflite", "done") < at("slow", "done"), "precondition: the bench was ready while 'slow' still ran"
    assert at("slow", "done") < at("bench", "running:"), "the bench started while another stage was running"
    assert any(l.startswith("model ") and "accuracy" in l for l in lines), "the report table was not printed"


def test_report_command_before_any_run_is_one_line(tmp_path, cli):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(write_idx_dataset(tmp_path / "idx")))
    one_error_line(cli("report", recipe), "r has no HTML report yet", "fix: run it first: edgepipe run r")
