"""An emulated Raspberry Pi behind the real SSH harness: LiteRT's ARM kernels on Debian bookworm arm64's Python.

The fast test uses qemu-user (the device's `python` is Debian's aarch64 Python under `qemu-aarch64-static
-cpu cortex-a72`, reached over the host's sshd); the slow one a full arm64 system on `qemu-system-aarch64
-M virt -cpu cortex-a72` with its own kernel and sshd, set up the way Raspberry Pi OS Bookworm wants
(LiteRT in a venv: a system-wide pip install is refused). Both build once into the user's cache and skip,
saying what to install, without qemu-user-static, mmdebstrap or sshd. Importing the emulated Pi, or collecting
these tests, changes nothing machine-wide (binfmt_misc above all): a fast test checks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgepipe.targets import emulated_pi

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter (nothing imported yet; an audit hook cannot be removed): import the modules
# named in argv, a path as pytest collects a test file, and refuse, before it happens, any process started
# and any look under /proc/sys/fs/binfmt_misc.
IMPORT_GUARD = r"""
import importlib, importlib.util, os, sys

BINFMT = "/proc/sys/fs/binfmt_misc"

def refuse(what):
    raise RuntimeError(f"at import time: {what}")

def under_binfmt(path):
    try:
        path = os.path.abspath(os.fsdecode(path))
    except TypeError:  # a file descriptor
        return False
    return path == BINFMT or path.startswith(BINFMT + "/")

def audit(event, args):
    if event == "open" and under_binfmt(args[0]):
        refuse(f"open {args[0]}")
    if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork"):
        refuse(f"{event} {args[:2]}")

def guarded(call):
    def check(path, *args, **kwargs):
        if under_binfmt(path):
            refuse(f"os.{call.__name__} {path}")
        return call(path, *args, **kwargs)
    return check

