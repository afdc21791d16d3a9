"""A damaged run cache is a miss, never an instruction: whatever a manifest, an entry or an object says (a
path with `..`, an absolute path, a link to a folder outside, the wrong shape), `edgepipe run` and
`edgepipe gc` write and delete only inside `runs/<recipe>/` and `models/<recipe>/`, say so in one warning
line, and gc removes what it says it removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.pipeline.recipe import load_recipe
from edgepipe.pipeline.runner import Runner
from edgepipe.testing import check_clean_outcome, run_cli, tiny_recipe, write_idx_dataset, write_recipe

SLOW = os.environ.get("EDGEPIPE_SLOW") == "1"
PROFILE = settings(
    max_examples=150 if SLOW else 15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False
)
RESTORE = ["--until", "data", "--set", "data.val_fraction=0.2"]  # the key of the first run: a restore


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, str]:
    """A sandbox (recipe, run root `work`) whose cache holds the data stage of two runs; the first one's key."""
    top = tmp_path_factory.mktemp("cache-damage")
    recipe = tiny_recipe(write_idx_dataset(top / "idx"))
    recipe["stages"] = {"data": {**recipe["stages"]["data"], "publish": ["dataset.json"]}}
    sandbox = top / "sandbox"
    path = write_recipe(sandbox / "recipes/tiny.yaml", recipe)
    (sandbox / "work").mkdir()
    key = None
    for fraction in ("0.2", "0.3"):
        Runner(load_recipe(path, sets=(f"data.val_fraction={fraction}",)), sandbox / "work").run(until="data")
        key = key or json.loads((sandbox / "work/runs/tiny/lock.json").read_text())["stages"]["data"]["key"]
    return sandbox, key


def copy_of(base: tuple[Path, str], where: Path) -> tuple[Path, Path, Path]:
    """A fresh copy of the sandbox with a folder `outside` of things a hostile cache could point at:
    (the sandbox, its recipe, the first run's cache entry)."""
    sandbox = where / "sb"
    shutil.copytree(base[0], sandbox, symlinks=True)
    (sandbox / "outside/dir").mkdir(parents=True)
    (sandbox / "outside/victim.txt").write_text("keep me\n")
    (sandbox / "outside/dir/victim.txt").write_text("keep me too\n")
    (sandbox / "work/runs/other").mkdir(parents=True)
    (sandbox / "work/runs/other/victim.txt").write_text("another recipe's\n")
    return sandbox, sandbox / "recipes/tiny.yaml", sandbox / "work/runs/tiny/.cache" / base[1]


def outside(sandbox: Path) -> dict[str, tuple]:
    """Everything in the sandbox but runs/tiny and models/tiny: path -> (type, size, mtime, links)."""
    allowed = (sandbox / "work/runs/tiny", sandbox / "work/models/tiny")
    out = {}
    for p in [sandbox, *sandbox.rglob("*")]:
        if any(p == a or a in p.parents for a in allowed):
            continue
        st_ = p.lstat()
        out[str(p)] = (st_.st_mode, st_.st_size if not p.is_dir() else 0, st_.st_mtime_ns, st_.st_nlink)
    return out


def cli(sandbox: Path, *args) -> tuple[int, str, str]:
    """Run edgepipe in the sandbox; check it ends cleanly (warnings are single lines) and touched nothing outside."""
    before = outside(sandbox)
    code, out, err = run_cli(list(args), sandbox / "work")
    check_clean_outcome(code, err, sandbox / "work")
    assert outside(sandbox) == before, "written or deleted outside runs/tiny and models/tiny"
    assert all(line.startswith("edgepipe: ") for line in err.splitlines() if line.strip()), err
    return code, out, err


def edit_manifest(entry: Path, change) -> None:
    path = entry / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def to_outside(sandbox: Path, path: Path, name: str) -> Path:
    """Move `path` to sandbox/outside/<name> and leave a symbolic link to it in its place."""
    target = sandbox / "outside" / name
    shutil.move(str(path), target)
    path.symlink_to(target, target_is_directory=target.is_dir())
    return target


def cache_is_empty(sandbox: Path) -> bool:
    cache = sandbox / "work/runs/tiny/.cache"
    if not os.path.lexists(cache):
        return True
    return cache.is_dir() and not cache.is_symlink() and not [p for p in cache.iterdir() if p.name != "objects"]


# -- the examples of the issue ----------------------------------------------------------------------------------


def renamed(to: str):
    def change(m):
        m["files"][to] = m["files"].pop("dataset.json")
        return m

    return change


