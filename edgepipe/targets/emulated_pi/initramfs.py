"""The system variant's initramfs: a cpio archive of busybox, the kernel modules it needs, and /init.

Written here, in the kernel's "newc" format, so no cpio binary is needed; the modules' dependencies are
read from each .ko file's modinfo. Each boot appends its own SSH keys as a second archive.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Iterable

from edgepipe.targets.emulated_pi.pins import INITRAMFS_MODULES, VM_UID, VM_USER
from edgepipe.targets.emulated_pi.tools import BuildError

#: /init of the initramfs (aarch64 busybox). The modules to load, in order, are listed in /etc/edgepipe-modules.
INITRAMFS_INIT = r"""#!/bin/busybox sh
# initramfs of edgepipe's emulated Raspberry Pi: load the virtio and ext4 modules, mount /dev/vda,
# put this instance's SSH host key and authorized_keys in (from /edgepipe, appended per boot), and hand
# over to /sbin/edgepipe-init on the root file system.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "edgepipe-initramfs: $*" > /dev/console; }
fail() { say "$*"; sleep 2; poweroff -f; }
while read -r m; do insmod "/lib/modules/$m" || say "insmod $m failed"; done < /etc/edgepipe-modules
i=0
while [ ! -b /dev/vda ]; do i=$((i + 1)); [ "$i" -gt 300 ] && fail "no /dev/vda"; usleep 100000; done
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount /dev/vda"
if [ -f /edgepipe/authorized_keys ]; then
  cp /edgepipe/ssh_host_ed25519_key /edgepipe/ssh_host_ed25519_key.pub /newroot/etc/ssh/
  chmod 600 /newroot/etc/ssh/ssh_host_ed25519_key
  mkdir -p /newroot/home/@USER@/.ssh
  cp /edgepipe/authorized_keys /newroot/home/@USER@/.ssh/authorized_keys
  chown -R @UID@:@UID@ /newroot/home/@USER@/.ssh
  chmod 700 /newroot/home/@USER@/.ssh
  chmod 600 /newroot/home/@USER@/.ssh/authorized_keys
fi
umount /sys
umount /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/edgepipe-init
""".replace("@USER@", VM_USER).replace("@UID@", str(VM_UID))


# ---- a newc cpio writer (no cpio binary needed) ----


def cpio_newc(entries: Iterable[tuple[str, int, bytes | str | tuple[int, int]]]) -> bytes:
    """A cpio archive in the kernel's initramfs format ("newc"), with a trailer.

    Each entry is (path without leading slash, mode including the file type, content): bytes for a
    regular file, the target for a symlink, (major, minor) for a device node, b"" for a directory.
    Owner root, mtime 0 (reproducible).
    """
    out = bytearray()

    def pad4() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    ino = 1
    for name, mode, content in [*entries, ("TRAILER!!!", 0, b"")]:
        rdev = (0, 0)
        if isinstance(content, tuple):
            rdev, data = content, b""
        elif isinstance(content, str):
            data = content.encode()
        else:
            data = content
        fields = [
            ino,
            mode,
            0,
            0,
            2 if stat.S_ISDIR(mode) else 1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(name.encode()) + 1,
            0,
        ]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name.encode() + b"\0")
        pad4()
        out.extend(data)
        pad4()
        ino += 1
    return bytes(out)


def _modinfo(ko: bytes, field: str) -> list[str]:
    """A field of a kernel module's .modinfo section (`depends` -> its dependency names)."""
    m = re.search(rb"(?:^|\0)" + field.encode() + rb"=([^\0]*)\0", ko)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _resolve_modules(moddir: Path, wanted: Iterable[str]) -> list[Path]:
    """The .ko files of `wanted` and everything they depend on, dependencies first."""
    index = {p.name[:-3].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        seen.add(key)
        if key not in index:
            raise BuildError(f"kernel module {name} not found in {moddir}", "is it built in? update INITRAMFS_MODULES")
        for dep in _modinfo(index[key].read_bytes(), "depends"):
            visit(dep)
        order.append(index[key])

    for w in wanted:
        visit(w)
    return order


def base_initramfs(kern: Path, moddir: Path) -> tuple[bytes, list[str]]:
    """The base initramfs: busybox, the modules (in load order), /init. Returns (cpio, module names)."""
    modules = _resolve_modules(moddir, INITRAMFS_MODULES)
    entries: list[tuple[str, int, bytes | str | tuple[int, int]]] = [
        (d, stat.S_IFDIR | 0o755, b"")
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys", "edgepipe")
    ]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, (5, 1)))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, (kern / "bin" / "busybox").read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, "busybox"))
    for ko in modules:
        entries.append((f"lib/modules/{ko.name}", stat.S_IFREG | 0o644, ko.read_bytes()))
    entries.append(("etc/edgepipe-modules", stat.S_IFREG | 0o644, "".join(f"{k.name}\n" for k in modules).encode()))
    entries.append(("init", stat.S_IFREG | 0o755, INITRAMFS_INIT.encode()))
    return cpio_newc(entries), [k.name for k in modules]


def instance_cpio(host_key: Path, authorized_keys: bytes) -> bytes:
    """The per-boot part appended to the initramfs: this instance's SSH host key and client key."""
    return cpio_newc(
        [
            ("edgepipe/ssh_host_ed25519_key", stat.S_IFREG | 0o600, host_key.read_bytes()),
            ("edgepipe/ssh_host_ed25519_key.pub", stat.S_IFREG | 0o644, Path(f"{host_key}.pub").read_bytes()),
            ("edgepipe/authorized_keys", stat.S_IFREG | 0o644, authorized_keys),
        ]
    )
