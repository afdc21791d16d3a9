"""The emulated Pi's build cache: entries keyed by everything that went into them, built atomically, locked.

Entries live under edgepipe's cache (`edgepipe.core.cache`, `pi/` in it). An entry is built in a temporary
directory and renamed into place once complete, its manifest.json written last, so a killed build leaves
no entry; two processes wanting the same entry take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

from edgepipe.core.cache import cache_dir as cache_dir_of
from edgepipe.targets.emulated_pi.tools import BuildError, Progress, show_progress


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """`cache_dir`, else edgepipe's cache (`edgepipe.core.cache`): `~/.cache/edgepipe/pi` by default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_dir_of("pi")


def cache_key(spec: dict) -> str:
    """sha256 of the canonical JSON of a build's inputs: equal inputs, equal key; any change, a new key."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def remove_tree(path: Path) -> None:
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


def entry_name(kind: str, spec: dict) -> str:
    """A cache entry's folder name: what it is (`wheels`, `user-cortex-a72`), then its key's first 16 hex digits."""
    return f"{kind}-{cache_key(spec)[:16]}"


def cached_entry(
    root: Path,
    kind: str,
    spec: dict,
    build: Callable[[Path, Callable[[str], None]], dict],
    progress: Progress,
    label: str,
) -> Path:
    """The cache entry of `kind` for `spec` under `root`, built with `build(tmpdir, say)` first if it is not there.

    Only a build needs what goes into it: `build` makes the entries it is made from (cached entries
    themselves) and checks what it needs, so a cached entry is a lookup and nothing else. The build runs
    in `root/.tmp-name-*` and is renamed into place only when complete (with its manifest.json written
    last), so a killed build leaves no entry; its leftovers are removed the next time the same entry is
    built. `build` prints one line per step through `say` (timed into the manifest's "steps") and
    returns extra manifest fields.
    """
    name = entry_name(kind, spec)
    final = root / name
    if (final / "manifest.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, name):
        if (final / "manifest.json").is_file():  # another process built it while we waited
            return final
        for stale in root.glob(f".tmp-{name}-*"):
            remove_tree(stale)
        if final.exists():  # an entry without a manifest is not ours to trust
            remove_tree(final)
        tmp = root / f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        start = time.monotonic()
        marks: list[tuple[str, float]] = []

        def say(line: str) -> None:
            marks.append((line, time.monotonic()))
            show_progress(progress, line)

        try:
            extra = build(tmp, say)
            end = time.monotonic()
            seconds = round(end - start, 1)
            steps = [
                {"step": line, "seconds": round(((marks[i + 1][1] if i + 1 < len(marks) else end) - t), 1)}
                for i, (line, t) in enumerate(marks)
            ]
            manifest = {
                "name": name,
                "spec": spec,
                "key": cache_key(spec),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": seconds,
                "steps": steps,
                **extra,
            }
            manifest["disk_bytes"] = disk_bytes(tmp)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.rename(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        show_progress(progress, f"pi: {label}: built in {seconds:.1f} s -> {final}")
        return final


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk below `path` (sparse files count what they use; hard links once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def read_manifest(entry: Path) -> dict:
    return json.loads((entry / "manifest.json").read_text())
