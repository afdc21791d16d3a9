"""The bad-input matrix: every way a user can hand edgepipe something broken, through the real CLI.

Each case must end in exactly one error line (`edgepipe: error: <what>; fix: <how>`), a non-zero exit,
no traceback, and no partial file: nothing left in `runs/*/.tmp`, nothing published, and every stage
directory under `runs/` belongs to a stage the lock file records as finished.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgepipe.testing import synthetic_images, tiny_recipe, write_idx, write_idx_dataset, write_png_folder

GOOD_TRAIN = {
    "arch": "tiny_conv",
    "epochs": 1,
    "batch_size": 16,
    "tensorboard": False,
    "early_stopping": {"enabled": False},
    "schedule": {"kind": "constant"},
}
LAYERNORM_BUILDER = """
import tf_keras as keras
def build(input_shape, num_classes, **_):
    i = keras.Input(input_shape)
    x = keras.layers.Flatten()(i)
    x = keras.layers.LayerNormalization(name="my_layernorm")(x)
    x = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(i, keras.layers.Softmax()(x))
def raises(input_shape, num_classes, **_):
    raise RuntimeError("my builder is broken")
def wrong_shape(input_shape, num_classes, **_):
    i = keras.Input((5, 5, 1))
    return keras.Model(i, keras.layers.Dense(num_classes, activation="softmax")(keras.layers.Flatten()(i)))
