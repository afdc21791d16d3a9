"""Issue #35, class 8: a successful run says nothing on stderr. What libraries say through Python's warnings
(tfmot's clustering warning, a user builder's own) goes to the log, which `--debug` shows."""

from __future__ import annotations

import json
import sys
import warnings

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.testing import check_clean_outcome, run_cli, tiny_recipe, write_idx_dataset

NOISY_BUILDER = """
import builtins, json, os, warnings
from edgepipe.training.nets import tiny_conv

def build(input_shape, num_classes, **kw):
    with open(os.environ["NOISE_FILE"]) as f:
        said = json.load(f)
    warnings.warn(said["message"], getattr(builtins, said["category"]))
    return tiny_conv(input_shape, num_classes, **kw)
"""
CATEGORIES = ["UserWarning", "DeprecationWarning", "FutureWarning", "RuntimeWarning", "PendingDeprecationWarning"]


def _to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    (root / "noisy_builder.py").write_text(NOISY_BUILDER)
    spec = tiny_recipe(write_idx_dataset(root / "idx", n_train=40, n_test=12), epochs=1, arch="noisy_builder:build")
    (root / "r.yaml").write_text(yaml.safe_dump({"name": "noise", **spec}))
    return root


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    category=st.sampled_from(CATEGORIES),
    words=st.lists(st.text(alphabet="abcdefghij", min_size=3, max_size=8), min_size=2, max_size=5),
)
def test_a_library_warning_on_a_successful_run_goes_to_the_log_not_stderr(place, monkeypatch, category, words):
    message = "noisy " + " ".join(words)
    (place / "noise.json").write_text(json.dumps({"category": category, "message": message}))
    monkeypatch.setenv("NOISE_FILE", str(place / "noise.json"))
    monkeypatch.syspath_prepend(str(place))
    sys.modules.pop("noisy_builder", None)
    with warnings.catch_warnings():  # as outside pytest, which records warnings instead of printing them
        warnings.simplefilter("always")
        warnings.showwarning = _to_stderr
        code, _, err = run_cli(["run", place / "r.yaml", "--force", "--root", place], place)
    check_clean_outcome(code, err, place)
    assert code == 0 and message not in err and "Warning" not in err, err


def test_tfmot_clustering_warning_stays_off_stderr(tmp_path, cli):
    spec = tiny_recipe(write_idx_dataset(tmp_path / "idx", n_train=40, n_test=12), epochs=1)
    spec["stages"]["clustered"] = {  # tiny_conv's layers have fewer weights than 256 clusters: tfmot warns
        "kind": "cluster",
        "inputs": {"data": "data", "model": "model"},
        "params": {"clusters": 256, "epochs": 1, "batch_size": 16, "tensorboard": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "c", **spec}))
    done = cli("run", "r.yaml")
    assert done.returncode == 0, done.stderr
    assert "does not have enough weights" not in done.stderr and not done.stderr.strip(), done.stderr
    done = cli("--debug", "run", "r.yaml", "--force")
    assert done.returncode == 0 and "does not have enough weights" in done.stderr, done.stderr[-2000:]
