"""The operating-system packages edgepipe uses: one list, read by `make setup`, `.ci/run` and the preflight.

Run as a script by the system Python before any virtualenv exists (`python3 edgepipe/core/system.py
install run`), so this module uses the standard library only and imports nothing from edgepipe.
Groups: `run` is what a shipped recipe needs (the emulated Cortex-M boards); `test` adds what only the
test suite uses. Without a package, what needs it refuses before any work (a recipe) or skips (a test).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile


@dataclasses.dataclass(frozen=True)
class Package:
    """One Debian package: its name, what shows it is installed, who needs it and why."""

    name: str
    probe: str  # a command on PATH, or an absolute path of a file the package installs
    group: str  # "run" or "test"
    why: str


PACKAGES = (
    Package("gcc-arm-none-eabi", "arm-none-eabi-gcc", "run", "builds TFLite Micro for the emulated Cortex-M boards"),
    Package("libnewlib-arm-none-eabi", "/usr/lib/arm-none-eabi/newlib/libc.a", "run", "the C library it links"),
    Package(
        "libstdc++-arm-none-eabi-newlib", "/usr/lib/arm-none-eabi/newlib/libstdc++.a", "run", "the C++ library it links"
    ),
    Package("qemu-system-arm", "qemu-system-arm", "run", "runs the firmware on the emulated Cortex-M boards"),
    Package("openssh-client", "ssh", "test", "reaches SSH targets (a recipe with --host needs it too)"),
    Package("openssh-server", "/usr/sbin/sshd", "test", "the SSH 'device' the tests bench on 127.0.0.1"),
    Package("chromium", "chromium", "test", "renders report.html headless"),
    Package("qemu-user-static", "qemu-aarch64-static", "test", "runs arm64 LiteRT for the emulated Raspberry Pi"),
    Package("qemu-user", "qemu-aarch64", "test", "loads the TCG plugin that counts the emulated Pi's instructions"),
    Package("mmdebstrap", "mmdebstrap", "test", "builds the emulated Pi's root file system"),
    Package("arch-test", "arch-test", "test", "lets mmdebstrap check the foreign architecture"),
    Package("binfmt-support", "update-binfmts", "test", "registers qemu for the emulated Pi's whole-system test"),
    Package("e2fsprogs", "mkfs.ext4", "test", "makes the emulated Pi's disk image"),
)

GROUPS = {"run": ("run",), "test": ("run", "test")}


def installed(package: Package) -> bool:
    """Whether the package's probe is there (a file, or a command on PATH)."""
    if os.path.isabs(package.probe):
        return os.path.exists(package.probe)
    return shutil.which(package.probe) is not None


def missing(group: str = "test") -> list[Package]:
    """The packages of `group` (and the groups it includes) that are not installed."""
    return [p for p in PACKAGES if p.group in GROUPS[group] and not installed(p)]


def providing(names: list[str]) -> list[Package]:
    """The packages whose probe is one of `names` (commands or files)."""
    return [p for p in PACKAGES if p.probe in names]


def install_command(packages: list[Package]) -> str:
    """The command that installs `packages` on Debian or Ubuntu, with sudo unless we are root."""
    sudo = "" if _is_root() else "sudo "
    return f"{sudo}apt-get install -y {' '.join(p.name for p in packages)}"


def fix_for(packages: list[Package]) -> str:
    """The `fix:` of an error about missing packages."""
    return f"{install_command(packages)} (make setup runs it for you as root or with passwordless sudo)"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _privilege() -> list[str] | None:
    """The prefix that runs apt-get as root here ([] when we are root), or None when nothing can."""
    if _is_root():
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def ensure(group: str) -> int:
    """Install what `group` needs where we can (root or passwordless sudo, apt-get); else print the command.

    Prints one line either way, nothing when everything is there. Never fails the caller: what cannot be
    installed is refused later, with the same command, by the stage or test that needs it.
    """
    need = missing(group)
    if not need:
        return 0
    names = " ".join(p.name for p in need)
    prefix = _privilege()
    if shutil.which("apt-get") is None or prefix is None:
        why = "no apt-get here" if shutil.which("apt-get") is None else "not root and no passwordless sudo"
        print(
            f"edgepipe needs Debian packages it cannot install itself ({why}); run: {install_command(need)}", flush=True
        )
        return 0
    print(f"installing Debian packages{'' if not prefix else ' with sudo'}: {names}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with tempfile.NamedTemporaryFile("w+", prefix="edgepipe-apt-", suffix=".log", delete=False) as log:
        ok = all(
            subprocess.run([*prefix, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env).returncode == 0
            for cmd in (
                ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *(p.name for p in need)],
            )
        )
    still = missing(group)
    if ok and not still:
        os.unlink(log.name)
        return 0
    print(
        f"could not install {' '.join(p.name for p in still) or names} (apt-get's output: {log.name}); "
        f"run: {install_command(still or need)}",
        flush=True,
    )
    return 0


def main(argv: list[str]) -> int:
    usage = "usage: system.py install run|test  |  system.py missing run|test"
    if len(argv) != 2 or argv[0] not in ("install", "missing") or argv[1] not in GROUPS:
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "install":
        return ensure(argv[1])
    print(" ".join(p.name for p in missing(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
