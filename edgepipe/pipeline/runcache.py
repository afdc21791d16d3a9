"""The run cache: every finished stage's outputs, kept by cache key, so a key seen before is restored.

Changing `teacher.lr` and changing it back should not retrain the teacher: the outputs the old key
produced are still here. Layout, for recipe R (DVC's run cache, content-addressed):

    runs/R/.cache/objects/<sha256>       each distinct file once (a hard link to the output where the file
                                         system allows, else a copy)
    runs/R/.cache/<key>/manifest.json    one finished stage: its files (path -> sha256, size), when it ran,
                                         how long it took, when it was last used

Hard links cost no space while the output they share is in `runs/R/<stage>/`; the price is that an
output edited in place edits its object too, so an object is checked against its hash (once per size and
mtime, as everywhere) before it is restored, and an entry whose object changed is dropped, not restored.
The cache is bounded (`run_cache_size`, see `edgepipe.pipeline.config`): past the bound, the least
recently used entries go, and the runner says so. Everything is written to a temporary name and renamed,
and the runner holds the run folder's lock while it touches the cache.

The cache is a file tree anything can damage, so nothing in it is trusted: a manifest is read through
`edgepipe.pipeline.schema.manifest` (its key the name of its folder, its paths inside the stage's
folder, its objects named by their digests), an entry, the objects folder or an object that is a link
or not what edgepipe writes is a miss (one warning line), and the cache never follows a link out of
``runs/R/.cache``: what is there is replaced or removed, never written through. `edgepipe gc` removes
damaged entries too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import time
from pathlib import Path

from edgepipe.core import fsio, ui
from edgepipe.pipeline import schema

DEFAULT_SIZE = 2 * 1024**3  # bytes of distinct files kept per recipe; see docs/runner.md, "The run cache"
MANIFEST = "manifest.json"


@dataclasses.dataclass
class Entry:
    """One cached stage run."""

    key: str
    stage: str
    created: float  # epoch seconds: when the stage ran
    used: float  # epoch seconds: when it was last stored or restored
    seconds: float  # how long the stage took to run (0: not known)
    files: dict[str, dict]  # relative path -> {sha256, size, mtime_ns}
    summary: str = ""  # the stage's closing line when it ran

    @property
    def size(self) -> int:
        return sum(r["size"] for r in self.files.values())


def when(t: float) -> str:
    """Epoch seconds as the date the user is shown: `2026-12-02 01:58 UTC`."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


