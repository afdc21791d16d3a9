"""An emulated arm64 Raspberry Pi that edgepipe's real OpenSSH device harness can bench models on.

Two variants, both reached over a real OpenSSH connection on 127.0.0.1, both running the real aarch64
wheels (ai-edge-litert, numpy) on Debian bookworm arm64's CPython 3.11 -- what Raspberry Pi OS Bookworm
(64-bit) is built from:

``variant="user"`` (:class:`EmulatedPi`, fast)
    The host's own sshd, on a free port, with throwaway keys. Only ``python`` is ARM: the bench param
    ``python`` points at a wrapper script that runs Debian's aarch64 ``python3.11`` under
    ``qemu-aarch64-static -cpu <core>`` (qemu-user, no binfmt_misc needed), with the wheels on its path.
    ``mktemp``, ``scp`` and ``rm`` on the "device" are the host's. Starts at once.

``variant="system"`` (:class:`EmulatedPiVM`, slow: for a slow test)
    ``qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2G`` booting Debian's arm64 kernel with a
    minimal busybox initramfs made here, on an ext4 image of a Debian bookworm arm64 system with its own
    sshd (user ``pi``, passwordless sudo, hostname ``raspberrypi``), reached through qemu's ``hostfwd``.
    Everything on the device side is ARM, the kernel included. The image is faithful to Bookworm's
    PEP 668 set-up: ``python3 -m pip install`` system-wide is refused ("externally-managed-environment");
    LiteRT lives in a venv, as a Pi user's README has it. One venv, ``/opt/edgepipe-litert``, is made at
    build time from the pinned wheels (offline); ``~/litert`` is left for the user's own steps.

Both build once into edgepipe's cache (``~/.cache/edgepipe/pi`` by default, see `edgepipe.core.cache`), keyed by
everything that goes into the build: a second :func:`build_device` call returns at once.

Why the details are as they are (found on this kind of machine; see NOTES.md of the first trial):

* qemu 7.2's user mode passes the host's x86 ``/proc/cpuinfo`` through, and LiteRT's cpuinfo library
  then crashes at ``Interpreter()``. qemu's ``-L ROOTFS`` looks absolute paths up in ROOTFS first, so the
  user variant ships an ARM ``ROOTFS/proc/cpuinfo`` for the named core (:func:`cpuinfo_text`).
* ``-cpu max`` (qemu-user's default) makes XNNPACK's int8 and dynamic-range kernels wrong (SME): the core
  is always named (``cortex-a72`` for a Pi 4, ``cortex-a76`` for a Pi 5, ``cortex-a53`` for a Pi 3).
* ai-edge-litert 2.x's aarch64 wheels are tagged ``manylinux_2_27_aarch64``; ``pip download`` finds them
  only when that platform tag is named.
* The system variant's root file system is built with mmdebstrap's root mode, whose package configuration
  runs under qemu-user through binfmt_misc (about 3.5 min here; debootstrap's second stage took 11 min).

Requires: Debian's qemu-user-static, qemu-system-arm, mmdebstrap, arch-test (system variant),
binfmt-support (system variant), e2fsprogs, openssh-server/-client; root for building (mmdebstrap's root
mode). Standard library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from edgepipe.core.cache import cache_dir as cache_dir_of
from edgepipe.core.errors import EdgepipeError
from edgepipe.targets.local_sshd import sshd_config

__all__ = [
    "BUILDER_VERSION", "SUITE", "MIRROR", "USER_PACKAGES", "SYSTEM_PACKAGES", "KERNEL_PACKAGES", "WHEELS",
    "WHEEL_PLATFORMS", "CPUS", "CpuModel", "BuildError", "build_device", "cache_root", "cache_key",
    "cpuinfo_text", "write_cpuinfo", "wrapper_text", "vm_command", "requirements_text", "missing_tools",
    "binfmt_aarch64_enabled", "ensure_binfmt_aarch64", "cpio_newc", "EmulatedPi", "EmulatedPiVM",
]

# --------------------------------------------------------------------------------------------------
# Pins: everything a build depends on. Changing any of these changes the cache key.
# --------------------------------------------------------------------------------------------------

#: Bump when the build steps change in a way the other inputs do not show.
BUILDER_VERSION = "2"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

#: Debian packages of the user variant's root file system (extracted, never configured: no emulation).
#: libstdc++6 is needed by the LiteRT wheel and not pulled in by python3.
USER_PACKAGES = ("python3", "libstdc++6")

#: Debian packages of the system variant (installed and configured by mmdebstrap, minbase variant).
#: python3-venv and python3-pip are what a Bookworm user installs to make a venv; ca-certificates lets
#: pip reach PyPI over TLS; sudo, iproute2, procps and netbase are there on any Raspberry Pi OS.
SYSTEM_PACKAGES = ("openssh-server", "python3", "python3-venv", "python3-pip", "libstdc++6", "ca-certificates",
                   "netbase", "sudo", "iproute2", "procps")

#: Extracted (not installed) for the VM: the kernel and an aarch64 static busybox for the initramfs.
KERNEL_PACKAGES = ("linux-image-arm64", "busybox-static")

#: The kernel modules the initramfs loads (their dependencies are resolved from each .ko's modinfo).
#: crc32c_generic is ext4's soft dependency (metadata checksums).
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "virtio_rng", "crc32c_generic", "ext4")

#: The aarch64 wheels, pinned with their sha256 (pip checks them: `--require-hashes`). The transitive
#: dependencies of ai-edge-litert 2.3.0 are pinned too, so a build is the same build next month.
WHEELS = {
    "ai-edge-litert==2.3.0": "853fc608f96da87bd5f3458465dfb9abbf18d5ae6b94eceacead407146f175ae",
    "numpy==2.4.6": "0ab0a9c4ffb1a6d95ef519fe4247dba8eb6b18ad93999f76b7f657039acabd47",
    "backports.strenum==1.2.8": "fc297cb26971f7d5e15a478a06a78575197f81daea47975771b1aae996dcccf4",
    "flatbuffers==25.12.19": "7634f50c427838bb021c2d66a3d1168e9d199b0607e6329399f04846d42e20b4",
    "ml_dtypes==0.7.0": "7c094b42cb01f21e37e602a5cfe502ddaf6b5c60f66a162fd1e61f9a586558cb",
    "protobuf==7.36.2": "e11e1f0180583a2af89db6a2ecd9e8dc40aa6d2988ca175bfd0e6d12ea72d74e",
    "tqdm==4.70.1": "c293e525e6fef9c20e8728fd4612df02a0aa31bb5fe91ecd93e123b1b7bffa73",
    "typing_extensions==4.16.0": "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8",
}

#: Platform tags for `pip download`. The 2.x LiteRT wheels are manylinux_2_27_aarch64, which pip does not
#: infer from the others; bookworm's glibc is 2.36, so any tag up to 2_36 would run.
WHEEL_PLATFORMS = ("manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux2014_aarch64",
                   "manylinux_2_17_aarch64")
WHEEL_PYTHON = "311"  # bookworm's CPython 3.11

#: Where the system variant's build-time venv lives on the device (the EmulatedPiVM's `python`).
VM_VENV = "/opt/edgepipe-litert"
VM_USER = "pi"
VM_UID = 1000
VM_HOSTNAME = "raspberrypi"
#: Size of the (sparse) root ext4 image: room for a user's own venv and pip's cache.
VM_IMAGE_BYTES = 4 * 1024**3

Progress = Callable[[str], None] | None


class BuildError(EdgepipeError):
    """A build step failed, a tool is missing, or the emulated device would not start. One line + fix."""


# --------------------------------------------------------------------------------------------------
# CPU models and /proc/cpuinfo
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CpuModel:
    """A Raspberry Pi's ARM core, as qemu names it and as the Pi's kernel prints it in /proc/cpuinfo."""

    qemu: str                  # qemu's -cpu name
    core: str                  # ARM's name of the core
    board: str                 # the board's `Model` line
    part: int                  # MIDR part number (`CPU part`)
    variant: int               # MIDR variant (`CPU variant`)
    revision: int              # MIDR revision (`CPU revision`)
    features: str              # the `Features` line of the Pi's own kernel
    board_revision: str        # the `Revision` line (board revision code)
    hardware: str | None = "BCM2835"  # the `Hardware` line, where the Pi's kernel prints one
    bogomips: str = "108.00"   # 54 MHz arch timer, as on every Pi 3/4/5


#: The cores of the Raspberry Pis one would bench on, keyed by qemu's name. Features are each board's
#: own (a BCM2711 has no crypto extensions); what programs see through HWCAP is qemu's model of the core.
CPUS: dict[str, CpuModel] = {
    "cortex-a72": CpuModel("cortex-a72", "Cortex-A72", "Raspberry Pi 4 Model B Rev 1.1", 0xD08, 0x0, 3,
                           "fp asimd evtstrm crc32 cpuid", "c03111"),
    "cortex-a76": CpuModel("cortex-a76", "Cortex-A76", "Raspberry Pi 5 Model B Rev 1.0", 0xD0B, 0x4, 1,
                           "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                           "lrcpc dcpop asimddp", "d04170", hardware=None),
    "cortex-a53": CpuModel("cortex-a53", "Cortex-A53", "Raspberry Pi 3 Model B Rev 1.2", 0xD03, 0x0, 4,
                           "fp asimd evtstrm crc32 cpuid", "a02082"),
}


def _cpu(name: str) -> CpuModel:
    try:
        return CPUS[name]
    except KeyError:
        raise BuildError(f"unknown cpu {name!r}", f"use one of {', '.join(CPUS)} (qemu's -cpu max breaks "
                         "XNNPACK's int8 kernels, so a Pi emulation always names its core)") from None


def cpuinfo_text(cpu: str = "cortex-a72", cores: int = 4) -> str:
    """The /proc/cpuinfo a Raspberry Pi with this core prints (64-bit Raspberry Pi OS kernel).

    `cores` processor blocks (every Pi 3/4/5 has 4), then the board lines. The serial number is zeros.
    """
    m = _cpu(cpu)
    if not 1 <= cores <= 64:
        raise ValueError(f"cores must be 1..64, not {cores}")
    blocks = [
        f"processor\t: {i}\nBogoMIPS\t: {m.bogomips}\nFeatures\t: {m.features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {m.variant:#x}\nCPU part\t: {m.part:#05x}\n"
        f"CPU revision\t: {m.revision}\n"
        for i in range(cores)
    ]
    board = (f"Hardware\t: {m.hardware}\n" if m.hardware else "") + (
        f"Revision\t: {m.board_revision}\nSerial\t\t: 0000000000000000\nModel\t\t: {m.board}\n")
    return "\n".join(blocks) + "\n" + board


def write_cpuinfo(rootfs: str | Path, cpu: str = "cortex-a72", cores: int = 4) -> Path:
    """Write an ARM /proc/cpuinfo for `cpu` at ROOTFS/proc/cpuinfo (what qemu-user's -L makes programs read).

    Without it, qemu 7.2 user mode shows aarch64 programs the host's x86 cpuinfo and LiteRT segfaults.
    """
    path = Path(rootfs) / "proc" / "cpuinfo"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".cpuinfo.tmp")
    tmp.write_text(cpuinfo_text(cpu, cores))
    tmp.chmod(0o444)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------
# Cache: keys, atomic entries, locks
# --------------------------------------------------------------------------------------------------


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else edgepipe's cache (`edgepipe.core.cache`): `~/.cache/edgepipe/pi` by default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_dir_of("pi")


def cache_key(spec: dict) -> str:
    """sha256 of the canonical JSON of a build's inputs: equal inputs, equal key; any change, a new key."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _say(progress: Progress, line: str) -> None:
    if progress is not None:
        progress(line)


def _mounts_under(path: Path) -> list[str]:
    """Mount points strictly below `path` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Remove a (possibly half-built) tree safely.

    A killed mmdebstrap (root mode) can leave /proc, /sys and a bind mount of the host's /dev mounted in
    its target. Plain rmtree would then delete the host's device nodes, so: unmount everything below
    first, then `rm --one-file-system`, which never crosses into a mount that is still there.
    """
    if not path.exists() and not path.is_symlink():
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False, capture_output=True)
    if path.exists():
        raise BuildError(f"cannot remove {path}", f"check what is mounted under it (findmnt -R {path})")


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """An exclusive lock on one cache entry, so two processes never build the same thing at once."""
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(root: Path, name: str, spec: dict, build: Callable[[Path, Callable[[str], None]], dict],
            progress: Progress, label: str) -> Path:
    """The cache entry `root/name`, building it with `build(tmpdir)` first if it is not there.

    The build runs in `root/.tmp-name-*` and is renamed into place only when complete (with its
    manifest.json written last), so a killed build leaves no entry; its leftovers are removed the next
    time the same entry is built. `build(tmpdir, say)` prints one line per step through `say` (timed
    into the manifest's "steps") and returns extra manifest fields.
    """
    final = root / name
    if (final / "manifest.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, name):
        if (final / "manifest.json").is_file():  # another process built it while we waited
            return final
        for stale in root.glob(f".tmp-{name}-*"):
            _remove_tree(stale)
        if final.exists():  # an entry without a manifest is not ours to trust
            _remove_tree(final)
        tmp = root / f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        start = time.monotonic()
        marks: list[tuple[str, float]] = []

        def say(line: str) -> None:
            marks.append((line, time.monotonic()))
            _say(progress, line)

        try:
            extra = build(tmp, say)
            end = time.monotonic()
            seconds = round(end - start, 1)
            steps = [{"step": line, "seconds": round(((marks[i + 1][1] if i + 1 < len(marks) else end) - t), 1)}
                     for i, (line, t) in enumerate(marks)]
            manifest = {"name": name, "spec": spec, "key": cache_key(spec), "built_at": time.strftime(
                "%Y-%m-%dT%H:%M:%S%z"), "build_seconds": seconds, "steps": steps, **extra}
            manifest["disk_bytes"] = _disk_bytes(tmp)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.rename(tmp, final)
        except BaseException:
            _remove_tree(tmp)
            raise
        _say(progress, f"pi: {label}: built in {seconds:.1f} s -> {final}")
        return final


def _disk_bytes(path: Path) -> int:
    """Bytes allocated on disk below `path` (sparse files count what they use; hard links once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text())


# --------------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------------

QEMU_USER = "qemu-aarch64-static"
QEMU_SYSTEM = "qemu-system-aarch64"
SSHD = "/usr/sbin/sshd"


def missing_tools(variant: str = "user") -> list[str]:
    """The host tools (with the Debian package that has each) a variant needs and this machine lacks."""
    need = {"mmdebstrap": "mmdebstrap", QEMU_USER: "qemu-user-static", "ssh": "openssh-client",
            "ssh-keygen": "openssh-client", "scp": "openssh-client"}
    if variant == "user":
        need[SSHD] = "openssh-server"
    elif variant == "system":
        need |= {QEMU_SYSTEM: "qemu-system-arm", "mke2fs": "e2fsprogs", "arch-test": "arch-test",
                 "update-binfmts": "binfmt-support"}
    else:
        raise ValueError(f"variant must be 'user' or 'system', not {variant!r}")
    return [f"{tool} ({pkg})" for tool, pkg in need.items()
            if not (Path(tool).is_file() if tool.startswith("/") else shutil.which(tool))]


def _require(variant: str) -> None:
    missing = missing_tools(variant)
    if missing:
        pkgs = sorted({m.split("(")[1].rstrip(")") for m in missing})
        raise BuildError(f"missing host tools: {', '.join(missing)}", f"apt-get install {' '.join(pkgs)}")


def _run(cmd: list[str], log: Path | None = None, what: str = "", **kw) -> subprocess.CompletedProcess:
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
        raise BuildError(f"{what or cmd[0]} failed (exit {done.returncode}): {tail[-600:]}",
                         f"see {log}" if log else None)
    return done


# --------------------------------------------------------------------------------------------------
# Build steps
# --------------------------------------------------------------------------------------------------


def _mmdebstrap_extract(target: Path, packages: Iterable[str], log: Path) -> list[str]:
    """`mmdebstrap --variant=extract --arch=arm64`: unpack the packages and their dependencies, no
    emulation, no configuration. Returns the .deb file names (the exact versions) it unpacked."""
    debs = target.parent / f"{target.name}.debs"
    _run(["mmdebstrap", "--variant=extract", "--arch=arm64", f"--include={','.join(packages)}",
          f"--extract-hook=ls \"$1\"/var/cache/apt/archives/ > {shlex.quote(str(debs))}",
          SUITE, str(target), f"deb {MIRROR} {SUITE} main"], log, "mmdebstrap (extract)")
    names = sorted(n for n in debs.read_text().split() if n.endswith(".deb"))
    debs.unlink()
    return [_deb_name(n) for n in names]


def _deb_name(filename: str) -> str:
    """`python3.11_3.11.2-6%2bdeb12u6_arm64.deb` -> `python3.11=3.11.2-6+deb12u6`."""
    from urllib.parse import unquote

    parts = unquote(filename[:-4]).split("_")
    return f"{parts[0]}={parts[1]}" if len(parts) >= 2 else filename


def _deb_version(packages: list[str], name: str) -> str | None:
    for p in packages:
        if p.startswith(f"{name}="):
            return p.split("=", 1)[1]
    return None


def requirements_text() -> str:
    """The hash-pinned requirements file of the wheels (what `pip download/install --require-hashes` reads)."""
    return "".join(f"{req} --hash=sha256:{digest}\n" for req, digest in WHEELS.items())


def _download_wheels(dest: Path, log: Path) -> list[str]:
    """The pinned aarch64 wheels from PyPI (with the platform tags pip needs told), hashes checked."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        raise BuildError(f"pip is not available for {sys.executable}", f"{sys.executable} -m ensurepip")
    req = dest / "requirements.txt"
    dest.mkdir(parents=True, exist_ok=True)
    req.write_text(requirements_text())
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--require-hashes", "-r", str(req),
           "-d", str(dest), "--python-version", WHEEL_PYTHON, "--implementation", "cp",
           "--abi", f"cp{WHEEL_PYTHON}", "--abi", "abi3", "--abi", "none"]
    for p in WHEEL_PLATFORMS:
        cmd += ["--platform", p]
    _run(cmd, log, "pip download (aarch64 wheels)")
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    if len(wheels) != len(WHEELS):
        raise BuildError(f"pip downloaded {len(wheels)} wheels, {len(WHEELS)} are pinned: {wheels}",
                         "update WHEELS (a new dependency?) and BUILDER_VERSION")
    return wheels


