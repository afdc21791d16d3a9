"""A stage's code version is derived from its imports: an edit anywhere in them makes it stale, naming the file."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepipe.pipeline import code
from edgepipe.pipeline.recipe import load_recipe
from edgepipe.pipeline.runner import Runner
from edgepipe.stages.registry import kinds
from edgepipe.testing import tiny_recipe, write_idx_dataset, write_recipe

PACKAGE = Path(code.__file__).resolve().parents[1]


def closure_files(kind: str) -> set[str]:
    return set(code.code_files(kinds()[kind].module))


@pytest.mark.parametrize(
    "kind,needs",
    [
        # the cases the hand-kept tuples had missed
        (
            "bundle",
            {"edgepipe/targets/litert.py", "edgepipe/targets/device_runner.py", "edgepipe/datasets/artifact.py"},
        ),
        ("convert", {"edgepipe/targets/device_runner.py"}),
        ("qat", {"edgepipe/training/nets.py"}),
        ("transfer", {"edgepipe/training/nets.py"}),
        # and what each kind obviously runs
        (
            "train",
            {
                "edgepipe/stages/train.py",
                "edgepipe/training/fit.py",
                "edgepipe/training/doctor.py",
                "edgepipe/datasets/augment.py",
            },
        ),
        ("distill", {"edgepipe/stages/distill.py", "edgepipe/training/distill.py", "edgepipe/training/fit.py"}),
        ("bench", {"edgepipe/targets/remote.py", "edgepipe/targets/tflm.py", "edgepipe/targets/lint.py"}),
    ],
)
def test_a_kinds_code_is_everything_its_module_imports(kind, needs):
    assert needs <= closure_files(kind)


def test_a_kinds_code_leaves_out_what_it_does_not_import():
    assert "edgepipe/stages/train.py" not in closure_files("data")
    assert "edgepipe/pipeline/runner.py" not in closure_files("train")  # editing the runner reruns nothing
    assert not {f for f in closure_files("report") if f.startswith("edgepipe/training/")}


def test_library_versions_join_the_key_of_the_kinds_that_import_them():
    assert {"tensorflow", "tf-keras", "ai-edge-litert"} <= set(code.libraries(kinds()["convert"].module))
    assert "tflite-micro" in code.libraries(kinds()["bench"].module)
    assert "tensorflow" not in code.libraries(kinds()["report"].module)


def test_editing_a_module_deep_in_a_stages_imports_makes_it_stale_naming_the_file(tmp_path):
    """In a copy of the package: run a tiny recipe, edit training/history.py (the train stage reaches it
    only through training/fit.py and training/outputs.py), and ask for the status."""
    copy = tmp_path / "pkg"
    shutil.copytree(PACKAGE, copy / "edgepipe", ignore=shutil.ignore_patterns("__pycache__"))
    data = write_idx_dataset(tmp_path / "idx")
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(data, epochs=1))
    env = dict(os.environ, PYTHONPATH=str(copy))

    def edgepipe(*args):
        done = subprocess.run(
            [sys.executable, "-c", "from edgepipe.cli import entry; entry()", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "2 ran" in edgepipe("run", str(recipe))
    history = copy / "edgepipe" / "training" / "history.py"
    history.write_text(history.read_text() + "\n# an edit\n")
    status = edgepipe("status", str(recipe))
    assert "data           fresh: up to date" in status
    assert "model          stale: code of edgepipe/training/history.py changed" in status


def test_a_changed_user_builder_makes_the_stage_stale(tmp_path, monkeypatch):
    builder = tmp_path / "userzoo_code_test.py"
    builder.write_text("from edgepipe.training.nets import tiny_conv as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tiny_recipe(write_idx_dataset(tmp_path / "idx"), epochs=1, arch="userzoo_code_test:build")
    path = write_recipe(tmp_path / "r.yaml", recipe)
    Runner(load_recipe(path), tmp_path).run()
    builder.write_text(builder.read_text() + "# same builder, edited\n")
    status = {r.stage: r.reason for r in Runner(load_recipe(path), tmp_path).status()}
    assert status["data"] == "up to date"
    assert status["model"] == f"file {builder} changed"


def test_a_new_library_version_makes_the_stage_stale(tmp_path, monkeypatch):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(write_idx_dataset(tmp_path / "idx"), epochs=1))
    Runner(load_recipe(path), tmp_path).run()
    real = code.importlib.metadata.version
    monkeypatch.setattr(code.importlib.metadata, "version", lambda dist: "99.0" if dist == "tensorflow" else real(dist))
    status = {r.stage: r.reason for r in Runner(load_recipe(path), tmp_path).status()}
    assert status["data"] == "library tensorflow 2.21.0 -> 99.0 changed"  # its readers import TensorFlow


def test_a_changed_module_a_user_builder_imports_makes_the_stage_stale(tmp_path, monkeypatch):
    (tmp_path / "userzoo_helpers.py").write_text("from edgepipe.training.nets import tiny_conv\n")
    builder = tmp_path / "userzoo_with_helper.py"
    builder.write_text("import numpy\nfrom userzoo_helpers import tiny_conv as build\n")
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "blocks.py").write_text("from edgepipe.training.nets import tiny_conv\n")
    (package / "nets.py").write_text("from .blocks import tiny_conv as build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tiny_recipe(write_idx_dataset(tmp_path / "idx"), epochs=1, arch="userzoo_with_helper:build")
    recipe["stages"]["packaged"] = json.loads(json.dumps(recipe["stages"]["model"]))
    recipe["stages"]["packaged"]["params"]["arch"] = "userpkg.nets:build"
    path = write_recipe(tmp_path / "r.yaml", recipe)
    Runner(load_recipe(path), tmp_path).run()
    helper = tmp_path / "userzoo_helpers.py"
    helper.write_text(helper.read_text() + "# a helper, edited\n")
    blocks = package / "blocks.py"
    blocks.write_text(blocks.read_text() + "# a block, edited\n")
    status = {r.stage: r.reason for r in Runner(load_recipe(path), tmp_path).status()}
    assert status == {"data": "up to date", "model": f"file {helper} changed", "packaged": f"file {blocks} changed"}
    assert not any(
        "numpy" in f
        for f in json.loads((tmp_path / "runs/r/lock.json").read_text())["stages"]["model"]["parts"]["deps"]
    )  # installed libraries are not followed


def test_a_transfer_stages_local_weights_file_is_hashed_into_its_key(tmp_path):
    weights = tmp_path / "backbone_no_top.h5"
    weights.write_bytes(b"weights")
    stage = {
        "kind": "transfer",
        "inputs": {"data": "data"},
        "params": {"backbone": "MobileNetV2", "weights": str(weights)},
    }
    recipe = {"stages": {"data": {"kind": "data", "params": {"source": "keras:mnist"}}, "tl": stage}}
    tl = load_recipe(write_recipe(tmp_path / "t.yaml", recipe)).stages["tl"]
    assert tl.kind.deps(tl.params) == [weights]
    stage["params"]["weights"] = "imagenet"
    tl = load_recipe(write_recipe(tmp_path / "t.yaml", recipe)).stages["tl"]
    assert tl.kind.deps(tl.params) == []
