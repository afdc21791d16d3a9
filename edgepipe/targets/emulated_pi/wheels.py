"""The pinned aarch64 wheels (ai-edge-litert, numpy and their dependencies), downloaded once into the cache.

ai-edge-litert 2.x's aarch64 wheels are tagged `manylinux_2_27_aarch64`; `pip download` finds them only
when that platform tag is named, so every tag is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, Iterable

from edgepipe.targets.emulated_pi.build_cache import cached_entry
from edgepipe.targets.emulated_pi.pins import BUILDER_VERSION, WHEEL_PLATFORMS, WHEEL_PYTHON, WHEELS
from edgepipe.targets.emulated_pi.tools import BuildError, Progress, run_step


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
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--only-binary=:all:",
        "--require-hashes",
        "-r",
        str(req),
        "-d",
        str(dest),
        "--python-version",
        WHEEL_PYTHON,
        "--implementation",
        "cp",
        "--abi",
        f"cp{WHEEL_PYTHON}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for p in WHEEL_PLATFORMS:
        cmd += ["--platform", p]
    run_step(cmd, log, "pip download (aarch64 wheels)")
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    if len(wheels) != len(WHEELS):
        raise BuildError(
            f"pip downloaded {len(wheels)} wheels, {len(WHEELS)} are pinned: {wheels}",
            "update WHEELS (a new dependency?) and BUILDER_VERSION",
        )
    return wheels


def unpack_wheels(wheels: Iterable[Path], site: Path) -> None:
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


def _wheels_spec() -> dict:
    return {
        "builder": BUILDER_VERSION,
        "kind": "wheels",
        "wheels": WHEELS,
        "platforms": list(WHEEL_PLATFORMS),
        "python_tag": WHEEL_PYTHON,
    }


def wheels_entry(root: Path, progress: Progress) -> Path:
    """The cache entry of the pinned aarch64 wheels (downloaded the first time)."""

    def build(tmp: Path, say: Callable[[str], None]) -> dict:
        say("pi: wheels: pip download of the pinned aarch64 wheels (manylinux_2_27_aarch64 et al.)")
        return {"wheels": _download_wheels(tmp, tmp / "build.log")}

    return cached_entry(root, "wheels", _wheels_spec(), build, progress, "wheels")
