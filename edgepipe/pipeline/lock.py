"""Cache keys and the lock file `runs/R/lock.json`: what each stage was made from, and what it produced.

A stage's key hashes its kind, its code (every edgepipe source file its module imports, directly or not,
and the versions of the libraries they import: `edgepipe.pipeline.code`), its resolved parameters, the
digests of its inputs (upstream outputs), the files outside `runs/` it reads (a dataset, a user's model
builder) and, for a measuring stage, the machine. A stage is fresh only when its key matches the lock
file and every recorded output is still there, unchanged; the check runs cheapest first and says why.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgepipe.core import fsio, ui
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import to_dict
from edgepipe.pipeline import code
from edgepipe.pipeline.recipe import Recipe, Stage

LOCK_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CodeVersion:
    """The code a stage kind runs: each source file's hash, one digest of them, the library versions."""

    files: dict[str, str]
    libraries: dict[str, str | None]

    @property
    def digest(self) -> str:
        return fsio.sha256_text(json.dumps([self.files, self.libraries], sort_keys=True))

    @classmethod
    def of(cls, module: str) -> CodeVersion:
        return cls(code.code_files(module), code.libraries(module))


class Lock:
    """The lock file of one recipe's run folder, read once and rewritten after every finished stage."""

    def __init__(self, path: Path, recipe: Recipe):
        self.path = Path(path)
        self.recipe = recipe
        self.stages: dict[str, dict] = self._read()

    def entry(self, name: str) -> dict | None:
        return self.stages.get(name)

    def record(self, name: str, key: str, parts: dict, records: dict[str, dict]) -> None:
        """Record a finished stage's key and outputs, and write the lock file (atomically)."""
        self.stages[name] = {"key": key, "parts": parts, "digest": fsio.digest_of(records), "outputs": records}
        # Keep only stages of this recipe so a renamed stage does not linger in the lock forever.
        kept = {k: v for k, v in self.stages.items() if k in self.recipe.stages}
        fsio.write_json(self.path, {"version": LOCK_VERSION, "recipe": str(self.recipe.path), "stages": kept})

    def _read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            lock = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            ui.warn(f"{self.path} is unreadable; every stage will rerun")
            return {}
        if not isinstance(lock, dict) or lock.get("version") != LOCK_VERSION:
            return {}
        stages = lock.get("stages") or {}
        if not isinstance(stages, dict) or not all(_well_formed(e) for e in stages.values()):
            ui.warn(f"{self.path} is not a lock file edgepipe wrote; every stage will rerun")
            return {}
        return stages


def _well_formed(entry) -> bool:
    """A lock entry as `Lock.record` writes it (a hand-edited or foreign file is treated as unreadable)."""
    return (isinstance(entry, dict) and isinstance(entry.get("key"), str) and isinstance(entry.get("digest"), str)
            and isinstance(entry.get("parts", {}), dict) and isinstance(entry.get("outputs"), dict)
            and all(isinstance(r, dict) and isinstance(r.get("sha256"), str) and isinstance(r.get("size"), int)
                    and isinstance(r.get("mtime_ns"), int) for r in entry["outputs"].values()))


def stage_key(stage: Stage, lock: Lock, run_dir: Path, version: CodeVersion) -> tuple[str, dict]:
    """The stage's cache key and the parts it hashes (recorded in the lock, to say later what changed)."""
    inputs = {}
    for role, ups in stage.inputs.items():
        names = [ups] if isinstance(ups, str) else ups
        digests = [_input_digest(stage, up, lock, run_dir) for up in names]
        inputs[role] = digests[0] if isinstance(ups, str) else digests
    deps = {}
    if stage.kind.deps:
        known = ((lock.entry(stage.name) or {}).get("parts") or {}).get("deps_records") or {}
        for path in stage.kind.deps(stage.params):
            deps[str(path)] = fsio.file_record(path, known.get(str(path)))
    parts = {
        "kind": stage.kind.name,
        "code": version.digest,
        "code_files": version.files,
        "libraries": version.libraries,
        "params": to_dict(stage.params),
        "inputs": inputs,
        "deps": {p: r["sha256"] for p, r in deps.items()},
        "environment": stage.kind.environment(stage.params) if stage.kind.environment else {},
    }
    key = fsio.sha256_text(json.dumps(parts, sort_keys=True, default=str))
    parts["deps_records"] = deps  # for the (size, mtime) shortcut next time; not part of the key
    return key, parts


def _input_digest(stage: Stage, upstream: str, lock: Lock, run_dir: Path) -> str:
    entry = lock.entry(upstream)
    if not entry or not (run_dir / upstream).is_dir():
        raise EdgepipeError(f"stage '{stage.name}' needs the output of '{upstream}', which has not been "
                            f"produced", f"run `edgepipe run {lock.recipe.path} --until {upstream}` first")
    return entry["digest"]


def why_stale(stage: Stage, key: str, parts: dict, lock: Lock, out_dir: Path) -> str | None:
    """Why the stage must run (`never run`, `param lr (0.01 -> 0.02) changed`, ...), or None if fresh."""
    entry = lock.entry(stage.name)
    if not entry:
        return "never run"
    old = entry.get("parts") or {}
    if entry.get("key") != key:
        return _what_changed(stage, old, parts)
    recorded = entry.get("outputs") or {}
    for rel, rec in recorded.items():
        p = out_dir / rel
        if not p.is_file():
            return f"output {rel} missing"
        if fsio.file_record(p, rec)["sha256"] != rec["sha256"]:
            return f"output {rel} modified"
    return None


def _what_changed(stage: Stage, old: dict, parts: dict) -> str:
    if old.get("kind") != parts["kind"]:
        return f"kind changed ({old.get('kind')} -> {parts['kind']})"
    if old.get("code") != parts["code"]:
        old_files, new_files = old.get("code_files") or {}, parts["code_files"]
        changed = sorted(f for f in set(old_files) | set(new_files) if old_files.get(f) != new_files.get(f))
        if changed and old_files:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            return f"code of {', '.join(changed[:3])}{more} changed"
        libs = [f"{k} {old.get('libraries', {}).get(k)} -> {v}" for k, v in parts["libraries"].items()
                if (old.get("libraries") or {}).get(k) != v]
        if libs and old_files == new_files:
            return f"library {', '.join(libs)} changed"
        return f"code of {stage.kind.module} changed"
    changed = changed_keys(old.get("params", {}), parts["params"])
    if changed:
        return f"param {', '.join(changed[:3])} changed"
    for role, digest in parts["inputs"].items():
        if old.get("inputs", {}).get(role) != digest:
            return f"input '{role}' changed"
    old_deps, new_deps = old.get("deps", {}), parts["deps"]
    for path in sorted(set(old_deps) - set(new_deps)):
        return f"file {path} is no longer used (the source now resolves elsewhere)"
    for path in sorted(set(new_deps) - set(old_deps)):
        return f"new input file {path}"
    for path in sorted(new_deps):
        if old_deps[path] != new_deps[path]:
            return f"file {path} changed"
    if old.get("environment") != parts["environment"]:
        return "machine or runtime changed"
    return "cache key changed"


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the values that differ between two nested mappings, with old and new values."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k} ({a!r} -> {b!r})" if not isinstance(a, (dict, list)) else f"{prefix}{k}")
    return keys
