"""The search stage: trials measured on their target, budgets that hold, a study that survives a kill and
takes more than one worker, and bad spaces refused at load in one line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgepipe.testing import write_idx_dataset, write_recipe

REPO = Path(__file__).resolve().parents[2]
TOOLCHAIN = all(shutil.which(t) for t in ("arm-none-eabi-gcc", "qemu-system-arm"))


def search_recipe(root: Path, idx: Path, **search) -> Path:
    """data -> search (host, tiny strided CNNs on 12x12 images) -> convert."""
    params = {
        "target": "host",
        "trials": 4,
        "startup_trials": 2,
        "measure_samples": 2,
        "representative_samples": 20,
        "train": {
            "arch": "strided_cnn",
            "arch_args": {"widths": [4, 8, 8]},
            "lr": 0.01,
            "epochs": 2,
            "batch_size": 16,
            "schedule": {"kind": "constant"},
            "early_stopping": {"enabled": False},
        },
        "space": {
            "arch_args.widths.0": {"low": 2, "high": 8, "step": 2},
            "arch_args.widths.2": {"choices": [4, 8, 16]},
            "lr": {"low": 0.003, "high": 0.03, "log": True},
        },
    }
    params.update(search)
    recipe = {
        "stages": {
            "data": {"kind": "data", "params": {"source": f"idx:{idx}", "val_fraction": 0.25}},
            "search": {"kind": "search", "inputs": {"data": "data"}, "params": params},
            "tflite": {
                "kind": "convert",
                "inputs": {"data": "data", "model": "search"},
                "params": {"variants": ["int8"], "tolerance": {"int8_top1": 0.5}},
            },
        }
    }
    return write_recipe(root / "s.yaml", recipe)


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=160, n_test=40)


def rows(root: Path) -> list[dict]:
    with open(root / "runs/s/search/trials.csv") as f:
        return list(csv.DictReader(f))


def test_search_chooses_the_most_accurate_model_within_the_budget(cli, tmp_path, idx):
    """Flash on the host is the file's size: a budget below the widest models makes them infeasible; those
    are measured untrained and never trained, and the chosen model is the best feasible one on validation."""
    recipe = search_recipe(tmp_path, idx, max_flash_bytes=9000)
    done = cli("run", recipe)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    out = tmp_path / "runs/s/search"
    assert {"model.h5", "metrics.json", "trials.csv", "front.json", "pareto.png", "search.json"} <= {
        p.name for p in out.iterdir()
    }
    table = rows(tmp_path)
    assert [int(r["trial"]) for r in table] == [0, 1, 2, 3]
    for r in table:
        assert r["flash_bytes"], r  # every trial is measured, trained or not
        over = int(r["flash_bytes"]) > 9000
        assert (r["feasible"] == "True") == (not over and r["state"] == "complete")
        if r["state"] == "over budget":
            assert over and r["epochs"] == "0" and r["val_accuracy"] == ""
    summary = json.loads((out / "search.json").read_text())
    chosen = summary["chosen"]
    feasible = [r for r in table if r["feasible"] == "True"]
    assert chosen["trial"] == max(feasible, key=lambda r: float(r["val_accuracy"]))["trial"] or float(
        chosen["val_accuracy"]
    ) == max(float(r["val_accuracy"]) for r in feasible)
    assert (
        chosen["flash_bytes"] <= 9000
        and summary["trials"]["complete"] + summary["trials"]["over budget"] + summary["trials"]["pruned"] == 4
    )
    # the output is the chosen trial's model: its values are the model's, and convert follows unchanged
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["search"]["trial"] == int(chosen["trial"]) and metrics["search"]["values"] == chosen["values"]
    assert (tmp_path / "runs/s/tflite/search_int8.tflite").is_file()
    assert "trial " in done.stdout and "| best #" in done.stdout


def test_a_budget_nothing_meets_is_one_line_with_the_closest_trial(cli, tmp_path, idx):
    recipe = search_recipe(tmp_path, idx, max_flash_bytes=100, trials=2)
    done = cli("run", recipe)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "edgepipe: error: search: no trial of 2 met the budget (flash_bytes <= 100 B); the closest: trial "
    ), line
    assert "fix: relax the budget" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "runs/s/search").exists()


BAD_SPACES = [
    ({"space": {"lr": {"low": 0.01, "high": 0.001}}}, "space.lr: the range [0.01, 0.001] is inverted"),
    ({"space": {"lr": {"low": 0.01, "high": 0.01}}}, "is empty (low equals high)"),
    ({"space": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "a log range needs low > 0"),
    ({"space": {"arch": {"choices": ["strided_cnn", "resnet9000"]}}}, "unknown architecture 'resnet9000'"),
    (
        {"train": {"arch": "resnet9000", "lr": 0.005}, "space": {"lr": {"low": 0.003, "high": 0.03}}},
        "train.arch: unknown architecture 'resnet9000'",
    ),
    ({"space": {"arch_args.widths.5": {"low": 2, "high": 4}}}, "indexes element 5 of a list of 3"),
    ({"space": {"lrr": {"low": 0.001, "high": 0.01}}}, "unknown key 'lrr'"),
    ({"space": {"lr": {"low": 0.001, "high": 20.0}}}, "space.lr = 20.0: lr: 20.0 is out of range"),
    ({"space": {"arch_args.widths": {"choices": [[4, 8, 8]]}}}, "is not a number, string or boolean"),
    ({"space": {"lr": {"choices": []}}}, "choices is empty"),
    ({"space": {}}, "space is empty"),
    ({"objectives": ["val_accuracy", "latency_ms"]}, "Optuna cannot prune a multi-objective study"),
    ({"storage": "redis://localhost/0"}, "has scheme 'redis'"),
    ({"train": {"arch": "strided_cnn", "lr": "auto"}}, "need an arch (fixed or searched) and a numeric lr"),
]


@pytest.mark.parametrize("change, expected", BAD_SPACES, ids=[e for _, e in BAD_SPACES])
def test_bad_spaces_are_refused_at_load_in_one_line(tmp_path, idx, change, expected):
    from edgepipe.testing import check_clean_outcome, run_cli

    recipe = search_recipe(tmp_path, idx, **change)
    code, out, err = run_cli(["status", str(recipe)], tmp_path)
    assert code == 2, (out, err)
    line = check_clean_outcome(code, err, tmp_path)
    assert expected in line, line


def test_a_space_that_distils_without_a_teacher_and_a_dead_storage_are_one_line(cli, tmp_path, idx):
    recipe = search_recipe(tmp_path, idx, space={"teacher": {"choices": [False, True]}})
    done = cli("run", recipe)
    assert (
        done.returncode == 1
        and "the space distils (teacher, temperature or alpha) but the stage has no teacher input"
        in done.stderr.strip().splitlines()[-1]
    )
    recipe = search_recipe(tmp_path, idx, storage="postgresql://nobody@127.0.0.1:9/none")
    done = cli("run", recipe)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "cannot open the search's storage postgresql://...@127.0.0.1:9/none" in line, line
    assert "Traceback" not in done.stderr and not (tmp_path / "runs/s/search").exists()


def test_one_study_name_for_two_spaces_is_refused(cli, tmp_path, idx):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    a = search_recipe(tmp_path, idx, storage=shared, study="mnist", trials=1)
    assert cli("run", a, "--until", "search").returncode == 0
    b = search_recipe(
        tmp_path, idx, storage=shared, study="mnist", trials=1, space={"lr": {"low": 0.001, "high": 0.1, "log": True}}
    )
    done = cli("run", b, "--until", "search")
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "study 'mnist' in sqlite:///" in line and "another search space" in line, line


def _edgepipe(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "from edgepipe.cli import entry; entry()", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def _wait_for(proc: subprocess.Popen, *needles: str, timeout: float = 600) -> list[str]:
    """Read the process's output until a line holds every needle."""
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if all(n in line for n in needles):
            return lines
        assert time.monotonic() < deadline, "".join(lines[-30:])
    raise AssertionError(f"{needles!r} never printed:\n" + "".join(lines[-30:]))


