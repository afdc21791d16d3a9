"""The runner where `fcntl` does not exist (Windows): it imports, locks its run folder and runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgepipe.core import runlock
from edgepipe.core.errors import EdgepipeError

REPO = Path(__file__).resolve().parents[2]
WITHOUT_FCNTL = "import sys; sys.modules['fcntl'] = None; from edgepipe.cli import entry; entry()"


def test_status_and_the_smoke_recipes_data_stage_run_without_fcntl(tmp_path, mnist_dir):
    env = dict(
        os.environ,
        EDGEPIPE_DATA_MIRROR=str(mnist_dir.parent),
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    smoke = REPO / "recipes" / "smoke.yaml"

    def edgepipe(*args):
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_FCNTL, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "data           stale: never run" in edgepipe("status", str(smoke))
    assert "data           done in" in edgepipe("run", str(smoke), "--until", "data")
    assert "data           fresh: up to date" in edgepipe("status", str(smoke))
    assert not (tmp_path / "runs/smoke/.runlock.pid").exists()  # the lock file is gone with its run


def test_the_o_excl_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "fcntl", None)
    monkeypatch.setattr(runlock, "msvcrt", None)
    lock = tmp_path / "run" / ".runlock"
    with runlock.exclusive(lock):
        assert (tmp_path / "run/.runlock.pid").read_text() == str(os.getpid())
        with pytest.raises(EdgepipeError, match="another edgepipe run is using .*run; fix: wait"):
            with runlock.exclusive(lock):
                pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run/.runlock.pid").write_text(dead.stdout.strip())  # left by a run that was killed
    with runlock.exclusive(lock):
        pass
    assert not (tmp_path / "run/.runlock.pid").exists()
