"""The user variant's arm64 root file system: Debian packages unpacked by mmdebstrap, no emulation.

`mmdebstrap --variant=extract` unpacks bookworm's arm64 python3 and its libraries without configuring
them (nothing runs under emulation); the wheels go beside it in `site/`; a `python` wrapper runs the
ARM interpreter under qemu-user with the Pi's core named. The base (rootfs + site) is built once and
shared through hard links by the entry of every core.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

from edgepipe.targets.emulated_pi.build_cache import cache_key, cached_entry, entry_name, read_manifest
from edgepipe.targets.emulated_pi.cpus import CPUS, cpu_model, cpuinfo_text, write_cpuinfo
from edgepipe.targets.emulated_pi.pins import (
    BUILDER_VERSION,
    MIRROR,
    SUITE,
    USER_PACKAGES,
    WHEEL_PLATFORMS,
    WHEEL_PYTHON,
    WHEELS,
)
from edgepipe.targets.emulated_pi.tools import QEMU_USER, BuildError, Progress, require_tools, run_step
from edgepipe.targets.emulated_pi.wheels import unpack_wheels, wheels_entry


def mmdebstrap_extract(target: Path, packages: Iterable[str], log: Path) -> list[str]:
    """`mmdebstrap --variant=extract --arch=arm64`: unpack the packages and their dependencies, no
    emulation, no configuration. Returns the .deb file names (the exact versions) it unpacked."""
    debs = target.parent / f"{target.name}.debs"
    run_step(
        [
            "mmdebstrap",
            "--variant=extract",
            "--arch=arm64",
            f"--include={','.join(packages)}",
            f'--extract-hook=ls "$1"/var/cache/apt/archives/ > {shlex.quote(str(debs))}',
            SUITE,
            str(target),
            f"deb {MIRROR} {SUITE} main",
        ],
        log,
        "mmdebstrap (extract)",
    )
    names = sorted(n for n in debs.read_text().split() if n.endswith(".deb"))
    debs.unlink()
    return [_deb_name(n) for n in names]


def _deb_name(filename: str) -> str:
    """`python3.11_3.11.2-6%2bdeb12u6_arm64.deb` -> `python3.11=3.11.2-6+deb12u6`."""
    from urllib.parse import unquote

    parts = unquote(filename[:-4]).split("_")
    return f"{parts[0]}={parts[1]}" if len(parts) >= 2 else filename


def deb_version(packages: list[str], name: str) -> str | None:
    for p in packages:
        if p.startswith(f"{name}="):
            return p.split("=", 1)[1]
    return None


def _relativize_symlinks(root: Path) -> int:
    """Make absolute symlinks inside `root` relative, so they resolve inside it, not on the host.

    qemu-user's -L resolves ROOTFS/usr/lib/python3.11/sitecustomize.py -> /etc/python3.11/... on the
    HOST otherwise. /dev is left alone (its links point into /proc, the host's on purpose).
    """
    changed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in ("dev", "proc", "sys")]
        for n in dirnames + filenames:
            link = Path(dirpath) / n
            if link.is_symlink():
                target = os.readlink(link)
                if target.startswith("/"):
                    link.unlink()
                    link.symlink_to(os.path.relpath(root / target.lstrip("/"), link.parent))
                    changed += 1
    return changed


def _host_python311() -> str | None:
    """A host CPython 3.11 (same bytecode as bookworm's 3.11.2: magic 3495), or None."""
    if sys.version_info[:2] == (3, 11) and sys.implementation.name == "cpython":
        return sys.executable
    return shutil.which("python3.11")


def _precompile(dirs: list[Path], log: Path, emulated_python: Path, built: Path, final: Path) -> str:
    """Write .pyc files for `dirs`, so the emulated interpreter does not compile every module it imports
    again at each start (the wrapper forbids .pyc writes: the cache stays read-only).

    A host CPython 3.11 compiles them natively; otherwise the emulated interpreter does it, much slower.
    The files are compiled in the temporary build directory `built`; the paths recorded in them
    (tracebacks) are rewritten to the entry's `final` place. Returns which interpreter compiled.
    """
    py = _host_python311()
    cmd = [
        py or str(emulated_python),
        "-m",
        "compileall",
        "-q",
        "-j",
        "0" if py else "2",
        "-s",
        str(built),
        "-p",
        str(final),
        *map(str, dirs),
    ]
    # compileall exits 1 when a file does not compile (test data with Python 2 syntax); that is fine
    done = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{done.stdout[-4000:]}{done.stderr[-4000:]}\n")
    if done.returncode not in (0, 1):
        raise BuildError(f"compileall failed (exit {done.returncode})", f"see {log}")
    return "host " + py if py else "emulated"


def qemu_user_args(
    cpu: str, rootfs: str | Path, site: str | Path, qemu: str = "/usr/bin/qemu-aarch64-static"
) -> list[str]:
    """The command line that runs bookworm's aarch64 python3.11 under qemu-user `qemu` (what the wrapper
    script execs, without the script's arguments); see `wrapper_text`."""
    cpu_model(cpu)
    r, s = str(rootfs), str(site)
    return [
        qemu,
        "-cpu",
        cpu,
        "-L",
        r,
        "-E",
        f"PYTHONPATH={s}",
        "-E",
        "PYTHONNOUSERSITE=1",
        "-E",
        "PYTHONDONTWRITEBYTECODE=1",
        "-U",
        "PYTHONHOME",
        "-U",
        "LD_PRELOAD",
        "-U",
        "LD_LIBRARY_PATH",
        f"{r}/usr/bin/python3.11",
    ]


def wrapper_text(
    cpu: str, rootfs: str | Path, site: str | Path, qemu: str = "/usr/bin/qemu-aarch64-static", note: str = ""
) -> str:
    """The `python` wrapper script of the user variant: bookworm's aarch64 python3.11 under qemu-user.

    * `-cpu` names the Pi's core (never qemu's `max`).
    * `-L ROOTFS`: the guest's absolute paths are looked up in ROOTFS first (libraries, /proc/cpuinfo),
      then on the host (the harness's /tmp/edgepipe.* files).
    * the interpreter is started by its host path inside ROOTFS, so sys.prefix is ROOTFS/usr and Python
      never picks up the host's site directories.
    * PYTHONPATH is the wheels; no user site, no .pyc writes (the cache stays read-only), and the
      host's PYTHONHOME/LD_PRELOAD/LD_LIBRARY_PATH are not handed to the ARM process.
    """
    args = qemu_user_args(cpu, rootfs, site, qemu)
    head = (
        "#!/bin/sh\n"
        f"# python of an emulated Raspberry Pi ({cpu}): Debian {SUITE} arm64 CPython 3.11 under qemu-user.\n"
        "# Made by edgepipe's pi builder; use its path as the bench param `python`. Do not edit.\n"
    )
    if note:
        head += f"# {note}\n"
    return head + "exec " + " ".join(shlex.quote(a) for a in args) + ' "$@"\n'


def _hardlink_copy(src: Path, dst: Path) -> None:
    """`cp -al`: a copy made of hard links (no extra disk). The cache never modifies files in place."""
    run_step(["cp", "-a", "-l", str(src), str(dst)], what=f"cp -al {src}")


def _smoke_test_user(python: Path) -> dict:
    """Run the built interpreter once: machine, versions, a LiteRT interpreter made (the cpuinfo crash)."""
    code = (
        "import json, platform, numpy, importlib.metadata as m\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
        " 'numpy': numpy.__version__, 'ai_edge_litert': m.version('ai-edge-litert')}))\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BuildError(
            f"the emulated python does not run: {done.stderr.strip()[-400:]}",
            "check qemu-user-static and the rootfs/proc/cpuinfo file",
        )
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if info["machine"] != "aarch64":
        raise BuildError(f"the emulated python reports machine {info['machine']!r}, not aarch64")
    return info


def _user_base_spec() -> dict:
    return {
        "builder": BUILDER_VERSION,
        "kind": "user-base",
        "suite": SUITE,
        "mirror": MIRROR,
        "packages": sorted(USER_PACKAGES),
        "wheels": WHEELS,
        "platforms": list(WHEEL_PLATFORMS),
        "python_tag": WHEEL_PYTHON,
    }


def user_base_name() -> str:
    """The cache entry name of the base (rootfs + site) every core's entry is made from."""
    return entry_name("user-base", _user_base_spec())


def _user_base_entry(root: Path, progress: Progress) -> Path:
    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        require_tools("build")
        if os.geteuid() != 0:
            raise BuildError(
                "building the emulated Pi's root file system needs root (mmdebstrap)",
                "run it once as root with EDGEPIPE_CACHE naming this cache; later runs reuse it",
            )
        wheels = wheels_entry(root, progress)
        log = tmp / "build.log"
        say(
            f"pi: user base: [1/3] mmdebstrap --variant=extract --arch=arm64 --include={','.join(USER_PACKAGES)} "
            f"{SUITE}"
        )
        debs = mmdebstrap_extract(tmp / "rootfs", USER_PACKAGES, log)
        say("pi: user base: [2/3] unpacking the wheels into site/")
        unpack_wheels(sorted(wheels.glob("*.whl")), tmp / "site")
        say("pi: user base: [3/3] making absolute symlinks relative to the rootfs")
        n = _relativize_symlinks(tmp / "rootfs")
        (tmp / "rootfs" / "proc").mkdir(exist_ok=True)
        return {
            "debs": debs,
            "wheels": read_manifest(wheels)["wheels"],
            "symlinks_relativized": n,
            "python_deb": deb_version(debs, "python3.11"),
        }

    return cached_entry(root, "user-base", _user_base_spec(), build, progress, "user base")


def emulated_marker(cpu: str) -> str:
    """What `/etc/edgepipe-emulated` says on the emulated device (device_runner puts it in its provenance,
    and the report then shows no latency: an emulator's is not a Pi's)."""
    return f"qemu-user {cpu}"


def _user_device_spec(cpu: str, cores: int) -> dict:
    qemu = shutil.which(QEMU_USER) or f"/usr/bin/{QEMU_USER}"
    return {
        "builder": BUILDER_VERSION,
        "kind": "user",
        "base": cache_key(_user_base_spec()),
        "cpu": cpu,
        "cpuinfo": cpuinfo_text(cpu, cores),
        "qemu": qemu,
        "marker": emulated_marker(cpu),
        "wrapper": wrapper_text(cpu, "ROOTFS", "SITE", qemu),
    }


def user_device_name(cpu: str, cores: int) -> str:
    """The cache entry name of the user variant for `cpu`: it changes with anything its build depends on."""
    return entry_name(f"user-{cpu}", _user_device_spec(cpu, cores))


def user_device_entry(root: Path, cpu: str, cores: int, progress: Progress) -> Path:
    spec = _user_device_spec(cpu, cores)
    qemu = spec["qemu"]
    name = entry_name(f"user-{cpu}", spec)

    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        base = _user_base_entry(root, progress)
        log = tmp / "build.log"
        final = root / name  # the wrapper names the final paths, valid once renamed into place
        say(f"pi: user {cpu}: [1/4] hard-link copy of the base rootfs and site")
        _hardlink_copy(base / "rootfs", tmp / "rootfs")
        _hardlink_copy(base / "site", tmp / "site")
        say(f"pi: user {cpu}: [2/4] ARM /proc/cpuinfo ({CPUS[cpu].board}, {CPUS[cpu].core} part {CPUS[cpu].part:#05x})")
        (tmp / "rootfs" / "proc" / "cpuinfo").unlink(missing_ok=True)  # never write through a hard link
        write_cpuinfo(tmp / "rootfs", cpu, cores)
        (tmp / "rootfs" / "etc" / "edgepipe-emulated").write_text(emulated_marker(cpu) + "\n")
        say(f"pi: user {cpu}: [3/4] python wrapper")
        note = f"cache entry {name}"
        (tmp / "python").write_text(wrapper_text(cpu, final / "rootfs", final / "site", qemu, note))
        (tmp / "python").chmod(0o755)
        # a wrapper for this temporary place, to compile with (if need be) and smoke-test before renaming
        probe = tmp / ".python-build"
        probe.write_text(wrapper_text(cpu, tmp / "rootfs", tmp / "site", qemu))
        probe.chmod(0o755)
        say(f"pi: user {cpu}: [4/4] precompiling .pyc, then a smoke test of the emulated python")
        compiled_by = _precompile([tmp / "rootfs" / "usr" / "lib" / "python3.11", tmp / "site"], log, probe, tmp, final)
        info = _smoke_test_user(probe)
        probe.unlink()
        base_m = read_manifest(base)
        return {
            "variant": "user",
            "cpu": cpu,
            "cores": cores,
            "python": str(final / "python"),
            "compiled_by": compiled_by,
            "smoke": info,
            "base": base.name,
            "debs": base_m["debs"],
            "wheels": base_m["wheels"],
            "python_deb": base_m["python_deb"],
        }

    return cached_entry(root, f"user-{cpu}", spec, build, progress, f"user {cpu}")
