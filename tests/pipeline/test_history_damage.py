"""A damaged run history record (a time that is a number, no metrics, a list where a mapping belongs, a
torn line) is one line in `edgepipe runs` and one error line in `edgepipe compare`; every other record
stays listed and comparable.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.testing import check_clean_outcome, run_cli, tiny_recipe, write_idx_dataset, write_recipe

SLOW = os.environ.get("EDGEPIPE_SLOW") == "1"
PROFILE = settings(
    max_examples=250 if SLOW else 25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False
)
GOOD = {
    "time": "2026-12-02T00:00:00Z",
    "status": "ok",
    "params": {"data": {"val_fraction": 0.2}, "model": {"lr": 0.01}},
    "stages": [{"stage": "data", "action": "ran", "reason": "never run", "seconds": 1.0}],
    "metrics": {
        "reports": {
            "report": {
                "rows": [{"name": "model/int8", "accuracy": 0.9, "size_bytes": 2048, "latency_p50_us": 120.0}],
                "gates": [{"model": "model/int8", "against": "model/float32", "drop_points": 1.0, "passed": True}],
            }
        },
        "models": {"model": {"val_accuracy": 0.8, "test_accuracy": 0.75}},
    },
    "machine": {"host": "h"},
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("history-damage")
    return write_recipe(top / "tiny.yaml", tiny_recipe(write_idx_dataset(top / "idx")))


def good(lr: float) -> dict:
    rec = copy.deepcopy(GOOD)
    rec["params"]["model"]["lr"] = lr
    return rec


def write_history(root: Path, lines: list[str]) -> None:
    (root / "runs/tiny").mkdir(parents=True, exist_ok=True)
    (root / "runs/tiny/history.jsonl").write_text("".join(line + "\n" for line in lines))


def cli(root: Path, *args) -> tuple[int, str, str]:
    code, out, err = run_cli(list(args), root)
    check_clean_outcome(code, err, root)
    return code, out, err


DAMAGED = {
    "time a number": lambda r: {**r, "time": 1764633600},
    "no metrics": lambda r: {k: v for k, v in r.items() if k != "metrics"},
    "metrics a list": lambda r: {**r, "metrics": []},
    "reports a list": lambda r: {**r, "metrics": {**r["metrics"], "reports": [1]}},
    "rows strings": lambda r: {**r, "metrics": {**r["metrics"], "reports": {"report": {"rows": ["a"]}}}},
    "accuracy text": lambda r: {
        **r,
        "metrics": {**r["metrics"], "models": {"model": {"val_accuracy": "80 %", "test_accuracy": None}}},
    },
    "stages strings": lambda r: {**r, "stages": ["data"]},
    "params a list": lambda r: {**r, "params": [1, 2]},
    "status a number": lambda r: {**r, "status": 0},
    "a list": lambda r: [r],
}


@pytest.mark.parametrize("how", DAMAGED)
def test_a_damaged_record_is_one_line_and_the_rest_stay_usable(recipe, tmp_path, how):
    write_history(tmp_path, [json.dumps(good(0.01)), json.dumps(DAMAGED[how](good(0.05))), json.dumps(good(0.02))])
    code, out, _ = cli(tmp_path, "runs", recipe)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4, out
    assert lines[2].startswith("  2  damaged record, skipped: "), lines[2]
    assert "model/int8 90.00 %" in lines[1] and "first run" in lines[1]
    assert "model.lr (0.01 -> 0.02)" in lines[3]  # against the last usable record
    code, out, _ = cli(tmp_path, "compare", recipe, "1", "3")
    assert code == 0 and [line.split() for line in out.splitlines() if "model.lr" in line] == [
        ["model.lr", "0.01", "0.02"]
    ]
    code, _, err = cli(tmp_path, "compare", recipe, "1", "2")
    assert code == 2 and err.startswith("edgepipe: error: tiny: run record 2 is damaged ("), err
    assert cli(tmp_path, "compare", recipe, "1", "last")[0] == 0


def test_a_torn_line_in_the_middle_is_damaged_and_the_next_run_starts_a_line_of_its_own(recipe, tmp_path):
    from edgepipe.pipeline import history

    write_history(tmp_path, [json.dumps(good(0.01))])
    with open(tmp_path / "runs/tiny/history.jsonl", "a") as f:
        f.write('{"time": "2026-12-02T00:01')  # a run killed mid-write
    assert [r["number"] for r in history.read(tmp_path / "runs/tiny")] == [1]
    assert history.append(tmp_path / "runs/tiny", good(0.02)) == 3
    records = history.read(tmp_path / "runs/tiny")
    assert "damaged" in records[1] and records[2]["params"]["model"]["lr"] == 0.02
    assert cli(tmp_path, "compare", recipe, "1", "last")[0] == 0


def test_last_is_the_last_usable_record_and_none_is_one_line(recipe, tmp_path):
    write_history(tmp_path, [json.dumps(good(0.01)), json.dumps(good(0.02)), "[]"])
    code, out, _ = cli(tmp_path, "compare", recipe, "1", "last")
    assert code == 0 and "#2" in out.splitlines()[0]
    write_history(tmp_path, ["[]", '{"time": 3}'])
    code, _, err = cli(tmp_path, "compare", recipe, "1", "last")
    assert code == 2 and "tiny: run record 1 is damaged" in err
    code, _, err = cli(tmp_path, "compare", recipe, "last", "last")
    assert code == 2 and "every run record is damaged" in err


# -- the property --------------------------------------------------------------------------------------------------

JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def paths_of(node, prefix=()):
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield from paths_of(v, (*prefix, k))


@st.composite
def records(draw) -> str:
    """One history line: a good record, one with parts replaced or removed, or not a record at all."""
    rec = good(draw(st.sampled_from([0.01, 0.02, 0.03])))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(list(paths_of(rec))[1:]))
        parent = rec
        for k in where[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(JUNK)
        if not isinstance(rec, dict):
            break
    line = json.dumps(rec)
    return draw(st.one_of(st.just(line), st.just(line), st.just(line[: len(line) // 2]), JUNK.map(json.dumps)))


@PROFILE
@given(lines=st.lists(records(), min_size=1, max_size=6), a=st.text("0123456789last", max_size=4), b=st.integers(0, 7))
def test_any_history_is_listed_and_compared_or_refused_in_one_line(recipe, tmp_path_factory, lines, a, b):
    root = tmp_path_factory.mktemp("example")
    try:
        write_history(root, lines)
        code, out, _ = cli(root, "runs", recipe)
        assert code == 0
        listed = out.splitlines()[1:]
        assert len(listed) == len(lines) and [int(line.split()[0]) for line in listed] == list(range(1, len(lines) + 1))
        usable = [i for i, line in enumerate(listed, 1) if "damaged record, skipped" not in line]
        for x, y in [(a, str(b)), *[(str(i), "last") for i in usable[:2]]]:
            code, out, err = cli(root, "compare", recipe, x, y)
            assert code == 0 or err.startswith("edgepipe: error: tiny: "), err
            if x in map(str, usable) and y == "last":
                assert code == 0 and out.splitlines()[0].split() == [f"#{x}", f"#{usable[-1]}"], out
    finally:
        shutil.rmtree(root, ignore_errors=True)
