"""What the operating system refuses, interrupts, and the edges of the one-line guarantee, end to end.

A full disk and a read-only run folder are real (small tmpfs mounts, so root is refused like anyone);
Ctrl-C and SIGTERM go to a real `--jobs 2` run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgepipe.testing import check_clean_outcome, run_cli, tiny_recipe, write_idx_dataset, write_recipe


@contextlib.contextmanager
def tmpfs(path: Path, *options: str):
    """A small tmpfs mounted at `path` (skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()[:80]}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def one_line(code: int, err: str, root: Path, expected: str) -> str:
    line = check_clean_outcome(code, err, root)
    assert line is not None and expected in line, line
    return line


def test_a_full_disk_is_one_line_naming_the_stage_and_nothing_is_half_written(tmp_path):
    data = write_idx_dataset(tmp_path / "idx", n_train=3000, n_test=200, size=28)  # dataset.npz of ~1 MB
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(data))
    with tmpfs(tmp_path / "small", "size=96k") as root:
        code, _, err = run_cli(["run", str(path), "--root", str(root)], tmp_path)
        line = one_line(code, err, root, "No space left on device")
        assert "stage 'data'" in line and "fix: free space on that disk" in line
        assert not (root / "runs/r/data").exists() and not (root / "runs/r/lock.json").exists()


def test_a_read_only_run_folder_is_one_line_naming_the_path(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(write_idx_dataset(tmp_path / "idx")))
    with tmpfs(tmp_path / "ro", "ro", "size=64k") as root:
        code, _, err = run_cli(["run", str(path), "--root", str(root)], tmp_path)
        one_line(code, err, root, f"{root}/runs: Read-only file system; fix: the file system is read-only")


def test_an_internal_error_is_still_one_line(tmp_path, monkeypatch):
    """A real bug (here a planted one) keeps the one-line form, its message collapsed, and exit 1."""
    import edgepipe.pipeline.recipe as recipe_module

    def broken(*args, **kwargs):
        raise RuntimeError("first line\nsecond line\n  third")

    monkeypatch.setattr(recipe_module, "load_recipe", broken)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    code, _, err = run_cli(["status", str(path)], tmp_path)
    assert code == 1 and err.strip().splitlines() == [
        "edgepipe: internal error: RuntimeError: first line second line third; fix: rerun with --debug for the "
        "traceback and report it"
    ]


def test_the_first_stage_to_import_tensorflow_fails_in_one_line(tmp_path, cli):
    """`--only` a convert stage: it is the first in its process to touch TensorFlow (through tfmot), and
    TensorFlow's native start-up lines must not come before the error line."""
    recipe = tiny_recipe(write_idx_dataset(tmp_path / "idx"), epochs=1)
    recipe["stages"]["qat"] = {
        "kind": "qat",
        "inputs": {"data": "data", "model": "model"},
        "params": {"epochs": 1, "batch_size": 16, "tensorboard": False},
    }
    recipe["stages"]["tflite"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "qat"},
        "params": {"variants": ["float32"]},
    }
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert cli("run", path, "--until", "qat").returncode == 0
    done = cli("run", path, "--only", "tflite")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "edgepipe: error: 'qat' is a QAT model, which converts to int8 only; fix: "
        "set variants: [int8] here and convert its float source for float variants"
    ]


def test_a_lock_file_of_the_wrong_shape_is_treated_as_unreadable(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(write_idx_dataset(tmp_path / "idx"), epochs=1))
    for broken in (
        {"version": 1, "stages": ["data"]},
        {"version": 1, "stages": {"data": {"key": 3}}},
        {"version": 1, "stages": {"data": {"key": "k", "digest": "d", "outputs": {"a": "b"}}}},
        {  # an output path leading out: the run cache would keep and later restore it there
            "version": 1,
            "stages": {
                "data": {
                    "key": "k",
                    "digest": "d",
                    "outputs": {"../../x": {"sha256": "0" * 64, "size": 1, "mtime_ns": 1}},
                }
            },
        },
        [1, 2],
    ):
        (tmp_path / "runs/r").mkdir(parents=True, exist_ok=True)
        (tmp_path / "runs/r/lock.json").write_text(json.dumps(broken))
        code, out, err = run_cli(["status", str(path)], tmp_path)
        assert code == 0 and "data           stale: never run" in out, (broken, err)
        assert err.strip() in (
            "",
            "edgepipe: warning: runs/r/lock.json is not a lock file edgepipe wrote; every stage will rerun",
        ), err


