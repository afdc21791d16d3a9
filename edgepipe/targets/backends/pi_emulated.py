"""A Raspberry Pi emulated on this machine (`measure: emulated` on rpi4, rpi5): LiteRT in the Pi's arm64 Python.

The device runner, the very file the SSH backend copies to a real Pi (`edgepipe/targets/device_runner.py`),
runs under Debian bookworm's aarch64 CPython 3.11 with the aarch64 `ai-edge-litert` and `numpy` wheels, on
`qemu-aarch64-static -cpu <the profile's cpu>`: the emulated Pi's own python (`edgepipe.targets.emulated_pi`,
built once into edgepipe's cache), started here as a subprocess, no SSH. Every model the target runs goes
through XNNPACK's ARM kernels on the whole test split. Accuracy is tagged `emulated`, beside whether the
predicted classes are the host's (`same_predictions_as_host`: they should be, bit for bit). QEMU's timing and
memory are not the Pi's, so latency and memory are not reported (`not_measured`, with `why_not`); a latency
calibrated against a real Pi is for later.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from edgepipe.core import progress, ui
from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.requirements import Requirement, tools
from edgepipe.targets.backends.protocol import Backend
from edgepipe.targets.profiles import Target

QEMU_USER = "qemu-aarch64-static"
#: why an emulated Pi gives no latency or memory figure
WHY_NOT = "emulated: QEMU's timing is not the Pi's"
#: the bench params that say how to reach a device, which an emulated one is not
DEVICE_PARAMS = ("fleet", "python", "identity", "ssh_options")


class EmulatedPi(Backend):
    name = "the emulated Raspberry Pi (qemu-user)"
    measure_choices = ("emulated",)

    def check_profile(self, target: Target) -> None:
        from edgepipe.targets.emulated_pi import CPUS

        if target.cpu not in CPUS:
            raise RecipeError(
                f"target {target.name}: measure: emulated needs the Pi's core as cpu, not {target.cpu}",
                f"cpu: one of {', '.join(CPUS)} (rpi4: cortex-a72, rpi5: cortex-a76)",
            )

    def needs(self, target: Target, params) -> list[Requirement]:
        from edgepipe.targets.emulated_pi import user_build_state

        need = [tools([QEMU_USER], f"{QEMU_USER} to run the emulated {target.name}'s arm64 Python")]
        if user_build_state(target.cpu) == "none":  # the first build: Debian's arm64 packages, unpacked as root
            need += [
                tools(["mmdebstrap"], "mmdebstrap to build the emulated Pi's root file system (once)"),
                Requirement(
                    "root to build the emulated Pi's root file system (once)",
                    lambda: None if os.geteuid() == 0 else "not root",
                    'run it once as root: sudo EDGEPIPE_CACHE="$HOME/.cache/edgepipe" and the same '
                    "command; later runs reuse the build",
                ),
            ]
        return need

    def check(self, target: Target, params) -> None:
        given = [p for p in DEVICE_PARAMS if getattr(params, p)]
        if given:
            raise EdgepipeError(
                f"target {target.name} is emulated on this machine (measure: emulated), but the "
                f"bench sets {', '.join(given)}, which reach a real device",
                f"drop {', '.join(given)}, or drop measure: emulated to bench the device itself",
            )

    def environment(self, target: Target, params) -> dict:
        from edgepipe.targets.emulated_pi.pins import WHEELS
        from edgepipe.targets.emulated_pi.rootfs import user_device_name

        qemu = shutil.which(QEMU_USER)
        if qemu is None:
            raise EdgepipeError(f"{QEMU_USER} is not installed", "apt-get install qemu-user-static")
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=60).stdout
        return {
            "emulated_pi": {
                "cpu": target.cpu,
                "rootfs": user_device_name(target.cpu, 4),
                "qemu": version.strip().splitlines()[0],
                "wheels": sorted(WHEELS),
            }
        }

    def measure(
        self,
        target: Target,
        params,
        models: list[Path],
        x: np.ndarray,
        y: np.ndarray,
        *,
        work: Path,
        host_top1: dict[str, np.ndarray],
        out: Path,
    ) -> dict:
        from edgepipe.targets.emulated_pi import emulated_python
        from edgepipe.targets.remote import RUNNER

        if not models:
            return {}
        python = emulated_python(target.cpu, progress=lambda line: ui.say(f"    {line}"))
        folder = work / "emulated_pi"
        folder.mkdir(parents=True, exist_ok=True)
        runner = folder / RUNNER.name  # alone, as on a Pi: no module of edgepipe's beside it to shadow one
        shutil.copyfile(RUNNER, runner)
        test_set = folder / "test.npz"
        np.savez(test_set, x=x, y=y)
        # one process for every model (its memory is not reported), timing as little as it can (nor its latency)
        argv = [
            str(python),
            str(runner),
            *(str(m.resolve()) for m in models),
            "--data",
            str(test_set),
            "--threads",
            "1",
            "--warmup",
            "0",
            "--runs",
            "1",
        ]
        timeout = params.emulator_timeout * len(models)
        progress.update(0, len(models), "model", f"on the emulated {target.name}")
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise EdgepipeError(
                f"the emulated {target.name} took more than {timeout:.0f} s for {len(models)} models",
                "raise the bench param emulator_timeout, or cap max_test_samples",
            ) from None
        result = _result(done, target, python, RUNNER)
        progress.update(len(models), len(models), "model", f"on the emulated {target.name}")
        device = {
            **result["provenance"],
            "emulated": result["provenance"].get("emulated") or f"qemu-user {target.cpu}",
            "rootfs": python.parent.name,
        }
        return {
            "_provenance": device,
            **{m.name: {**result["models"][m.name], "emulated": device["emulated"]} for m in models},
        }

    def figures(self, target: Target, row: dict, path: Path, device: dict | None, x: np.ndarray, y: np.ndarray) -> dict:
        not_measured = {"value": None, "provenance": "emulated", "not_measured": "emulated"}
        return {
            "accuracy": {"value": device["accuracy"], "provenance": "emulated"},
            "latency_p50_us": not_measured,
            "memory": {**not_measured, "what": "RSS growth"},
            "why_not": WHY_NOT,
            "emulated_device": device["emulated"],
            "predictions_sha256": device["predictions_sha256"],
            "same_predictions_as_host": device["predictions_sha256"] == row.get("predictions_sha256"),
        }

    def missing_figure(self, target: Target, figure: str) -> str | None:
        return WHY_NOT if figure in ("latency_p50_us", "memory") else None


def _result(done: subprocess.CompletedProcess, target: Target, python: Path, runner: Path) -> dict:
    """The device runner's JSON, or its one-line error."""
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        result = None
    if isinstance(result, dict) and "error" in result:
        raise EdgepipeError(f"the emulated {target.name}: {result['error']}", result.get("fix"))
    if done.returncode != 0 or not isinstance(result, dict):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise EdgepipeError(
            f"the emulated {target.name}'s device runner failed with exit {done.returncode} ({last})",
            f"run it by hand to see why: {python} {runner} --help",
        )
    return result
