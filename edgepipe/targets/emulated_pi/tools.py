"""The host tools the emulated Pi needs, which of them this machine lacks, and running one build step."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from edgepipe.core.errors import EdgepipeError

Progress = Callable[[str], None] | None


class BuildError(EdgepipeError):
    """A build step failed, a tool is missing, or the emulated device would not start. One line + fix."""


def show_progress(progress: Progress, line: str) -> None:
    if progress is not None:
        progress(line)


QEMU_USER = "qemu-aarch64-static"
QEMU_SYSTEM = "qemu-system-aarch64"
SSHD = "/usr/sbin/sshd"


def missing_tools(variant: str = "user") -> list[str]:
    """The host tools (with the Debian package that has each) this machine lacks for `variant`: "python"
    runs the user variant's emulated python alone, "build" builds its root file system too, "user" is the
    SSH device around it, "system" the whole VM."""
    need = {QEMU_USER: "qemu-user-static"}
    if variant != "python":
        need["mmdebstrap"] = "mmdebstrap"
    if variant in ("user", "system"):
        need |= {"ssh": "openssh-client", "ssh-keygen": "openssh-client", "scp": "openssh-client"}
    if variant == "user":
        need[SSHD] = "openssh-server"
    elif variant == "system":
        need |= {
            QEMU_SYSTEM: "qemu-system-arm",
            "mke2fs": "e2fsprogs",
            "arch-test": "arch-test",
            "update-binfmts": "binfmt-support",
        }
    elif variant not in ("python", "build"):
        raise ValueError(f"variant must be 'python', 'build', 'user' or 'system', not {variant!r}")
    return [
        f"{tool} ({pkg})"
        for tool, pkg in need.items()
        if not (Path(tool).is_file() if tool.startswith("/") else shutil.which(tool))
    ]


def require_tools(variant: str) -> None:
    missing = missing_tools(variant)
    if missing:
        pkgs = sorted({m.split("(")[1].rstrip(")") for m in missing})
        raise BuildError(f"missing host tools: {', '.join(missing)}", f"apt-get install {' '.join(pkgs)}")


def run_step(cmd: list[str], log: Path | None = None, what: str = "", **kw) -> subprocess.CompletedProcess:
    """Run a build command; its output goes to `log` (appended); failure raises a BuildError."""
    if log is None:
        done = subprocess.run(cmd, capture_output=True, text=True, **kw)
        out = (done.stdout or "") + (done.stderr or "")
    else:
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, **kw)
        out = log.read_text()[-2000:]
    if done.returncode != 0:
        tail = " | ".join(line for line in out.strip().splitlines()[-4:])
        raise BuildError(
            f"{what or cmd[0]} failed (exit {done.returncode}): {tail[-600:]}", f"see {log}" if log else None
        )
    return done