def _unpack_wheels(wheels: Iterable[Path], site: Path) -> None:
    """Install wheels the simple way: unzip into one site dir (modes kept), `*.data/{purelib,platlib}`
    merged in. Enough for import and importlib.metadata; no entry-point scripts."""
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                target = Path(z.extract(info, site))
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    target.chmod(mode | 0o444)
    for data in site.glob("*.data"):
        for scheme in ("purelib", "platlib"):
            if (data / scheme).is_dir():
                shutil.copytree(data / scheme, site, dirs_exist_ok=True)
        shutil.rmtree(data)


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
    """Write .pyc files for `dirs` (imports under qemu drop from ~5 s to ~2.5 s).

    With a host CPython 3.11 this takes seconds; otherwise the emulated interpreter does it (~1 min).
    The files are compiled in the temporary build directory `built`; the paths recorded in them
    (tracebacks) are rewritten to the entry's `final` place. Returns which interpreter compiled.
    """
    py = _host_python311()
    cmd = [py or str(emulated_python), "-m", "compileall", "-q", "-j", "0" if py else "2",
           "-s", str(built), "-p", str(final), *map(str, dirs)]
    # compileall exits 1 when a file does not compile (test data with Python 2 syntax); that is fine
    done = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{done.stdout[-4000:]}{done.stderr[-4000:]}\n")
    if done.returncode not in (0, 1):
        raise BuildError(f"compileall failed (exit {done.returncode})", f"see {log}")
    return "host " + py if py else "emulated"


