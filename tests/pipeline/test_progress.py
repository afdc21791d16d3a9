"""Stages' progress events: what the runner's sink receives, in this process and from worker processes,
and what a person sees of them in a terminal and not in a pipe or a log."""

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepipe.core import progress
from edgepipe.pipeline.recipe import load_recipe
from edgepipe.pipeline.runner import Runner
from edgepipe.testing import tiny_recipe, write_idx_dataset, write_recipe


def _epochs(events, stage):
    return [
        (e.done, e.total, e.note.split()[0] if e.note else "") for e in events if e.stage == stage and e.unit == "epoch"
    ]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_training_reports_each_epoch_with_its_validation_metric(tmp_path, jobs):
    data = write_idx_dataset(tmp_path / "idx")
    recipe = tiny_recipe(data, epochs=3)
    if jobs == 2:  # a second training beside the first, so both run in worker processes at once
        recipe["stages"]["other"] = json.loads(json.dumps(recipe["stages"]["model"]))
    path = write_recipe(tmp_path / "tiny.yaml", recipe)
    events = []
    Runner(load_recipe(path), tmp_path, on_progress=events.append).run(jobs=jobs)
    for stage in ("model", "other") if jobs == 2 else ("model",):
        mine = [e for e in events if e.stage == stage]
        assert mine[0] == progress.Event(stage) and mine[-1] == progress.Event(stage, ended=True)
        assert _epochs(events, stage) == [
            (0, 3, ""),
            (1, 3, "val_accuracy"),
            (2, 3, "val_accuracy"),
            (3, 3, "val_accuracy"),
        ]
        assert re.fullmatch(r"val_accuracy \d\.\d+", mine[-2].note), mine[-2]
    data_events = [e for e in events if e.stage == "data"]
    assert data_events == [progress.Event("data"), progress.Event("data", ended=True)]  # started, ended, no count


def test_inner_updates_become_the_detail_of_the_outer_count():
    events = []
    progress.update(1, 2, "trial")  # outside a stage: goes nowhere
    with progress.reporting("search", events.append):
        progress.update(0, 2, "trial")
        with progress.inner():
            progress.update(1, 5, "epoch", "val_accuracy 0.5")
        progress.update(1, 2, "trial", "best 50.00 %")
    assert [(e.unit, e.done, e.note, e.detail) for e in events[1:-1]] == [
        ("trial", 0, "", ""),
        ("trial", 0, "", "epoch 1/5 val_accuracy 0.5"),
        ("trial", 1, "best 50.00 %", ""),
    ]
    assert not progress.active()


# -- in a terminal, and not in a pipe ------------------------------------------------------------------------

ESC = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _cli(args, cwd, env):
    from tests.conftest import SHARED_DATASETS

    exe = Path(sys.executable).with_name("edgepipe")
    # A person's terminal, also when the suite runs in CI (where CI=true would rightly switch the lines off).
    person = {k: v for k, v in os.environ.items() if k != "CI"}
    return [str(exe), *args], dict(
        person, EDGEPIPE_DATA_MIRROR=str(SHARED_DATASETS), COLUMNS="150", LINES="30", TERM="xterm-256color", **env
    )


def _in_a_terminal(args, cwd, env, timeout=120) -> str:
    """Run the CLI with its stdout and stderr on a pseudo-terminal; everything it wrote, as text."""
    cmd, env = _cli(args, cwd, env)
    main, child = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=child, stderr=child)
    os.close(child)
    out, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=10) == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def _plain(lines: str, root: Path) -> list[str]:
    """The runner's lines without what differs between two runs (times, the temporary folders)."""
    lines = lines.replace(str(root) + "/", "")
    return [
        re.sub(r"\d+\.\d+ s|\d+(\.\d+)? [KM]?B\b|val_accuracy \d\.\d+|in \d+\.\d s", "#", line)
        for line in lines.splitlines()
        if line.strip()
    ]


