"""The search loop's edges: a trial that fails spends its place in the budget, a budget that cannot be
computed is refused at load, and an interrupt (Ctrl-C, SIGTERM) stops the search, resumably, even when what
the trial ran turned it into an ordinary exception."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.search import study as st_study
from edgepipe.testing import check_clean_outcome, run_cli, write_idx_dataset
from tests.stages.test_search import _edgepipe, _wait_for, rows, search_recipe


class Runaway(BaseException):
    """The loop asked for more trials than any budget allows (a BaseException: the loop must not catch it)."""


def _study(tmp_path: Path, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=st_study._storage(f"sqlite:///{tmp_path / 'db.sqlite'}"), study_name=name)


def _lr(trial) -> float:
    return trial.suggest_float("lr", 0.001, 0.1)


OUTCOMES = st.sampled_from(["ok", "fail", "nan", "pruned"])


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(budget=st.integers(1, 5), outcomes=st.lists(OUTCOMES, min_size=1, max_size=12))
def test_any_mix_of_failing_trials_stops_at_the_budget(budget, outcomes):
    """Generated budgets and trial outcomes: the loop runs exactly `budget` trials, whatever fails."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s, calls = optuna.create_study(), []  # in memory: the loop is the same over any storage

    def objective(trial):
        calls.append(trial.number)
        if len(calls) > budget + 3:
            raise Runaway(f"{len(calls)} trials asked for a budget of {budget}")
        what = outcomes[(len(calls) - 1) % len(outcomes)]
        lr = _lr(trial)
        if what == "fail":
            raise ZeroDivisionError("float division by zero")  # what a budget of 0 did
        if what == "pruned":
            raise optuna.TrialPruned()
        return math.nan if what == "nan" else lr

    ran = st_study.run_trials(s, objective, budget, lambda t: None)
    assert ran == len(calls) == budget == len(st_study.counted(s))
    failed = [t for t in s.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("error") or t.values is None for t in failed)


def _interrupting(signum: int, swallow: bool):
    """An objective whose first trial receives `signum`; `swallow`: the library it runs turns the
    KeyboardInterrupt into a RuntimeError (as TensorFlow does inside a py_function or a tf.data generator)."""
    calls = []

    def objective(trial):
        calls.append(trial.number)
        lr = _lr(trial)
        if len(calls) == 1:
            try:
                os.kill(os.getpid(), signum)
                for _ in range(10**6):  # the handler runs between two bytecodes, here
                    pass
            except BaseException as e:  # the library's own boundary
                if swallow:
                    raise RuntimeError("Error in py_function") from e
                raise
        return lr

    return objective, calls


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("swallow", [False, True], ids=["raised", "swallowed"])
def test_an_interrupt_stops_the_loop_and_its_trial_is_asked_again(tmp_path, signum, swallow):
    from edgepipe.cli import _on_sigterm

    before = signal.signal(signal.SIGTERM, _on_sigterm)  # the CLI's: SIGTERM raises as Ctrl-C does
    try:
        s = _study(tmp_path, "s")
        objective, calls = _interrupting(signum, swallow)
        with pytest.raises(KeyboardInterrupt):
            st_study.run_trials(s, objective, 3, lambda t: None)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert calls == [0] and signal.getsignal(signal.SIGTERM) is before
    assert [t.state.name for t in s.trials] == ["FAIL", "WAITING"] and st_study.counted(s) == []
    again, calls = _interrupting(signal.SIGINT, False)
    calls.append("no interrupt")
    assert st_study.run_trials(s, again, 3, lambda t: None) == 3
    assert s.trials[1].params == s.trials[0].params  # the interrupted trial's parameters, asked again


BUDGET_KNOBS = ["max_latency_ms", "max_flash_bytes", "max_ram_bytes", "min_val_accuracy"]
BUDGET_VALUES = st.one_of(
    st.integers(-3, 20000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, 1e-300, "reference", "0", "", None, True, [1]]),
)