def wrapper_text(cpu: str, rootfs: str | Path, site: str | Path, qemu: str = "/usr/bin/qemu-aarch64-static",
                 note: str = "") -> str:
    """The `python` wrapper script of the user variant: bookworm's aarch64 python3.11 under qemu-user.

    * `-cpu` names the Pi's core (never qemu's `max`).
    * `-L ROOTFS`: the guest's absolute paths are looked up in ROOTFS first (libraries, /proc/cpuinfo),
      then on the host (the harness's /tmp/edgepipe.* files).
    * the interpreter is started by its host path inside ROOTFS, so sys.prefix is ROOTFS/usr and Python
      never picks up the host's site directories.
    * PYTHONPATH is the wheels; no user site, no .pyc writes (the cache stays read-only), and the
      host's PYTHONHOME/LD_PRELOAD/LD_LIBRARY_PATH are not handed to the ARM process.
    """
    _cpu(cpu)
    r, s = str(rootfs), str(site)
    args = [qemu, "-cpu", cpu, "-L", r, "-E", f"PYTHONPATH={s}", "-E", "PYTHONNOUSERSITE=1",
            "-E", "PYTHONDONTWRITEBYTECODE=1", "-U", "PYTHONHOME", "-U", "LD_PRELOAD", "-U", "LD_LIBRARY_PATH",
            f"{r}/usr/bin/python3.11"]
    head = ("#!/bin/sh\n"
            f"# python of an emulated Raspberry Pi ({cpu}): Debian {SUITE} arm64 CPython 3.11 under qemu-user.\n"
            "# Made by edgepipe's pi builder; use its path as the bench param `python`. Do not edit.\n")
    if note:
        head += f"# {note}\n"
    return head + "exec " + " ".join(shlex.quote(a) for a in args) + ' "$@"\n'


