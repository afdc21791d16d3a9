"""The cache key: what a stage is made from, hashed, and why a stage is stale.

A stage's key hashes its kind, its code (every edgepipe source file its module imports, directly or not,
and the versions of the libraries they import: `edgepipe.pipeline.code`), its resolved parameters, the
digests of its inputs (upstream outputs; for a kind that `reads_upstream`, of every stage they were made
from too), the files outside `runs/` it reads (a dataset, a user's model builder) and, for a measuring
stage, the machine. A stage is fresh only when its key matches the lock file (`edgepipe.pipeline.lock`)
and every recorded output is still there, unchanged; the check runs cheapest first and says why.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import to_dict
from edgepipe.pipeline import code
from edgepipe.pipeline.lock import Lock
from edgepipe.pipeline.recipe import Stage


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
    if stage.kind.reads_upstream:  # only then, so that no other kind's key changes
        parts["upstream"] = {
            up: _input_digest(stage, up, lock, run_dir) for up in lock.recipe.ancestors(stage.name) if up != stage.name
        }
    key = fsio.sha256_text(json.dumps(parts, sort_keys=True, default=str))
    parts["deps_records"] = deps  # for the (size, mtime) shortcut next time; not part of the key
    return key, parts


def _input_digest(stage: Stage, upstream: str, lock: Lock, run_dir: Path) -> str:
    entry = lock.entry(upstream)
    if not entry or not (run_dir / upstream).is_dir():
        raise EdgepipeError(
            f"stage '{stage.name}' needs the output of '{upstream}', which has not been produced",
            f"run `edgepipe run {lock.recipe.path} --until {upstream}` first",
        )
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
        libs = [
            f"{k} {old.get('libraries', {}).get(k)} -> {v}"
            for k, v in parts["libraries"].items()
            if (old.get("libraries") or {}).get(k) != v
        ]
        if libs and old_files == new_files:
            return f"library {', '.join(libs)} changed"
        return f"code of {stage.kind.module} changed"
    changed = changed_keys(old.get("params", {}), parts["params"])
    if changed:
        return f"param {', '.join(changed[:3])} changed"
    for role, digest in parts["inputs"].items():
        if old.get("inputs", {}).get(role) != digest:
            return f"input '{role}' changed"
    for name, digest in parts.get("upstream", {}).items():
        if old.get("upstream", {}).get(name) != digest:
            return f"upstream '{name}' changed"
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
