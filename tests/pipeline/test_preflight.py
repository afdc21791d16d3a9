"""The preflight: what stages need from the machine is checked before the first stage runs."""

import os
import sys
import time
from pathlib import Path

import pytest

from edgepipe.core import system
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import build
from edgepipe.pipeline.recipe import load_recipe
from edgepipe.pipeline.runner import Runner
from edgepipe.stages.registry import kinds
from edgepipe.testing import tiny_recipe, write_idx_dataset, write_recipe

REPO = Path(__file__).resolve().parents[2]
# A PATH with this Python's folder alone: no Arm toolchain, QEMU, ssh or adb, whatever the machine has.
BARE_PATH = str(Path(sys.executable).parent)


def _with_bench(data: Path, **bench) -> dict:
    recipe = tiny_recipe(data, epochs=1)
    recipe["stages"]["tflite"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {"variants": ["int8"]},
    }
    recipe["stages"]["bench"] = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {"runs": 5, "warmup": 0, **bench},
    }
    return recipe


@pytest.fixture
def data(tmp_path):
    return write_idx_dataset(tmp_path / "idx")


def test_a_missing_toolchain_refuses_the_run_in_seconds_before_training(tmp_path, data, cli):
    path = write_recipe(tmp_path / "recipes" / "m4.yaml", _with_bench(data, target="cortex-m4"))
    start = time.perf_counter()
    done = cli("run", path, "--jobs", "2", env={"PATH": BARE_PATH})
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(
        "edgepipe: error: stage 'bench' needs the Arm toolchain and QEMU to emulate the cortex-m4 (arm-none-eabi-gcc, "
    )
    assert "; fix: " in lines[0] and "apt-get install -y gcc-arm-none-eabi" in lines[0]
    assert "running" not in done.stdout  # no stage started: nothing trained
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()
    assert seconds < 60  # TensorFlow's import is most of it; the training it saved is minutes at recipe scale


def test_only_stages_that_will_run_are_asked(tmp_path, data, monkeypatch):
    """A fresh stage's needs do not matter: after a good run, a missing tool refuses nothing."""
    path = write_recipe(tmp_path / "recipes" / "tiny.yaml", tiny_recipe(data, epochs=1))
    asked = []
    train = kinds()["train"]

    def needs(params):
        from edgepipe.core.requirements import Requirement

        asked.append(params.epochs)
        return [Requirement("a planted tool", lambda: os.environ.get("PLANTED_MISSING"), "install the planted tool")]

    monkeypatch.setattr(
        type(train), "needs", property(lambda self: needs if self.name == "train" else None), raising=False
    )
    recipe = load_recipe(path)
    Runner(recipe, tmp_path).run()
    assert asked == [1]
    monkeypatch.setenv("PLANTED_MISSING", "it is gone")
    Runner(recipe, tmp_path).run()  # the train stage is fresh: its needs are not asked
    assert asked == [1]
    with pytest.raises(EdgepipeError, match=r"stage 'model' needs a planted tool \(it is gone\)") as e:
        Runner(recipe, tmp_path).run(force=True)
    assert e.value.exit_code == 2 and e.value.fix == "install the planted tool"
    with pytest.raises(EdgepipeError, match="planted tool"):
        Runner(load_recipe(path, sets=["model.lr=0.02"]), tmp_path).run()


def _needs(kind: str, **params):
    k = kinds()[kind]
    return k.needs(build(k.params, params, f"a {kind} stage"))


def _unmet(kind: str, **params) -> list[str]:
    return [f"{r.what}: {why}" for r in _needs(kind, **params) if (why := r.unmet()) is not None]