def test_a_killed_search_resumes_with_its_finished_trials(cli, tmp_path, idx):
    recipe = search_recipe(tmp_path, idx, trials=4)
    assert cli("run", recipe, "--until", "data").returncode == 0
    first = _edgepipe(["run", str(recipe), "--only", "search"], tmp_path)
    _wait_for(first, "trial 2/4")
    os.killpg(first.pid, signal.SIGKILL)  # no clean-up of any kind: the OOM killer, a power cut
    first.wait()
    before = {int(r) for r in _finished(tmp_path)}
    assert len(before) >= 2
    done = cli("run", recipe, "--only", "search")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"resuming study 'search': {len(before)} finished trial(s) kept" in done.stdout
    table = rows(tmp_path)
    assert len(table) == 4 and len({r["trial"] for r in table}) == 4
    runners = {int(r["trial"]): r["runner"] for r in table}
    assert len({runners[t] for t in before}) == 1 and all(runners[t] != runners[max(runners)] for t in before)
    proposed = [json.dumps({k: r[k] for k in ("arch_args.widths.0", "arch_args.widths.2", "lr")}) for r in table]
    assert len(set(proposed)) == 4, proposed  # the resumed search does not re-propose the first trials


def _finished(root: Path) -> list[int]:
    import optuna

    study = optuna.load_study(study_name="search", storage=f"sqlite:///{root / 'runs/s/.work/search/study.db'}")
    return [t.number for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"]


def test_two_workers_share_one_study_without_running_a_trial_twice(cli, tmp_path, idx):
    recipe = search_recipe(
        tmp_path,
        idx,
        trials=6,
        space={"arch_args.widths.0": {"low": 2, "high": 8, "step": 2}, "lr": {"low": 0.003, "high": 0.03, "log": True}},
    )
    assert cli("run", recipe, "--until", "data").returncode == 0
    chief = _edgepipe(["run", str(recipe), "--only", "search"], tmp_path)
    _wait_for(chief, "search", "running")
    time.sleep(8)  # the chief has made its study
    worker = _edgepipe(["worker", str(recipe), "search"], tmp_path)
    worker_out = worker.communicate(timeout=900)[0]
    chief_out = chief.communicate(timeout=900)[0]
    assert worker.returncode == 0, worker_out[-3000:]
    assert chief.returncode == 0, chief_out[-3000:]
    assert "worker done: " in worker_out and "trial(s) of study 'search' run in this worker" in worker_out
    table = rows(tmp_path)
    assert sorted(int(r["trial"]) for r in table) == list(range(6)), [r["trial"] for r in table]
    by_runner = {}
    for r in table:
        by_runner.setdefault(r["runner"], []).append(r["trial"])
    assert len(by_runner) == 2, by_runner  # both processes ran trials, and each trial ran in one of them
    values = [json.dumps({k: r[k] for k in ("arch_args.widths.0", "lr")}) for r in table]
    assert len(set(values)) == 6


@pytest.mark.recipe
@pytest.mark.skipif(
    not TOOLCHAIN,
    reason="needs gcc-arm-none-eabi and qemu-system-arm (apt-get install "
    "gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm)",
)
def test_mnist_search_smoke_runs_the_chain_measured_on_the_emulated_m4(cli, tmp_path):
    """mnist_search --profile smoke: three tiny trials on the emulated Cortex-M4 under the reference's
    latency, then QAT, int8, host and M4 benches, the bundle and the report with the front."""
    shutil.copy(REPO / "recipes/mnist_search.yaml", tmp_path / "mnist_search.yaml")
    done = cli("run", tmp_path / "mnist_search.yaml", "--profile", "smoke", timeout=3000)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "runs/mnist_search/search/search.json").read_text())
    ref, chosen = summary["reference"], summary["chosen"]
    assert ref["provenance"] == "emulated" and ref["instructions"] > 0
    assert summary["budgets"]["latency_ms"] == ref["latency_ms"]
    assert chosen["provenance"] == "emulated" and chosen["latency_ms"] <= ref["latency_ms"]
    assert chosen["flash_bytes"] <= 65536 and chosen["ram_bytes"] <= 16384
    assert sum(summary["trials"].values()) == 3
    bench = json.loads((tmp_path / "runs/mnist_search/bench_m4/bench.json").read_text())
    got = {r["name"]: r["target"]["emulated"] for r in bench["rows"]}
    assert set(got) == {"search_qat/int8", "tfmot_ref_qat/int8"}
    report = (tmp_path / "runs/mnist_search/report/report.md").read_text()
    assert "## Search `search` on cortex-m4" in report and "Chosen: trial " in report
    assert "Distillation for this configuration" in report
    assert (tmp_path / "models/mnist_search/report/search_search.png").is_file() or (
        tmp_path / "models/mnist_search/search_search.png"
    ).is_file()
    assert (tmp_path / "models/mnist_search/cortex-m4/search_qat_int8.tflite").is_file()


