"""The system variant's image: a configured Debian bookworm arm64 system, its kernel and initramfs.

The root file system is built with mmdebstrap's root mode, whose package configuration runs under
qemu-user through binfmt_misc (mmdebstrap rather than debootstrap, whose emulated second stage is much
slower). A customize hook adds the Pi's user, its host name and a venv with the pinned wheels, the way
Raspberry Pi OS Bookworm wants LiteRT installed (PEP 668). The tree becomes a sparse ext4 image.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Callable

from edgepipe.targets.emulated_pi.binfmt import binfmt_aarch64_enabled, ensure_binfmt_aarch64
from edgepipe.targets.emulated_pi.build_cache import cached_entry, disk_bytes, entry_name, read_manifest, remove_tree
from edgepipe.targets.emulated_pi.initramfs import INITRAMFS_INIT, base_initramfs
from edgepipe.targets.emulated_pi.pins import (
    BUILDER_VERSION,
    INITRAMFS_MODULES,
    KERNEL_PACKAGES,
    MIRROR,
    SUITE,
    SYSTEM_PACKAGES,
    VM_HOSTNAME,
    VM_IMAGE_BYTES,
    VM_UID,
    VM_USER,
    VM_VENV,
    WHEEL_PLATFORMS,
    WHEELS,
)
from edgepipe.targets.emulated_pi.rootfs import deb_version, mmdebstrap_extract
from edgepipe.targets.emulated_pi.tools import BuildError, Progress, run_step
from edgepipe.targets.emulated_pi.wheels import wheels_entry

#: PID 1 of the root file system (minbase has no init system; this is all the device needs).
GUEST_INIT = r"""#!/bin/sh
# PID 1 of edgepipe's emulated Raspberry Pi (qemu-system-aarch64 -M virt): mounts, network for qemu's
# user networking (10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3), the guest's own sshd, then reaps children.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mkdir -p /run/sshd /run/lock
cat /etc/hostname > /proc/sys/kernel/hostname
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
/usr/sbin/sshd -D -e 2>>/dev/console &
echo "edgepipe-init: sshd started, $(cut -d' ' -f1 /proc/uptime) s after the kernel" > /dev/console
while :; do wait; sleep 5; done
"""


#: mmdebstrap --customize-hook script (runs on the host, $1 = the new root; chroot runs arm64 programs
#: through binfmt_misc). $2 = the wheels dir, $3 = the guest init script.
CUSTOMIZE_HOOK = (
    r"""#!/bin/sh
