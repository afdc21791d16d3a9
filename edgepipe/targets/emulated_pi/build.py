"""Building an emulated Pi: the one call that returns a cache entry, either variant, building it first if need be."""

from __future__ import annotations

from pathlib import Path

from edgepipe.targets.emulated_pi.build_cache import cache_root
from edgepipe.targets.emulated_pi.cpus import cpu_model
from edgepipe.targets.emulated_pi.rootfs import user_base_name, user_device_entry, user_device_name
from edgepipe.targets.emulated_pi.system_image import system_entry
from edgepipe.targets.emulated_pi.tools import Progress, require_tools


def build_device(
    cache_dir: str | Path | None = None,
    *,
    cpu: str = "cortex-a72",
    variant: str = "user",
    progress: Progress = print,
    cores: int = 4,
    setup_binfmt: bool = False,
) -> Path:
    """Build (once) and return the cached emulated device.

    variant="user": a directory with `python` (the wrapper script: the bench param `python`), `rootfs/`
    (bookworm arm64, extracted, with the ARM /proc/cpuinfo of `cpu`), `site/` (the wheels) and
    `manifest.json`. Keyed by suite, mirror, packages, wheel pins and hashes, the cpuinfo text (`cpu`,
    `cores`), the wrapper and BUILDER_VERSION. Disk: the base (rootfs + site) is shared by every cpu through
    hard links.

    variant="system": a directory with `vmlinuz`, `initrd.cpio`, `root.ext4` and `manifest.json`, keyed by
    the same pins plus the kernel packages, modules and init scripts. `cpu` is a boot-time choice
    (EmulatedPiVM) and not part of this build. Building it needs root and binfmt_misc for aarch64: enabled
    machine-wide only when the caller asks, `setup_binfmt=True` (with a progress line saying so); else a
    BuildError says how. A cached image needs neither.

    What a build needs (mmdebstrap, root, binfmt_misc) is checked only when there is something to build.

    One progress line per step; nothing (or only a cache hit) when cached. Atomic: a build runs in a
    temporary directory renamed into place when complete.
    """
    if variant not in ("user", "system"):
        raise ValueError(f"variant must be 'user' or 'system', not {variant!r}")
    cpu_model(cpu)
    root = cache_root(cache_dir)
    if variant == "user":  # its builds check what they need (mmdebstrap, root) when they have to build
        require_tools("python")
        return user_device_entry(root, cpu, cores, progress)
    require_tools("system")
    return system_entry(root, progress, setup_binfmt)


def user_build_state(cpu: str = "cortex-a72", *, cache_dir: str | Path | None = None, cores: int = 4) -> str:
    """What `emulated_python(cpu)` has to do first: "built" (nothing, a cache lookup), "base" (the core's
    entry from the cached base: hard links and a smoke test, seconds, no root) or "none" (the whole root
    file system: mmdebstrap, root, the network)."""
    cpu_model(cpu)
    root = cache_root(cache_dir)
    if (root / user_device_name(cpu, cores) / "manifest.json").is_file():
        return "built"
    return "base" if (root / user_base_name() / "manifest.json").is_file() else "none"


def emulated_python(
    cpu: str = "cortex-a72", *, cache_dir: str | Path | None = None, cores: int = 4, progress: Progress = print
) -> Path:
    """The user variant's `python` alone, no SSH around it: Debian's aarch64 CPython 3.11 under
    `qemu-aarch64-static -cpu <cpu>` with the pinned wheels, built into the cache first if need be (see
    `build_device`). What a bench with `measure: emulated` runs the device runner with."""
    return build_device(cache_dir, cpu=cpu, variant="user", progress=progress, cores=cores) / "python"
