"""The make-like runner on a real data -> train chain over tiny IDX files (seconds)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.pipeline.recipe import load_recipe
from edgepipe.pipeline.runner import Runner
from edgepipe.testing import tiny_recipe, write_idx_dataset, write_recipe


@pytest.fixture
def project(tmp_path):
    data = write_idx_dataset(tmp_path / "idx")
    path = write_recipe(tmp_path / "recipes" / "tiny.yaml", tiny_recipe(data))
    return tmp_path, path


def run(root, path, sets=(), **kw):
    return {r.stage: r for r in Runner(load_recipe(path, sets=sets), root).run(**kw)}


def test_first_run_then_everything_skipped(project, capsys):
    root, path = project
    first = run(root, path)
    assert [r.action for r in first.values()] == ["ran", "ran"]
    assert first["data"].reason == "never run"
    assert (root / "runs/tiny/model/model.h5").is_file()
    lock = json.loads((root / "runs/tiny/lock.json").read_text())
    assert set(lock["stages"]) == {"data", "model"}
    assert "model.h5" in lock["stages"]["model"]["outputs"]
    second = run(root, path)
    assert [(r.action, r.reason) for r in second.values()] == [("skipped", "up to date")] * 2
    assert "skipped: up to date" in capsys.readouterr().out


def test_param_change_reruns_only_that_stage_and_downstream(project):
    root, path = project
    run(root, path)
    only_model = run(root, path, sets=("model.lr=0.02",))
    assert only_model["data"].action == "skipped"
    assert only_model["model"].action == "ran" and "param lr (0.01 -> 0.02) changed" in only_model["model"].reason
    both = run(root, path, sets=("model.lr=0.02", "data.val_fraction=0.3"))
    assert both["data"].action == "ran" and "val_fraction" in both["data"].reason
    assert both["model"].action == "ran" and both["model"].reason == "input 'data' changed"


def test_rerun_with_identical_output_does_not_cascade(project):
    root, path = project
    run(root, path)
    r = run(root, path, force=True, only="data")
    assert r["data"].action == "ran"
    r = run(root, path)  # data reran and wrote byte-identical files: the model stays fresh
    assert r["model"].action == "skipped"
    r = run(root, path, sets=("data.samples_per_class=4",))  # only samples.png changes, but it is an output
    assert r["data"].action == "ran" and r["model"].reason == "input 'data' changed"


def test_missing_or_modified_output_reruns(project):
    root, path = project
    run(root, path)
    (root / "runs/tiny/model/metrics.json").unlink()
    r = run(root, path)
    assert r["data"].action == "skipped"
    assert r["model"].reason == "output metrics.json missing"
    with open(root / "runs/tiny/data/dataset.json", "a") as f:
        f.write(" ")
    r = run(root, path)
    assert r["data"].reason == "output dataset.json modified"


def test_source_file_change_reruns_data(project):
    root, path = project
    run(root, path)
    write_idx_dataset(root / "idx", n_train=100)
    r = run(root, path)
    assert r["data"].action == "ran" and "-ubyte.gz changed" in r["data"].reason
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # gzipped -> plain files
        (root / "idx" / f"{name}.gz").unlink()
    write_idx_dataset(root / "idx2", n_train=100, gz=False)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (root / "idx2" / name).rename(root / "idx" / name)
    r = run(root, path)
    assert r["data"].action == "ran" and "train-images-idx3-ubyte.gz is no longer used" in r["data"].reason


def test_dry_run_until_only_and_force(project):
    root, path = project
    dry = run(root, path, dry_run=True)
    assert [r.action for r in dry.values()] == ["would run", "would run"]
    assert dry["model"].reason == "upstream 'data' reruns first"
    assert not (root / "runs/tiny/data").exists()
    assert list(run(root, path, until="data")) == ["data"]
    assert list(run(root, path, only="model")) == ["model"]
    forced = run(root, path, force=True)
    assert all(r.action == "ran" and r.reason == "forced (--force)" for r in forced.values())
    with pytest.raises(EdgepipeError, match="--until nope: no such stage"):
        run(root, path, until="nope")


def test_only_needs_upstream_output(project):
    root, path = project
    with pytest.raises(EdgepipeError, match="needs the output of 'data'"):
        run(root, path, only="model")


def test_publish_copies_to_models_and_restores_deleted_copy(project):
    root, path = project
    recipe = tiny_recipe(root / "idx")
    recipe["stages"]["model"]["publish"] = ["model.h5", "metrics.json"]
    write_recipe(path, recipe)
    run(root, path)
    published = root / "models/tiny/metrics.json"
    assert published.read_bytes() == (root / "runs/tiny/model/metrics.json").read_bytes()
    published.unlink()
    assert run(root, path)["model"].action == "skipped"
    assert published.is_file()


def test_publish_pattern_matching_nothing_is_an_error(project):
    root, path = project
    recipe = tiny_recipe(root / "idx")
    recipe["stages"]["model"]["publish"] = ["model.tflite"]
    write_recipe(path, recipe)
    with pytest.raises(EdgepipeError, match="publish pattern 'model.tflite' matched no output file; fix: use one of:"):
        run(root, path)


def test_failed_stage_leaves_no_output_and_no_lock_entry(project):
    root, path = project
    recipe = tiny_recipe(root / "idx")
    recipe["stages"]["model"]["params"]["arch"] = "no_such_module:build"
    write_recipe(path, recipe)
    with pytest.raises(EdgepipeError, match="cannot import module no_such_module"):
        run(root, path)
    assert not (root / "runs/tiny/model").exists()
    assert not (root / "runs/tiny/.tmp/model").exists()
    assert "model" not in json.loads((root / "runs/tiny/lock.json").read_text())["stages"]


def test_sigkill_during_training_then_resume(tmp_path):
    """A real SIGKILL mid-training leaves no half output; the rerun skips data and completes."""
    data = write_idx_dataset(tmp_path / "idx", n_train=400)
    recipe = tiny_recipe(data, epochs=40)
    path = write_recipe(tmp_path / "k.yaml", recipe)
    exe = Path(sys.executable).with_name("edgepipe")
    proc = subprocess.Popen(
        [str(exe), "run", str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = ""
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "Epoch 3/" in line or ("3/" in line and "loss" in line):
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "model" in seen and "running" in seen, seen
    assert not (tmp_path / "runs/k/model").exists(), "a killed stage must not leave its output in place"
    lock = json.loads((tmp_path / "runs/k/lock.json").read_text())
    assert list(lock["stages"]) == ["data"]
    rerun = subprocess.run([str(exe), "run", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "data           skipped: up to date" in rerun.stdout
    assert "model          running: never run; resuming from its checkpoint" in rerun.stdout
    assert (tmp_path / "runs/k/model/model.h5").is_file()
    history = (tmp_path / "runs/k/model/history.csv").read_text().splitlines()
    assert len(history) == 41  # header + 40 epochs, each once, though some ran before the kill


def test_second_concurrent_run_is_refused(project):
    import fcntl

    root, path = project
    (root / "runs/tiny").mkdir(parents=True)
    with open(root / "runs/tiny/.runlock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running edgepipe holds it
        with pytest.raises(EdgepipeError, match="another edgepipe run is using .*runs/tiny"):
            run(root, path)
    assert list(run(root, path, until="data")) == ["data"]  # released: runs again


def _fan_out(data_dir, bad_arch=None):
    """data -> {a, b} -> report-free fan-out: two trainings that can run at once."""
    recipe = tiny_recipe(data_dir)
    recipe["stages"]["other"] = json.loads(json.dumps(recipe["stages"]["model"]))
    recipe["stages"]["other"]["params"]["seed"] = 1
    if bad_arch:
        recipe["stages"]["other"]["params"]["arch"] = bad_arch
    return recipe


def test_parallel_run_gives_the_same_outputs_as_a_sequential_one(tmp_path, capsys):
    data = write_idx_dataset(tmp_path / "idx")
    path = write_recipe(tmp_path / "fan.yaml", _fan_out(data))
    seq = run(tmp_path / "seq", path)
    par = run(tmp_path / "par", path, jobs=2)
    assert [r.action for r in par.values()] == ["ran"] * 3 and list(par) == list(seq)
    locks = [json.loads((tmp_path / d / "runs/fan/lock.json").read_text())["stages"] for d in ("seq", "par")]
    for name in ("data", "model", "other"):  # deterministic training: byte-identical results either way
        assert locks[0][name]["digest"] == locks[1][name]["digest"], name
    out = capsys.readouterr().out
    assert "(log: runs/fan/.logs/model.log)" in out.replace(str(tmp_path / "par") + "/", "")
    assert "Epoch 2/2" in (tmp_path / "par/runs/fan/.logs/model.log").read_text()
    assert [r.action for r in run(tmp_path / "par", path, jobs=2).values()] == ["skipped"] * 3


def test_parallel_failure_keeps_what_finished_and_raises_the_error(tmp_path):
    data = write_idx_dataset(tmp_path / "idx")
    path = write_recipe(tmp_path / "fan.yaml", _fan_out(data, bad_arch="no_such_net"))
    with pytest.raises(EdgepipeError, match="unknown architecture 'no_such_net'") as e:
        run(tmp_path, path, jobs=2)
    assert e.value.exit_code == 1 and "fix: use one of" in str(e.value)
    lock = json.loads((tmp_path / "runs/fan/lock.json").read_text())["stages"]
    assert set(lock) == {"data", "model"}, "the stage running beside the failed one finished and was recorded"
    assert not (tmp_path / "runs/fan/other").exists() and not (tmp_path / "runs/fan/.tmp/other").exists()


def test_jobs_below_one_is_a_usage_error(project):
    root, path = project
    with pytest.raises(EdgepipeError, match="--jobs 0") as e:
        run(root, path, jobs=0)
    assert e.value.exit_code == 2


def test_workers_end_when_the_runner_is_killed(tmp_path):
    """SIGKILL to the runner alone (not its process group) ends the workers training beside it too."""
    data = write_idx_dataset(tmp_path / "idx", n_train=400)
    recipe = _fan_out(data)
    for name in ("model", "other"):
        recipe["stages"][name]["params"]["epochs"] = 400  # minutes: far longer than the test waits
    path = write_recipe(tmp_path / "fan.yaml", recipe)
    exe = Path(sys.executable).with_name("edgepipe")
    proc = subprocess.Popen(
        [str(exe), "run", str(path), "--jobs", "2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    logs = [tmp_path / "runs/fan/.logs" / f"{name}.log" for name in ("model", "other")]
    deadline = time.time() + 120
    while time.time() < deadline and not all(p.is_file() and "Epoch 2/" in p.read_text() for p in logs):
        time.sleep(0.2)
    assert all("Epoch 2/" in p.read_text() for p in logs), "both workers should be training"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # anyone left in the run's process group?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("workers kept training after the runner was killed")
    sizes = {p: p.stat().st_size for p in logs}
    time.sleep(1)
    assert sizes == {p: p.stat().st_size for p in logs}, "nothing writes after the runner is gone"
