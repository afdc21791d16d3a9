"""Multi-worker training on tf.distribute: two worker processes on 127.0.0.1 against one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgepipe.testing import tiny_recipe, write_idx_dataset, write_recipe

EXE = Path(sys.executable).with_name("edgepipe")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def project(root: Path) -> Path:
    spec = tiny_recipe(write_idx_dataset(root.parent / "idx", n_train=256, n_test=80), epochs=4)
    spec["stages"]["model"]["params"].update(batch_size=32, seed=3)
    return write_recipe(root / "d.yaml", spec)


def run(args, cwd, env=None, **kw):
    return subprocess.Popen(
        [str(EXE), *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_two_workers_match_one_within_tolerance(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    single = run(["run", project(one)], one)
    out, err = single.communicate(timeout=600)
    assert single.returncode == 0, err

    recipe = project(two)
    assert run(["run", recipe, "--until", "data"], two).wait(timeout=300) == 0
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    multi = ["--set", "model.strategy=multi_worker"]

    def config(i):
        return {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}

    other = run(["worker", recipe, "model", *multi], two, env=config(1))
    chief = run(["run", recipe, "--only", "model", *multi], two, env=config(0))
    c_out, c_err = chief.communicate(timeout=600)
    w_out, w_err = other.communicate(timeout=600)
    assert chief.returncode == 0, c_err[-2000:]
    assert other.returncode == 0, w_err[-2000:]
    assert "worker done" in w_out

    m1 = json.loads((one / "runs/d/model/metrics.json").read_text())
    m2 = json.loads((two / "runs/d/model/metrics.json").read_text())
    assert m2["strategy"]["kind"] == "multi_worker" and m2["strategy"]["replicas"] == 2
    assert "strategy" not in m1
    h1 = (one / "runs/d/model/history.csv").read_text().splitlines()
    h2 = (two / "runs/d/model/history.csv").read_text().splitlines()
    assert len(h1) == len(h2) == 5  # both ran the 4 epochs
    # Same global batch, gradients averaged over the two halves: the same training up to summation order
    # and each worker's own augmentation/shuffle stream.
    assert abs(m1["test"]["accuracy"] - m2["test"]["accuracy"]) <= 0.1, (m1["test"], m2["test"])
    assert abs(m1["test"]["loss"] - m2["test"]["loss"]) <= 0.25 * max(m1["test"]["loss"], 0.05)
    # the non-chief kept nothing (history.jsonl records the chief's runs)
    assert sorted(p.name for p in (two / "runs/d").iterdir() if not p.name.startswith(".")) == [
        "data",
        "history.jsonl",
        "lock.json",
        "model",
    ]


def test_worker_refuses_a_stage_that_is_not_multi_worker(tmp_path):
    recipe = project(tmp_path)
    done = run(["worker", recipe, "model"], tmp_path)
    _, err = done.communicate(timeout=120)
    assert (
        done.returncode == 2
        and "stage 'model' can have no workers: it is neither a search nor a multi-worker training" in err
    )


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            "",
            'needs TF_CONFIG, which is not set; fix: set TF_CONFIG on every machine (see docs/training.md, "Training on '
            'a cluster")',
        ),
        ("{not json", "TF_CONFIG is not a valid cluster spec"),
    ],
)
def test_multi_worker_without_a_cluster_is_one_line(tmp_path, value, expected):
    recipe = project(tmp_path)
    env = {"TF_CONFIG": value}
    done = run(["run", recipe, "--set", "model.strategy=multi_worker"], tmp_path, env=env)
    _, err = done.communicate(timeout=300)
    assert done.returncode == 1
    assert err.strip().splitlines()[-1].startswith("edgepipe: error: ") and expected in err


def test_worker_before_its_inputs_exist_says_what_to_run_first(tmp_path):
    recipe = project(tmp_path)
    done = run(["worker", recipe, "model", "--set", "model.strategy=multi_worker"], tmp_path)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 1
    assert err.strip().splitlines() == [
        f"edgepipe: error: stage 'model' needs 'data', which is not in runs/d; "
        f"fix: run `edgepipe run {recipe} --until data` on this machine first"
    ]