def _hardlink_copy(src: Path, dst: Path) -> None:
    """`cp -al`: a copy made of hard links (no extra disk). The cache never modifies files in place."""
    _run(["cp", "-a", "-l", str(src), str(dst)], what=f"cp -al {src}")


def _smoke_test_user(python: Path) -> dict:
    """Run the built interpreter once: machine, versions, a LiteRT interpreter made (the cpuinfo crash)."""
    code = ("import json, platform, numpy, importlib.metadata as m\n"
            "from ai_edge_litert.interpreter import Interpreter\n"
            "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
            " 'numpy': numpy.__version__, 'ai_edge_litert': m.version('ai-edge-litert')}))\n")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BuildError(f"the emulated python does not run: {done.stderr.strip()[-400:]}",
                         "check qemu-user-static and the rootfs/proc/cpuinfo file")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if info["machine"] != "aarch64":
        raise BuildError(f"the emulated python reports machine {info['machine']!r}, not aarch64")
    return info


def _user_base_spec() -> dict:
    return {"builder": BUILDER_VERSION, "kind": "user-base", "suite": SUITE, "mirror": MIRROR,
            "packages": sorted(USER_PACKAGES), "wheels": WHEELS, "platforms": list(WHEEL_PLATFORMS),
            "python_tag": WHEEL_PYTHON}


def _wheels_spec() -> dict:
    return {"builder": BUILDER_VERSION, "kind": "wheels", "wheels": WHEELS, "platforms": list(WHEEL_PLATFORMS),
            "python_tag": WHEEL_PYTHON}


def _wheels_entry(root: Path, progress: Progress) -> Path:
    spec = _wheels_spec()
    name = f"wheels-{cache_key(spec)[:16]}"

    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        say("pi: wheels: pip download of the pinned aarch64 wheels (manylinux_2_27_aarch64 et al.)")
        return {"wheels": _download_wheels(tmp, tmp / "build.log")}

    return _cached(root, name, spec, build, progress, "wheels")


def _user_base_entry(root: Path, progress: Progress) -> Path:
    spec = _user_base_spec()
    name = f"user-base-{cache_key(spec)[:16]}"
    if (root / name / "manifest.json").is_file():
        return root / name
    wheels = _wheels_entry(root, progress)

    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        log = tmp / "build.log"
        say(f"pi: user base: [1/3] mmdebstrap --variant=extract --arch=arm64 "
                       f"--include={','.join(USER_PACKAGES)} {SUITE}")
        debs = _mmdebstrap_extract(tmp / "rootfs", USER_PACKAGES, log)
        say("pi: user base: [2/3] unpacking the wheels into site/")
        _unpack_wheels(sorted(wheels.glob("*.whl")), tmp / "site")
        say("pi: user base: [3/3] making absolute symlinks relative to the rootfs")
        n = _relativize_symlinks(tmp / "rootfs")
        (tmp / "rootfs" / "proc").mkdir(exist_ok=True)
        return {"debs": debs, "wheels": _manifest(wheels)["wheels"], "symlinks_relativized": n,
                "python_deb": _deb_version(debs, "python3.11")}

    return _cached(root, name, spec, build, progress, "user base")


