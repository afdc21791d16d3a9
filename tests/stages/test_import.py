"""The import stage: a user's own Keras file or .tflite through convert, bench, report and bundle, through the real
CLI, its file hashed into the key; a missing file or one that is not a model is one clean error line."""

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.testing import check_clean_outcome, run_cli, tiny_recipe, write_idx_dataset, write_recipe


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A model trained and converted by edgepipe in one project: the files a user would bring."""
    root = tmp_path_factory.mktemp("made")
    spec = tiny_recipe(write_idx_dataset(root / "idx"), epochs=3)
    spec["stages"]["conv"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {"variants": ["float32", "int8"], "parity_samples": 20, "representative_samples": 20},
    }
    code, out, err = run_cli(["run", write_recipe(root / "made.yaml", spec)], root)
    assert code == 0, err
    return root


def _user_recipe(root: Path, idx: Path, model_path, downstream: dict) -> Path:
    stages = {
        "data": {"kind": "data", "params": {"source": f"idx:{idx}", "val_fraction": 0.2}},
        "mine": {"kind": "import", "inputs": {"data": "data"}, "params": {"path": str(model_path)}},
        **downstream,
    }
    return write_recipe(root / "user.yaml", {"stages": stages})


BENCH = {"warmup": 1, "runs": 5, "rounds": 1, "threads": [1]}


def test_a_keras_file_is_converted_benched_and_reported_like_a_trained_model(made, tmp_path):
    model = shutil.copy(made / "runs/made/model/model.h5", tmp_path / "my_model.h5")
    recipe = _user_recipe(
        tmp_path,
        made / "idx",
        model,
        {
            "conv": {
                "kind": "convert",
                "inputs": {"data": "data", "model": "mine"},
                "params": {"variants": ["float32"], "parity_samples": 20},
            },
            "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["conv"]}, "params": BENCH},
            "report": {"kind": "report", "inputs": {"benches": ["bench"]}},
        },
    )
    code, out, err = run_cli(["run", recipe], tmp_path)
    assert code == 0, err
    mine = json.loads((tmp_path / "runs/user/mine/metrics.json").read_text())
    trained = json.loads((made / "runs/made/model/metrics.json").read_text())
    # the same model on the same data: the import's figures are the training stage's own
    assert mine["test"]["accuracy"] == trained["test"]["accuracy"] and mine["params"] == trained["params"]
    assert mine["macs"] == trained["macs"] and mine["test"]["confusion_matrix"] == trained["test"]["confusion_matrix"]
    report = json.loads((tmp_path / "runs/user/report/report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["mine/float32"]

    # the file is an input: a changed file makes the import stale, and what follows
    code, out, _ = run_cli(["status", recipe], tmp_path)
    assert out.count("fresh") == 5, out
    shutil.copy(made / "runs/made/model/model.h5", model)  # same bytes, new mtime: still fresh
    assert run_cli(["status", recipe], tmp_path)[1].count("fresh") == 5
    from edgepipe.core._tf import keras

    m = keras.models.load_model(model, compile=False)
    m.layers[1].set_weights([w * 0.5 for w in m.layers[1].get_weights()])
    m.save(model)
    code, out, _ = run_cli(["status", recipe], tmp_path)
    assert any(" mine " in line and f"stale: file {model} changed" in line for line in out.splitlines()), out


def test_a_tflite_file_is_benched_and_bundled_like_a_converted_one(made, tmp_path, tflm_mirror):
    src = made / "runs/made/conv"
    int8 = shutil.copy(src / "model_int8.tflite", tmp_path / "theirs.tflite")
    recipe = _user_recipe(
        tmp_path,
        made / "idx",
        int8,
        {
            "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["mine"]}, "params": BENCH},
            "firmware": {
                "kind": "bundle",
                "inputs": {"data": "data", "model": "mine", "benches": ["bench"]},
                "params": {"target": "cortex-m4"},
            },
            "report": {"kind": "report", "inputs": {"benches": ["bench"]}},
        },
    )
    code, out, err = run_cli(["run", recipe], tmp_path)
    assert code == 0, err
    side = json.loads((tmp_path / "runs/user/mine/mine_int8.json").read_text())
    converted = json.loads((src / "model_int8.json").read_text())
    # read from the file alone, the facts a convert stage knew from Keras: variant, I/O, MACs
    assert side["variant"] == "int8" and side["input"] == converted["input"] and side["macs"] == converted["macs"]
    assert side["sha256"] == converted["sha256"] and side["imported_from"] == str(int8) and side["params"] > 0
    bench = json.loads((tmp_path / "runs/user/bench/bench.json").read_text())
    mine = json.loads((made / "runs/made/conv/model_int8.json").read_text())
    assert [r["name"] for r in bench["rows"]] == ["mine/int8"] and mine["file"] == "model_int8.tflite"
    assert (tmp_path / "runs/user/firmware/cortex-m4/model_data.cc").is_file()


def test_a_savedmodel_folder_is_imported_and_every_file_in_it_is_hashed(made, tmp_path):
    from edgepipe.core._tf import keras

    folder = tmp_path / "saved"
    keras.models.load_model(made / "runs/made/model/model.h5", compile=False).save(folder, save_format="tf")
    recipe = _user_recipe(tmp_path, made / "idx", folder, {})
    code, out, err = run_cli(["run", recipe], tmp_path)
    assert code == 0, err
    mine = json.loads((tmp_path / "runs/user/mine/metrics.json").read_text())
    assert (
        mine["test"]["accuracy"] == json.loads((made / "runs/made/model/metrics.json").read_text())["test"]["accuracy"]
    )
    lock = json.loads((tmp_path / "runs/user/lock.json").read_text())
    hashed = set(lock["stages"]["mine"]["parts"]["deps"])
    assert {str(folder / "saved_model.pb"), str(folder / "variables/variables.index")} <= hashed
    (folder / "assets").mkdir(exist_ok=True)
    (folder / "assets" / "vocab.txt").write_text("a file more")
    code, out, _ = run_cli(["status", recipe], tmp_path)
    assert f"stale: new input file {folder / 'assets/vocab.txt'}" in out, out


def test_a_float_tflite_is_recognised_as_float32(made, tmp_path):
    from edgepipe.export.sidecar import tflite_facts

    facts = tflite_facts(made / "runs/made/conv/model_float32.tflite")
    assert facts["variant"] == "float32"
    assert facts["macs"] == json.loads((made / "runs/made/conv/model_float32.json").read_text())["macs"]


def _logits_model(path: Path) -> Path:
    from edgepipe.core._tf import keras

    i = keras.Input((12, 12, 1))
    keras.Model(i, keras.layers.Dense(4)(keras.layers.Flatten()(i))).save(path)
    return path


def _other_shape(path: Path) -> Path:
    from edgepipe.core._tf import keras

    i = keras.Input((8, 8, 1))
    keras.Model(i, keras.layers.Dense(4, activation="softmax")(keras.layers.Flatten()(i))).save(path)
    return path


CASES = {  # id -> (the file the import stage is given, made in tmp_path; text the error line holds; exit code)
    "missing file": (lambda d: d / "nowhere.h5", "import: model file", 1),
    "text as .h5": (lambda d: _write(d / "m.h5", b"not a model"), "is not a Keras model tf_keras can load", 1),
    "text as .tflite": (lambda d: _write(d / "m.tflite", b"not a model"), "is not a model LiteRT can run", 1),
    "onnx file": (lambda d: _write(d / "m.onnx", b"\x08\x07"), "a .onnx file is not a model edgepipe reads", 2),
    "folder, not a SavedModel": (
        lambda d: (d / "folder").mkdir() or d / "folder",
        "is a folder but not a SavedModel",
        1,
    ),
    "logits, no softmax": (lambda d: _logits_model(d / "logits.h5"), "does not output class probabilities", 1),
    "another image size": (lambda d: _other_shape(d / "small.h5"), "takes input [8, 8, 1], the data stage's", 1),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES)
def test_a_bad_model_file_is_one_clean_error(made, tmp_path, case):
    make, text, exit_code = CASES[case]
    code, _, err = run_cli(["run", _user_recipe(tmp_path, made / "idx", make(tmp_path), {})], tmp_path)
    line = check_clean_outcome(code, err, tmp_path)
    assert code == exit_code and text in line, line
    assert not (tmp_path / "runs/user/mine").exists()


@pytest.mark.parametrize(
    "path, role, text",
    [
        (
            "m.h5",
            "models",
            "stage 'mine' is an import stage, which outputs a Keras model; the role models takes converted",
        ),
        (
            "m.tflite",
            "model",
            "stage 'mine' is an import stage, which outputs converted .tflite models; the role model "
            "takes a Keras model",
        ),
    ],
)
def test_an_import_is_wired_by_what_its_file_is(made, tmp_path, path, role, text):
    _write(tmp_path / path, b"x")
    kind = {"models": "bench", "model": "convert"}[role]
    wiring = {"data": "data", role: ["mine"] if role == "models" else "mine"}
    code, _, err = run_cli(
        ["run", _user_recipe(tmp_path, made / "idx", tmp_path / path, {"next": {"kind": kind, "inputs": wiring}})],
        tmp_path,
    )
    line = check_clean_outcome(code, err, tmp_path)
    assert code == 2 and text in line and "name a " in line and "import" in line.split("fix:")[1], line
    assert not (tmp_path / "runs").exists()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=300),
    suffix=st.sampled_from([".h5", ".keras", ".tflite", ""]),
    head=st.sampled_from([b"", b"TFL3", b"\x89HDF\r\n\x1a\n", b"PK\x03\x04"]),
)
def test_any_bytes_as_a_model_file_end_cleanly(made, tmp_path_factory, data, suffix, head):
    """Whatever the bytes (a flatbuffer's or HDF5's magic, a zip's), the import is one clean error line."""
    root = tmp_path_factory.mktemp("bytes")
    blob = data[:4] + head + data[4:] if head == b"TFL3" else head + data
    path = _write(root / f"model{suffix}", blob)
    code, _, err = run_cli(["run", _user_recipe(root, made / "idx", path, {})], root)
    check_clean_outcome(code, err, root)
    assert code != 0 and not (root / "runs/user/mine").exists()
