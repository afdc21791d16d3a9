"""Tracking in MLflow (a recipe's `tracking:` block or `--track`) and TensorBoard logs outside the outputs: what
is logged, that neither enters a cache key or a digest, and the bad inputs (no MLflow, an unreachable server,
a malformed block) as one line each."""

import json
import socket
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.testing import check_clean_outcome, run_cli, tiny_recipe, write_idx_dataset, write_recipe

mlflow = pytest.importorskip("mlflow", reason="MLflow is an optional extra: pip install -e .[mlflow]")


def _recipe(root, idx, tracking=None, epochs=2):
    spec = tiny_recipe(idx, epochs=epochs)
    spec["stages"]["model"]["params"]["tensorboard"] = True
    spec["stages"]["conv"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {"variants": ["float32", "int8"], "parity_samples": 20, "representative_samples": 20},
    }
    spec["stages"]["bench"] = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["conv"]},
        "params": {"warmup": 1, "runs": 5, "rounds": 1, "threads": [1]},
    }
    spec["stages"]["report"] = {"kind": "report", "inputs": {"benches": ["bench"]}}
    if tracking is not None:
        spec["tracking"] = tracking
    return write_recipe(root / "tiny.yaml", spec)


def _runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _artifacts(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_a_tracked_run_logs_stages_epochs_rows_and_tflite_files_under_the_keys_of_an_untracked_one(tmp_path):
    idx = write_idx_dataset(tmp_path / "idx")
    recipe = _recipe(tmp_path, idx, tracking={"experiment": "tiny-exp"})
    code, out, err = run_cli(["run", recipe], tmp_path)
    assert code == 0 and not err.strip(), err
    uri = f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"  # the default: MLflow 3 refuses new file stores
    assert f"tracked in MLflow at {uri}" in out
    client, runs = _runs(uri, "tiny-exp")
    by_name = {r.info.run_name: r for r in runs}
    top = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert top.info.run_name.startswith("tiny ") and top.info.status == "FINISHED"
    for stage in ("data", "model", "conv", "bench", "report"):
        assert by_name[stage].data.tags["mlflow.parentRunId"] == top.info.run_id
        assert by_name[stage].data.tags["edgepipe.action"] == "ran"

    model = by_name["model"]
    assert model.data.params["lr"] == "0.01" and model.data.params["early_stopping.enabled"] == "False"
    history = client.get_metric_history(model.info.run_id, "val_loss")
    logged = {
        (int(r["epoch"]), float(r["val_loss"]))
        for r in __import__("csv").DictReader(open(tmp_path / "runs/tiny/model/history.csv"))
    }
    assert {(m.step, m.value) for m in history} == logged and len(logged) == 2  # one point per epoch
    metrics = json.loads((tmp_path / "runs/tiny/model/metrics.json").read_text())
    assert model.data.metrics["test_accuracy"] == metrics["test"]["accuracy"]
    assert "model.h5" in _artifacts(client, model.info.run_id)
    assert {"tflite/model_float32.tflite", "tflite/model_int8.tflite"} <= set(
        _artifacts(client, by_name["conv"].info.run_id)
    )
    report = json.loads((tmp_path / "runs/tiny/report/report.json").read_text())
    for row in report["rows"]:
        logged_row = by_name[row["name"]]
        assert logged_row.data.tags["mlflow.parentRunId"] == by_name["report"].info.run_id
        assert logged_row.data.metrics["val_accuracy"] == row["val_accuracy"]
        assert logged_row.data.metrics["test_accuracy"] == row["accuracy"]
        assert top.data.metrics[f"{row['name']}/val_accuracy"] == row["val_accuracy"]
        file = f"tflite/model_{row['quantization']}.tflite"
        assert file in _artifacts(client, logged_row.info.run_id)
        got = client.download_artifacts(logged_row.info.run_id, file, str(tmp_path / "dl"))
        assert open(got, "rb").read() == (tmp_path / f"runs/tiny/conv/model_{row['quantization']}.tflite").read_bytes()

    # Tracking is not part of any key: without it, every stage is fresh; with --track, all are skipped
    # and logged again as such. TensorBoard's logs are outside the outputs.
    lock = json.loads((tmp_path / "runs/tiny/lock.json").read_text())
    untracked = _recipe(tmp_path, idx)
    code, out, _ = run_cli(["status", untracked], tmp_path)
    assert out.count("fresh: up to date") == 5, out
    code, out, err = run_cli(["run", untracked, "--track"], tmp_path)
    assert code == 0 and out.count("skipped: up to date") == 5 and "tracked in MLflow" in out, out + err
    assert json.loads((tmp_path / "runs/tiny/lock.json").read_text()) == lock
    _, runs = _runs(uri, "tiny")  # --track without a block: the recipe's name
    assert {r.data.tags.get("edgepipe.action") for r in runs if r.info.run_name == "model"} == {"skipped"}


def test_tensorboard_logs_are_kept_outside_the_output_and_never_cascade_reruns(tmp_path):
    idx = write_idx_dataset(tmp_path / "idx")
    spec = tiny_recipe(idx, epochs=2)
    spec["stages"]["model"]["params"]["tensorboard"] = True
    spec["stages"]["conv"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {"variants": ["float32"], "parity_samples": 20},
    }
    recipe = write_recipe(tmp_path / "tb.yaml", spec)
    assert run_cli(["run", recipe], tmp_path)[0] == 0
    events = sorted(p.name for p in (tmp_path / "runs/tb/.tb/model").rglob("events.out.tfevents.*"))
    assert len(events) == 2, events  # train/ and validation/
    assert not list((tmp_path / "runs/tb/model").rglob("events.out.tfevents.*"))
    code, out, _ = run_cli(["run", recipe, "--force", "--until", "model"], tmp_path)
    assert code == 0 and "model          running: forced" in out
    again = sorted(p.name for p in (tmp_path / "runs/tb/.tb/model").rglob("events.out.tfevents.*"))
    assert len(again) == 2 and again != events  # the retraining's own logs, the old ones gone
    code, out, _ = run_cli(["run", recipe], tmp_path)  # new event files, the same output: conv stays fresh
    assert code == 0 and "conv           skipped: up to date" in out, out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_only(root):
    spec = tiny_recipe(write_idx_dataset(root / "idx"))
    del spec["stages"]["model"]
    return spec


def test_an_unreachable_tracking_server_is_one_warning_and_the_run_completes(tmp_path):
    spec = _data_only(tmp_path)
    uri = f"http://127.0.0.1:{_closed_port()}"
    spec["tracking"] = {"uri": uri}
    code, out, err = run_cli(["run", write_recipe(tmp_path / "d.yaml", spec)], tmp_path)
    assert check_clean_outcome(code, err, tmp_path) is None and code == 0
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"edgepipe: warning: tracking skipped: MLflow at {uri} cannot be reached"
    ), err
    assert f"tracking skipped: MLflow at {uri} could not be reached" in out
    assert (tmp_path / "runs/d/data/dataset.npz").is_file()


