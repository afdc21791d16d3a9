"""The run cache: a key seen before is restored, not rerun; identical files are kept once; it is bounded."""

import json
import os

import pytest

from edgepipe.pipeline.recipe import load_recipe
from edgepipe.pipeline.runner import Runner
from edgepipe.testing import check_clean_outcome, run_cli, tiny_recipe, write_idx_dataset, write_recipe


@pytest.fixture
def project(tmp_path):
    recipe = tiny_recipe(write_idx_dataset(tmp_path / "idx"), epochs=1)
    recipe["stages"]["model"]["publish"] = ["model.h5", "metrics.json"]
    return tmp_path, write_recipe(tmp_path / "recipes" / "tiny.yaml", recipe)


def run(root, path, sets=(), **kw):
    cache_size = kw.pop("cache_size", 2 * 1024**3)
    return {r.stage: r for r in Runner(load_recipe(path, sets=sets), root, cache_size=cache_size).run(**kw)}


def test_a_param_changed_and_back_is_restored_byte_for_byte(project, capsys):
    root, path = project
    run(root, path)
    first = (root / "runs/tiny/model/model.h5").read_bytes()
    assert run(root, path, sets=("model.lr=0.02",))["model"].action == "ran"
    assert (root / "models/tiny/model.h5").read_bytes() != first
    capsys.readouterr()
    back = run(root, path)
    assert back["data"].action == "skipped"
    assert back["model"].action == "restored" and back["model"].reason == "param lr (0.02 -> 0.01) changed"
    out = capsys.readouterr().out
    assert "model          restored from run cache (run of 20" in out, out
    assert (root / "runs/tiny/model/model.h5").read_bytes() == first
    assert (root / "models/tiny/model.h5").read_bytes() == first  # republished
    assert run(root, path)["model"].action == "skipped"  # the lock records the restored outputs
    lock = json.loads((root / "runs/tiny/lock.json").read_text())
    assert lock["stages"]["model"]["parts"]["params"]["lr"] == 0.01
    assert not (root / "runs/tiny/.tmp/model").exists()


def test_identical_files_are_stored_once_and_status_says_what_would_restore(project, capsys):
    root, path = project
    run(root, path, until="data")
    run(root, path, until="data", sets=("data.samples_per_class=4",))  # only samples.png differs
    cache = root / "runs/tiny/.cache"
    manifests = [json.loads(m.read_text()) for m in cache.glob("*/manifest.json")]
    assert len(manifests) == 2
    shas = {r["sha256"] for m in manifests for r in m["files"].values()}
    assert sorted(p.name for p in (cache / "objects").iterdir()) == sorted(shas)
    assert len(shas) == len(manifests[0]["files"]) + 1  # everything shared but samples.png
    dataset = root / "runs/tiny/data/dataset.npz"
    assert os.stat(dataset).st_nlink == 2  # a hard link: no second copy on disk
    capsys.readouterr()
    status = {r.stage: r for r in Runner(load_recipe(path), root).status()}
    assert status["data"].action == "would restore"
    assert "; in the run cache (run of 20" in capsys.readouterr().out


def test_an_object_edited_in_place_is_not_restored(project):
    root, path = project
    run(root, path, until="data")
    with open(root / "runs/tiny/data/dataset.json", "a") as f:  # in place: the cached object shares the inode
        f.write(" ")
    r = run(root, path, until="data")
    assert r["data"].action == "ran" and r["data"].reason == "output dataset.json modified"
    assert json.loads((root / "runs/tiny/data/dataset.json").read_text())  # rewritten whole


def test_the_cache_is_bounded_and_says_what_it_evicts(project, capsys):
    root, path = project
    run(root, path, until="data")
    size = sum(p.stat().st_size for p in (root / "runs/tiny/data").iterdir())
    capsys.readouterr()
    run(root, path, until="data", sets=("data.val_fraction=0.3",), cache_size=size + 100)
    out = capsys.readouterr().out
    assert "run cache: evicted 1 least recently used entry (data of 20" in out, out
    assert len(list((root / "runs/tiny/.cache").glob("*/manifest.json"))) == 1
    assert run(root, path, until="data", cache_size=0)["data"].action == "ran"  # 0: no cache


def test_gc_keeps_the_newest_entries_of_each_stage(project):
    root, path = project
    for lr in ("0.01", "0.02", "0.03"):
        run(root, path, sets=(f"model.lr={lr}",))
    code, out, err = run_cli(["gc", str(path), "--keep", "1"], root)
    assert code == 0, err
    assert "2 run cache entries removed" in out and out.count("removed model") == 2
    assert len(list((root / "runs/tiny/.cache").glob("*/manifest.json"))) == 2  # data, the newest model
    assert run(root, path, sets=("model.lr=0.03",))["model"].action == "skipped"
    assert run(root, path, sets=("model.lr=0.01",))["model"].action == "ran"  # pruned: trained again
    code, _, err = run_cli(["gc", str(path), "--keep", "-1"], root)
    assert code == 2 and check_clean_outcome(code, err, root).startswith("edgepipe: error: --keep -1")


def test_a_restore_that_fails_half_way_leaves_nothing_half_written_and_runs_the_stage(project, monkeypatch, capsys):
    from edgepipe.pipeline import runcache

    root, path = project
    run(root, path, until="data")
    first = (root / "runs/tiny/data/dataset.npz").read_bytes()
    run(root, path, until="data", sets=("data.val_fraction=0.3",))
    real = runcache._link_or_copy
    calls = []

    def failing(src, dest):
        calls.append(dest)
        if len(calls) == 2:  # the second file of the restore
            raise OSError(28, "No space left on device", str(dest))
        real(src, dest)

    monkeypatch.setattr(runcache, "_link_or_copy", failing)
    capsys.readouterr()
    r = run(root, path, until="data")
    assert r["data"].action == "ran" and "could not restore from the run cache" in capsys.readouterr().out
    assert not any((root / "runs/tiny/.tmp").iterdir())
    assert (root / "runs/tiny/data/dataset.npz").read_bytes() == first
    assert (
        json.loads((root / "runs/tiny/lock.json").read_text())["stages"]["data"]["parts"]["params"]["val_fraction"]
        == 0.2
    )


def test_an_object_edited_in_place_is_replaced_when_its_content_is_produced_again(project):
    root, path = project
    run(root, path, until="data")
    good = (root / "runs/tiny/data/dataset.json").read_text()
    with open(root / "runs/tiny/data/dataset.json", "a") as f:  # edits the cached object too (one inode)
        f.write(" ")
    # a change that leaves dataset.json as it was: no restore of this key checks the edited object first
    r = run(root, path, until="data", sets=("data.samples_per_class=4",))
    assert r["data"].action == "ran"
    assert (root / "runs/tiny/data/dataset.json").read_text() == good
    assert run(root, path, until="data")["data"].action == "restored"  # the first run's entry, whole again
    assert (root / "runs/tiny/data/dataset.json").read_text() == good
