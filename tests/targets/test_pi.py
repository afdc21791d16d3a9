"""An emulated Raspberry Pi behind the real SSH harness: LiteRT's ARM kernels on Debian bookworm arm64's Python.

The fast test uses qemu-user (the device's `python` is Debian's aarch64 Python under `qemu-aarch64-static
-cpu cortex-a72`, reached over the host's sshd); the slow one a full arm64 system on `qemu-system-aarch64
-M virt -cpu cortex-a72` with its own kernel and sshd, set up the way Raspberry Pi OS Bookworm wants
(LiteRT in a venv: a system-wide pip install is refused). Both build once into the user's cache and skip,
saying what to install, without qemu-user-static, mmdebstrap or sshd.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgepipe.targets import emulated_pi

REPO = Path(__file__).resolve().parents[2]


def _skip(variant: str) -> str | None:
    missing = emulated_pi.missing_tools(variant)
    if missing:
        return f"missing host tools: {', '.join(missing)} (apt-get install qemu-user-static mmdebstrap openssh-server)"
    if os.geteuid() != 0:
        return "building the emulated Pi's root file system needs root (mmdebstrap)"
    return None


def _bench(cli, tmp_path, device, python: str):
    """`edgepipe bench mnist_student --profile smoke --target rpi4 --host ...`, as a user would type it."""
    sets = ["--set", f"bench.identity={device.identity}", "--set", f"bench.python={python}",
            "--set", f"bench.ssh_options=[{', '.join(device.ssh_options)}]", "--set", "bench.threads=[1]",
            "--set", "bench.runs=5", "--set", "bench.warmup=1", "--set", "bench_m4.measure=estimate"]
    done = cli("bench", REPO / "recipes" / "mnist_student.yaml", "--profile", "smoke", "--target", "rpi4",
               "--host", device.host, *sets, timeout=3000)
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


@pytest.mark.skipif(_skip("user") is not None, reason=str(_skip("user")))
def test_mnist_student_benches_on_an_emulated_pi_with_the_hosts_predictions(cli, tmp_path):
    with emulated_pi.EmulatedPi(cpu="cortex-a72", workdir=tmp_path / "pi") as device:
        bench, done = _bench(cli, tmp_path, device, device.python)
    _same_as_host(bench)
    assert bench["device"]["machine"] == "aarch64" and bench["device"]["emulated"] == "qemu-user cortex-a72"
    assert "Cortex-A72" in bench["device"]["cpu"]
    report = (tmp_path / "runs/mnist_student/report/report.md").read_text()
    assert "n/a (emulated)" in report and "[tgt]" in report
    assert "- rpi4: " in report and "emulated (qemu-user cortex-a72)" in report


@pytest.mark.slow
@pytest.mark.skipif(_skip("system") is not None, reason=str(_skip("system")))
def test_mnist_student_benches_on_an_emulated_pi_system_set_up_like_bookworm(cli, tmp_path):
    """A whole arm64 system: its own kernel, sshd and /proc; LiteRT in a venv, as on Raspberry Pi OS
    Bookworm, whose Python refuses `pip install` outside one."""
    with emulated_pi.EmulatedPiVM(cpu="cortex-a72", workdir=tmp_path / "vm") as device:
        refused = device.run("python3 -m pip install --no-index ai-edge-litert")
        assert refused.returncode != 0 and "externally-managed-environment" in refused.stdout + refused.stderr
        bench, _ = _bench(cli, tmp_path, device, device.python)
    _same_as_host(bench)
    assert bench["device"]["emulated"] == "qemu-system-aarch64 -M virt" and "Cortex-A72" in bench["device"]["cpu"]


def test_the_device_cpu_is_named_on_arm64_kernels_that_do_not_say_it():
    from edgepipe.targets.device_runner import cpu_description

    virt = "processor\t: 0\nBogoMIPS\t: 125.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n" \
           "processor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n"
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
