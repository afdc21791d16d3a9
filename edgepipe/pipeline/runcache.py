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
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from edgepipe.core import fsio

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

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    # -- reading ----------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every readable entry, least recently used first (an unreadable one is skipped: a miss)."""
        found = []
        for manifest in self.root.glob(f"*/{MANIFEST}") if self.root.is_dir() else []:
            entry = self._read(manifest)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: (e.used, e.key))

    def lookup(self, key: str) -> Entry | None:
        """The entry stored under `key`, if every one of its objects is still there."""
        if not self.enabled:
            return None
        entry = self._read(self.root / key / MANIFEST)
        if entry is None or not all((self.objects / r["sha256"]).is_file() for r in entry.files.values()):
            return None
        return entry

    def _read(self, manifest: Path) -> Entry | None:
        try:
            data = json.loads(manifest.read_text())
            return Entry(**{f.name: data[f.name] for f in dataclasses.fields(Entry) if f.name in data})
        except (OSError, ValueError, KeyError, TypeError):
            return None

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
        self.objects.mkdir(parents=True, exist_ok=True)
        files, now_records = {}, {}
        for rel, rec in records.items():
            obj, out = self.objects / rec["sha256"], out_dir / rel
            if not obj.is_file():
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
            obj = self.objects / rec["sha256"]
            if fsio.file_record(obj, rec)["sha256"] != rec["sha256"]:
                self.drop(entry.key)
                obj.unlink(missing_ok=True)  # edited in place through a hard link: no longer that content
                return None
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(obj, target)
            st = target.stat()
            records[rel] = {"sha256": rec["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        self.touch(entry)
        return dict(sorted(records.items()))

    def touch(self, entry: Entry) -> None:
        entry.used = time.time()
        fsio.write_json(self.root / entry.key / MANIFEST, dataclasses.asdict(entry))

    def drop(self, key: str) -> None:
        shutil.rmtree(self.root / key, ignore_errors=True)

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
            gone.append(victim)
            self.drop(victim.key)
        if gone:
            self.sweep()
        return gone

    def prune(self, keep: int) -> list[Entry]:
        """Keep the `keep` most recently used entries of each stage; drop the rest."""
        by_stage: dict[str, list[Entry]] = {}
        for e in reversed(self.entries()):  # most recently used first
            by_stage.setdefault(e.stage, []).append(e)
        gone = [e for es in by_stage.values() for e in es[keep:]]
        for e in gone:
            self.drop(e.key)
        self.sweep()
        return gone

    def sweep(self) -> int:
        """Delete objects no entry uses (and half-written temporaries); return the bytes freed."""
        used = {r["sha256"] for e in self.entries() for r in e.files.values()}
        freed = 0
        for obj in self.objects.iterdir() if self.objects.is_dir() else []:
            if obj.name not in used:
                freed += obj.stat().st_size
                obj.unlink(missing_ok=True)
        return freed


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
