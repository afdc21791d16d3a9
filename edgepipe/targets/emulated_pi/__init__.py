"""An emulated arm64 Raspberry Pi that edgepipe's real OpenSSH device harness can bench models on.

Two variants, both reached over a real OpenSSH connection on 127.0.0.1, both running the real aarch64
wheels (ai-edge-litert, numpy) on Debian bookworm arm64's CPython 3.11 -- what Raspberry Pi OS Bookworm
(64-bit) is built from:

``variant="user"`` (:class:`EmulatedPi`, fast)
    The host's own sshd, on a free port, with throwaway keys. Only ``python`` is ARM: the bench param
    ``python`` points at a wrapper script that runs Debian's aarch64 ``python3.11`` under
    ``qemu-aarch64-static -cpu <core>`` (qemu-user, no binfmt_misc needed), with the wheels on its path.
    ``mktemp``, ``scp`` and ``rm`` on the "device" are the host's. Starts at once. The same python also
    runs alone, with no SSH around it (:func:`emulated_python`), which is how a bench with
    ``measure: emulated`` on ``rpi4``/``rpi5`` runs the device runner (`edgepipe.targets.backends`).

``variant="system"`` (:class:`EmulatedPiVM`, slow: for a slow test)
    ``qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2G`` booting Debian's arm64 kernel with a
    minimal busybox initramfs made here, on an ext4 image of a Debian bookworm arm64 system with its own
    sshd (user ``pi``, passwordless sudo, hostname ``raspberrypi``), reached through qemu's ``hostfwd``.
    Everything on the device side is ARM, the kernel included. The image is faithful to Bookworm's
    PEP 668 set-up: ``python3 -m pip install`` system-wide is refused ("externally-managed-environment");
    LiteRT lives in a venv, as docs/targets.md has a Pi user set it up. One venv, ``/opt/edgepipe-litert``, is made at
    build time from the pinned wheels (offline); ``~/litert`` is left for the user's own steps.

Both build once into edgepipe's cache (``~/.cache/edgepipe/pi`` by default, see `edgepipe.core.cache`), keyed by
everything that goes into the build: a second :func:`build_device` call returns at once.

Building the system variant needs aarch64 binfmt_misc, a machine-wide change: only an explicit request
makes it (``setup_binfmt=True``, which the command's ``--system`` passes), never importing this package
(see `binfmt`). ``python -m edgepipe.targets.emulated_pi [--system]`` starts either variant and prints how
to reach it and bench on it.

Modules:
    pins          everything a build depends on (Debian suite and packages, wheel pins)
    cpus          the Pis' ARM cores and the /proc/cpuinfo each prints
    tools         the host tools needed, and running a build step
    build_cache   cache entries keyed by their inputs, built atomically
    wheels        the pinned aarch64 wheels
    rootfs        the user variant's root file system and python wrapper
    initramfs     the system variant's cpio initramfs and kernel modules
    binfmt        aarch64 binfmt_misc, enabled only when a system build asks
    system_image  the system variant's configured root file system, kernel and ext4 image
    build         build_device: either variant, from the cache or built; emulated_python: the user
                  variant's python alone (what a bench with `measure: emulated` runs)
    ssh           what both devices share: keys, ports, the SSH endpoint, starting and stopping
    user_device   EmulatedPi: this machine's sshd and the emulated python
    vm            EmulatedPiVM: the booted arm64 VM
    insn_count    instruction classes a LiteRT inference executes on the emulated core, counted by a
                  TCG plugin (plugin/insn_classes.c) under Debian's dynamic qemu-user (issue #31)
    invoke_loop   what the counted runs execute on the emulated python: N invokes of one model

Requires: Debian's qemu-user-static (qemu-user and a C compiler for insn_count), qemu-system-arm, mmdebstrap, arch-test (system variant),
binfmt-support (system variant), e2fsprogs, openssh-server/-client; root for building (mmdebstrap's root
mode). Standard library only.
"""

from edgepipe.targets.emulated_pi.binfmt import ensure_binfmt_aarch64
from edgepipe.targets.emulated_pi.build import build_device, emulated_python, user_build_state
from edgepipe.targets.emulated_pi.cpus import CPUS
from edgepipe.targets.emulated_pi.tools import BuildError, missing_tools
from edgepipe.targets.emulated_pi.user_device import EmulatedPi
from edgepipe.targets.emulated_pi.vm import EmulatedPiVM

__all__ = [
    "CPUS",
    "BuildError",
    "EmulatedPi",
    "EmulatedPiVM",
    "build_device",
    "emulated_python",
    "ensure_binfmt_aarch64",
    "missing_tools",
    "user_build_state",
]