def test_a_number_written_1e_3_is_the_number(tmp_path):
    recipe = tiny_recipe(tmp_path)
    recipe["stages"]["model"]["params"]["lr"] = "1e-3"  # what YAML 1.1 reads `lr: 1e-3` as
    from edgepipe.pipeline.recipe import load_recipe

    assert load_recipe(write_recipe(tmp_path / "r.yaml", recipe)).stages["model"].params.lr == 0.001
    (tmp_path / "y.yaml").write_text((tmp_path / "r.yaml").read_text().replace("lr: '1e-3'", "lr: 1e-3"))
    assert "lr: 1e-3" in (tmp_path / "y.yaml").read_text()
    assert load_recipe(tmp_path / "y.yaml").stages["model"].params.lr == 0.001


def test_a_link_out_of_a_stages_output_is_not_published(tmp_path):
    """Publish patterns are relative (checked at load); a symbolic link in an output folder that leads
    out of it is refused when publishing, so nothing outside the run's folders is copied."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for models/")
    recipe = tiny_recipe(write_idx_dataset(tmp_path / "idx"))
    del recipe["stages"]["model"]
    recipe["stages"]["data"]["publish"] = ["*"]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert run_cli(["run", str(path)], tmp_path)[0] == 0
    (tmp_path / "runs/r/data/link.txt").symlink_to(secret)
    code, _, err = run_cli(["run", str(path)], tmp_path)
    one_line(code, err, tmp_path, "published file")
    assert not (tmp_path / "models/r/link.txt").exists()


def test_every_role_of_every_kind_declares_what_it_accepts():
    from edgepipe.stages.registry import kinds

    for kind in kinds().values():
        assert set(kind.accepts) == set(kind.inputs), kind.name
        assert kind.output in ("dataset", "model", "tflite", "bench", "bundle", "report"), kind.name


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_during_a_parallel_run_leaves_nothing_half_written(tmp_path, sig, code):
    """SIGINT to the whole process group (Ctrl-C in a terminal) or SIGTERM to the runner alone, while two
    workers train: one line, the workers gone, .tmp empty, and the rerun resumes from the checkpoints."""
    data = write_idx_dataset(tmp_path / "idx", n_train=400)
    recipe = tiny_recipe(data)
    recipe["stages"]["model"]["params"]["epochs"] = 400  # far longer than the test waits
    recipe["stages"]["other"] = yaml.safe_load(yaml.safe_dump(recipe["stages"]["model"]))
    recipe["stages"]["other"]["params"]["seed"] = 1
    path = write_recipe(tmp_path / "fan.yaml", recipe)
    exe = Path(sys.executable).with_name("edgepipe")
    proc = subprocess.Popen(
        [str(exe), "run", str(path), "--jobs", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    logs = [tmp_path / "runs/fan/.logs" / f"{name}.log" for name in ("model", "other")]
    deadline = time.time() + 180
    while time.time() < deadline and not all(p.is_file() and "Epoch 2/" in p.read_text() for p in logs):
        time.sleep(0.2)
    assert all("Epoch 2/" in p.read_text() for p in logs), "both workers should be training"
    if sig == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop")
    assert proc.returncode == code, err
    assert err.strip().splitlines() == ["edgepipe: interrupted; rerun the same command to resume"], err
    deadline = time.time() + 15  # the group empties once its last zombie (the resource tracker) is reaped
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("workers outlived the interrupted run")
    tmp = tmp_path / "runs/fan/.tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), list(tmp.iterdir())
    assert {p.name for p in (tmp_path / "runs/fan/.work").iterdir()} == {"model", "other"}  # checkpoints kept
    status = subprocess.run([str(exe), "status", str(path)], cwd=tmp_path, capture_output=True, text=True)
    assert "model          stale: never run" in status.stdout and status.returncode == 0
