"""Locate the TensorFlow Lite Micro sources, unpacking a tarball mirror if needed.

Two shapes of source are accepted:

* **a checkout**: a ``tflite-micro`` tree (contains ``tensorflow/lite/micro``)
  whose ``tensorflow/lite/micro/tools/make/downloads/`` is already populated
  (``cmsis``, ``cmsis/Cortex_DFP``, ``cmsis_nn``, ``flatbuffers``, ``gemmlowp``,
  ``ruy``; ``kissfft`` optional) -- e.g. after running TFLM's make download
  step online;
* **a mirror**: a folder with
  ``src/{tflite-micro,cmsis,Cortex_DFP,cmsis_nn,flatbuffers,gemmlowp,ruy,kissfft}.tar.gz``
  (``git archive`` tarballs of the pinned commits).  A mirror is unpacked once
  into the cache, keyed by the tarballs' SHA-256, arranged exactly as TFLM's
  download scripts would (``*BUILD`` files deleted, ``flatbuffers.patch`` and
  ``kissfft.patch`` applied, empty ``pigweed``).  The unpack goes to a temp
  dir that is renamed into place, so a killed unpack leaves nothing
  half-done; the next call is instant (tarball hashes are memoised by
  size/mtime).

Lookup order: explicit argument (a target profile's ``tflm_src``), then ``$EDGEPIPE_TFLM_SRC``, then an
offline mirror at ``../shared/mcu`` beside the checkout or the current folder, else McuError.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.core.requirements import Requirement
from edgepipe.targets.mcu._util import cache_root, sha256_bytes
from edgepipe.targets.mcu.errors import McuError

__all__ = ["TflmSources", "locate_sources", "requirement", "ENV_VAR", "DOWNLOADS_REL"]

ENV_VAR = "EDGEPIPE_TFLM_SRC"
DOWNLOADS_REL = "tensorflow/lite/micro/tools/make/downloads"

#: tarball name -> destination relative to the TFLM root ("" = the root).
_LAYOUT = {
    "tflite-micro": "",
    "cmsis": f"{DOWNLOADS_REL}/cmsis",
    "Cortex_DFP": f"{DOWNLOADS_REL}/cmsis/Cortex_DFP",
    "cmsis_nn": f"{DOWNLOADS_REL}/cmsis_nn",
    "flatbuffers": f"{DOWNLOADS_REL}/flatbuffers",
    "gemmlowp": f"{DOWNLOADS_REL}/gemmlowp",
    "ruy": f"{DOWNLOADS_REL}/ruy",
    "kissfft": f"{DOWNLOADS_REL}/kissfft",
}
#: Third-party folders a build needs (kissfft only for signal / micro_speech).
_REQUIRED_DOWNLOADS = (
    "cmsis/CMSIS/Core/Include",
    "cmsis/Cortex_DFP/Device",
    "cmsis_nn/Source",
    "flatbuffers/include",
    "gemmlowp",
    "ruy",
)
#: (downloads dir, patch path relative to TFLM root), as TFLM's scripts do.
_PATCHES = (
    ("flatbuffers", "tensorflow/lite/micro/tools/make/flatbuffers.patch"),
    ("kissfft", "third_party/kissfft/kissfft.patch"),
)
#: Folders whose ``*BUILD`` files TFLM's download step deletes.
_DELETE_BUILD_IN = ("flatbuffers", "gemmlowp", "ruy", "kissfft")

_HOW_TO_GET = (
    "online: git clone https://github.com/tensorflow/tflite-micro and run its "
    "make download step (make -f tensorflow/lite/micro/tools/make/Makefile "
    "TARGET=cortex_m_generic OPTIMIZED_KERNEL_DIR=cmsis_nn third_party_downloads), "
    f"then pass that checkout; offline: set {ENV_VAR} to a mirror folder with "
    "src/*.tar.gz, like ../shared/mcu"
)


@dataclass(frozen=True)
class TflmSources:
    """A ready TFLM source tree.

    Attributes:
        root: the ``tflite-micro`` root (holds ``tensorflow/``).
        kind: ``"checkout"`` or ``"mirror"``.
        fingerprint: identifies the tree: for a mirror, the SHA-256 over its
            tarballs; for a checkout, ``"checkout:" + path`` (object-cache keys
            hash the actual header contents, so this is informational).
        origin: the path the sources were found from.
    """

    root: Path
    kind: str
    fingerprint: str
    origin: Path

    @property
    def downloads(self) -> Path:
        return self.root / DOWNLOADS_REL


def locate_sources(path: os.PathLike | str | None = None, *, cache_dir: os.PathLike | str | None = None) -> TflmSources:
    """Find (and if needed unpack) the TFLM sources.

    Args:
        path: a TFLM checkout with populated ``downloads/``, or a mirror folder
            holding ``src/*.tar.gz`` (or the ``src`` folder itself).  ``None``
            means ``$EDGEPIPE_TFLM_SRC``.
        cache_dir: where a mirror is unpacked (default: the package cache).

    Raises:
        McuError: nothing found, or the path is neither shape.
    """
    p, how = _resolve(path)
    if (p / "tensorflow" / "lite" / "micro").is_dir():
        return _checkout(p)
    return _mirror(_mirror_src(p), Path(cache_dir) if cache_dir else cache_root())


def _resolve(path: os.PathLike | str | None) -> tuple[Path, str]:
    """Where the sources are (a checkout, or a mirror folder) and how it was named; cheap, unpacks nothing."""
    if path is None:
        env = os.environ.get(ENV_VAR)
        mirror = next((m for m in default_mirrors() if (m / "src" / "tflite-micro.tar.gz").is_file()), None)
        if env:
            path, how = env, f"{ENV_VAR}={env}"
        elif mirror is not None:
            path, how = mirror, str(mirror)
        else:
            raise McuError(
                f"TFLite Micro sources not found (no tflm_src in the target profile, {ENV_VAR} is not "
                "set, and no ../shared/mcu mirror)",
                _HOW_TO_GET,
            )
    else:
        how = str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise McuError(f"TFLite Micro source path {how} does not exist", _HOW_TO_GET)
    p = p.resolve()
    if not (p / "tensorflow" / "lite" / "micro").is_dir():
        _mirror_src(p, how)
    return p, how


def _mirror_src(p: Path, how: str = "") -> Path:
    for src in (p / "src", p):
        if (src / "tflite-micro.tar.gz").is_file():
            return src
    raise McuError(
        f"{how or p} is neither a TFLite Micro checkout nor a mirror with src/tflite-micro.tar.gz", _HOW_TO_GET
    )


def requirement(path: os.PathLike | str | None) -> Requirement:
    """The sources a build for an emulated core needs (for the runner's preflight)."""

    def unmet() -> str | None:
        try:
            _resolve(path)
        except McuError as e:
            return e.message
        return None

    return Requirement("TensorFlow Lite Micro's sources", unmet, _HOW_TO_GET)


def default_mirrors() -> list[Path]:
    """Where an offline mirror sits when nobody names one: `../shared/mcu` beside this checkout of edgepipe,
    or beside the current folder."""
    repo = Path(__file__).resolve().parents[3]  # edgepipe/targets/mcu/sources.py -> the checkout
    return list(dict.fromkeys([repo.parent / "shared" / "mcu", Path.cwd().resolve().parent / "shared" / "mcu"]))


def _checkout(root: Path) -> TflmSources:
    dl = root / DOWNLOADS_REL
    missing = [d for d in _REQUIRED_DOWNLOADS if not (dl / d).is_dir()]
    if missing:
        raise McuError(
            f"TFLite Micro checkout {root} lacks downloads/{', downloads/'.join(missing)}",
            "run its make download step online (make -f tensorflow/lite/micro/tools/"
            "make/Makefile TARGET=cortex_m_generic OPTIMIZED_KERNEL_DIR=cmsis_nn "
            f"third_party_downloads), or set {ENV_VAR} to a tarball mirror",
        )
    return TflmSources(root=root, kind="checkout", fingerprint=f"checkout:{root}", origin=root)


# ----------------------------------------------------------------- mirror ---


def _tarball_hashes(src: Path, cache: Path) -> dict[str, str]:
    """SHA-256 of each tarball, memoised by (size, mtime_ns) in the cache."""
    memo_path = cache / "src" / "tarball-hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    out, dirty = {}, False
    for name in _LAYOUT:
        tb = src / f"{name}.tar.gz"
        if not tb.is_file():
            if name == "kissfft":
                continue
            raise McuError(
                f"mirror {src} lacks {tb.name}", "copy the complete mirror (all src/*.tar.gz), e.g. from ../shared/mcu"
            )
        st = tb.stat()
        key = f"{tb}:{st.st_size}:{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = fsio.sha256_file(tb)
            dirty = True
        out[name] = memo[key]
    if dirty:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1))
        os.replace(tmp, memo_path)
    return out


def _mirror(src: Path, cache: Path) -> TflmSources:
    hashes = _tarball_hashes(src, cache)
    key = sha256_bytes(json.dumps(sorted(hashes.items())).encode())[:20]
    final = cache / "src" / key
    marker = final / "edgepipe-unpacked.json"
    if not marker.is_file():
        _unpack(src, hashes, final, cache)
    return TflmSources(root=final / "tflite-micro", kind="mirror", fingerprint=key, origin=src)


def _extract(tb: Path, dest_parent: Path, expect_top: str) -> Path:
    with tarfile.open(tb, "r:gz") as tf:
        try:
            tf.extractall(dest_parent, filter="data")
        except TypeError:  # Python < 3.11.4: no filter argument
            for m in tf.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise McuError(f"unsafe path {m.name!r} in {tb}", "use an untampered mirror")
            tf.extractall(dest_parent)
    top = dest_parent / expect_top
    if not top.is_dir():
        raise McuError(
            f"{tb.name} does not unpack to a folder {expect_top}/",
            f"rebuild the mirror with git archive --prefix={expect_top}/",
        )
    return top


def _apply_patch(folder: Path, patch: Path) -> None:
    if shutil.which("git"):
        cmd = ["git", "apply", "--ignore-space-change", "--ignore-whitespace", str(patch)]
    elif shutil.which("patch"):
        cmd = ["patch", "-p1", "--batch", "--forward", "-l", "-i", str(patch)]
    else:
        _apply_unified_diff(folder, patch)
        return
    # git apply refuses to work inside another repository's work tree unless
    # GIT_DIR points somewhere harmless; an empty one does.
    env = dict(os.environ, GIT_DIR=str(folder / ".edgepipe-nogit"))
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, env=env)
    shutil.rmtree(folder / ".edgepipe-nogit", ignore_errors=True)
    if r.returncode != 0:
        raise McuError(
            f"applying {patch.name} to {folder.name} failed: {(r.stderr or r.stdout).strip()[:200]}",
            "use a mirror whose tarballs are at the pinned commits",
            detail=r.stderr,
        )


_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _apply_unified_diff(folder: Path, patch: Path) -> None:
    """Apply a ``git diff``-style patch (``a/``/``b/`` prefixes) in pure Python.

    Used when neither ``git`` nor ``patch`` is installed.  Context and removed
    lines are compared ignoring whitespace changes (like ``git apply
    --ignore-whitespace``); a hunk may sit at an offset from its stated line.
    """

    def norm(text: str) -> str:  # whitespace-insensitive, as patch --ignore-whitespace
        return " ".join(text.split())

    lines = patch.read_text().splitlines()
    i, files = 0, []
    while i < len(lines):
        if lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            target = lines[i + 1][4:].split("\t")[0].strip()
            target = target[2:] if target.startswith(("a/", "b/")) else target
            hunks, i = [], i + 2
            while i < len(lines) and not lines[i].startswith(("diff ", "--- ")):
                m = _HUNK_RE.match(lines[i])
                if m:
                    # Consume exactly the line counts the hunk header states.
                    n_old = int(m.group(2) or 1)
                    n_new = int(m.group(4) or 1)
                    body, i = [], i + 1
                    while (n_old > 0 or n_new > 0) and i < len(lines):
                        l = lines[i] or " "
                        i += 1
                        if l.startswith("\\"):
                            continue
                        if l[0] == " ":
                            n_old, n_new = n_old - 1, n_new - 1
                        elif l[0] == "-":
                            n_old -= 1
                        elif l[0] == "+":
                            n_new -= 1
                        body.append(l)
                    hunks.append((int(m.group(1)), body))
                else:
                    i += 1
            files.append((target, hunks))
        else:
            i += 1
    for target, hunks in files:
        path = folder / target
        text = path.read_text()
        src = text.splitlines()
        out, pos = [], 0
        for start, body in hunks:
            old = [l[1:] for l in body if l[0] in " -"]
            new = [l[1:] for l in body if l[0] in " +"]
            want = max(0, start - 1)
            found = None
            for off in sorted(range(-len(src), len(src) + 1), key=abs):
                k = want + off
                if k < pos or k + len(old) > len(src):
                    continue
                if all(norm(a) == norm(b) for a, b in zip(src[k : k + len(old)], old)):
                    found = k
                    break
            if found is None:
                raise McuError(
                    f"patch {patch.name} does not apply to {target}",
                    "use a mirror whose tarballs are at the pinned commits",
                )
            out += src[pos:found] + new
            pos = found + len(old)
        out += src[pos:]
        path.write_text("\n".join(out) + ("\n" if text.endswith("\n") else ""))


def _unpack(src: Path, hashes: dict[str, str], final: Path, cache: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        root = tmp / "tflite-micro"
        for name, rel in _LAYOUT.items():
            if name not in hashes:
                continue
            stage = tmp / f".stage-{name}"
            stage.mkdir()
            top = _extract(src / f"{name}.tar.gz", stage, name)
            dest = root / rel if rel else root
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(top, dest)
            shutil.rmtree(stage)
        dl = root / DOWNLOADS_REL
        for d in _DELETE_BUILD_IN:
            if (dl / d).is_dir():
                for f in (dl / d).rglob("*BUILD"):
                    if f.is_file():
                        f.unlink()
        for d, patch in _PATCHES:
            if (dl / d).is_dir():
                _apply_patch(dl / d, root / patch)
        (dl / "pigweed").mkdir(exist_ok=True)
        (tmp / "edgepipe-unpacked.json").write_text(
            json.dumps({"mirror": str(src), "tarballs_sha256": hashes}, indent=1)
        )
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process won the race (final exists and is complete).
            if not (final / "edgepipe-unpacked.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Left-overs of killed unpacks (older than this one) are garbage.
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        try:
            if stale.stat().st_mtime < final.stat().st_mtime - 3600:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
