"""The object cache: compile one source with the cross compiler, or reuse the object it made before; static archives.

Each source is compiled to ``<cache>/obj/<k>/<key>.o`` where
the key hashes (source content, its path in the tree, compiler version, all
flags, include dirs) and -- through a manifest written from the compiler's
``-MD`` output -- the content of every header it included.  Objects are
written under a temp name and renamed, so a killed build leaves no half
object and a later build reuses every finished one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.targets.mcu._util import nice_prefix, sha256_bytes
from edgepipe.targets.mcu.errors import McuError, one_line
from edgepipe.targets.mcu.toolchain import Toolchain

__all__ = ["Compiler"]


class _HashMemo:
    """Content hashes of files, memoised by (size, mtime_ns), thread-safe."""

    def __init__(self):
        self._d: dict = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        k = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            h = self._d.get(k)
        if h is None:
            h = fsio.sha256_file(path)
            with self._lock:
                self._d[k] = h
        return h


_MEMO = _HashMemo()


def _parse_depfile(text: str) -> list[str]:
    text = text.replace("\\\n", " ")
    _, _, deps = text.partition(": ")
    out = []
    for tok in re.split(r"(?<!\\) ", deps.strip()):
        if tok:
            out.append(tok.replace("\\ ", " "))
    return out


@dataclass
class Compiler:
    """Compiles sources of a tree into the object cache.

    Args:
        root: directory the relative source and include paths refer to (the
            compiler runs there).
        toolchain: from :func:`~edgepipe.targets.mcu.toolchain.find_toolchain`.
        cache: the cache root.

    Dependencies under ``sysdirs`` (the toolchain's own headers, found from
    its compiler) are covered by the compiler version, not hashed.
    """

    root: Path
    toolchain: Toolchain
    cache: Path
    stats: dict = field(default_factory=lambda: {"compiled": 0, "cached": 0})

    def __post_init__(self):
        self.root = Path(self.root)
        self.obj_dir = self.cache / "obj"
        self.man_dir = self.cache / "obj" / "manifests"
        self.man_dir.mkdir(parents=True, exist_ok=True)
        gcc_dir = Path(self.toolchain.gcc).resolve().parent.parent
        self.sysdirs = tuple(
            {
                str(gcc_dir / "lib" / "gcc"),
                str(gcc_dir / "include" / "newlib"),
                str(gcc_dir / "lib" / "arm-none-eabi"),
                "/usr/lib/gcc/arm-none-eabi",
                "/usr/include/newlib",
                "/usr/lib/arm-none-eabi",
            }
        )
        self._lock = threading.Lock()

    def _abs(self, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(self.root, p)

    def _rel(self, p: str) -> str:
        a = os.path.normpath(self._abs(p))
        r = os.path.relpath(a, self.root)
        return a if r.startswith("..") else r

    def key1(self, src: str, flags: list[str], includes: list[str]) -> str:
        h = _MEMO.get(self._abs(src))
        if h is None:
            raise McuError(f"source {src} not found under {self.root}", "pass a complete TFLite Micro source tree")
        return sha256_bytes(json.dumps([self.toolchain.compiler_id, self._rel(src), h, flags, includes]).encode())

    def lookup(self, k1: str) -> Path | None:
        """The cached object for key1 if all recorded headers are unchanged."""
        man = self.man_dir / k1[:2] / f"{k1}.json"
        try:
            entry = json.loads(man.read_text())
        except (OSError, ValueError):
            return None
        for dep, h in entry["deps"].items():
            if _MEMO.get(self._abs(dep)) != h:
                return None
        obj = self.obj_dir / entry["obj"][:2] / f"{entry['obj']}.o"
        return obj if obj.is_file() else None

    def compile(self, src: str, lang: str, flags: list[str], includes: list[str]) -> Path:
        """Compile *src* (relative to root or absolute); return the cached object."""
        k1 = self.key1(src, flags, includes)
        hit = self.lookup(k1)
        if hit is not None:
            with self._lock:
                self.stats["cached"] += 1
            return hit
        exe = self.toolchain.gxx if lang == "c++" else self.toolchain.gcc
        tmpdir = self.obj_dir / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        fd, tmp_o = tempfile.mkstemp(suffix=".o", dir=tmpdir)
        os.close(fd)
        tmp_d = tmp_o[:-2] + ".d"
        cmd = [*nice_prefix(), exe, *flags, *[f"-I{i}" for i in includes], "-MD", "-MF", tmp_d, "-c", src, "-o", tmp_o]
        try:
            r = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
            if r.returncode != 0:
                err = next((l for l in r.stderr.splitlines() if "error" in l), r.stderr.strip()[:300])
                log = self.cache / "logs" / f"compile-{k1[:12]}.log"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(" ".join(cmd) + "\n\n" + r.stderr)
                raise McuError(
                    f"compiling {src} failed: {one_line(err, 200)} (log: {log})",
                    "check the TFLite Micro tree and toolchain versions; the log has the compiler output",
                    detail=r.stderr,
                )
            deps = {}
            for d in _parse_depfile(Path(tmp_d).read_text())[1:]:
                a = os.path.normpath(self._abs(d))
                if a.startswith(self.sysdirs):
                    continue
                h = _MEMO.get(a)
                if h is not None:
                    deps[self._rel(a)] = h
            content = fsio.sha256_file(tmp_o)
            obj = self.obj_dir / content[:2] / f"{content}.o"
            obj.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_o, obj)
            fsio.write_text(
                self.man_dir / k1[:2] / f"{k1}.json", json.dumps({"src": self._rel(src), "obj": content, "deps": deps})
            )
        finally:
            for t in (tmp_o, tmp_d):
                try:
                    os.unlink(t)
                except OSError:
                    pass
        with self._lock:
            self.stats["compiled"] += 1
        return obj


def _member_name(src: str) -> str:
    """Readable unique archive member name: path with '/' -> '_' + '.o'."""
    s = src.replace("tensorflow/lite/micro/tools/make/downloads/", "")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", s).rsplit(".", 1)[0] + ".o"


def _archive(tc: Toolchain, cache: Path, name: str, members: list[tuple[str, Path]]) -> Path:
    """Static archive of (member name, object) pairs, cached by content."""
    key = sha256_bytes(json.dumps([tc.compiler_id, name] + [(m, o.name) for m, o in members]).encode())[:24]
    out = cache / "lib" / key / f"lib{name}.a"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as td:
        names = []
        for m, o in members:
            dst = Path(td) / m
            shutil.copyfile(o, dst)
            names.append(m)
        tmp_a = Path(td) / f"lib{name}.a"
        r = subprocess.run([tc.ar, "rcs", tmp_a.name, *names], cwd=td, capture_output=True, text=True)
        if r.returncode != 0:
            raise McuError(
                f"creating lib{name}.a failed: {one_line(r.stderr, 200)}",
                "check binutils-arm-none-eabi is installed and the disk is not full",
            )
        os.replace(tmp_a, out)
    return out