def test_the_search_space_round_trips_through_yaml(tmp_path, idx):
    """A recipe's space is plain YAML: what a user writes is what the stage reads."""
    from edgepipe.pipeline.recipe import load_recipe

    recipe = search_recipe(tmp_path, idx)
    space = load_recipe(recipe).stages["search"].params.space
    assert space["arch_args.widths.2"].choices == [4, 8, 16] and space["lr"].log is True
    assert space["arch_args.widths.0"].is_int and not space["lr"].is_int
    assert yaml.safe_load(recipe.read_text())["stages"]["search"]["params"]["trials"] == 4


def test_any_search_space_loads_or_is_refused_in_one_line(tmp_path_factory):
    """Generated spaces (keys a train stage has or not, list paths in and out of range, ranges and choices of
    any type) either load, with every value checked, or are one RecipeError line."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from edgepipe.core.errors import EdgepipeError
    from edgepipe.pipeline.recipe import load_recipe

    root = tmp_path_factory.mktemp("spaces")
    idx = write_idx_dataset(root / "idx", n_train=40, n_test=10)
    keys = st.one_of(
        st.sampled_from(
            [
                "lr",
                "arch",
                "epochs",
                "batch_size",
                "dropout",
                "arch_args.widths.0",
                "arch_args.widths.3",
                "arch_args.blocks",
                "teacher",
                "temperature",
                "alpha",
                "augment_scale",
                "schedule.kind",
                "folds",
                "seed",
                "label_smoothing",
            ]
        ),
        st.text(max_size=8),
    )
    numbers = st.one_of(st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True, width=32))
    scalars = st.one_of(numbers, st.booleans(), st.none(), st.sampled_from(["strided_cnn", "tiny_conv", "nope", ""]))
    dims = st.one_of(
        st.fixed_dictionaries(
            {"low": numbers, "high": numbers},
            optional={"step": numbers, "log": st.booleans(), "type": st.sampled_from(["int", "x"])},
        ),
        st.fixed_dictionaries({"choices": st.lists(scalars, max_size=4)}),
        scalars,
        st.dictionaries(st.text(max_size=4), scalars, max_size=2),
    )

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(space=st.dictionaries(keys, dims, max_size=3))
    def check(space):
        recipe = search_recipe(root, idx, space=space)
        try:
            load_recipe(recipe)
        except EdgepipeError as e:
            text = f"{e.message}; fix: {e.fix}"
            assert e.fix and "\n" not in text and "Traceback" not in text, text

    check()


def test_a_trial_of_a_worker_that_died_on_another_host_fails_after_the_grace_period_and_is_retried(
    tmp_path, monkeypatch
):
    """Trials beat while they run (an ask/tell loop must do it itself); one whose beat stops, on a host this
    process cannot look into, is failed after the storage's grace period and asked again."""
    import optuna
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    from edgepipe.search import study as st

    monkeypatch.setattr(st, "HEARTBEAT_SECONDS", 1)
    s = optuna.create_study(storage=st._storage(f"sqlite:///{tmp_path / 'db.sqlite'}"), study_name="s")
    trial = s.ask({"lr": optuna.distributions.FloatDistribution(0.001, 0.1)})
    trial.set_user_attr(st.RUNNER_ATTR, "another-host:1234")
    with get_heartbeat_thread(trial._trial_id, s._storage):
        time.sleep(1.5)
    st.fail_orphans(s)
    assert s.trials[0].state == TrialState.RUNNING  # within the grace period: maybe just slow
    time.sleep(5)
    st.fail_orphans(s)
    states = [t.state for t in s.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING], states
    assert s.trials[1].params == s.trials[0].params