set -eu
R="$1"; WHEELS="$2"; INIT="$3"
C() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$R" "$@"; }
# the Pi's user: pi, sudo without a password (Raspberry Pi OS's 010_pi-nopasswd), no password login
C useradd --create-home --uid @UID@ --user-group --groups sudo,users --shell /bin/bash @USER@
C usermod -p '*' @USER@
printf '@USER@ ALL=(ALL) NOPASSWD: ALL\n' > "$R/etc/sudoers.d/010_pi-nopasswd"
chmod 440 "$R/etc/sudoers.d/010_pi-nopasswd"
echo @HOSTNAME@ > "$R/etc/hostname"
# device_runner reports this in its provenance: an emulator's latency is not a Pi's
echo 'qemu-system-aarch64 -M virt' > "$R/etc/edgepipe-emulated"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t@HOSTNAME@\n' > "$R/etc/hosts"
echo 'nameserver 10.0.2.3' > "$R/etc/resolv.conf"
echo '/dev/vda / ext4 rw,noatime 0 1' > "$R/etc/fstab"
# host keys come with each boot (the initramfs puts them in); none is baked into the cached image
rm -f "$R"/etc/ssh/ssh_host_*
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n' > "$R/etc/ssh/sshd_config.d/edgepipe.conf"
install -m 755 "$INIT" "$R/sbin/edgepipe-init"
# the pinned wheels into a venv, the Bookworm way (PEP 668), offline
mkdir -p "$R/tmp/edgepipe-wheels"
cp "$WHEELS"/*.whl "$WHEELS"/requirements.txt "$R/tmp/edgepipe-wheels/"
C python3 -m venv @VENV@
C @VENV@/bin/pip install --no-index --no-cache-dir --disable-pip-version-check --require-hashes \
  --find-links /tmp/edgepipe-wheels -r /tmp/edgepipe-wheels/requirements.txt
rm -rf "$R/tmp/edgepipe-wheels"
""".replace("@USER@", VM_USER)
    .replace("@UID@", str(VM_UID))
    .replace("@HOSTNAME@", VM_HOSTNAME)
    .replace("@VENV@", VM_VENV)
)


def system_spec() -> dict:
    return {
        "builder": BUILDER_VERSION,
        "kind": "system",
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": sorted(SYSTEM_PACKAGES),
        "kernel_packages": sorted(KERNEL_PACKAGES),
        "modules": list(INITRAMFS_MODULES),
        "wheels": WHEELS,
        "platforms": list(WHEEL_PLATFORMS),
        "guest_init": GUEST_INIT,
        "initramfs_init": INITRAMFS_INIT,
        "customize_hook": CUSTOMIZE_HOOK,
        "image_bytes": VM_IMAGE_BYTES,
        "user": VM_USER,
        "uid": VM_UID,
        "hostname": VM_HOSTNAME,
        "venv": VM_VENV,
    }


def system_name() -> str:
    """The cache entry name of the system image."""
    return entry_name("system", system_spec())


def system_entry(root: Path, progress: Progress, setup_binfmt: bool) -> Path:
    """The system image, built the first time; building needs aarch64 binfmt_misc, which only
    `setup_binfmt=True` (an explicit request) enables, machine-wide."""

    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        if os.geteuid() != 0:
            raise BuildError(
                "building the system variant needs root (mmdebstrap's root mode, mke2fs -d with owners)",
                "run the build once as root; the cache can then be used by others",
            )
        if setup_binfmt:
            ensure_binfmt_aarch64(progress)
        elif not binfmt_aarch64_enabled():
            raise BuildError(
                "aarch64 binfmt_misc emulation is not enabled (mmdebstrap configures the arm64 packages in a chroot)",
                "pass setup_binfmt=True, or enable it by hand (update-binfmts)",
            )
        wheels = wheels_entry(root, progress)
        log = tmp / "build.log"
        (tmp / "edgepipe-init").write_text(GUEST_INIT)
        (tmp / "customize.sh").write_text(CUSTOMIZE_HOOK)
        hook = (
            f'sh {shlex.quote(str(tmp / "customize.sh"))} "$1" {shlex.quote(str(wheels))} '
            f"{shlex.quote(str(tmp / 'edgepipe-init'))}"
        )
        say(
            f"pi: system: [1/5] mmdebstrap --variant=minbase --arch=arm64 (configured under "
            f"qemu-user via binfmt_misc; a few minutes) + user {VM_USER}, venv {VM_VENV}"
        )
        run_step(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--arch=arm64",
                f"--include={','.join(SYSTEM_PACKAGES)}",
                f"--customize-hook={hook}",
                SUITE,
                str(tmp / "rootfs"),
                f"deb {MIRROR} {SUITE} main",
            ],
            log,
            "mmdebstrap (minbase, arm64)",
        )
        (tmp / "edgepipe-init").unlink()
        (tmp / "customize.sh").unlink()
        admin = tmp / "rootfs" / "var" / "lib" / "dpkg"
        debs = run_step(["dpkg-query", f"--admindir={admin}", "-W", "-f", "${Package}=${Version}\n"]).stdout.split()
        py = (tmp / "rootfs" / "usr" / "bin" / "python3.11").exists()
        if not py or not (tmp / "rootfs" / "usr" / "lib" / "python3.11" / "EXTERNALLY-MANAGED").is_file():
            raise BuildError("the system rootfs lacks python3.11 or its EXTERNALLY-MANAGED marker", f"see {log}")
        say(f"pi: system: [2/5] mmdebstrap --variant=extract {','.join(KERNEL_PACKAGES)} (no emulation)")
        kdebs = mmdebstrap_extract(tmp / "kernel", KERNEL_PACKAGES, log)
        vmlinuz = sorted((tmp / "kernel" / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BuildError("no vmlinuz-* in the extracted linux-image-arm64", f"see {log}")
        release = vmlinuz[-1].name[len("vmlinuz-") :]
        shutil.copy2(vmlinuz[-1], tmp / "vmlinuz")
        say(f"pi: system: [3/5] initramfs (busybox + {', '.join(INITRAMFS_MODULES)} for {release})")
        cpio, mods = base_initramfs(tmp / "kernel", tmp / "kernel" / "lib" / "modules" / release)
        (tmp / "initrd.cpio").write_bytes(cpio)
        remove_tree(tmp / "kernel")
        say(f"pi: system: [4/5] mke2fs -t ext4 -d rootfs root.ext4 ({VM_IMAGE_BYTES // 2**30} GiB sparse)")
        run_step(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "rootfs",
                "-d",
                str(tmp / "rootfs"),
                str(tmp / "root.ext4"),
                str(VM_IMAGE_BYTES // 1024) + "k",
            ],
            log,
            "mke2fs",
        )
        say("pi: system: [5/5] removing the rootfs directory (the image has it)")
        rootfs_bytes = disk_bytes(tmp / "rootfs")
        remove_tree(tmp / "rootfs")
        return {
            "variant": "system",
            "kernel_release": release,
            "initramfs_modules": mods,
            "debs": debs,
            "kernel_debs": kdebs,
            "python_deb": deb_version(debs, "python3.11"),
            "rootfs_bytes": rootfs_bytes,
            "wheels": read_manifest(wheels)["wheels"],
            "venv": VM_VENV,
            "user": VM_USER,
        }

    return cached_entry(root, "system", system_spec(), build, progress, "system")