def test_any_budget_loads_above_zero_or_is_refused_in_one_line(tmp_path_factory):
    """Generated budgets: each loads as a limit > 0 (so every excess relative to it is a number) or
    "reference", or is one RecipeError line, exit 2."""
    from edgepipe.core.errors import RecipeError
    from edgepipe.pipeline.recipe import load_recipe

    root = tmp_path_factory.mktemp("budgets")
    idx = write_idx_dataset(root / "idx", n_train=40, n_test=10)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(budgets=st.dictionaries(st.sampled_from(BUDGET_KNOBS), BUDGET_VALUES, min_size=1))
    def check(budgets):
        try:
            p = load_recipe(search_recipe(root, idx, **budgets)).stages["search"].params
        except RecipeError as e:
            assert e.fix and "\n" not in str(e), str(e)
            return
        for knob in budgets:
            value = getattr(p, knob)
            if value in (None, "reference"):
                continue
            assert value > 0 and math.isfinite(value), (knob, value)  # trials' excesses are relative to it

    check()


@pytest.mark.parametrize("knob", BUDGET_KNOBS)
def test_a_budget_of_zero_is_refused_at_load(tmp_path, knob):
    idx = write_idx_dataset(tmp_path / "idx", n_train=40, n_test=10)
    code, out, err = run_cli(["status", str(search_recipe(tmp_path, idx, **{knob: 0}))], tmp_path)
    line = check_clean_outcome(code, err, tmp_path)
    assert code == 2 and f"{knob}" in line and "fix: " in line, line


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=160, n_test=40)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_search_stops_in_one_line_and_resumes(cli, tmp_path, idx, signum, code):
    recipe = search_recipe(tmp_path, idx, trials=3)
    assert cli("run", recipe, "--until", "data").returncode == 0
    first = _edgepipe(["run", str(recipe), "--only", "search"], tmp_path)
    _wait_for(first, "trial 1/3")
    _wait_for(first, "Epoch 1/")  # the second trial is training: the interrupt lands inside it
    os.killpg(first.pid, signum)
    out = first.communicate(timeout=300)[0]
    assert first.returncode == code, out[-3000:]
    assert out.strip().splitlines()[-1] == "edgepipe: interrupted; rerun the same command to resume", out[-3000:]
    assert "trial 3/3" not in out and "Traceback" not in out
    done = cli("run", recipe, "--only", "search")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resuming study 'search': " in done.stdout
    table = rows(tmp_path)  # the interrupted trial is no failed row: its parameters were asked again
    assert len(table) == 3 and all(r["state"] != "failed" for r in table), table


FAILING_BUILDER = """
import tensorflow as tf
import tf_keras as keras


def _refuse(x):
    raise ValueError("this layer fails in training")


def build(input_shape, num_classes, kernel_initializer="he_normal", width=4, **_):
    inputs = keras.Input(input_shape)
    x = keras.layers.Lambda(lambda t: tf.ensure_shape(tf.py_function(_refuse, [t], t.dtype), t.shape))(inputs)
    x = keras.layers.Conv2D(width, 3, kernel_initializer=kernel_initializer)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
"""


def test_a_search_whose_every_trial_fails_stops_at_its_budget_naming_the_failure(cli, tmp_path, idx):
    """A trial that fails (here the model raises inside TensorFlow while training) spends its place: the
    stage stops after `trials` of them, in one line naming the first failure, not after trial 61 of 2."""
    (tmp_path / "failing_arch.py").write_text(FAILING_BUILDER)
    train = {"arch": "failing_arch:build", "lr": 0.01, "epochs": 1, "batch_size": 16}
    recipe = search_recipe(tmp_path, idx, trials=2, train=train, space={"arch_args.width": {"choices": [2, 4]}})
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = cli("run", recipe, "--until", "search", env={"PYTHONPATH": path}, timeout=900)
    line = done.stderr.strip().splitlines()[-1]  # TensorFlow's own start-up lines come before it
    assert not (tmp_path / "runs/s/.tmp/search").exists() and not (tmp_path / "runs/s/search").exists()
    assert done.returncode == 1 and "search: every trial of 2 failed; trial 0: " in line, done.stderr[-2000:]
    assert "InvalidArgumentError" in line and line.count("; fix: ") == 1, line  # TensorFlow's error, as the trial's
    assert "trial 2/2" in done.stdout and "trial 3/" not in done.stdout, done.stdout[-2000:]