@pytest.mark.parametrize("to", ["../../../../../escaped.json", "ABS/escaped.json", "a/../../../../../../escaped.json"])
def test_a_manifest_path_leading_out_is_a_miss_and_nothing_lands_outside(base, tmp_path, to):
    sandbox, recipe, entry = copy_of(base, tmp_path)
    edit_manifest(entry, renamed(to.replace("ABS", str(sandbox))))
    code, out, err = cli(sandbox, "run", recipe, *RESTORE)
    assert code == 0 and not (sandbox / "escaped.json").exists()
    assert "done in" in out and "restored" not in out, out
    assert err.count("\n") == 1 and f"run cache entry runs/tiny/.cache/{entry.name} is damaged (" in err, err
    assert "points outside the stage's output folder" in err


def test_an_entry_linked_to_a_folder_outside_is_neither_read_nor_written_through(base, tmp_path):
    sandbox, recipe, entry = copy_of(base, tmp_path)
    target = to_outside(sandbox, entry, "entry")
    code, out, err = cli(sandbox, "run", recipe, *RESTORE)
    assert "restored" not in out and "is damaged (it is a link or a file, not a folder)" in err, err
    assert entry.is_dir() and not entry.is_symlink()  # the stage ran and was kept in a real folder
    assert (target / "manifest.json").is_file()


@pytest.mark.parametrize("how", ["key", "link"])
def test_gc_keep_0_removes_every_entry_it_names_and_the_damaged_ones(base, tmp_path, how):
    sandbox, recipe, entry = copy_of(base, tmp_path)
    if how == "key":  # the manifest names another entry: gc used to remove that one (none) and say it removed this
        edit_manifest(entry, lambda m: {**m, "key": "0" * 64})
    else:
        to_outside(sandbox, entry, "entry")
    code, out, _ = cli(sandbox, "gc", recipe, "--keep", "0")
    assert code == 0 and cache_is_empty(sandbox), out
    assert f"removed damaged entry runs/tiny/.cache/{entry.name}" in out and "1 run cache entry removed" in out, out
    assert (sandbox / "outside/entry/manifest.json").is_file() or how == "key"


WRONG_SHAPES = {
    "files a list": lambda m: {**m, "files": list(m["files"])},
    "records strings": lambda m: {**m, "files": {k: "sha" for k in m["files"]}},
    "a list": lambda m: [m],
    "created text": lambda m: {**m, "created": "yesterday"},
    "sha not a digest": lambda m: {**m, "files": {k: {**r, "sha256": "../x"} for k, r in m["files"].items()}},
    "size a boolean": lambda m: {**m, "files": {k: {**r, "size": True} for k, r in m["files"].items()}},
    "a file and its folder": lambda m: {**m, "files": {**m["files"], "dataset.json/x": m["files"]["dataset.json"]}},
}


@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_a_manifest_of_the_wrong_shape_is_a_miss_in_one_warning_line(base, tmp_path, shape):
    sandbox, recipe, entry = copy_of(base, tmp_path)
    edit_manifest(entry, WRONG_SHAPES[shape])
    code, out, err = cli(sandbox, "run", recipe, *RESTORE)
    assert code == 0 and "restored" not in out and err.count("\n") == 1 and "is damaged (" in err, err
    code, out, _ = cli(sandbox, "gc", recipe, "--keep", "0")
    assert code == 0 and cache_is_empty(sandbox), out


def test_objects_linked_outside_are_not_restored_from_nor_swept_through(base, tmp_path):
    sandbox, recipe, _ = copy_of(base, tmp_path)
    objects = to_outside(sandbox, sandbox / "work/runs/tiny/.cache/objects", "objects")
    code, out, _ = cli(sandbox, "run", recipe, *RESTORE)
    assert code == 0 and "restored" not in out
    assert len(list(objects.iterdir())) > 1  # the copies outside are all still there
    cli(sandbox, "gc", recipe, "--keep", "0")
    assert len(list(objects.iterdir())) > 1


# -- the property --------------------------------------------------------------------------------------------------