def emulated_marker(cpu: str) -> str:
    """What `/etc/edgepipe-emulated` says on the emulated device (device_runner puts it in its provenance,
    and the report then shows no latency: an emulator's is not a Pi's)."""
    return f"qemu-user {cpu}"


def _user_device_spec(cpu: str, cores: int) -> dict:
    qemu = shutil.which(QEMU_USER) or f"/usr/bin/{QEMU_USER}"
    return {"builder": BUILDER_VERSION, "kind": "user", "base": cache_key(_user_base_spec()), "cpu": cpu,
            "cpuinfo": cpuinfo_text(cpu, cores), "qemu": qemu, "marker": emulated_marker(cpu),
            "wrapper": wrapper_text(cpu, "ROOTFS", "SITE", qemu)}


def _user_device_entry(root: Path, cpu: str, cores: int, progress: Progress) -> Path:
    spec = _user_device_spec(cpu, cores)
    qemu = spec["qemu"]
    name = f"user-{cpu}-{cache_key(spec)[:16]}"
    if (root / name / "manifest.json").is_file():
        return root / name
    base = _user_base_entry(root, progress)

    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        log = tmp / "build.log"
        final = root / name  # the wrapper names the final paths, valid once renamed into place
        say(f"pi: user {cpu}: [1/4] hard-link copy of the base rootfs and site")
        _hardlink_copy(base / "rootfs", tmp / "rootfs")
        _hardlink_copy(base / "site", tmp / "site")
        say(f"pi: user {cpu}: [2/4] ARM /proc/cpuinfo ({CPUS[cpu].board}, {CPUS[cpu].core} "
                       f"part {CPUS[cpu].part:#05x})")
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
        base_m = _manifest(base)
        return {"variant": "user", "cpu": cpu, "cores": cores, "python": str(final / "python"),
                "compiled_by": compiled_by, "smoke": info, "base": base.name, "debs": base_m["debs"],
                "wheels": base_m["wheels"], "python_deb": base_m["python_deb"]}

    return _cached(root, name, spec, build, progress, f"user {cpu}")


# --------------------------------------------------------------------------------------------------
# System variant: root file system, kernel, initramfs, ext4 image
# --------------------------------------------------------------------------------------------------

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

#: mmdebstrap --customize-hook script (runs on the host, $1 = the new root; chroot runs arm64 programs
#: through binfmt_misc). $2 = the wheels dir, $3 = the guest init script.
CUSTOMIZE_HOOK = r"""#!/bin/sh
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
""".replace("@USER@", VM_USER).replace("@UID@", str(VM_UID)).replace("@HOSTNAME@", VM_HOSTNAME).replace(
    "@VENV@", VM_VENV)


def _system_spec() -> dict:
    return {"builder": BUILDER_VERSION, "kind": "system", "suite": SUITE, "mirror": MIRROR,
            "packages": sorted(SYSTEM_PACKAGES), "kernel_packages": sorted(KERNEL_PACKAGES),
            "modules": list(INITRAMFS_MODULES), "wheels": WHEELS, "platforms": list(WHEEL_PLATFORMS),
            "guest_init": GUEST_INIT, "initramfs_init": INITRAMFS_INIT, "customize_hook": CUSTOMIZE_HOOK,
            "image_bytes": VM_IMAGE_BYTES, "user": VM_USER, "uid": VM_UID, "hostname": VM_HOSTNAME,
            "venv": VM_VENV}


def binfmt_aarch64_enabled() -> bool:
    """Whether the kernel runs aarch64 ELF files through qemu (binfmt_misc), as mmdebstrap's chroot needs."""
    p = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    return p.is_file() and p.read_text().startswith("enabled")


def ensure_binfmt_aarch64(progress: Progress = print) -> None:
    """Mount binfmt_misc and enable Debian's qemu-aarch64 entry if they are not (root only).

    A machine-wide change (every aarch64 ELF file then runs under qemu-user), which is why the system
    build says so when it does it, and does it only with `setup_binfmt=True`.
    """
    if binfmt_aarch64_enabled():
        return
    if os.geteuid() != 0:
        raise BuildError("aarch64 binfmt_misc emulation is not enabled and this is not root",
                         "as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
                         "update-binfmts --enable qemu-aarch64")
    _say(progress, "pi: system: enabling binfmt_misc for qemu-aarch64 (machine-wide)")
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], what="mount binfmt_misc")
    _run(["update-binfmts", "--enable", "qemu-aarch64"], what="update-binfmts --enable qemu-aarch64")
    if not binfmt_aarch64_enabled():
        raise BuildError("qemu-aarch64 binfmt entry still not enabled", "apt-get install qemu-user-static")


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
        fields = [ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(name.encode()) + 1, 0]
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


def _initramfs(kern: Path, moddir: Path) -> tuple[bytes, list[str]]:
    """The base initramfs: busybox, the modules (in load order), /init. Returns (cpio, module names)."""
    modules = _resolve_modules(moddir, INITRAMFS_MODULES)
    entries: list[tuple[str, int, bytes | str | tuple[int, int]]] = [
        (d, stat.S_IFDIR | 0o755, b"") for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc",
                                                  "sys", "edgepipe")]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, (5, 1)))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, (kern / "bin" / "busybox").read_bytes()))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, "busybox"))
    for ko in modules:
        entries.append((f"lib/modules/{ko.name}", stat.S_IFREG | 0o644, ko.read_bytes()))
    entries.append(("etc/edgepipe-modules", stat.S_IFREG | 0o644, "".join(f"{k.name}\n" for k in modules).encode()))
    entries.append(("init", stat.S_IFREG | 0o755, INITRAMFS_INIT.encode()))
    return cpio_newc(entries), [k.name for k in modules]


