import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
# A clone without ../shared (a user who cloned the project alone): what needs the offline mirrors skips.
NO_MIRROR = f"needs the offline dataset mirror {SHARED_DATASETS} (../shared/datasets beside the repository)"
MCU_MIRROR = REPO.parent / "shared" / "mcu"
NO_TFLM = (
    f"needs TensorFlow Lite Micro's sources: the offline mirror {MCU_MIRROR} (../shared/mcu beside the "
    "repository) or EDGEPIPE_TFLM_SRC"
)


def no_tflm_sources() -> bool:
    """No TFLite Micro sources a Cortex-M build or bundle could use (the skip's condition, not a guess)."""
    return not os.environ.get("EDGEPIPE_TFLM_SRC") and not (MCU_MIRROR / "src" / "tflite-micro.tar.gz").is_file()


@pytest.fixture
def tflm_mirror():
    """Skip, saying why, where no TFLite Micro sources are at hand (a clone without ../shared)."""
    if no_tflm_sources():
        pytest.skip(NO_TFLM)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (and recipe)")
    parser.addoption("--recipes", action="store_true", help="also run tests marked recipe (make test-recipes)")


def pytest_collection_modifyitems(config, items):
    slow = config.getoption("--runslow") or os.environ.get("EDGEPIPE_SLOW") == "1"
    recipes = slow or config.getoption("--recipes") or os.environ.get("EDGEPIPE_RECIPES") == "1"
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or EDGEPIPE_SLOW=1")
    skip_recipe = pytest.mark.skip(reason="a recipe end to end: make test-recipes (CI runs it after make test)")
    for item in items:
        if "slow" in item.keywords and not slow:
            item.add_marker(skip_slow)
        elif "recipe" in item.keywords and not recipes:
            item.add_marker(skip_recipe)


@pytest.fixture(scope="session", autouse=True)
def sigint_is_ctrl_c():
    """SIGINT raises KeyboardInterrupt in every test process and the processes they start, as at a terminal:
    a suite started in the background (`make test &`) inherits SIGINT ignored, and the interrupt tests send it."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a caught signal is SIG_DFL after exec


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = SHARED_DATASETS / "mnist"
    if not d.is_dir():
        pytest.skip(NO_MIRROR)
    return d


@pytest.fixture
def cli(tmp_path):
    """Run the real `edgepipe` console script in tmp_path; returns CompletedProcess."""

    def run(*args, cwd=None, env=None, timeout=600):
        e = dict(os.environ, EDGEPIPE_DATA_MIRROR=str(SHARED_DATASETS), **(env or {}))
        exe = Path(sys.executable).with_name("edgepipe")
        done = subprocess.run(
            [str(exe), *map(str, args)], cwd=cwd or tmp_path, env=e, capture_output=True, text=True, timeout=timeout
        )
        # Without the mirrors, the preflight refuses a recipe that needs them before any work: skip, not fail.
        if done.returncode == 2 and not SHARED_DATASETS.is_dir() and " is in no mirror " in done.stderr:
            pytest.skip(NO_MIRROR)
        if done.returncode == 2 and no_tflm_sources() and "needs TensorFlow Lite Micro's sources" in done.stderr:
            pytest.skip(NO_TFLM)
        return done

    return run


@pytest.fixture
def steps_per_execution_seen(monkeypatch) -> list:
    """The steps_per_execution of every tf_keras Model.compile call during the test, in order."""
    from edgepipe.core._tf import keras

    seen, compile_ = [], keras.Model.compile

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("steps_per_execution", 1))
        return compile_(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", spy)
    return seen


DEVICE_LOCK = Path(tempfile.gettempdir()) / "edgepipe-tests-device.lock"


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (edgepipe.testing.LocalSshd), one per test process."""
    from edgepipe.testing import LocalSshd

    if not LocalSshd.available():
        pytest.skip("OpenSSH server not installed (Debian: apt-get install openssh-server)")
    with LocalSshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def sshd(sshd_server):
    """The SSH "device", held by one test at a time across pytest-xdist workers (an exclusive lock on a
    file): the device is this machine, and these tests check that its /tmp is left as they found it."""
    with open(DEVICE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield sshd_server