sys.addaudithook(audit)
os.stat, os.lstat = guarded(os.stat), guarded(os.lstat)  # Path.exists and is_file raise no audit event
for target in sys.argv[1:]:
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location("collected", target)
        sys.modules["collected"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        importlib.import_module(target)
"""


def _import_guarded(*targets, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-c", IMPORT_GUARD, *map(str, targets)], capture_output=True, text=True, timeout=120, env=env
    )


def test_importing_the_emulated_pi_or_collecting_its_tests_touches_no_binfmt_misc():
    """Enabling aarch64 binfmt_misc changes the whole machine, so only an explicit request to build the
    system image does it: importing edgepipe, its CLI, the emulated Pi's modules or the test helpers, or
    collecting this file, starts no process and opens or looks at nothing under /proc/sys/fs/binfmt_misc."""
    files = sorted(Path(emulated_pi.__file__).parent.glob("*.py"))
    modules = [
        "edgepipe",
        "edgepipe.cli",
        "edgepipe.testing",
        "edgepipe.targets.emulated_pi",
        *(f"edgepipe.targets.emulated_pi.{p.stem}" for p in files if p.stem != "__init__"),
    ]
    assert "edgepipe.targets.emulated_pi.binfmt" in modules and "edgepipe.targets.emulated_pi.__main__" in modules
    done = _import_guarded(*modules, __file__)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "planted, refused",
    [
        (
            "from edgepipe.targets.emulated_pi import ensure_binfmt_aarch64\nensure_binfmt_aarch64()",
            "os.stat /proc/sys/fs/binfmt_misc/qemu-aarch64",
        ),
        ("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
    ],
)
def test_the_import_guard_refuses_what_a_module_does_at_import_time(tmp_path, planted, refused):
    """The check above can fail: a module enabling binfmt_misc, or starting anything, when imported is
    stopped before it acts. PATH is empty, so even a guard that let it through could not run `mount`."""
    (tmp_path / "planted.py").write_text(planted + "\n")
    done = _import_guarded(tmp_path / "planted.py", path=str(tmp_path / "empty"))
    assert done.returncode != 0 and f"RuntimeError: at import time: {refused}" in done.stderr, done.stderr[-2000:]


def test_binfmt_misc_is_mounted_only_when_a_system_build_asks(tmp_path, monkeypatch):
    """Only a system image to build, with `setup_binfmt=True`, mounts binfmt_misc or registers qemu: without
    the request the build stops with how to do it by hand; with it, a cached image changes nothing."""
    from edgepipe.targets.emulated_pi import binfmt, system_image

    ran: list[str] = []
    monkeypatch.setattr(binfmt, "run_step", lambda cmd, *a, **kw: ran.append(cmd[0]))
    monkeypatch.setattr(binfmt, "binfmt_aarch64_enabled", lambda: False)  # as on a machine that never had it
    monkeypatch.setattr(system_image, "binfmt_aarch64_enabled", lambda: False)
    monkeypatch.setattr(system_image, "wheels_entry", lambda *a: pytest.fail("built past the binfmt check"))
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # root: nothing but the request stands in the way
    with pytest.raises(emulated_pi.BuildError, match="pass setup_binfmt=True"):
        system_image.system_entry(tmp_path, None, setup_binfmt=False)
    assert ran == []
    with pytest.raises(emulated_pi.BuildError, match="still not enabled"):  # the planted check never sees it on
        system_image.system_entry(tmp_path, None, setup_binfmt=True)
    assert ran[-1] == "update-binfmts" and set(ran) <= {"mount", "update-binfmts"}
    ran.clear()
    cached = tmp_path / system_image.system_name()
    cached.mkdir()
    (cached / "manifest.json").write_text("{}")
    assert system_image.system_entry(tmp_path, None, setup_binfmt=True) == cached and ran == []


def _skip(variant: str) -> str | None:
    missing = emulated_pi.missing_tools(variant)
    if missing:
        return f"missing host tools: {', '.join(missing)} (apt-get install qemu-user-static mmdebstrap openssh-server)"
    if os.geteuid() != 0:
        return "building the emulated Pi's root file system needs root (mmdebstrap)"
    return None


def _bench(cli, tmp_path, device, python: str):
    """`edgepipe bench mnist_student --profile smoke --target rpi4 --host ...`, as a user would type it."""
    sets = [
        "--set",
        f"bench.identity={device.identity}",
        "--set",
        f"bench.python={python}",
        "--set",
        f"bench.ssh_options=[{', '.join(device.ssh_options)}]",
        "--set",
        "bench.threads=[1]",
        "--set",
        "bench.runs=5",
        "--set",
        "bench.warmup=1",
        "--set",
        "bench_m4.measure=estimate",
    ]
    done = cli(
        "bench",
        REPO / "recipes" / "mnist_student.yaml",
        "--profile",
        "smoke",
        "--target",
        "rpi4",
        "--host",
        device.host,
        *sets,
        timeout=3000,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return json.loads((tmp_path / "runs/mnist_student/bench/bench.json").read_text()), done


def _same_as_host(bench: dict) -> None:
    """Every model: the same accuracy and the same predictions (SHA-256 of the classes) as on this host."""
    assert len(bench["rows"]) == 10
    for r in bench["rows"]:
        t = r["target"]
        assert t["accuracy"]["provenance"] == "target"
        assert t["accuracy"]["value"] == r["accuracy"], r["name"]
        assert t["predictions_sha256"] == r["predictions_sha256"] and t["same_predictions_as_host"], r["name"]


@pytest.mark.recipe
@pytest.mark.skipif(_skip("user") is not None, reason=str(_skip("user")))
def test_mnist_student_benches_on_an_emulated_pi_with_the_hosts_predictions(cli, tmp_path):
    with emulated_pi.EmulatedPi(cpu="cortex-a72", workdir=tmp_path / "pi") as device:
        bench, done = _bench(cli, tmp_path, device, device.python)
    _same_as_host(bench)
    assert bench["device"]["machine"] == "aarch64" and bench["device"]["emulated"] == "qemu-user cortex-a72"
    assert "Cortex-A72" in bench["device"]["cpu"]
    report = (tmp_path / "runs/mnist_student/report/report.md").read_text()
    assert "n/a (emulated)" in report and "[tgt]" in report
    section = report[report.index("## Rpi4 (emulated)") :]  # the device's own table leads, its device under it
    assert "emulated (qemu-user cortex-a72)" in section[: section.index("\n## ")]


@pytest.mark.slow
@pytest.mark.skipif(_skip("system") is not None, reason=str(_skip("system")))
def test_mnist_student_benches_on_an_emulated_pi_system_set_up_like_bookworm(cli, tmp_path):
    """A whole arm64 system: its own kernel, sshd and /proc; LiteRT in a venv, as on Raspberry Pi OS
    Bookworm, whose Python refuses `pip install` outside one."""
    with emulated_pi.EmulatedPiVM(cpu="cortex-a72", workdir=tmp_path / "vm", setup_binfmt=True) as device:
        refused = device.run("python3 -m pip install --no-index ai-edge-litert")
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stdout + refused.stderr
        bench, _ = _bench(cli, tmp_path, device, device.python)
    _same_as_host(bench)
    assert bench["device"]["emulated"] == "qemu-system-aarch64 -M virt" and "Cortex-A72" in bench["device"]["cpu"]


def test_the_device_cpu_is_named_on_arm64_kernels_that_do_not_say_it():
    from edgepipe.targets.device_runner import cpu_description

    virt = (
        "processor\t: 0\nBogoMIPS\t: 125.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
        "processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
    )
    assert cpu_description(virt, dt_model="linux,dummy-virt") == "linux,dummy-virt (2x Cortex-A72)"
    pi4 = virt + "Hardware\t: BCM2835\nModel\t: Raspberry Pi 4 Model B Rev 1.4\n"
    assert cpu_description(pi4, dt_model="") == "Raspberry Pi 4 Model B Rev 1.4 (2x Cortex-A72)"
    assert cpu_description("model name\t: Intel(R) Xeon(R)\n", dt_model="") == "Intel(R) Xeon(R)"


def test_a_device_python_under_home_is_expanded_on_the_device(sshd):
    """`python: ~/litert/bin/python`: the remote command line is quoted, so edgepipe asks the device for
    its home folder rather than leave `~` unexpanded."""
    from edgepipe.targets.remote import SshHost, expand_home

    host = SshHost.parse(sshd.host, sshd.identity, tuple(sshd.ssh_options))
    home = subprocess.run(["sh", "-c", "echo $HOME"], capture_output=True, text=True).stdout.strip()
    assert expand_home(host, "~/litert/bin/python") == f"{home}/litert/bin/python"
    assert expand_home(host, "/usr/bin/python3") == "/usr/bin/python3"