def test_live_lines_in_a_terminal_only(tmp_path):
    data = write_idx_dataset(tmp_path / "idx")
    recipe = tiny_recipe(data, epochs=3)
    recipe["stages"]["other"] = json.loads(json.dumps(recipe["stages"]["model"]))
    recipe["stages"]["other"]["params"]["seed"] = 1
    write_recipe(tmp_path / "tty" / "fan.yaml", recipe)
    write_recipe(tmp_path / "pipe" / "fan.yaml", recipe)
    args = ["run", "fan.yaml", "--jobs", "2"]

    shown = _in_a_terminal(args, tmp_path / "tty", {})
    assert re.search(r"model\s+.*epoch [0-3]/3", shown) and re.search(r"other\s+.*epoch [0-3]/3", shown), shown
    assert "\x1b[" in shown
    text = ESC.sub("", shown).replace("\r", "")
    assert re.search(r"epoch [123]/3\s+val_accuracy \d\.\d+", text), text

    cmd, env = _cli(args, tmp_path / "pipe", {})
    piped = subprocess.run(cmd, cwd=tmp_path / "pipe", env=env, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert "\x1b" not in piped.stdout + piped.stderr and "\r" not in piped.stdout
    assert not re.search(r"epoch \d/3", piped.stdout) and "ETA" not in piped.stdout
    assert "[2/3] model          running: never run  (log: runs/fan/.logs/model.log)" in piped.stdout
    # the plain lines are the same lines, in the same order, in the terminal and in the pipe
    tty_lines = [line.split("\r")[-1] for line in ESC.sub("", shown).split("\r\n")]  # drawn over a live line
    tty_lines = [line for line in tty_lines if line.startswith(("[", "fan:"))]
    assert sorted(_plain("\n".join(tty_lines), tmp_path / "tty")) == sorted(_plain(piped.stdout, tmp_path / "pipe"))

    for root in ("tty", "pipe"):
        for stage in ("model", "other"):
            text = (tmp_path / root / f"runs/fan/.logs/{stage}.log").read_text()
            assert "Epoch 3/3" in text and "ETA" not in text and "\x1b" not in text and "epoch 1/3" not in text


class _Terminal:
    def isatty(self):
        return True


@pytest.mark.parametrize("env, shown", [({}, True), ({"CI": "true"}, False), ({"TERM": "dumb"}, False)])
def test_live_lines_only_on_a_terminal_outside_ci(monkeypatch, env, shown):
    from edgepipe.core import live

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "stdout", _Terminal())
    assert live.wanted() is shown


def test_a_search_reports_trial_k_of_n_with_the_best_so_far_and_each_trials_epochs(tmp_path):
    from tests.stages.test_search import search_recipe

    idx = write_idx_dataset(tmp_path / "idx", n_train=160, n_test=40)
    path = search_recipe(tmp_path, idx, trials=2, startup_trials=1)
    events = []
    Runner(load_recipe(path), tmp_path, on_progress=events.append).run(until="search")
    trials = [e for e in events if e.stage == "search" and e.unit == "trial"]
    assert [(e.done, e.total) for e in trials if not e.detail] == [(0, 2), (1, 2), (2, 2)]
    assert trials[-1].note.startswith("best #") and trials[-1].note.endswith(" %"), trials[-1]
    details = [e.detail for e in trials if e.detail]
    assert details[0] == "epoch 0/2" and re.fullmatch(r"epoch 2/2 val_accuracy \d\.\d+", details[-1]), details


def test_the_emulator_says_each_finished_model(monkeypatch):
    """`run_many` (the emulated bench's models on QEMU) calls back as each run ends, in the caller's thread."""
    import threading

    from edgepipe.targets.mcu import run as mcu_run

    monkeypatch.setattr(mcu_run, "run", lambda seconds: time.sleep(seconds) or seconds)
    seen = []
    got = mcu_run.run_many(
        [{"seconds": 0.3}, {"seconds": 0.0}],
        max_parallel=2,
        on_done=lambda k, i: seen.append((k, i, threading.current_thread().name)),
    )
    assert got == [0.3, 0.0]
    assert seen == [(1, 1, threading.current_thread().name), (2, 0, threading.current_thread().name)]
