"""Run history: every run appends one record; `edgepipe runs` lists them, `edgepipe compare` sets two side by side."""

import json

import pytest

from edgepipe.pipeline import history
from edgepipe.testing import FAST, check_clean_outcome, run_cli, write_idx_dataset, write_recipe


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """data -> model -> tflite -> bench -> report, run with lr 0.01, then 0.02, then 0.01 again."""
    root = tmp_path_factory.mktemp("history")
    data = write_idx_dataset(root / "idx")
    path = write_recipe(
        root / "tiny.yaml",
        {
            "stages": {
                "data": {"kind": "data", "params": {"source": f"idx:{data}", "val_fraction": 0.2}},
                "model": {
                    "kind": "train",
                    "inputs": {"data": "data"},
                    "params": {"arch": "tiny_conv", "epochs": 2, "lr": 0.01, **FAST},
                },
                "tflite": {
                    "kind": "convert",
                    "inputs": {"data": "data", "model": "model"},
                    "params": {"variants": ["float32"], "representative_samples": 10, "parity_samples": 10},
                },
                "bench": {
                    "kind": "bench",
                    "inputs": {"data": "data", "models": ["tflite"]},
                    "params": {"warmup": 1, "runs": 5, "rounds": 1},
                },
                "report": {
                    "kind": "report",
                    "inputs": {"benches": ["bench"]},
                    "params": {"gates": [{"model": "model/float32", "against": "model/float32"}]},
                },
            }
        },
    )
    outs = []
    for sets in ([], ["--set", "model.lr=0.02"], []):
        code, out, err = run_cli(["run", path, *sets], root)
        assert code == 0, err
        outs.append(out)
    return root, path, outs


def test_each_run_appends_one_record(project):
    root, _, _ = project
    records = history.read(root / "runs/tiny")
    assert [r["number"] for r in records] == [1, 2, 3]
    first, second, third = records
    assert second["overrides"] == ["model.lr=0.02"] and second["params"]["model"]["lr"] == 0.02
    assert first["keys"] == third["keys"] != second["keys"]
    assert [s["action"] for s in third["stages"]] == ["skipped"] + ["restored"] * 4
    rows = first["metrics"]["reports"]["report"]["rows"]
    assert rows[0]["name"] == "model/float32" and 0 <= rows[0]["accuracy"] <= 1 and rows[0]["size_bytes"] > 0
    assert set(first["metrics"]["models"]["model"]) == {"val_accuracy", "test_accuracy"}
    assert first["machine"]["cores"] and first["status"] == "ok"
    assert len((root / "runs/tiny/history.jsonl").read_text().splitlines()) == 3  # one line each


def test_a_restored_chain_gives_a_byte_identical_report(project):
    root, _, outs = project
    assert "report         restored from run cache (run of" in outs[2], outs[2]
    assert "tiny: 0 ran, 4 restored from the run cache, 1 skipped" in outs[2]
    first = json.loads((root / "runs/tiny/history.jsonl").read_text().splitlines()[0])
    assert first["metrics"] == history.read(root / "runs/tiny")[2]["metrics"]


def test_runs_lists_what_changed_and_the_headline(project):
    root, path, _ = project
    code, out, err = run_cli(["runs", path], root)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["#", "date", "(UTC)"] and len(lines) == 4
    assert "first run" in lines[1] and "model/float32" in lines[1] and " %" in lines[1]
    assert "model.lr (0.01 -> 0.02)" in lines[2] and "model.lr (0.02 -> 0.01)" in lines[3]


def test_compare_prints_the_params_that_differ_and_the_figures_side_by_side(project):
    root, path, _ = project
    code, out, err = run_cli(["compare", path, "1", "2"], root)
    assert code == 0, err
    assert "params that differ:" in out
    assert [line.split() for line in out.splitlines() if line.strip().startswith("model.lr")] == [
        ["model.lr", "0.01", "0.02"]
    ]
    figures = [line.split() for line in out.splitlines() if "model/float32" in line]
    assert len(figures) == 1 and figures[0][:3] == ["model/float32", "val", "accuracy"] and figures[0][4] == "%"
    percents = [line.index(" %") for line in out.splitlines() if "accuracy" in line]
    assert len(percents) >= 4 and len(set(percents)) == 1, out  # one column for #1 whatever the label
    code, out, _ = run_cli(["compare", path, "1", "last"], root)
    assert code == 0 and "params: identical" in out


@pytest.mark.parametrize("which", ["4", "0", "2.5", "first"])
def test_compare_with_a_record_that_does_not_exist_is_one_line(project, which):
    root, path, _ = project
    code, _, err = run_cli(["compare", path, "1", which], root)
    line = check_clean_outcome(code, err, root)
    assert code == 2 and line == (
        f"edgepipe: error: tiny: no run record '{which}' (there are 3); fix: use a number "
        "from 1 to 3, or last (`edgepipe runs tiny` lists them)"
    )


def test_a_torn_last_line_is_skipped(tmp_path):
    run_dir = tmp_path / "runs/r"
    history.append(run_dir, {"time": "2026-12-02T00:00:00Z", "params": {}, "metrics": {}})
    with open(run_dir / history.FILE, "a") as f:
        f.write('{"time": "2026-12-02T00:01')  # a run killed mid-write
    assert [r["number"] for r in history.read(run_dir)] == [1]


def _append_many(run_dir, who):
    for i in range(25):
        history.append(run_dir, {"time": "t", "who": who, "i": i, "params": {"pad": "x" * 20000}, "metrics": {}})


def test_concurrent_appends_never_interleave(tmp_path):
    import multiprocessing

    run_dir = tmp_path / "runs/r"
    run_dir.mkdir(parents=True)
    procs = [multiprocessing.get_context("fork").Process(target=_append_many, args=(run_dir, w)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = (run_dir / history.FILE).read_text().splitlines()
    assert len(lines) == 150 and all(json.loads(line)["params"]["pad"] == "x" * 20000 for line in lines)
    assert sorted((r["who"], r["i"]) for r in history.read(run_dir)) == [(w, i) for w in range(6) for i in range(25)]