TARGETS = ["escaped.json", "outside/victim.txt", "outside/dir/new.txt", "work/runs/other/victim.txt"]
HOSTILE = st.one_of(
    st.builds(lambda n, t: "../" * n + t, st.integers(1, 7), st.sampled_from(TARGETS)),
    st.sampled_from([f"ABS/{t}" for t in TARGETS] + ["", ".", "..", "/", "a//b", "x\x00y", "dataset.json/x", "ABS"]),
    st.text(max_size=8),
)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6), HOSTILE),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
FIELDS = st.sampled_from(["key", "stage", "created", "used", "seconds", "summary", "files"])
OPS = st.one_of(
    st.tuples(st.just("rename"), HOSTILE),
    st.tuples(st.just("sha"), HOSTILE),
    st.tuples(st.just("key"), HOSTILE),
    st.tuples(st.just("field"), FIELDS, JUNK),
    st.tuples(st.just("record"), st.sampled_from(["sha256", "size", "mtime_ns"]), JUNK),
    st.tuples(st.just("whole"), JUNK),
    st.tuples(st.just("bytes"), st.binary(max_size=20)),
    st.tuples(st.sampled_from(["link_entry", "link_manifest", "link_objects", "link_object", "object_dir"])),
    st.tuples(st.sampled_from(["link_cache", "stray"]), HOSTILE),
)


def damage(sandbox: Path, entry: Path, op: tuple) -> None:
    """One hostile change to the cache (what a crash, a sync tool or a person could leave)."""

    def real(v):
        return v.replace("ABS", str(sandbox)) if isinstance(v, str) else v

    manifest = entry / "manifest.json"
    what, args = op[0], [real(a) for a in op[1:]]
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        data = None
    files = data.get("files") if isinstance(data, dict) else None
    first = next(iter(files), None) if isinstance(files, dict) else None
    objects = sandbox / "work/runs/tiny/.cache/objects"
    if what == "rename" and first is not None:
        files[args[0]] = files.pop(first)
    elif what == "sha" and first is not None and isinstance(files[first], dict):
        files[first]["sha256"] = args[0]
    elif what == "key" and isinstance(data, dict):
        data["key"] = args[0]
    elif what == "field" and isinstance(data, dict):
        data[args[0]] = args[1]
    elif what == "record" and first is not None and isinstance(files[first], dict):
        files[first][args[0]] = args[1]
    elif what == "whole":
        data = args[0]
    elif what == "bytes" and entry.is_dir():
        manifest.write_bytes(args[0])
        return
    elif what == "link_entry" and entry.is_dir() and not entry.is_symlink():
        return to_outside(sandbox, entry, f"entry{len(os.listdir(sandbox / 'outside'))}")
    elif what == "link_manifest" and manifest.is_file() and not manifest.is_symlink():
        return to_outside(sandbox, manifest, f"manifest{len(os.listdir(sandbox / 'outside'))}.json")
    elif what == "link_objects" and objects.is_dir() and not objects.is_symlink():
        return to_outside(sandbox, objects, "objects")
    elif what in ("link_object", "object_dir") and objects.is_dir() and any(objects.iterdir()):
        obj = sorted(objects.iterdir())[0]
        if what == "link_object" and not obj.is_symlink():
            return to_outside(sandbox, obj, "object")
        if what == "object_dir" and obj.is_file():
            obj.unlink()
            (obj / "inner").mkdir(parents=True)
        return
    elif what == "link_cache":
        cache = sandbox / "work/runs/tiny/.cache"
        if cache.is_dir() and not cache.is_symlink():
            to_outside(sandbox, cache, "cache")
        return
    elif what == "stray":
        stray = sandbox / "work/runs/tiny/.cache" / ("f" * 64 if len(args[0]) % 2 else "not-a-key")
        if stray.parent.is_dir():
            stray.mkdir(exist_ok=True)
            (stray / "manifest.json").write_text(json.dumps({"key": args[0], "stage": "data", "files": {}}))
        return
    else:
        return
    if entry.is_dir():
        manifest.write_text(json.dumps(data))


@PROFILE
@given(ops=st.lists(OPS, min_size=1, max_size=4), keep=st.sampled_from([0, 1]))
def test_no_cache_content_makes_edgepipe_write_or_delete_outside_its_folders(base, tmp_path_factory, ops, keep):
    sandbox, recipe, entry = copy_of(base, tmp_path_factory.mktemp("example"))
    try:
        for op in ops:
            damage(sandbox, entry, op)
        code, out, _ = cli(sandbox, "run", recipe, *RESTORE)
        assert code == 0 and "data" in out
        cli(sandbox, "status", recipe)
        code, out, _ = cli(sandbox, "gc", recipe, "--keep", str(keep))
        assert code == 0
        if keep == 0:
            assert cache_is_empty(sandbox), out
        code, out, _ = cli(sandbox, "run", recipe, *RESTORE)
        assert code == 0 and ("restored" in out or "skipped" in out or keep == 0), out
    finally:
        shutil.rmtree(sandbox.parent, ignore_errors=True)
