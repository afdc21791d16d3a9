"""Backends: one module per kind of device, each implementing `protocol.Backend`, and the registry.

- `host`: LiteRT on this machine;
- `ssh`: a Linux device over SSH (Raspberry Pi, any Linux box, a fleet of them), and Coral's Edge TPU
  (compile, then bench through the libedgetpu delegate);
- `android`: a phone over adb, LiteRT's `benchmark_model`;
- `mcu_emulated`: a Cortex-M, TFLite Micro + CMSIS-NN built for its core and run on QEMU;
- `mcu_estimate`: a microcontroller estimated from TFLite Micro on this host and the model's MACs;
- `pi_emulated`: a Raspberry Pi's arm64 Python and LiteRT under QEMU on this host (`measure: emulated`).

Adding a kind of device is one module here and one line in `REGISTRY`. `backend_for` is the only place,
besides the backends themselves, that reads a profile's `kind`, `reach` and `measure`
(`tests/test_architecture.py` checks it).
"""

from __future__ import annotations

import dataclasses

from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.targets.backends import android, host, mcu_emulated, mcu_estimate, pi_emulated, ssh
from edgepipe.targets.backends.protocol import Backend
from edgepipe.targets.profiles import Target

# (kind, reach, measure) -> the backend; None matches any value, and the first row that matches is the one.
REGISTRY: list[tuple[tuple[str | None, str | None, str | None], Backend]] = [
    (("mcu", None, "emulated"), mcu_emulated.EmulatedMcu()),
    (("mcu", None, None), mcu_estimate.EstimatedMcu()),
    (("cpu", None, "emulated"), pi_emulated.EmulatedPi()),
    (("edgetpu", "ssh", None), ssh.Coral()),
    ((None, "ssh", None), ssh.SshLinux()),
    ((None, "adb", None), android.Android()),
    ((None, "local", None), host.Host()),
]


def backend_for(target: Target) -> Backend:
    """The backend that measures on `target`, after it has checked the profile.

    Raises:
        RecipeError: no backend measures such a device, or the profile lacks what its backend needs.
    """
    facts = (target.kind, target.reach, target.measure)
    for pattern, backend in REGISTRY:
        if all(want is None or want == got for want, got in zip(pattern, facts)):
            backend.check_profile(target)
            return backend
    raise RecipeError(
        f"target {target.name}: nothing measures a {target.kind} device reached by {target.reach}",
        "use reach: local, ssh or adb, or kind: mcu",
    )


def measured_as(target: Target, measure: str | None) -> tuple[Target, Backend]:
    """`target` with a stage's `measure` override applied where its device takes one (rpi4 measured
    emulated), and the backend that then measures on it."""
    backend = backend_for(target)
    if measure in backend.measure_choices:
        target = dataclasses.replace(target, measure=measure)
        backend = backend_for(target)
    return target, backend


def check_task(target: Target, task: str, what: str) -> None:
    """Refuse, in one line, a task (`edgepipe.tasks`) whose raw outputs `target`'s backend cannot bring back to
    be judged; `what` is the stage's work ("bench", "search")."""
    backend = backend_for(target)
    if task != "classification" and task not in backend.tasks:
        takers = [b.name for _, b in REGISTRY if task in b.tasks]
        fix = (
            f"{what} {task} models on a target measured by {' or '.join(takers)} (e.g. target: host, or "
            "cortex-m4 with measure: emulated)"
            if takers
            else f"no target edgepipe knows scores {task} models yet; drop this stage"
        )
        raise EdgepipeError(
            f"{what}: {target.name} ({backend.name}) scores a classifier's class scores only; this data's task "
            f"is {task}",
            fix,
        )


__all__ = ["Backend", "backend_for", "check_task", "measured_as"]
