"""Issue #35, class 9: exit codes and words. Each kind of bad input, generated, ends in one line with the
right exit code that names what the user wrote (the fleet param, not `--host`; the recipe param, not Keras'
sentence; what a FIFO is, not "not found"), and a recipe too large or a lock file that cannot be written
is refused before anything runs, leaving nothing half-written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from edgepipe.core.params import MAX_EPOCHS
from edgepipe.pipeline.recipe_file import MAX_BYTES
from edgepipe.targets.remote import HOST
from edgepipe.testing import check_clean_outcome, run_cli, write_idx_dataset
from tests.test_properties import PROFILE, Sandbox

GOOD_ADDRESS = st.sampled_from(["pi@10.0.0.2", "pi@rpi4.local:2222", "10.0.0.3", "me@[::1]:22"])
BAD_ADDRESS = st.one_of(
    st.sampled_from(["bad host", "pi@", "@x", "pi@x:99999999", "pi@x:", "a b@c", "pi@x;rm -rf /", ""]),
    st.text(min_size=1, max_size=12),
).filter(lambda a: not HOST.match(a))


def one_error(code: int, err: str, root: Path, exit_code: int) -> str:
    line = check_clean_outcome(code, err, root)
    assert code == exit_code, f"exit {code}, not {exit_code}: {line}"
    return line


def bench_recipe(box: Sandbox, **bench) -> Path:
    (box.dir / "m.tflite").write_bytes(b"")
    raw = {
        "name": "words",
        "stages": {
            "data": {"kind": "data", "params": {"source": f"idx:{write_idx_dataset(box.dir / 'idx', 40, 12)}"}},
            "m": {"kind": "import", "inputs": {"data": "data"}, "params": {"path": str(box.dir / "m.tflite")}},
            "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["m"]}, "params": bench},
        },
    }
    path = box.dir / "r.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


# -- a malformed fleet address: exit 2, naming the fleet param -------------------------------------------------


@PROFILE
@given(good=st.lists(GOOD_ADDRESS, max_size=2), bad=BAD_ADDRESS, at=st.integers(0, 2))
def test_a_malformed_fleet_address_is_exit_2_naming_the_fleet_param(good, bad, at):
    fleet = [*good[:at], bad, *good[at:]]
    with Sandbox() as box:
        path = bench_recipe(box, target="rpi4", host="pi@10.0.0.2", fleet=fleet)
        for command in ("status", "run"):
            code, _, err = run_cli([command, str(path), "--root", str(box.root)], box.root)
            line = one_error(code, err, box.root, 2)
            assert f"stages.bench.params.fleet[{fleet.index(bad)}]" in line and "--host" not in line, line


@PROFILE
@given(bad=BAD_ADDRESS.filter(bool))  # an empty host is no host: the preflight asks for one
def test_a_malformed_host_names_the_host_param_or_the_option_it_came_from(bad):
    with Sandbox() as box:
        path = bench_recipe(box, target="rpi4", host=bad)
        code, _, err = run_cli(["status", str(path), "--root", str(box.root)], box.root)
        assert "stages.bench.params.host" in one_error(code, err, box.root, 2)
        path = bench_recipe(box, target="rpi4")
        code, _, err = run_cli(["status", str(path), "--root", str(box.root), "--host", bad], box.root)
        assert "--host" in one_error(code, err, box.root, 2)


# -- a recipe that is not a regular file, or too large: refused unread ---------------------------------------


@PROFILE
@given(kind=st.sampled_from(["fifo", "folder", "/dev/null", "/dev/zero", "large"]), extra=st.integers(1, 10**8))
def test_a_recipe_that_is_no_regular_file_or_too_large_is_refused_unread(kind, extra):
    with Sandbox() as box:
        path = box.dir / "r.yaml"
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            path.mkdir()
        elif kind == "large":
            with open(path, "wb") as f:  # sparse: the size is what is checked, before a byte is read
                f.write(b"stages: {}\n")
                f.truncate(MAX_BYTES + extra)
        else:
            path = Path(kind)
        code, _, err = run_cli(["status", str(path), "--root", str(box.root)], box.root)
        line = one_error(code, err, box.root, 2)
        assert "not found" not in line, line
        words = {"fifo": "FIFO", "folder": "folder", "/dev/null": "device", "/dev/zero": "device", "large": "too large"}
        assert words[kind] in line, line


def test_a_50_mb_recipe_is_refused_unread(tmp_path, monkeypatch):
    """Refused from its size, before a byte is parsed (it used to be parsed for minutes and gigabytes)."""
    import yaml

    path = tmp_path / "big.yaml"
    path.write_text("stages:\n" + "".join(f"  s{i}: {{kind: data}}\n" for i in range(2_000_000)))
    assert path.stat().st_size > 40 * 1024**2

    def parse(*_, **__):
        raise AssertionError("the recipe was parsed")

    for name in ("load", "safe_load", "compose", "load_all"):
        monkeypatch.setattr(yaml, name, parse)
    code, _, err = run_cli(["status", str(path)], tmp_path)
    assert "too large" in one_error(code, err, tmp_path, 2)


def test_a_recipe_named_with_spaces_and_accents_is_still_refused_in_one_line(tmp_path):
    path = tmp_path / "été à Zürich.yaml"
    path.write_text("stages: {data: {kind: data, params: {source: 'idx:nowhere'}}}\n")
    code, _, err = run_cli(["status", str(path)], tmp_path)
    assert "name" in one_error(code, err, tmp_path, 2)


# -- bounds and the recipe's own names: epochs, arch_args ------------------------------------------------------

EPOCH_PARAMS = {  # kind -> the params a stage of it needs besides epochs, and where its epochs are
    "train": ("model", {"arch": "tiny_conv"}),
    "qat": ("qat", {}),
    "prune": ("prune", {}),
    "cluster": ("cluster", {}),
}


@PROFILE
@given(kind=st.sampled_from(sorted(EPOCH_PARAMS)), epochs=st.integers(MAX_EPOCHS + 1, 10**15))
def test_epochs_above_the_documented_bound_are_refused_at_load(kind, epochs):
    name, params = EPOCH_PARAMS[kind]
    with Sandbox() as box:
        data = write_idx_dataset(box.dir / "idx", 40, 12)
        stages = {
            "data": {"kind": "data", "params": {"source": f"idx:{data}"}},
            "model": {"kind": "train", "inputs": {"data": "data"}, "params": {"arch": "tiny_conv"}},
        }
        if name != "model":
            stages[name] = {"kind": kind, "inputs": {"data": "data", "model": "model"}, "params": {}}
        stages[name]["params"] = {**params, "epochs": epochs}
        path = box.dir / "r.yaml"
        path.write_text(yaml.safe_dump({"name": "ep", "stages": stages}))
        code, _, err = run_cli(["status", str(path), "--root", str(box.root)], box.root)
        line = one_error(code, err, box.root, 2)
        assert f"stages.{name}.params.epochs" in line and str(MAX_EPOCHS) in line, line
        code, out, _ = run_cli(["kinds", kind], box.root)
        assert code == 0 and re.search(rf"epochs .*at most {MAX_EPOCHS}", out), out


ARCH_ARGS = {  # a zoo builder -> its arch_args that take a count or a size
    "ds_student": ["stem_kernel", "stem"],
    "strided_cnn": ["blocks", "widths"],
    "cnn_teacher": ["width"],
    "mobilenet_tiny": ["alpha"],
}


@PROFILE
@given(
    arch=st.sampled_from(sorted(ARCH_ARGS)),
    data=st.data(),
    bad=st.one_of(st.integers(-(10**6), -1), st.sampled_from([0.0, -0.5, "3", [], [4, -1], None, True])),
)
def test_a_bad_arch_arg_names_the_recipe_key_not_keras_words(arch, data, bad):
    key = data.draw(st.sampled_from(ARCH_ARGS[arch]))
    assume(not (key == "blocks" and isinstance(bad, float) and bad == 0.0))
    assume(not (key == "stem" and bad is None))
    with Sandbox() as box:
        path = box.dir / "r.yaml"
        stages = {
            "data": {"kind": "data", "params": {"source": f"idx:{write_idx_dataset(box.dir / 'idx', 40, 12)}"}},
            "model": {"kind": "train", "inputs": {"data": "data"}, "params": {"arch": arch, "arch_args": {key: bad}}},
        }
        path.write_text(yaml.safe_dump({"name": "aa", "stages": stages}))
        code, _, err = run_cli(["status", str(path), "--root", str(box.root)], box.root)
        line = one_error(code, err, box.root, 2)
        assert f"stages.model.params: arch_args.{key}:" in line and "kernel_size" not in line, line


def test_a_negative_kernel_size_names_the_recipe_param(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "k",
                "stages": {
                    "data": {"kind": "data", "params": {"source": f"idx:{write_idx_dataset(tmp_path / 'idx')}"}},
                    "model": {
                        "kind": "train",
                        "inputs": {"data": "data"},
                        "params": {"arch": "ds_student", "epochs": 1, "arch_args": {"stem_kernel": -3}},
                    },
                },
            }
        )
    )
    code, _, err = run_cli(["run", str(path)], tmp_path)
    line = one_error(code, err, tmp_path, 2)
    assert "stages.model.params: arch_args.stem_kernel: -3 is below 1" in line, line


# -- a lock file that cannot be written: refused before a stage runs --------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "folder with files", "fifo"])
def test_a_lock_file_that_is_no_file_is_refused_before_any_stage_runs(kind, tmp_path):
    path = tmp_path / "r.yaml"
    data = write_idx_dataset(tmp_path / "idx", 40, 12)
    path.write_text(
        yaml.safe_dump({"name": "lk", "stages": {"data": {"kind": "data", "params": {"source": f"idx:{data}"}}}})
    )
    lock = tmp_path / "runs" / "lk" / "lock.json"
    lock.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
        if kind == "folder with files":
            (lock / "x").write_text("x")
    code, _, err = run_cli(["run", str(path)], tmp_path)
    lines = err.strip().splitlines()  # check_clean_outcome would take the lock.json folder for a stage's
    assert code == 1 and len(lines) == 1 and lines[0].startswith("edgepipe: error: ") and "; fix: " in lines[0], err
    line = lines[0]
    assert "lock.json" in line and ".tmp" not in line, line
    assert sorted(p.name for p in lock.parent.iterdir() if not p.name.startswith(".")) == ["lock.json"]
