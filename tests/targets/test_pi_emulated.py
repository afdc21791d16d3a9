"""`measure: emulated` on a Raspberry Pi profile: the device runner in the Pi's arm64 Python under QEMU, no SSH.

The bench test runs the real thing (Debian bookworm's aarch64 CPython and LiteRT wheel under
`qemu-aarch64-static -cpu <the profile's core>`), so it skips, saying what is missing, where the backend's
own preflight would refuse. The refusals themselves need nothing but edgepipe.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.stages.bench import BenchParams, needs
from edgepipe.targets.backends import backend_for
from edgepipe.targets.profiles import load_target
from edgepipe.testing import converted_project

WHY_NOT = "emulated: QEMU's timing is not the Pi's"
BARE_PATH = str(Path(sys.executable).parent)  # this Python's folder alone: no qemu, whatever the machine has


def _unmet(target: str) -> str | None:
    """Why this machine cannot run `target` emulated (what the bench's preflight says), or None."""
    try:
        requirements = needs(BenchParams(target=target, measure="emulated"))
    except EdgepipeError:  # refused outright: the test runs, and says so
        return None
    return "; ".join(f"{r.what} ({why})" for r in requirements if (why := r.unmet())) or None


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """tiny.yaml (data -> tiny_conv -> float32 + int8 -> bench -> report), run up to the conversion."""
    return converted_project(tmp_path_factory.mktemp("project"), report=True)


@pytest.fixture
def recipe(tmp_path, project):
    import shutil

    shutil.copytree(project, tmp_path, dirs_exist_ok=True)
    return tmp_path / "tiny.yaml"


@pytest.mark.parametrize(
    "target, sets, core",
    [
        pytest.param(
            "rpi4",
            ["--set", "bench.measure=emulated"],
            "cortex-a72",
            id="rpi4-bench-measure",
            marks=pytest.mark.skipif(_unmet("rpi4") is not None, reason=str(_unmet("rpi4"))),
        ),
        pytest.param(
            "my_pi5.yaml",
            [],
            "cortex-a76",
            id="profile-measure-rpi5-core",
            marks=pytest.mark.skipif(_unmet("rpi5") is not None, reason=str(_unmet("rpi5"))),
        ),
    ],
)
def test_a_pi_benched_emulated_has_the_hosts_accuracy_and_no_latency(cli, recipe, tmp_path, target, sets, core):
    """Every model the Pi runs, on the whole test split, in Debian's aarch64 Python and LiteRT under QEMU's
    model of the profile's core: the host's predictions exactly, tagged emulated; no latency, and why."""
    (tmp_path / "my_pi5.yaml").write_text(
        "description: a Pi 5 emulated\nkind: cpu\nreach: ssh\ncpu: cortex-a76\nmeasure: emulated\n"
    )
    done = cli("bench", recipe, "--target", target, *sets, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    bench = json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())
    assert bench["target"]["cpu"] == core and bench["target"]["measure"] == "emulated"
    device = bench["device"]
    assert device["machine"] == "aarch64" and device["emulated"] == f"qemu-user {core}"
    assert core.replace("cortex-a", "Cortex-A") in device["cpu"] and device["runtime_version"] == "2.3.0"
    assert {r["variant"] for r in bench["rows"]} == {"float32", "int8"}
    for row in bench["rows"]:
        t = row["target"]
        assert t["accuracy"] == {"value": row["accuracy"], "provenance": "emulated"}, row["name"]
        assert t["same_predictions_as_host"] is True and t["predictions_sha256"] == row["predictions_sha256"]
        assert t["latency_p50_us"] == {"value": None, "provenance": "emulated", "not_measured": "emulated"}
        assert t["memory"]["value"] is None and t["why_not"] == WHY_NOT and t["emulated_device"] == device["emulated"]
    report = (tmp_path / "runs/tiny/report/report.md").read_text()
    assert "n/a (emulated)" in report and "[emu]" in report and WHY_NOT in report
    again = cli("bench", recipe, "--target", target, *sets)
    assert "bench          skipped: up to date" in again.stdout


def test_the_preflight_refuses_an_emulated_pi_without_qemu_in_one_line(cli, recipe, tmp_path):
    """No qemu-aarch64-static on PATH (and an empty cache: the root file system to build too): one line
    naming each missing tool and how to install it, before anything runs."""
    done = cli(
        "bench",
        recipe,
        "--target",
        "rpi4",
        "--set",
        "bench.measure=emulated",
        env={"PATH": BARE_PATH, "EDGEPIPE_CACHE": str(tmp_path / "empty-cache")},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(
        "edgepipe: error: stage 'bench' needs qemu-aarch64-static to run the emulated "
        "rpi4's arm64 Python (qemu-aarch64-static is not installed); stage 'bench' needs "
        "mmdebstrap to build the emulated Pi's root file system (once)"
    ), lines[0]
    assert "; fix: " in lines[0] and "apt-get install -y qemu-user-static" in lines[0]
    assert not (tmp_path / "runs/tiny/bench").exists()


def test_a_cached_emulated_pi_needs_qemu_alone(monkeypatch):
    """Once its root file system is cached, the emulated Pi needs no mmdebstrap and no root."""
    from edgepipe.targets import emulated_pi

    monkeypatch.setattr(emulated_pi, "user_build_state", lambda cpu, **kw: "built")
    assert [r.what for r in needs(BenchParams(target="rpi5", measure="emulated"))] == [
        "qemu-aarch64-static to run the emulated rpi5's arm64 Python"
    ]


@pytest.mark.parametrize(
    "params, message, fix",
    [
        (
            dict(target="rpi4", measure="estimate"),
            "measure: estimate does not apply to target rpi4 (Linux device over SSH), which takes measure: emulated",
            "drop measure from this bench stage, or use measure: emulated",
        ),
        (
            dict(target="rpi4", measure="emulated", host="pi@10.0.0.2"),
            "target rpi4 is measured by the emulated Raspberry Pi (qemu-user), not over SSH, but a host was given",
            "drop --host (or the host param), or drop measure: emulated to bench the device itself",
        ),
        (
            dict(target="rpi5", measure="emulated", python="~/litert/bin/python"),
            "target rpi5 is emulated on this machine (measure: emulated), but the bench sets python, which reach a real "
            "device",
            "drop python, or drop measure: emulated to bench the device itself",
        ),
        (
            dict(target="host", measure="emulated"),
            "measure: emulated does not apply to target host (this host), which is measured one way only",
            "drop measure from this bench stage",
        ),
    ],
    ids=["measure-estimate-on-a-pi", "host-with-emulated", "device-python-with-emulated", "emulated-host"],
)
def test_params_an_emulated_pi_cannot_take_are_refused_before_anything_runs(params, message, fix):
    with pytest.raises(EdgepipeError) as e:
        needs(BenchParams(**params))
    assert (e.value.message, e.value.fix) == (message, fix)


def test_a_pi_profile_measured_emulated_names_its_core(tmp_path):
    (tmp_path / "pi.yaml").write_text("kind: cpu\nreach: ssh\nmeasure: emulated\n")
    with pytest.raises(EdgepipeError, match=r"target pi: measure: emulated needs the Pi's core as cpu, not None"):
        backend_for(load_target(str(tmp_path / "pi.yaml")))
    assert load_target("rpi4").cpu == "cortex-a72" and load_target("rpi5").cpu == "cortex-a76"
