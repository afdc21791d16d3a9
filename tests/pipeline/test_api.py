"""The Python API: `edgepipe.run` takes a recipe (a name, a path or a dict) and overrides, returns what ran and
the report's rows, raises EdgepipeError, and leaves the caller's TensorFlow alone."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgepipe
from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.testing import FAST, write_idx_dataset

REPO = Path(__file__).resolve().parents[2]


def chain(data: Path) -> dict:
    return {
        "name": "nb",
        "stages": {
            "data": {"kind": "data", "params": {"source": f"idx:{data}", "val_fraction": 0.2}},
            "model": {
                "kind": "train",
                "inputs": {"data": "data"},
                "params": {"arch": "tiny_conv", "epochs": 1, "lr": 0.01, **FAST},
            },
            "tflite": {
                "kind": "convert",
                "inputs": {"data": "data", "model": "model"},
                "params": {"variants": ["float32"], "representative_samples": 10, "parity_samples": 10},
            },
            "bench": {
                "kind": "bench",
                "inputs": {"data": "data", "models": ["tflite"]},
                "params": {"warmup": 1, "runs": 5, "rounds": 1},
            },
            "report": {"kind": "report", "inputs": {"benches": ["bench"]}},
        },
    }


NOTEBOOK = """
import json, sys
import edgepipe

if __name__ == "__main__":
    recipe = json.loads(sys.argv[1])
    result = edgepipe.run(recipe, set={"model.epochs": 2}, root=sys.argv[2])
    again = edgepipe.run(recipe, set={"model.epochs": 2}, root=sys.argv[2])
    print(json.dumps({"rows": result.rows, "stages": [(r.stage, r.action, r.reason) for r in result.stages],
                      "again": [r.action for r in again.stages], "record": again.record,
                      "tensorflow_imported_here": "tensorflow" in sys.modules}))
"""


def test_a_notebook_style_script_runs_a_dict_recipe_and_gets_rows_and_stages(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(NOTEBOOK))
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(chain(write_idx_dataset(tmp_path / "idx"))), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert [s[:2] for s in out["stages"]] == [[n, "ran"] for n in ("data", "model", "tflite", "bench", "report")]
    assert out["stages"][0][2] == "never run"
    assert [r["name"] for r in out["rows"]] == ["model/float32"] and 0 <= out["rows"][0]["accuracy"] <= 1
    assert out["again"] == ["skipped"] * 5 and out["record"] == 2
    assert not out["tensorflow_imported_here"]  # isolated: every TensorFlow stage ran in a worker process
    lock = json.loads((tmp_path / "runs/nb/lock.json").read_text())
    assert lock["stages"]["model"]["parts"]["params"]["epochs"] == 2


def test_bad_input_raises_edgepipe_error_not_system_exit(tmp_path):
    recipe = chain(tmp_path / "nowhere")
    with pytest.raises(RecipeError, match=r"set\['model.epochz'\]|model.params: unknown key 'epochz'"):
        edgepipe.run(recipe, set={"model.epochz": 3}, root=tmp_path)
    with pytest.raises(RecipeError, match="a recipe given as a mapping has no name"):
        edgepipe.run({"stages": recipe["stages"]}, root=tmp_path)
    with pytest.raises(EdgepipeError, match="idx:.*nowhere"):
        edgepipe.run(recipe, root=tmp_path, isolate=False, until="data")
    assert not (tmp_path / "runs/nb/data").exists()
    assert recipe["stages"]["model"]["params"]["epochs"] == 1  # the caller's dict is not changed