def test_tracking_without_mlflow_installed_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow...` raises ImportError
    code, _, err = run_cli(["run", write_recipe(tmp_path / "d.yaml", _data_only(tmp_path)), "--track"], tmp_path)
    line = check_clean_outcome(code, err, tmp_path)
    assert code == 1 and "MLflow is not installed" in line and "pip install -e .[mlflow]" in line, line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    "block, text",
    [
        ({"url": "sqlite:///x.db"}, "tracking: unknown key 'url'; fix: use one of: enabled, uri, experiment"),
        ({"enabled": "yes"}, "tracking.enabled: expected true or false"),
        ({"uri": "http://a b"}, "tracking: uri 'http://a b' is not a tracking URI"),
        ({"uri": 5000}, "tracking.uri: expected a string"),
        ({"experiment": ""}, "tracking: experiment '' is not a usable MLflow experiment name"),
        ("on", "tracking: expected a mapping"),
    ],
)
def test_a_malformed_tracking_block_is_a_recipe_error(tmp_path, block, text):
    spec = _data_only(tmp_path)
    spec["tracking"] = block
    code, _, err = run_cli(["run", write_recipe(tmp_path / "d.yaml", spec)], tmp_path)
    line = check_clean_outcome(code, err, tmp_path)
    assert code == 2 and text in line, line
    assert not (tmp_path / "runs").exists()


def test_a_track_value_that_is_no_uri_is_a_usage_error(tmp_path):
    code, _, err = run_cli(["run", write_recipe(tmp_path / "d.yaml", _data_only(tmp_path)), "--track", "a b"], tmp_path)
    line = check_clean_outcome(code, err, tmp_path)
    assert code == 2 and "--track 'a b' is not a tracking URI" in line, line
    assert not (tmp_path / "runs").exists()


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=2),
    st.sampled_from(["sqlite:///x.db", "http://localhost:5000", "databricks", "mlruns", " ", "a\tb"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    block=st.one_of(
        VALUES, st.dictionaries(st.sampled_from(["enabled", "uri", "experiment", "Uri", "tags"]), VALUES, max_size=4)
    )
)
def test_any_tracking_block_loads_or_is_one_recipe_error(tmp_path_factory, block):
    """Whatever the block holds, `edgepipe graph` (which loads and validates the recipe) prints the graph or
    one error line naming the tracking block."""
    root = tmp_path_factory.mktemp("block")
    spec = {"stages": {"data": {"kind": "data", "params": {"source": "keras:mnist"}}}, "tracking": block}
    code, _, err = run_cli(["graph", write_recipe(root / "r.yaml", spec)], root)
    line = check_clean_outcome(code, err, root)
    assert code == 0 or (code == 2 and "tracking" in line), line


def test_a_disabled_block_tracks_nothing_and_track_turns_it_on_for_one_run(tmp_path):
    spec = _data_only(tmp_path)
    spec["tracking"] = {"enabled": False, "experiment": "on demand"}
    recipe = write_recipe(tmp_path / "d.yaml", spec)
    code, out, err = run_cli(["run", recipe], tmp_path)
    assert code == 0 and "tracked" not in out and not (tmp_path / "mlruns").exists(), out + err
    code, out, err = run_cli(["run", recipe, "--track"], tmp_path)
    assert code == 0 and "tracked in MLflow" in out, out + err
    _, runs = _runs(f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db", "on demand")
    assert [r.data.tags.get("edgepipe.action") for r in runs if r.info.run_name == "data"] == ["skipped"]