def test_each_kind_that_needs_the_machine_says_what(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", BARE_PATH)
    assert _unmet("bench", target="cortex-m4")[0].startswith(
        "the Arm toolchain and QEMU to emulate the cortex-m4: arm-none-eabi-gcc, arm-none-eabi-g++"
    )
    assert _unmet(
        "search",
        target="cortex-m4",
        train={"arch": "strided_cnn", "lr": 0.005},
        space={"lr": {"low": 0.001, "high": 0.01}},
    )[0].startswith("the Arm toolchain")
    assert _unmet("bench", target="android") == ["adb, to reach the Android phone: adb is not installed"]
    assert _unmet("bench", target="coral", host="me@127.0.0.1:9")[0] == (
        "the Edge TPU compiler: edgetpu_compiler is not installed"
    )
    assert _unmet("bench", target="rpi4", host="pi@127.0.0.1:9") == [
        "an SSH client, to reach the device: ssh is not installed",
        "the device pi@127.0.0.1:9 to answer over SSH: not asked (no ssh client)",
    ]
    assert _unmet("bench", target="host") == [] and _unmet("bench", target="cortex-m4", measure="estimate") == []
    monkeypatch.setenv("EDGEPIPE_TFLM_SRC", str(tmp_path / "nowhere"))
    assert any(
        u.startswith("TensorFlow Lite Micro's sources: TFLite Micro source path EDGEPIPE_TFLM_SRC=")
        for u in _unmet("bench", target="cortex-m4")
    )


def test_a_device_that_does_not_answer_is_refused_before_work(monkeypatch):
    if not os.path.exists("/usr/bin/ssh"):
        pytest.skip("ssh not installed (Debian: apt-get install openssh-client)")
    unmet = _unmet("bench", target="rpi4", host="pi@127.0.0.1:9")  # port 9 (discard): nothing listens
    assert unmet == [
        "the device pi@127.0.0.1:9 to answer over SSH: pi@127.0.0.1:9: device unreachable "
        "(ssh: connect to host 127.0.0.1 port 9: Connection refused)"
    ]


def test_a_dataset_in_no_mirror_and_offline_is_refused(monkeypatch, tmp_path):
    from edgepipe.datasets import sources

    monkeypatch.setattr(sources, "SYSTEM_DIRS", ())
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)
    monkeypatch.setattr(sources, "_reachable", lambda host, **kw: False)
    unmet = _unmet("data", source="keras:mnist", mirror=[str(tmp_path)])
    assert unmet == [
        f"the mnist dataset: keras:mnist is in no mirror (looked in {tmp_path}) and its download host "
        "storage.googleapis.com does not answer"
    ]
    assert "train-images-idx3-ubyte.gz" in _needs("data", source="keras:mnist")[0].fix
    monkeypatch.setattr(sources, "_reachable", lambda host, **kw: True)  # online: keras downloads it
    assert _unmet("data", source="keras:mnist", mirror=[str(tmp_path)]) == []
    assert _needs("data", source=f"idx:{tmp_path}") == []


def test_every_shipped_recipe_declares_what_its_stages_need():
    """Each stage of a shipped recipe that measures on an emulated core asks for the toolchain first, and each
    Cortex-M bundle for TFLite Micro's sources."""
    emulated = bundles = 0
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        for name, stage in recipe.stages.items():
            target = getattr(stage.params, "target", None) or ""
            whats = [r.what for r in stage.kind.needs(stage.params)] if stage.kind.needs else []
            if "cortex-m" not in target:
                continue
            if stage.kind.name == "bundle":
                bundles += 1
                assert "TensorFlow Lite Micro's sources" in whats, (path.name, name, whats)
            elif getattr(stage.params, "measure", "profile") != "estimate":
                emulated += 1
                assert any(w.startswith("the Arm toolchain") for w in whats), (path.name, name, whats)
                assert "TensorFlow Lite Micro's sources" in whats, (path.name, name, whats)
    assert emulated >= 2 and bundles >= 2  # mnist_student's bench_m4 and firmware, mnist_search's search


def test_the_package_list_names_what_the_fix_says():
    run = [p.name for p in system.PACKAGES if p.group == "run"]
    assert run == ["gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "libstdc++-arm-none-eabi-newlib", "qemu-system-arm"]
    assert system.install_command(system.PACKAGES[:1]).endswith("apt-get install -y gcc-arm-none-eabi")
    assert [p.name for p in system.providing(["qemu-system-arm", "ssh"])] == ["qemu-system-arm", "openssh-client"]
