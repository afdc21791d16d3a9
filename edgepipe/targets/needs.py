"""What measuring on a target needs from this machine, for the runner's preflight (`edgepipe.core.requirements`).

Each requirement is checked in seconds before any stage runs: the tools a target's figures come from, and
for a device on the network, that it answers.
"""

from __future__ import annotations

from edgepipe.core.requirements import Requirement, tools
from edgepipe.targets.profiles import Target


def target_needs(target: Target, *, host: str | None = None, fleet: list[str] | tuple = (),
                 identity: str | None = None, ssh_options: list[str] | tuple = (),
                 edgetpu_compiler: str = "edgetpu_compiler") -> list[Requirement]:
    """The requirements of measuring (or compiling) for `target` here."""
    needs: list[Requirement] = []
    if target.measure == "emulated":
        from edgepipe.targets.mcu import sources, toolchain

        needs += [toolchain.requirement(target.cpu or target.name), sources.requirement(target.tflm_src)]
    if target.kind == "edgetpu":
        from edgepipe.targets.edgetpu import INSTALL

        needs.append(Requirement("the Edge TPU compiler", lambda: _missing(edgetpu_compiler), INSTALL))
    if target.reach == "adb":
        needs.append(Requirement("adb, to reach the Android phone", lambda: _missing("adb"), "apt-get install adb"))
    if target.reach == "ssh":
        needs.append(tools(["ssh"], "an SSH client, to reach the device"))
        needs += [_answers(h, identity, tuple(ssh_options)) for h in dict.fromkeys([host, *fleet]) if h]
    return needs


def _missing(command: str) -> str | None:
    import shutil

    return None if shutil.which(command) else f"{command} is not installed"


def _answers(spec: str, identity: str | None, options: tuple[str, ...]) -> Requirement:
    """The device at `spec` logs us in over SSH within a few seconds."""
    from edgepipe.core.errors import EdgepipeError
    from edgepipe.targets import remote

    def unmet() -> str | None:
        import shutil

        if shutil.which("ssh") is None:
            return "not asked (no ssh client)"
        try:
            host = remote.SshHost.parse(spec, identity, options)
            done = host.run(["true"], timeout=30)
        except EdgepipeError as e:
            return e.message
        return None if done.returncode == 0 else f"`true` exited {done.returncode} on {spec}"

    return Requirement(f"the device {spec} to answer over SSH", unmet,
                       f"check that `ssh {spec} true` works without a password prompt (ssh-copy-id), and the address")