class RunCache:
    """The run cache of one recipe's run folder (`runs/R/.cache`)."""

    def __init__(self, root: Path, limit: int = DEFAULT_SIZE):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.limit = limit
        self._warned: set[str] = set()  # damaged entries already said (once per run)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    # -- reading ----------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every readable entry, least recently used first (a damaged one is skipped: a miss)."""
        return self._scan()[0]

    def _scan(self) -> tuple[list[Entry], list[str]]:
        """(the readable entries, least recently used first; the names of the damaged ones)."""
        if not self._real_dir(self.root):
            return [], []
        found, damaged = [], []
        for child in sorted(self.root.iterdir()):
            if child.name == "objects":
                continue
            entry = self._read(child)
            if entry is None:
                damaged.append(child.name)
            else:
                found.append(entry)
        return sorted(found, key=lambda e: (e.used, e.key)), damaged

    def lookup(self, key: str) -> Entry | None:
        """The entry stored under `key`, if every one of its objects is still there."""
        if not self.enabled or not self._real_dir(self.root) or not os.path.lexists(self.root / key):
            return None
        entry = self._read(self.root / key)
        if entry is None or not all(self._object(r["sha256"]) for r in entry.files.values()):
            return None
        return entry

    def _read(self, folder: Path) -> Entry | None:
        """The entry in `folder`, or None (said once, in one warning line) if it is not one edgepipe wrote."""
        try:
            if not schema.HEX64.match(folder.name):
                raise schema.Damaged("its name is not a cache key")
            if not self._real_dir(folder):
                raise schema.Damaged("it is a link or a file, not a folder")
            manifest = folder / MANIFEST
            if not stat.S_ISREG(manifest.lstat().st_mode):
                raise schema.Damaged(f"its {MANIFEST} is a link or not a file")
            return Entry(**schema.manifest(json.loads(manifest.read_text()), folder.name))
        except (OSError, ValueError) as e:  # schema.Damaged is a ValueError, as is a file that is not JSON
            if isinstance(e, schema.Damaged):
                why = str(e)
            else:
                why = (e.strerror or type(e).__name__) if isinstance(e, OSError) else "its manifest is not JSON"
            if folder.name not in self._warned:
                self._warned.add(folder.name)
                ui.warn(f"run cache entry {folder} is damaged ({why}); treated as a miss (`edgepipe gc` removes it)")
            return None

    def _object(self, sha256: str) -> Path | None:
        """The object of that digest if it is a regular file in a real objects folder (never a link)."""
        path = self.objects / sha256
        try:
            if self._real_dir(self.objects) and stat.S_ISREG(path.lstat().st_mode):
                return path
        except OSError:
            pass
        return None

    def _real_dir(self, path: Path) -> bool:
        """Whether `path` is a folder, not a link to one (the cache root is said to be damaged once)."""
        try:
            if stat.S_ISDIR(path.lstat().st_mode):
                return True
        except FileNotFoundError:
            return False
        except OSError:
            pass
        if path == self.root and "" not in self._warned:
            self._warned.add("")
            ui.warn(f"run cache {path} is a link or a file, not a folder; treated as empty (`edgepipe gc` removes it)")
        return False

    # -- writing ----------------------------------------------------------------------------------

    def store(
        self,
        key: str,
        stage: str,
        out_dir: Path,
        records: dict[str, dict],
        seconds: float,
        summary: str = "",
        created: float | None = None,
    ) -> dict[str, dict]:
        """Keep the finished stage's outputs (`records` as the lock has them) under `key`; return their
        records as they now are.

        An output whose content is already cached becomes a link to that object, so a file a rerun
        produced again (a dataset after a change that touched only its plots) is on disk once.
        """
        try:
            schema.file_records(records)
        except schema.Damaged:  # not what a stage wrote (the lock checks the same): nothing to keep
            return records
        for folder in (self.root, self.objects, self.root / key):
            _make_dir(folder)
        files, now_records = {}, {}
        for rel, rec in records.items():
            obj, out = self.objects / rec["sha256"], out_dir / rel
            if self._object(rec["sha256"]) is None:
                _link_or_copy(out, obj)
            elif not os.path.samefile(obj, out):
                if fsio.sha256_file(obj) != rec["sha256"]:  # edited in place through another link: replace it
                    _link_or_copy(out, obj)
                elif _hard_links(obj, out):
                    _link_or_copy(obj, out)
            st = obj.stat()
            files[rel] = {"sha256": rec["sha256"], "size": rec["size"], "mtime_ns": st.st_mtime_ns}
            st = out.stat()
            now_records[rel] = {"sha256": rec["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        now = time.time()
        entry = Entry(key, stage, created or now, now, seconds, files, summary)
        fsio.write_json(self.root / key / MANIFEST, dataclasses.asdict(entry))
        return now_records

    def restore(self, entry: Entry, dest: Path) -> dict[str, dict] | None:
        """Fill the empty folder `dest` with the entry's files; return their records, or None (and drop the
        entry) if an object no longer matches its hash."""
        records = {}
        for rel, rec in entry.files.items():
            obj = self._object(rec["sha256"])
            if obj is None or fsio.file_record(obj, rec)["sha256"] != rec["sha256"]:
                self.drop(entry.key)
                if obj is not None:
                    obj.unlink(missing_ok=True)  # edited in place through a hard link: no longer that content
                return None
            target = dest / schema.relative_file(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(obj, target)
            st = target.stat()
            records[rel] = {"sha256": rec["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        self.touch(entry)
        return dict(sorted(records.items()))

    def touch(self, entry: Entry) -> None:
        entry.used = time.time()
        if self._real_dir(self.root) and self._real_dir(self.root / entry.key):
            fsio.write_json(self.root / entry.key / MANIFEST, dataclasses.asdict(entry))

    def drop(self, name: str) -> bool:
        """Remove the entry folder `name` (a link or file there is removed, never followed); whether it is gone."""
        path = self.root / name
        if not self._real_dir(self.root) or "/" in name or name in ("", ".", ".."):
            return False
        try:
            if stat.S_ISDIR(path.lstat().st_mode):
                shutil.rmtree(path)  # which removes links inside, never what they point to
            else:
                path.unlink()
        except OSError:
            pass
        return not os.path.lexists(path)

    # -- bounds -----------------------------------------------------------------------------------

    def size(self, entries: list[Entry] | None = None) -> int:
        """Bytes of the distinct objects the entries use."""
        seen = {}
        for e in self.entries() if entries is None else entries:
            for r in e.files.values():
                seen[r["sha256"]] = r["size"]
        return sum(seen.values())

    def evict(self, keep: set[str] = frozenset()) -> list[Entry]:
        """Drop least recently used entries (never those in `keep`) until the cache fits its bound."""
        entries = self.entries()
        gone = []
        while entries and self.size(entries) > self.limit:
            victim = next((e for e in entries if e.key not in keep), None)
            if victim is None:
                break
            entries.remove(victim)
            if self.drop(victim.key):
                gone.append(victim)
        if gone:
            self.sweep()
        return gone

    def prune(self, keep: int) -> tuple[list[Entry], list[str]]:
        """Keep the `keep` most recently used entries of each stage; drop the rest, and every damaged entry.
        Returns (the entries dropped, the damaged ones removed: their paths); only what is really gone."""
        if os.path.lexists(self.root) and not self._real_dir(self.root):
            self.root.unlink(missing_ok=True)  # a link or a file where the cache belongs: remove it, not its target
            return [], [str(self.root)]
        entries, damaged = self._scan()
        by_stage: dict[str, list[Entry]] = {}
        for e in reversed(entries):  # most recently used first
            by_stage.setdefault(e.stage, []).append(e)
        gone = [e for es in by_stage.values() for e in es[keep:] if self.drop(e.key)]
        removed = [str(self.root / name) for name in damaged if self.drop(name)]
        for name in sorted(set(damaged) - {Path(p).name for p in removed}):
            ui.warn(f"could not remove the damaged run cache entry {self.root / name}; remove it by hand")
        self.sweep()
        return gone, removed

    def sweep(self) -> int:
        """Delete objects no entry uses (and half-written temporaries, links, folders); return the bytes freed."""
        if not self._real_dir(self.root):
            return 0
        if not self._real_dir(self.objects):
            if os.path.lexists(self.objects):
                self.objects.unlink(missing_ok=True)  # a link or a file: removed, its target untouched
            return 0
        used = {r["sha256"] for e in self.entries() for r in e.files.values()}
        freed = 0
        for obj in self.objects.iterdir():
            st = obj.lstat()
            if obj.name in used and stat.S_ISREG(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(obj, ignore_errors=True)
            else:
                freed += st.st_size if stat.S_ISREG(st.st_mode) else 0
                obj.unlink(missing_ok=True)
        return freed


def _make_dir(path: Path) -> None:
    """Make `path` a real folder: a link or a file in its place is removed first (never written through)."""
    if os.path.lexists(path) and not stat.S_ISDIR(path.lstat().st_mode):
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _hard_links(a: Path, b: Path) -> bool:
    """Whether `b` could be a hard link to `a` (one device; the link itself may still be refused)."""
    return a.stat().st_dev == b.stat().st_dev


def _link_or_copy(src: Path, dest: Path) -> None:
    """Put `src`'s content at `dest` atomically: a hard link where the file system allows one (same
    device, links supported), else a copy."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)