def _instance_cpio(host_key: Path, authorized_keys: bytes) -> bytes:
    """The per-boot part appended to the initramfs: this instance's SSH host key and client key."""
    return cpio_newc([
        ("edgepipe/ssh_host_ed25519_key", stat.S_IFREG | 0o600, host_key.read_bytes()),
        ("edgepipe/ssh_host_ed25519_key.pub", stat.S_IFREG | 0o644, Path(f"{host_key}.pub").read_bytes()),
        ("edgepipe/authorized_keys", stat.S_IFREG | 0o644, authorized_keys),
    ])


def _system_entry(root: Path, progress: Progress, setup_binfmt: bool) -> Path:
    spec = _system_spec()
    name = f"system-{cache_key(spec)[:16]}"
    if (root / name / "manifest.json").is_file():
        return root / name
    if setup_binfmt:
        ensure_binfmt_aarch64(progress)
    elif not binfmt_aarch64_enabled():
        raise BuildError("aarch64 binfmt_misc emulation is not enabled (mmdebstrap configures the arm64 "
                         "packages in a chroot)", "pass setup_binfmt=True, or enable it by hand (update-binfmts)")
    wheels = _wheels_entry(root, progress)

    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        log = tmp / "build.log"
        (tmp / "edgepipe-init").write_text(GUEST_INIT)
        (tmp / "customize.sh").write_text(CUSTOMIZE_HOOK)
        hook = (f"sh {shlex.quote(str(tmp / 'customize.sh'))} \"$1\" {shlex.quote(str(wheels))} "
                f"{shlex.quote(str(tmp / 'edgepipe-init'))}")
        say(f"pi: system: [1/5] mmdebstrap --variant=minbase --arch=arm64 (configured under "
                       f"qemu-user via binfmt_misc; a few minutes) + user {VM_USER}, venv {VM_VENV}")
        _run(["mmdebstrap", "--variant=minbase", "--arch=arm64", f"--include={','.join(SYSTEM_PACKAGES)}",
              f"--customize-hook={hook}", SUITE, str(tmp / "rootfs"), f"deb {MIRROR} {SUITE} main"],
             log, "mmdebstrap (minbase, arm64)")
        (tmp / "edgepipe-init").unlink()
        (tmp / "customize.sh").unlink()
        admin = tmp / "rootfs" / "var" / "lib" / "dpkg"
        debs = _run(["dpkg-query", f"--admindir={admin}", "-W", "-f", "${Package}=${Version}\n"]).stdout.split()
        py = (tmp / "rootfs" / "usr" / "bin" / "python3.11").exists()
        if not py or not (tmp / "rootfs" / "usr" / "lib" / "python3.11" / "EXTERNALLY-MANAGED").is_file():
            raise BuildError("the system rootfs lacks python3.11 or its EXTERNALLY-MANAGED marker", f"see {log}")
        say(f"pi: system: [2/5] mmdebstrap --variant=extract {','.join(KERNEL_PACKAGES)} (no emulation)")
        kdebs = _mmdebstrap_extract(tmp / "kernel", KERNEL_PACKAGES, log)
        vmlinuz = sorted((tmp / "kernel" / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise BuildError("no vmlinuz-* in the extracted linux-image-arm64", f"see {log}")
        release = vmlinuz[-1].name[len("vmlinuz-"):]
        shutil.copy2(vmlinuz[-1], tmp / "vmlinuz")
        say(f"pi: system: [3/5] initramfs (busybox + {', '.join(INITRAMFS_MODULES)} for {release})")
        cpio, mods = _initramfs(tmp / "kernel", tmp / "kernel" / "lib" / "modules" / release)
        (tmp / "initrd.cpio").write_bytes(cpio)
        _remove_tree(tmp / "kernel")
        say(f"pi: system: [4/5] mke2fs -t ext4 -d rootfs root.ext4 ({VM_IMAGE_BYTES // 2**30} GiB sparse)")
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs", "-d", str(tmp / "rootfs"), str(tmp / "root.ext4"),
              str(VM_IMAGE_BYTES // 1024) + "k"], log, "mke2fs")
        say("pi: system: [5/5] removing the rootfs directory (the image has it)")
        rootfs_bytes = _disk_bytes(tmp / "rootfs")
        _remove_tree(tmp / "rootfs")
        return {"variant": "system", "kernel_release": release, "initramfs_modules": mods, "debs": debs,
                "kernel_debs": kdebs, "python_deb": _deb_version(debs, "python3.11"), "rootfs_bytes": rootfs_bytes,
                "wheels": _manifest(wheels)["wheels"], "venv": VM_VENV, "user": VM_USER}

    return _cached(root, name, spec, build, progress, "system")


# --------------------------------------------------------------------------------------------------
# Public: build_device
# --------------------------------------------------------------------------------------------------


def build_device(cache_dir: str | Path | None = None, *, cpu: str = "cortex-a72", variant: str = "user",
                 progress: Progress = print, cores: int = 4, setup_binfmt: bool = True) -> Path:
    """Build (once) and return the cached emulated device.

    variant="user": a directory with `python` (the wrapper script: the bench param `python`), `rootfs/`
    (bookworm arm64, extracted, with the ARM /proc/cpuinfo of `cpu`), `site/` (the wheels) and
    `manifest.json`. Keyed by suite, mirror, packages, wheel pins and hashes, the cpuinfo text (`cpu`,
    `cores`), the wrapper and BUILDER_VERSION. Disk: the base (rootfs + site) is shared by every cpu through
    hard links.

    variant="system": a directory with `vmlinuz`, `initrd.cpio`, `root.ext4` and `manifest.json`, keyed by
    the same pins plus the kernel packages, modules and init scripts. `cpu` is a boot-time choice
    (EmulatedPiVM) and not part of this build. Needs root and binfmt_misc for aarch64 (enabled
    machine-wide when `setup_binfmt`, with a progress line saying so).

    One progress line per step; nothing (or only a cache hit) when cached. Atomic: a build runs in a
    temporary directory renamed into place when complete.
    """
    if variant not in ("user", "system"):
        raise ValueError(f"variant must be 'user' or 'system', not {variant!r}")
    _cpu(cpu)
    _require(variant)
    root = cache_root(cache_dir)
    if variant == "user":
        return _user_device_entry(root, cpu, cores, progress)
    if os.geteuid() != 0:
        raise BuildError("building the system variant needs root (mmdebstrap's root mode, mke2fs -d with owners)",
                         "run the build once as root; the cache can then be used by others")
    return _system_entry(root, progress, setup_binfmt)


# --------------------------------------------------------------------------------------------------
# SSH plumbing shared by both devices
# --------------------------------------------------------------------------------------------------


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _known_hosts(path: Path, port: int, host_pub: Path) -> None:
    kind, key = host_pub.read_text().split()[:2]
    path.write_text(f"[127.0.0.1]:{port} {kind} {key}\n[localhost]:{port} {kind} {key}\n")


class _SshDevice:
    """What both emulated devices expose: where to ssh, with which key and options, which python."""

    host: str
    identity: Path
    ssh_options: list[str]
    python: str
    description: str
    port: int
    user: str

    def ssh_host(self):
        """This device as edgepipe's own `SshHost`."""
        from edgepipe.targets.remote import SshHost

        return SshHost.parse(self.host, identity=self.identity, options=tuple(self.ssh_options))

    def ssh_command(self, remote: str) -> list[str]:
        """An `ssh` argument list that runs the shell command line `remote` on the device."""
        args = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(self.port), "-i",
                str(self.identity), "-o", "IdentitiesOnly=yes"]
        for o in self.ssh_options:
            args += ["-o", o]
        return [*args, f"{self.user}@127.0.0.1", "--", remote]

    def run(self, remote: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        """Run a shell command line on the device, capturing its output (text)."""
        return subprocess.run(self.ssh_command(remote), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


class EmulatedPi(_SshDevice):
    """The user variant as a device: the host's sshd on 127.0.0.1 (throwaway keys) + the emulated python.

        with EmulatedPi(cpu="cortex-a72") as pi:
            bench_over_ssh(pi.ssh_host(), models, test_set, python=pi.python, threads=[1], warmup=2, runs=10)

    Attributes (after __enter__): host (`user@127.0.0.1:port`), identity (the client's private key),
    ssh_options (`-o` options that make the client trust exactly this server), python (the wrapper path:
    the bench param `python`), description, device (the cache entry), port, user.
    """

    def __init__(self, cpu: str = "cortex-a72", *, cache_dir: str | Path | None = None,
                 workdir: str | Path | None = None, progress: Progress = print, cores: int = 4):
        self.cpu, self.cache_dir, self.progress, self.cores = cpu, cache_dir, progress, cores
        self._workdir_arg = workdir
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @staticmethod
    def available() -> str | None:
        """None if this machine can run an EmulatedPi, else why not (for pytest.skip)."""
        missing = missing_tools("user")
        return f"missing {', '.join(missing)}" if missing else None

    def __enter__(self) -> "EmulatedPi":
        self.device = build_device(self.cache_dir, cpu=self.cpu, variant="user", progress=self.progress,
                                   cores=self.cores)
        m = _manifest(self.device)
        self.python = str(self.device / "python")
        self.description = (f"qemu-user {self.cpu}, Debian {SUITE} arm64, Python {m['smoke']['python']} "
                            f"(ai-edge-litert {m['smoke']['ai_edge_litert']}, numpy {m['smoke']['numpy']})")
        if self._workdir_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgepipe-pi-")
            r = Path(self._tmp.name)
        else:
            r = Path(self._workdir_arg)
            r.mkdir(parents=True, exist_ok=True)
        try:
            self._start_sshd(r)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_sshd(self, r: Path) -> None:
        _keygen(r / "host_key", "edgepipe-pi-host")
        _keygen(r / "client_key", "edgepipe-pi-client")
        (r / "authorized_keys").write_text((r / "client_key.pub").read_text())
        os.chmod(r / "authorized_keys", 0o600)
        self.port = _free_port()
        (r / "sshd_config").write_text(sshd_config(r, self.port))
        _known_hosts(r / "known_hosts", self.port, r / "host_key.pub")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory, as root
        self._log = open(r / "sshd.log", "w")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(r / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BuildError(f"sshd did not start: {(r / 'sshd.log').read_text()[-500:]}")
            time.sleep(0.05)
        self.user = getpass.getuser()
        self.host = f"{self.user}@127.0.0.1:{self.port}"
        self.identity = r / "client_key"
        self.ssh_options = [f"UserKnownHostsFile={r / 'known_hosts'}", "StrictHostKeyChecking=yes"]
        self.workdir = r

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def vm_command(device: Path, *, cpu: str = "cortex-a72", smp: int = 2, memory: str = "2G", port: int,
               initrd: Path, console: Path, internet: bool = True, qemu: str = QEMU_SYSTEM) -> list[str]:
    """The qemu-system-aarch64 command line of an EmulatedPiVM.

    `-snapshot`: the cached root image is never written (a boot's changes go to a temporary file and are
    gone when qemu exits). `internet=False` sets slirp's `restrict=on`: the guest reaches nothing
    outside; only the SSH port forward works.
    """
    _cpu(cpu)
    net = f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22" + ("" if internet else ",restrict=on")
    return [qemu, "-M", "virt", "-cpu", cpu, "-smp", str(smp), "-m", memory, "-accel", "tcg,thread=multi",
            "-kernel", str(device / "vmlinuz"), "-initrd", str(initrd),
            "-append", "console=ttyAMA0 quiet panic=-1",
            "-drive", f"if=none,id=root,format=raw,cache=unsafe,file={device / 'root.ext4'}",
            "-device", "virtio-blk-pci,drive=root", "-netdev", net, "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-device", "virtio-rng-pci", "-snapshot", "-display", "none", "-monitor", "none",
            "-serial", f"file:{console}", "-no-reboot"]


class EmulatedPiVM(_SshDevice):
    """The system variant as a device: a booted arm64 Debian VM whose own sshd is on 127.0.0.1:port.

        with EmulatedPiVM() as pi:  # boots (tens of seconds), waits for its sshd
            bench_over_ssh(pi.ssh_host(), models, test_set, python=pi.python, threads=[1], warmup=2, runs=10)

    Same attributes as EmulatedPi (user `pi`, python = the build-time venv's python), plus boot_seconds
    and console (the serial console log). Each boot has its own SSH host key and client key; the cached
    image is never changed.
    """

    def __init__(self, cpu: str = "cortex-a72", *, smp: int = 2, memory: str = "2G",
                 cache_dir: str | Path | None = None, workdir: str | Path | None = None, progress: Progress = print,
                 internet: bool = False, boot_timeout: float = 600, setup_binfmt: bool = True):
        _cpu(cpu)
        self.cpu, self.smp, self.memory, self.cache_dir, self.progress = cpu, smp, memory, cache_dir, progress
        self.internet, self.boot_timeout, self.setup_binfmt = internet, boot_timeout, setup_binfmt
        self._workdir_arg = workdir
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @staticmethod
    def available(cache_dir: str | Path | None = None) -> str | None:
        """None if this machine can boot an EmulatedPiVM (or its image is cached), else why not."""
        missing = missing_tools("system")
        if missing:
            return f"missing {', '.join(missing)}"
        cached = (cache_root(cache_dir) / f"system-{cache_key(_system_spec())[:16]}" / "manifest.json").is_file()
        if not cached and os.geteuid() != 0:
            return "the system image is not cached and building it needs root"
        return None

    def __enter__(self) -> "EmulatedPiVM":
        self.device = build_device(self.cache_dir, cpu=self.cpu, variant="system", progress=self.progress,
                                   setup_binfmt=self.setup_binfmt)
        m = _manifest(self.device)
        pyver = (m.get("python_deb") or "3.11").split("-")[0]
        self.python = f"{VM_VENV}/bin/python"
        self.description = (f"qemu-system virt {self.cpu} x{self.smp}, {self.memory}, Debian {SUITE} arm64 "
                            f"(kernel {m['kernel_release']}), Python {pyver}")
        if self._workdir_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgepipe-pivm-")
            r = Path(self._tmp.name)
        else:
            r = Path(self._workdir_arg)
            r.mkdir(parents=True, exist_ok=True)
        self.workdir = r
        try:
            self._boot(r)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _boot(self, r: Path) -> None:
        _keygen(r / "host_key", "edgepipe-pivm-host")
        _keygen(r / "client_key", "edgepipe-pivm-client")
        initrd = r / "initrd.cpio"
        initrd.write_bytes((self.device / "initrd.cpio").read_bytes()
                           + _instance_cpio(r / "host_key", (r / "client_key.pub").read_bytes()))
        self.port = _free_port()
        _known_hosts(r / "known_hosts", self.port, r / "host_key.pub")
        self.user = VM_USER
        self.host = f"{VM_USER}@127.0.0.1:{self.port}"
        self.identity = r / "client_key"
        self.ssh_options = [f"UserKnownHostsFile={r / 'known_hosts'}", "StrictHostKeyChecking=yes"]
        self.console = r / "console.log"
        cmd = vm_command(self.device, cpu=self.cpu, smp=self.smp, memory=self.memory, port=self.port,
                         initrd=initrd, console=self.console, internet=self.internet)
        _say(self.progress, f"pi: booting {self.description} (ssh on 127.0.0.1:{self.port})")
        start = time.monotonic()
        self._qlog = open(r / "qemu.log", "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._qlog, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TMPDIR": str(r)})  # -snapshot's overlay lives here
        while True:
            if self.proc.poll() is not None:
                raise BuildError(f"qemu exited ({self.proc.returncode}) before sshd answered: "
                                 f"{self._tail(r / 'qemu.log')} / console: {self._tail(self.console)}")
            if time.monotonic() - start > self.boot_timeout:
                raise BuildError(f"no sshd after {self.boot_timeout:.0f} s; console: {self._tail(self.console)}")
            if self._banner() and self.run("true", timeout=60).returncode == 0:
                break
            time.sleep(1)
        self.boot_seconds = round(time.monotonic() - start, 1)
        _say(self.progress, f"pi: booted to sshd in {self.boot_seconds:.1f} s")

    @staticmethod
    def _tail(path: Path, n: int = 600) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-6:])[-n:]
        return ""

    def _banner(self) -> bool:
        """Whether the guest's sshd answers (qemu accepts the forwarded port before the guest listens)."""
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
            s.settimeout(5)
            return s.recv(8).startswith(b"SSH-")
        return False

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self._qlog.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def main(argv: list[str] | None = None) -> int:
    """`python -m edgepipe.testing.pi [--system]`: start an emulated Pi, print how to reach it and bench on
    it, and keep it up until Ctrl-C (to try the README's device set-up without a Pi)."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="python -m edgepipe.testing.pi", description=main.__doc__)
    ap.add_argument("--system", action="store_true", help="a whole arm64 VM (its own kernel and sshd, Bookworm's "
                    "PEP 668 Python) instead of qemu-user behind this machine's sshd")
    ap.add_argument("--cpu", default="cortex-a72", help="the emulated core: cortex-a72 (Pi 4), cortex-a76 (Pi 5)")
    ap.add_argument("--internet", action="store_true", help="system variant: let the VM reach the network "
                    "(to pip install from PyPI in it)")
    args = ap.parse_args(argv)
    missing = missing_tools("system" if args.system else "user")
    if missing:
        print(f"edgepipe: error: missing host tools: {', '.join(missing)}; fix: apt-get install qemu-user-static "
              "qemu-system-arm mmdebstrap arch-test binfmt-support e2fsprogs openssh-server", file=sys.stderr)
        return 1
    device = (EmulatedPiVM(args.cpu, internet=args.internet) if args.system else EmulatedPi(args.cpu))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops qemu and removes the keys too
    with device:
        opts = " ".join(f"-o {o}" for o in device.ssh_options)
        login = device.host.rsplit(":", 1)[0]
        print(f"\n{device.description}\n  ssh -i {device.identity} {opts} -p {device.port} {login}\n"
              f"  bench with: --host {device.host} --set bench.identity={device.identity} "
              f"--set 'bench.ssh_options=[{', '.join(device.ssh_options)}]' --set bench.python={device.python}\n"
              "Ctrl-C stops it.", flush=True)
        try:
            while device.proc is None or device.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