"""


def recipe(root: Path, stages: dict | str, **top) -> list[str]:
    path = root / "r.yaml"
    path.write_text(stages if isinstance(stages, str) else yaml.safe_dump({**top, "stages": stages}, sort_keys=False))
    return ["run", str(path)]


def idx_stages(root: Path, **train) -> dict:
    spec = tiny_recipe(write_idx_dataset(root / "idx"), epochs=1)["stages"]
    spec["model"]["params"].update(train)
    return spec


def data_only(source: str) -> dict:
    return {"data": {"kind": "data", "params": {"source": source}}}


# -- the cases: id -> (setup(root) -> CLI args, the text the one error line must contain) ------------------


def _idx_mismatch(root):
    d = write_idx_dataset(root / "idx")
    _, y = synthetic_images(10)
    write_idx(d / "t10k-labels-idx1-ubyte", y[:7])
    return recipe(root, data_only(f"idx:{d}"))


def _idx_magic(root):
    d = write_idx_dataset(root / "idx")
    (d / "train-images-idx3-ubyte.gz").write_bytes(__import__("gzip").compress(b"\x12\x34\x08\x03" + b"\0" * 20))
    return recipe(root, data_only(f"idx:{d}"))


def _empty_class(root):
    d = write_png_folder(root / "imgs")
    (d / "triangle").mkdir()
    return recipe(root, data_only(f"folder:{d}"))


def _corrupt_png(root):
    d = write_png_folder(root / "imgs")
    (d / "circle" / "9999.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return recipe(root, data_only(f"folder:{d}"))


def _single_class(root):
    d = write_png_folder(root / "imgs", classes=("circle",))
    return recipe(root, data_only(f"folder:{d}"))


def _corrupt_tflite(root):
    (root / "bad.tflite").write_bytes(b"\x00" * 64)
    return ["lint", str(root / "bad.tflite")]


def _truncated_tflite(root):
    from edgepipe.core._tf import keras, tf

    i = keras.Input((4,))
    blob = tf.lite.TFLiteConverter.from_keras_model(keras.Model(i, keras.layers.Dense(2)(i))).convert()
    (root / "cut.tflite").write_bytes(blob[: len(blob) // 2])
    return ["lint", str(root / "cut.tflite")]


def _builder(root, fn):
    (root / "userzoo.py").write_text(LAYERNORM_BUILDER)
    return idx_stages(root, arch=f"userzoo:{fn}")


def _qat_layer(root):
    spec = _builder(root, "build")
    spec["qat"] = {
        "kind": "qat",
        "inputs": {"data": "data", "model": "model"},
        "params": {"epochs": 1, "batch_size": 16, "tensorboard": False},
    }
    return recipe(root, spec)


def _bench_shape(root):
    spec = idx_stages(root)
    small = write_idx_dataset(root / "small", size=8)
    spec["small"] = {"kind": "data", "params": {"source": f"idx:{small}", "val_fraction": 0.2}}
    spec["model"]["inputs"] = {"data": "small"}
    spec["tflite"] = {
        "kind": "convert",
        "inputs": {"data": "small", "model": "model"},
        "params": {"variants": ["float32"], "parity_samples": 10, "representative_samples": 10},
    }
    spec["bench"] = {"kind": "bench", "inputs": {"data": "data", "models": ["tflite"]}, "params": {"runs": 5}}
    return recipe(root, spec)


def _profile(root: Path, name: str, clock: bool = True) -> str:
    path = root / "board.yaml"
    spec = {
        "name": name,
        "kind": "mcu",
        "reach": "none",
        "needs_int8": True,
        "ram_bytes": 65536,
        "flash_bytes": 262144,
        **({"clock_mhz": 48} if clock else {}),
    }
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _emulated(root: Path) -> list[str]:
    """An emulated Cortex-M4 bench on a machine whose PATH has no cross toolchain (set by the test)."""
    spec = idx_stages(root)
    spec["tflite"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {
            "variants": ["int8"],
            "parity_samples": 10,
            "representative_samples": 10,
            "tolerance": {"int8_top1": 0.0},
        },
    }
    spec["bench"] = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {"runs": 5, "target": "cortex-m4"},
    }
    (root / "bin").mkdir()
    return recipe(root, spec)


def _limited(spec: dict, n: int) -> dict:
    spec["data"]["params"]["limit_train"] = n
    return spec


def _a_file(root: Path) -> Path:
    (root / "afile").write_text("a file, not a folder")
    return root / "afile"


def _npz(root: Path, nan: bool = False, save: bool = False, labels: str = "int") -> Path:
    import numpy as np

    x, y = synthetic_images(40)
    path = root / "data.npz"
    if save:
        np.save(root / "data.npy", x)
        (root / "data.npy").rename(path)
        return path
    x = x.astype(np.float32) / 255
    if nan:
        x[3, 2, 2, 0] = np.nan
    np.savez(path, x=x, y=np.array([f"class{v}" for v in y]) if labels == "str" else y)
    return path


def _idx_swapped(root):
    d = write_idx_dataset(root / "idx")
    (d / "train-images-idx3-ubyte.gz").write_bytes((d / "train-labels-idx1-ubyte.gz").read_bytes())
    return recipe(root, data_only(f"idx:{d}"))


def _latin1_recipe(root):
    path = root / "r.yaml"
    path.write_bytes("# ünïcode in latin-1\nstages: {data: {kind: data}}\n".encode("latin-1"))
    return ["run", str(path)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _remote(root, sshd, host=None, identity=None, python=sys.executable):
    spec = idx_stages(root)
    spec["tflite"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {"variants": ["float32"], "parity_samples": 10, "representative_samples": 10},
    }
    spec["bench"] = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {
            "runs": 5,
            "threads": [1],
            "identity": str(identity or sshd.identity),
            "python": python,
            "ssh_options": sshd.ssh_options,
        },
    }
    return recipe(root, spec) + ["--target", "rpi4", "--host", host or sshd.host]


def _stranger_key(root):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "stranger")], check=True)
    return root / "stranger"


CASES = {
    # recipes
    "malformed_yaml": (lambda r: recipe(r, "stages:\n  data: {kind: data\n"), "malformed YAML at line"),
    "recipe_not_a_mapping": (lambda r: recipe(r, "- data\n- train\n"), "a recipe is a mapping"),
    "recipe_not_found": (lambda r: ["run", "no_such_recipe"], "recipe 'no_such_recipe' not found"),
    "unknown_top_key": (
        lambda r: recipe(r, {"data": data_only("keras:mnist")["data"]}, stagez=1),
        "unknown key 'stagez'",
    ),
    "missing_stages": (lambda r: recipe(r, "description: nothing to run\n"), "'stages' must be a non-empty mapping"),
    "duplicate_stage_name": (
        lambda r: recipe(r, "stages:\n  data: {kind: data}\n  data: {kind: data}\n"),
        "duplicate key 'data'",
    ),
    "bad_stage_name": (lambda r: recipe(r, {"Data": data_only("keras:mnist")["data"]}), "invalid stage name"),
    "unknown_kind": (lambda r: recipe(r, {"data": {"kind": "dat"}}), "unknown stage kind 'dat'"),
    # found by tests/test_properties.py:
    "kind_a_list": (lambda r: recipe(r, {"data": {"kind": []}}), "unknown stage kind []"),
    # wiring of the wrong kind: the error names the role, the stage given and what the role takes
    "convert_model_is_data": (
        lambda r: recipe(
            r, {**idx_stages(r), "tflite": {"kind": "convert", "inputs": {"data": "data", "model": "data"}}}
        ),
        "stages.tflite.inputs.model: stage 'data' is a data stage, which outputs a dataset; the role model takes "
        "a Keras model; fix: name a train or transfer or distill or search or import or prune or cluster or qat stage",
    ),
    "bench_models_lists_a_train_stage": (
        lambda r: recipe(
            r, {**idx_stages(r), "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["model"]}}}
        ),
        "the role models takes converted",
    ),
    "report_benches_lists_a_convert_stage": (
        lambda r: recipe(
            r,
            {
                **idx_stages(r),
                "tflite": {"kind": "convert", "inputs": {"data": "data", "model": "model"}},
                "report": {"kind": "report", "inputs": {"benches": ["tflite"]}},
            },
        ),
        "stage 'tflite' is a convert stage",
    ),
    "train_data_is_a_train_stage": (
        lambda r: recipe(r, {**idx_stages(r), "other": {"kind": "train", "inputs": {"data": "model"}}}),
        "the role data takes a dataset; fix: name a data stage",
    ),
    "empty_list_role": (
        lambda r: recipe(r, {**idx_stages(r), "bench": {"kind": "bench", "inputs": {"data": "data", "models": []}}}),
        "inputs.models: the list is empty",
    ),
    # paths that would leave the run's folders
    "recipe_name_climbs_out": (
        lambda r: recipe(r, idx_stages(r), name="../../outside"),
        "name: '../../outside' is not a usable file name",
    ),
    "publish_parent_dir": (
        lambda r: recipe(r, {**idx_stages(r), "data": {**idx_stages(r)["data"], "publish": ["../../escaped.npz"]}}),
        "publish[0]: '../../escaped.npz' points outside the stage's output folder",
    ),
    "publish_absolute": (
        lambda r: recipe(r, {**idx_stages(r), "data": {**idx_stages(r)["data"], "publish": ["/etc/passwd"]}}),
        "points outside the stage's output folder",
    ),
    "bundle_symbol_not_c": (
        lambda r: recipe(
            r,
            {
                **idx_stages(r),
                "tflite": {"kind": "convert", "inputs": {"data": "data", "model": "model"}},
                "fw": {
                    "kind": "bundle",
                    "inputs": {"data": "data", "model": "tflite"},
                    "params": {"symbol": "x; system(1)"},
                },
            },
        ),
        "symbol 'x; system(1)' is not a C identifier",
    ),
    "convert_name_climbs_out": (
        lambda r: recipe(
            r,
            {
                **idx_stages(r),
                "tflite": {"kind": "convert", "inputs": {"data": "data", "model": "model"}, "params": {"name": "../x"}},
            },
        ),
        "name '../x' is not a usable file-name prefix",
    ),
    "target_profile_name_climbs_out": (
        lambda r: recipe(r, idx_stages(r)) + ["--target", _profile(r, "../evil")],
        "name '../evil' is not usable as a folder name",
    ),
    "mcu_profile_without_clock": (
        lambda r: recipe(r, idx_stages(r)) + ["--target", _profile(r, "board", clock=False)],
        "a microcontroller profile needs clock_mhz",
    ),
    # click's own usage errors, in the house format
    "jobs_not_a_number": (lambda r: recipe(r, idx_stages(r)) + ["--jobs", "two"], "'two' is not a valid integer"),
    "lint_missing_file": (lambda r: ["lint", str(r / "missing.tflite")], "missing.tflite' does not exist"),
    "root_is_a_file": (lambda r: recipe(r, idx_stages(r)) + ["--root", str(_a_file(r))], "is a file"),
    "unknown_option": (lambda r: recipe(r, idx_stages(r)) + ["--jbos", "2"], "No such option '--jbos'"),
    # what used to be accepted silently
    "profile_given_twice": (
        lambda r: recipe(r, idx_stages(r)) + ["--profile", "a", "--profile", "b"],
        "--profile given 2 times (a, b)",
    ),
    "set_value_not_yaml": (
        lambda r: recipe(r, idx_stages(r)) + ["--set", "model.arch_args={width: [1"],
        "the value '{width: [1' is not valid YAML",
    ),
    "nan_pixels": (lambda r: recipe(r, data_only(f"npz:{_npz(r, nan=True)}")), "pixel values are NaN or infinite"),
    "npz_made_with_np_save": (
        lambda r: recipe(r, data_only(f"npz:{_npz(r, save=True)}")),
        "holds one array (made with numpy.save)",
    ),
    "string_labels": (lambda r: recipe(r, data_only(f"npz:{_npz(r, labels='str')}")), "not class indices"),
    "idx_images_file_is_labels": (_idx_swapped, "holds a 1-dimensional array (a labels file?)"),
    "non_utf8_recipe": (lambda r: _latin1_recipe(r), "not UTF-8 text"),
    "zero_width_layer": (
        lambda r: recipe(r, idx_stages(r, arch="strided_cnn", arch_args={"widths": [0, 8, 8]})),
        "stages.model.params: arch_args.widths: [0, 8, 8] holds a value that is not a whole number of at least 1",
    ),
    "unknown_initializer": (
        lambda r: recipe(r, idx_stages(r, initializer="he_wonky")),
        "could not be built (ValueError",
    ),
    "user_builder_raises": (lambda r: recipe(r, _builder(r, "raises")), "arch 'userzoo:raises' could not be built"),
    "mcu_without_toolchain": (
        lambda r: _emulated(r),
        "stage 'bench' needs the Arm toolchain and QEMU to emulate the cortex-m4 (arm-none-eabi-gcc, ",
    ),
    "folds_more_than_images": (lambda r: recipe(r, _limited(idx_stages(r, folds=20), 10)), "leave a fold empty"),
    "unknown_param": (lambda r: recipe(r, idx_stages(r, epoch=3)), "unknown key 'epoch'"),
    "wrong_type": (lambda r: recipe(r, idx_stages(r, epochs="ten")), "expected an integer, got 'ten'"),
    "out_of_range": (lambda r: recipe(r, idx_stages(r, lr=-1.0)), "-1.0 is out of range"),
    "bad_choice": (lambda r: recipe(r, idx_stages(r, optimizer="adamw9")), "'adamw9' is not a valid choice"),
    "missing_input": (
        lambda r: recipe(r, {**idx_stages(r), "model": {"kind": "train", "params": GOOD_TRAIN}}),
        "missing input 'data'",
    ),
    "unknown_stage_reference": (
        lambda r: recipe(r, {"model": {"kind": "train", "inputs": {"data": "dta"}, "params": GOOD_TRAIN}}),
        "no stage named 'dta'",
    ),
    "cycle": (
        lambda r: recipe(
            r,
            {
                **data_only("keras:mnist"),
                "a": {"kind": "qat", "inputs": {"data": "data", "model": "b"}},
                "b": {"kind": "qat", "inputs": {"data": "data", "model": "a"}},
            },
        ),
        "input cycle",
    ),
    "unknown_variable": (lambda r: recipe(r, idx_stages(r, epochs="${n}")), "unknown variable ${n}"),
    "unknown_profile": (lambda r: recipe(r, idx_stages(r)) + ["--profile", "fast"], "unknown profile 'fast'"),
    "bad_set": (lambda r: recipe(r, idx_stages(r)) + ["--set", "model.epochs"], "expected stage.key=value"),
    "unknown_architecture": (lambda r: recipe(r, idx_stages(r, arch="resnet999")), "unknown architecture 'resnet999'"),
    "bad_module_function": (
        lambda r: recipe(r, idx_stages(r, arch="no_such_module:build")),
        "cannot import module no_such_module",
    ),
    "module_without_function": (
        lambda r: recipe(r, idx_stages(r, arch="json:no_such_builder")),
        "module json has no function no_such_builder",
    ),
    "unknown_target": (lambda r: recipe(r, idx_stages(r)) + ["--target", "rpi9"], "unknown target 'rpi9'"),
    "target_without_bench": (lambda r: recipe(r, idx_stages(r)) + ["--target", "rpi4"], "no bench or bundle stage"),
    "host_without_ssh_target": (
        lambda r: recipe(r, idx_stages(r)) + ["--host", "pi@10.0.0.2"],
        "benches an SSH target",
    ),
    # datasets
    "missing_dataset_dir": (lambda r: recipe(r, data_only(f"idx:{r}/nowhere")), "dataset directory not found"),
    "idx_count_mismatch": (_idx_mismatch, "labels"),
    "idx_bad_magic": (_idx_magic, "bad magic number"),
    "empty_class_folder": (_empty_class, "triangle"),
    "corrupt_png": (_corrupt_png, "9999.png"),
    "single_class": (_single_class, "found 1 class folder(s)"),
    # models
    "corrupt_tflite": (_corrupt_tflite, "bad.tflite: not a valid LiteRT model"),
    "truncated_tflite": (_truncated_tflite, "cut.tflite: not a valid LiteRT model"),
    "builder_wrong_shape": (lambda r: recipe(r, _builder(r, "wrong_shape")), "fix the builder's shapes"),
    "layer_qat_cannot_handle": (_qat_layer, "my_layernorm"),
    "model_input_not_matching_data": (_bench_shape, "takes input [8, 8, 1], the data 'data' is [12, 12, 1]"),
    "coral_without_compiler": (
        lambda r: recipe(r, idx_stages(r)) + ["--target", "coral", "--host", "pi@192.0.2.1"],
        None,
    ),  # filled below: it needs the tflite stage
}


def _coral(root):
    spec = idx_stages(root)
    spec["tflite"] = {
        "kind": "convert",
        "inputs": {"data": "data", "model": "model"},
        "params": {
            "variants": ["int8"],
            "parity_samples": 10,
            "representative_samples": 10,
            "tolerance": {"int8_top1": 0.0},
        },
    }
    spec["bench"] = {"kind": "bench", "inputs": {"data": "data", "models": ["tflite"]}, "params": {"runs": 5}}
    return recipe(root, spec) + ["--target", "coral", "--host", "pi@192.0.2.1"]


CASES["coral_without_compiler"] = (
    _coral,
    "stage 'bench' needs the Edge TPU compiler (edgetpu_compiler is not installed)",
)
SSH_CASES = {
    # targets, through a real sshd on 127.0.0.1
    "unreachable_host": (lambda r, s: _remote(r, s, host=f"{s.user}@127.0.0.1:{_free_port()}"), "device unreachable"),
    "ssh_auth_failure": (lambda r, s: _remote(r, s, identity=_stranger_key(r)), "SSH authentication failed"),
    "runtime_missing_on_device": (
        lambda r, s: _remote(r, s, python=str(Path(sys.base_prefix) / "bin/python3")),
        "pip install ai-edge-litert numpy",
    ),
    "python_missing_on_device": (lambda r, s: _remote(r, s, python="/opt/no/python3"), "not found on the device"),
    "host_key_unknown": (
        lambda r, s: (
            _remote(r, s)
            + ["--set", f"bench.ssh_options=[UserKnownHostsFile={r}/empty_hosts, StrictHostKeyChecking=yes]"]
        ),
        "host key verification failed",
    ),
}


def check_one_clean_error(done: subprocess.CompletedProcess, expected: str, root: Path) -> str:
    assert done.returncode != 0, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr  # one line, no traceback, no native noise
    line = lines[0]
    assert line.startswith("edgepipe: error: ") and "; fix: " in line and "Traceback" not in done.stderr
    assert expected in line, line
    runs = root / "runs"
    for r in runs.iterdir() if runs.is_dir() else []:
        assert not any((r / ".tmp").rglob("*")), f"partial output left in {r / '.tmp'}"
        lock = json.loads((r / "lock.json").read_text()) if (r / "lock.json").is_file() else {"stages": {}}
        stages = {d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith(".")}
        assert stages <= set(lock["stages"]), f"output of an unfinished stage: {stages - set(lock['stages'])}"
    assert not (root / "models").exists() or not any((root / "models").rglob("*"))
    return line


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, tmp_path, cli):
    setup, expected = CASES[case]
    args = setup(tmp_path)
    env = {"PYTHONPATH": str(tmp_path)}
    if (tmp_path / "bin").is_dir():  # a case that needs a PATH without the cross toolchain
        env["PATH"] = str(tmp_path / "bin")
    line = check_one_clean_error(cli(*args, env=env), expected, tmp_path)
    (tmp_path.parent / f"matrix_{case}.txt").write_text(line)  # collected into the matrix table by hand


@pytest.mark.parametrize("case", list(SSH_CASES))
def test_bad_target(case, tmp_path, cli, sshd):
    setup, expected = SSH_CASES[case]
    before = {p.name for p in Path("/tmp").glob("edgepipe.*")}
    line = check_one_clean_error(cli(*setup(tmp_path, sshd)), expected, tmp_path)
    assert {p.name for p in Path("/tmp").glob("edgepipe.*")} == before  # the device's temp dir is gone
    (tmp_path.parent / f"matrix_{case}.txt").write_text(line)


def test_the_matrix_has_at_least_30_cases():
    assert len(CASES) + len(SSH_CASES) >= 30


def test_remote_command_is_never_a_shell_string(tmp_path, cli, sshd):
    """A device Python path with shell syntax in it is one (odd) file name on the device, not a command."""
    witness = tmp_path / "pwned"
    args = _remote(tmp_path, sshd, python=f"python3; touch {witness}")
    check_one_clean_error(cli(*args), "not found on the device", tmp_path)
    assert not witness.exists()


def test_debug_shows_the_traceback(tmp_path, cli):
    done = cli("--debug", *recipe(tmp_path, data_only(f"idx:{tmp_path}/nowhere")))
    assert done.returncode != 0 and "Traceback" in done.stderr
