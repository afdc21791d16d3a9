"""What a user sees from the `edgepipe` command: exit codes, one-line errors, no tracebacks."""

from edgepipe.testing import tiny_recipe, write_idx_dataset, write_recipe


def one_error_line(proc, *fragments):
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgepipe: error: ") and "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_recipes_give_one_line_and_exit_2(tmp_path, cli):
    (tmp_path / "bad.yaml").write_text("stages:\n  data: {kind: data\n")
    one_error_line(cli("run", "bad.yaml"), "bad.yaml: malformed YAML at line")
    r = tiny_recipe(tmp_path / "idx")
    r["stages"]["model"]["kind"] = "tran"
    write_recipe(tmp_path / "kind.yaml", r)
    p = cli("run", "kind.yaml")
    one_error_line(p, "unknown stage kind 'tran'", "use one of: data, train")
    assert p.returncode == 2
    r = tiny_recipe(tmp_path / "idx")
    r["stages"]["model"]["params"]["learning_rate"] = 0.1
    write_recipe(tmp_path / "param.yaml", r)
    one_error_line(cli("run", "param.yaml"), "stages.model.params: unknown key 'learning_rate'")
    r = tiny_recipe(tmp_path / "idx")
    r["stages"]["data"]["inputs"] = {}
    r["stages"]["model"]["inputs"] = {"data": "model"}
    write_recipe(tmp_path / "cycle.yaml", r)
    one_error_line(cli("run", "cycle.yaml"), "input cycle model -> model")
    one_error_line(cli("run", "nothere"), "recipe 'nothere' not found")


def test_missing_dataset_directory(tmp_path, cli):
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "no_such_dir"))
    p = cli("run", "r.yaml")
    one_error_line(p, "no_such_dir: dataset directory not found")
    assert p.returncode == 1
    assert not (tmp_path / "runs/r/data").exists()


def test_run_status_graph_kinds(tmp_path, cli):
    write_idx_dataset(tmp_path / "idx")
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "idx", epochs=1))
    status = cli("status", "r.yaml")
    assert status.returncode == 0
    assert "data           stale: never run" in status.stdout
    assert "model          stale: upstream 'data' reruns first" in status.stdout
    first = cli("run", "r.yaml", "--until", "data")
    assert first.returncode == 0 and "done in" in first.stdout and "dataset.npz" in first.stdout
    assert "data           fresh: up to date" in cli("status", "r.yaml").stdout
    graph = cli("graph", "r.yaml").stdout
    assert "model" in graph and "data<-data" in graph
    kinds = cli("kinds", "train").stdout
    assert "early_stopping.patience" in kinds and "optimizer" in kinds
    one_error_line(cli("run", "r.yaml", "--until", "nope"), "--until nope: no such stage")
    one_error_line(cli("run", "r.yaml", "--set", "model.epochs=zero"), "expected an integer, got 'zero'")


def test_smoke_recipe_end_to_end(tmp_path, cli):
    """The shipped smoke recipe, exactly as a user runs it, on real MNIST from ../shared/datasets."""
    from tests.conftest import REPO

    p = cli("run", REPO / "recipes/smoke.yaml")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "smoke: 8 ran" in p.stdout and "gates passed" in p.stdout
    assert (tmp_path / "models/smoke/student_qat_int8.json").is_file()
    again = cli("run", REPO / "recipes/smoke.yaml")
    assert "smoke: 0 ran, 8 skipped" in again.stdout
    assert (tmp_path / "models/smoke/report.md").is_file() and (tmp_path / "models/smoke/student_qat_int8.tflite").is_file()
