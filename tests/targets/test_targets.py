"""Targets: the device runner over a real local sshd, MCU fit and bundle, the lint, and the Coral/Android paths."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError
from edgepipe.targets import device_runner, lint
from edgepipe.targets.android import parse_output
from edgepipe.targets.edgetpu import parse_log
from edgepipe.targets.profiles import load_target
from edgepipe.testing import LocalSshd, converted_project

DATA = Path(__file__).parent / "data"

needs_toolchain = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("arm-none-eabi-gcc", "qemu-system-arm")),
    reason="no Cortex-M toolchain or QEMU (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
    "libstdc++-arm-none-eabi-newlib qemu-system-arm)",
)
needs_sshd = pytest.mark.skipif(
    not LocalSshd.available(), reason="OpenSSH server not installed (Debian: apt-get install openssh-server)"
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with tiny.yaml (data -> tiny_conv -> float32 + int8 -> bench) run up to the conversion."""
    return converted_project(tmp_path_factory.mktemp("project"))


def converted_recipe(tmp_path: Path, project: Path) -> Path:
    """A copy of the converted project in tmp_path; returns its recipe."""
    shutil.copytree(project, tmp_path, dirs_exist_ok=True)
    return tmp_path / "tiny.yaml"


def ssh_sets(server, python=sys.executable):
    return [
        "--set",
        f"bench.identity={server.identity}",
        "--set",
        f"bench.python={python}",
        "--set",
        "bench.ssh_options=[" + ", ".join(server.ssh_options) + "]",
    ]


def remote_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("edgepipe.*")}


@needs_sshd
def test_remote_bench_through_real_sshd_matches_host_exactly(cli, tmp_path, sshd, project):
    recipe = converted_recipe(tmp_path, project)
    before = remote_dirs()
    done = cli("bench", recipe, "--target", "rpi4", "--host", sshd.host, *ssh_sets(sshd))
    assert done.returncode == 0, done.stderr
    assert "models benched on rpi4" in done.stdout
    bench = json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())
    assert bench["target"]["name"] == "rpi4" and bench["device"]["host"] == sshd.host
    for row in bench["rows"]:
        t = row["target"]
        assert t["accuracy"]["provenance"] == "target" and t["latency_p50_us"]["provenance"] == "target"
        assert t["accuracy"]["value"] == row["accuracy"]  # the same file, the same code: exactly equal
        assert t["same_predictions_as_host"] is True
        assert t["latency"]["threads_1"]["runs"] == 20 and t["latency_p50_us"]["value"] > 0
        assert t["memory"]["value"] is not None and t["peak_rss_bytes"] > 0
    assert remote_dirs() == before  # the device's temporary directory is gone
    again = cli("bench", recipe, "--target", "rpi4", "--host", sshd.host, *ssh_sets(sshd))
    assert "bench          skipped: up to date" in again.stdout


@needs_sshd
@pytest.mark.parametrize(
    "case, expected",
    [
        ("unreachable", "device unreachable"),
        ("auth", "SSH authentication failed"),
        (
            "runtime",
            "make a venv on the device and install LiteRT in it: python3 -m venv ~/litert && "
            "~/litert/bin/pip install ai-edge-litert numpy; then set the bench param python: ~/litert/bin/python",
        ),
        ("no_host", "is reached over SSH but no host was given"),
    ],
)
def test_remote_failures_are_one_line(cli, tmp_path, sshd, case, expected, project):
    recipe = converted_recipe(tmp_path, project)
    host, sets = sshd.host, ssh_sets(sshd)
    if case == "unreachable":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        host = f"{sshd.user}@127.0.0.1:{free}"
    elif case == "auth":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
        sets = ssh_sets(sshd) + ["--set", f"bench.identity={tmp_path / 'stranger'}"]
    elif case == "runtime":  # a Python without numpy or LiteRT, as on a fresh device
        bare = Path(sys.base_prefix) / "bin" / "python3"
        sets = ssh_sets(sshd, python=str(bare))
    args = ["bench", recipe, "--target", "rpi4", *sets] + ([] if case == "no_host" else ["--host", host])
    before = remote_dirs()
    done = cli(*args)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("edgepipe: error:")]
    assert len(errors) == 1 and expected in errors[0] and "fix:" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs/tiny/bench").exists()
    assert remote_dirs() == before


def test_the_device_is_held_by_one_test_at_a_time(sshd):
    """Under pytest-xdist another worker's SSH test would add its own /tmp/edgepipe.* to what these tests
    compare: while a test holds `sshd`, the device lock cannot be taken."""
    import fcntl

    from tests.conftest import DEVICE_LOCK

    with open(DEVICE_LOCK, "w") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_mcu_estimate_measures_arena_on_the_host_and_says_fit(cli, tmp_path, project):
    """`measure: estimate`, the path without a toolchain: TFLite Micro on this host, latency from MACs."""
    recipe = converted_recipe(tmp_path, project)
    done = cli("bench", recipe, "--target", "cortex-m4", "--set", "bench.measure=estimate")
    assert done.returncode == 0, done.stderr
    rows = {r["variant"]: r for r in json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())["rows"]}
    f32, q = rows["float32"]["target"], rows["int8"]["target"]
    assert f32["deployable"] is False and "int8" in f32["why_not"]
    mcu = q["mcu"]
    assert mcu["arena_bytes"] == rows["int8"]["tflm"]["arena_bytes"] > 0
    assert mcu["ram_needed_bytes"] == int(mcu["arena_bytes"] * 1.1)
    assert mcu["flash_needed_bytes"] > rows["int8"]["size_bytes"]
    assert set(mcu["ops"]) >= {"CONV_2D", "FULLY_CONNECTED"} and q["fits"] is True
    assert q["latency_p50_us"]["provenance"] == "estimate"
    assert q["latency_p50_us"]["value"] == pytest.approx(rows["int8"]["macs"] * 2.0 / 120)
    assert q["accuracy"]["provenance"] == "tflm-host"
    assert abs(q["accuracy"]["value"] - rows["int8"]["accuracy"]) <= 0.05  # TFLM's kernels vs LiteRT's
    assert "most accurate (val) model/int8" in done.stdout and "model/float32" not in done.stdout  # only what it runs


@needs_toolchain
def test_mcu_target_measured_on_the_emulated_core(cli, tmp_path, project):
    """The profile's default: TFLite Micro + CMSIS-NN for the Cortex-M4, every test image on QEMU's board."""
    recipe = converted_recipe(tmp_path, project)
    import yaml

    spec = yaml.safe_load(recipe.read_text())
    spec["stages"]["report"] = {"kind": "report", "inputs": {"benches": ["bench"]}}
    recipe.write_text(yaml.safe_dump(spec))
    done = cli("bench", recipe, "--target", "cortex-m4")
    assert done.returncode == 0, done.stderr
    rows = {r["variant"]: r for r in json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())["rows"]}
    q = rows["int8"]["target"]
    emu = q["emulated"]
    assert q["accuracy"] == {"value": emu["accuracy"], "provenance": "emulated"}
    assert emu["test_samples"] == rows["int8"]["test_samples"] == emu["outputs_bit_exact_with_tflite_micro"]
    assert emu["top1_agreement_with_host_litert"] >= 0.9
    i = emu["instructions"]
    assert 0 < i["min"] <= i["median"] <= i["max"] < 1.01 * i["min"]
    assert emu["latency_ms"] == pytest.approx(i["median"] * 1.561 / 120e3)
    assert q["latency_p50_us"] == {"value": pytest.approx(1000 * emu["latency_ms"]), "provenance": "emulated"}
    assert emu["flash_by_origin"]["model data"] >= rows["int8"]["size_bytes"] and emu["flash_bytes"] > 20000
    assert emu["ram_used_bytes"] >= emu["arena_used_bytes"] + emu["stack_used_bytes"] > 0 and q["fits"] is True
    assert "[emu]" in done.stdout and "instr@cortex-m4" in done.stdout and "flash@cortex-m4" in done.stdout


@needs_toolchain
def test_a_model_that_does_not_fit_the_emulated_board_is_a_finding_naming_the_region(tmp_path, cli, project):
    board = tmp_path / "small_m4.yaml"
    board.write_text(
        "kind: mcu\nruntime: tflite-micro\nreach: none\nneeds_int8: true\nram_bytes: 65536\n"
        "flash_bytes: 16384\nclock_mhz: 64\ncpu: cortex-m4\nmeasure: emulated\n"
        "qemu_machine: mps2-an386\n"
    )
    done = cli("bench", converted_recipe(tmp_path, project), "--target", board)
    assert done.returncode == 0, done.stderr
    q = [
        r for r in json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())["rows"] if r["variant"] == "int8"
    ][0]["target"]
    assert q["fits"] is False and "accuracy" not in q
    assert q["why_not"].startswith("does not fit small_m4: FLASH overflowed by ") and " bytes" in q["why_not"]


def test_mcu_that_does_not_fit_says_so(tmp_path, cli, project):
    board = tmp_path / "tiny_board.yaml"
    board.write_text(
        "kind: mcu\nruntime: tflite-micro\nreach: none\nneeds_int8: true\nram_bytes: 512\n"
        "flash_bytes: 4096\nclock_mhz: 16\ncycles_per_mac: 4\nmeasure: estimate\n"
    )
    recipe = converted_recipe(tmp_path, project)
    done = cli("bench", recipe, "--target", board)
    assert done.returncode == 0, done.stderr
    q = [
        r for r in json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())["rows"] if r["variant"] == "int8"
    ][0]["target"]
    assert q["name"] == "tiny_board" and q["fits"] is False
    assert q["mcu"]["fits_ram"] is False and q["mcu"]["fits_flash"] is False


def test_target_profiles_validate_like_recipes(tmp_path):
    assert load_target("cortex-m7").ram_bytes == 320 * 1024
    with pytest.raises(EdgepipeError, match="unknown target 'rpi9'.*use one of: host, rpi4"):
        load_target("rpi9")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: mcu\nram: 12\n")
    with pytest.raises(EdgepipeError, match="unknown key 'ram'"):
        load_target(str(bad))
    bad.write_text("kind: fpga\n")
    with pytest.raises(EdgepipeError, match="'fpga' is not a valid choice"):
        load_target(str(bad))
    bad.write_text("kind: mcu\nram_bytes: 1024\nram_bytes: 2048\n")  # read like a recipe: no silent last-wins
    with pytest.raises(EdgepipeError, match="duplicate key 'ram_bytes'"):
        load_target(str(bad))


def test_targets_command_lists_and_shows_profiles(cli, tmp_path):
    listing = cli("targets")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        "host",
        "rpi4",
        "rpi5",
        "coral",
        "android",
        "cortex-m4",
        "cortex-m7",
        "cortex-m55",
        "esp32-s3",
    ]
    shown = cli("targets", "cortex-m4")
    assert "ram_bytes            655360" in shown.stdout and "measure              emulated" in shown.stdout
    missing = cli("targets", "rpi9")
    assert missing.returncode == 1 and missing.stderr.startswith("edgepipe: error: unknown target 'rpi9'")


def test_android_without_benchmark_model_binary_says_where_to_get_it(tmp_path):
    from edgepipe.targets import android

    with pytest.raises(EdgepipeError, match="needs LiteRT's benchmark_model binary; fix: download"):
        android.check_binary(None)
    with pytest.raises(EdgepipeError, match="benchmark_model binary not found: .*nowhere"):
        android.check_binary(str(tmp_path / "nowhere"))


def test_mcu_bench_without_tflm_is_refused(cli, tmp_path, project):
    recipe = converted_recipe(tmp_path, project)
    done = cli("bench", recipe, "--target", "cortex-m4", "--set", "bench.tflm=false")
    assert done.returncode == 1 and not (tmp_path / "runs/tiny/bench").exists()
    assert done.stderr.strip().splitlines() == [
        "edgepipe: error: target cortex-m4 is a microcontroller, measured with TFLite Micro, but tflm is false; "
        "fix: drop tflm: false from this bench stage"
    ]


def planted_model(tmp_path: Path, shape=(8, 8, 1), classes=3) -> Path:
    """A full-int8 conversion of a model with one layer (sin) that has no int8 kernel."""
    from edgepipe.core._tf import keras, tf

    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Lambda(tf.math.sin, name="planted_sin")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(classes, name="logits")(x)))
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    c.representative_dataset = lambda: ([rng.random((1, *shape), np.float32)] for _ in range(20))
    # int8 where it can, float where it cannot: the converter's quiet fallback the lint must catch
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    c.inference_input_type = c.inference_output_type = tf.int8
    path = tmp_path / "planted_int8.tflite"
    path.write_bytes(c.convert())
    return path


def runtime_of(profile: str) -> lint.Runtime | None:
    """What a built-in profile's device runs, as its backend declares it for the lint."""
    from edgepipe.targets.backends import backend_for

    return backend_for(load_target(profile)).runtime


def test_lint_catches_a_planted_float_op(tmp_path, cli):
    path = planted_model(tmp_path)
    findings = lint.lint(path, int8=True, runtime=runtime_of("coral"))
    codes = {(f.code, f.op, f.layer) for f in findings}
    assert ("float_op", "SIN", "planted_sin") in codes
    assert ("quant_island", "DEQUANTIZE", "planted_sin") in codes
    assert ("unsupported_op", "SIN", "planted_sin") in codes
    done = cli("lint", path, "--target", "cortex-m4")
    assert done.returncode == 1
    assert "float_op: SIN (layer planted_sin) computes in float in an int8 model" in done.stdout


def test_lint_passes_a_clean_int8_model_and_flags_nothing_in_float(tmp_path, cli, project):
    converted_recipe(tmp_path, project)
    out = tmp_path / "runs/tiny/tflite"
    assert lint.lint(out / "model_int8.tflite", int8=True, runtime=runtime_of("cortex-m4")) == []
    assert lint.lint(out / "model_float32.tflite", int8=False) == []
    # a float model on an int8-only target: every compute op is named
    assert {f.code for f in lint.lint(out / "model_float32.tflite", int8=True)} == {"float_op"}


def with_op_version(src: Path, dst: Path, op: str, version: int) -> Path:
    """`src` with every `op` operator code rewritten to `version`, as a newer converter would write it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(src.read_bytes(), 0))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    hits = [c for c in model.operatorCodes if names[max(c.builtinCode, c.deprecatedBuiltinCode)] == op]
    assert hits, f"{src.name} has no {op}"
    for code in hits:
        code.version = version
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst


def test_lint_names_op_versions_the_edgetpu_compiler_refuses(tmp_path, project):
    converted_recipe(tmp_path, project)
    clean = tmp_path / "runs/tiny/tflite/model_int8.tflite"
    first = runtime_of("coral").refused_versions["CONV_2D"]
    below = with_op_version(clean, tmp_path / "conv_below.tflite", "CONV_2D", first - 1)
    assert not [
        f for f in lint.lint(below, int8=True, runtime=runtime_of("coral")) if f.code == "unsupported_op_version"
    ]
    refused = with_op_version(clean, tmp_path / "conv_refused.tflite", "CONV_2D", first)
    assert lint.op_versions(refused).count(first) >= 1
    found = [
        f for f in lint.lint(refused, int8=True, runtime=runtime_of("coral")) if f.code == "unsupported_op_version"
    ]
    assert found and all(f.op == "CONV_2D" for f in found)
    assert f"is version {first}; edgetpu_compiler 16.0 takes it up to version {first - 1}" in found[0].message
    # the same file on a microcontroller: TFLite Micro's kernels take every version, nothing to say
    assert not [
        f for f in lint.lint(refused, int8=True, runtime=runtime_of("cortex-m4")) if f.code == "unsupported_op_version"
    ]


def test_bench_stage_prints_lint_findings_for_the_target(tmp_path, cli, project):
    recipe = converted_recipe(tmp_path, project)
    out = tmp_path / "runs/tiny/tflite"
    # as if the convert stage had let a float op through: same input shape and classes as the data
    planted = planted_model(tmp_path, shape=(12, 12, 1), classes=4)
    shutil.copy(planted, out / "model_int8.tflite")
    side = json.loads((out / "model_int8.json").read_text())
    side["size_bytes"] = planted.stat().st_size
    (out / "model_int8.json").write_text(json.dumps(side))
    # --only: the runner would otherwise see the changed output and convert again
    done = cli("run", recipe, "--only", "bench", "--target", "cortex-m4")
    assert done.returncode == 0, done.stderr
    printed = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("lint:")]
    assert printed and all("model_int8.tflite" in line for line in printed)
    assert any("float_op: SIN (layer planted_sin)" in line for line in printed)
    rows = json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())["rows"]
    assert any("quant_island" in line for r in rows for line in r["lint"])


def test_coral_without_compiler_and_android_without_tools_say_how_to_get_them(tmp_path, cli, project):
    recipe = converted_recipe(tmp_path, project)
    env = {"PATH": "/usr/bin:/bin"}  # no edgetpu_compiler, no adb
    if shutil.which("edgetpu_compiler", path=env["PATH"]) or shutil.which("adb", path=env["PATH"]):
        pytest.skip("edgetpu_compiler or adb is installed here")
    done = cli("bench", recipe, "--target", "coral", "--host", "pi@192.0.2.1", env=env)
    assert done.returncode == 2  # the preflight: said before anything is measured
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "edgepipe: error: stage 'bench' needs the Edge TPU compiler (edgetpu_compiler is not installed)"
    )
    assert "apt-get install edgetpu-compiler" in line
    done = cli("bench", recipe, "--target", "android", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "edgepipe: error: stage 'bench' needs adb, to reach the Android phone (adb is not installed); fix: "
        "apt-get install adb, then connect the phone with USB debugging on"
    ]


def test_tool_output_parsers():
    log = (
        "Edge TPU Compiler version 16.0.384591198\nModel compiled successfully in 27 ms.\n\n"
        "Input model: model_int8.tflite\nNumber of Edge TPU subgraphs: 1\nTotal number of operations: 7\n"
        "Operation log: model_int8_edgetpu.log\n\nNumber of operations that will run on Edge TPU: 6\n"
        "Number of operations that will run on CPU: 1\n"
    )
    got = parse_log(log)
    assert {k: got[k] for k in ("ops_edgetpu", "ops_cpu", "fully_mapped")} == {
        "ops_edgetpu": 6,
        "ops_cpu": 1,
        "fully_mapped": False,
    }
    assert got["on_chip_used_bytes"] is None  # this log printed no memory lines: unknown, not zero
    log += (
        "On-chip memory used for caching model parameters: 1.25MiB\n"
        "On-chip memory remaining for caching model parameters: 6.50MiB\n"
        "Off-chip memory used for streaming uncached model parameters: 256.00KiB\n"
    )
    got = parse_log(log)
    assert got["on_chip_used_bytes"] == int(1.25 * 1024 * 1024) and got["off_chip_bytes"] == 256 * 1024
    out = (
        "INFO: Inference timings in us: Init: 2831, First inference: 3021, Warmup (avg): 1554.31, "
        "Inference (avg): 1538.1\nINFO: Memory footprint delta from the start of the tool (MB): "
        "init=2.63672 overall=3.10547\n"
    )
    got = parse_output(out)
    assert got["mean_us"] == pytest.approx(1538.1) and got["memory_bytes"] == int(3.10547 * 1024 * 1024)
    # LiteRT's own Python benchmark tool (ai-edge-litert), captured verbatim: milliseconds, one line each
    got = parse_output((DATA / "litert_benchmark_teacher_float32.txt").read_text())
    assert got["mean_us"] == pytest.approx(70) and got["p50_us"] == pytest.approx(60)
    assert got["p95_us"] == pytest.approx(120) and got["max_us"] == pytest.approx(350)


def test_host_latency_is_timed_in_interleaved_rounds(project, monkeypatch):
    """Every model takes its turn in every round (so a drifting machine moves all alike), the figures pool
    every round's invokes, and accuracy and memory are each model's own."""
    models = [str(project / "runs/tiny/tflite" / f"model_{v}.tflite") for v in ("float32", "int8")]
    order = []
    real = device_runner.invoke_times

    def spy(interp, x_q, warmup, runs, start=0):
        if runs:
            order.append(x_q.dtype.name)  # float32 model: float inputs, int8 model: int8 inputs
        return real(interp, x_q, warmup, runs, start)

    monkeypatch.setattr(device_runner, "invoke_times", spy)
    x = np.random.default_rng(0).random((30, 12, 12, 1), dtype=np.float32)
    y = np.zeros(30, np.int64)
    rows = device_runner.measure_many(models, x, y, threads=[1], warmup=3, runs=10, rounds=4)
    assert order == ["float32", "int8"] * 4
    for path in models:
        lat = rows[path]["latency"]["threads_1"]
        assert lat["runs"] == 12 and lat["rounds"] == 4 and 0 < lat["p50_us"] <= lat["p99_us"]
        assert len(lat["round_p50_us"]) == 4 and min(lat["round_p50_us"]) <= lat["p50_us"] <= max(lat["round_p50_us"])
        assert rows[path]["test_samples"] == 30 and rows[path]["model_rss_bytes"] is not None
    alone = device_runner.measure(models[1], x, y, threads=[1], warmup=3, runs=10)
    assert alone["predictions_sha256"] == rows[models[1]]["predictions_sha256"]


def test_device_runner_is_standalone(tmp_path):
    """The file copied to devices imports no TensorFlow and no edgepipe, and reports failures as JSON."""
    src = Path(device_runner.__file__).read_text()
    assert "import tensorflow" not in src and "from edgepipe" not in src and "import edgepipe" not in src
    np.savez(tmp_path / "t.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64))
    (tmp_path / "bad.tflite").write_bytes(b"not a model")
    done = subprocess.run(
        [sys.executable, device_runner.__file__, "--data", str(tmp_path / "t.npz"), str(tmp_path / "bad.tflite")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == device_runner.EXIT_FAILED
    assert json.loads(done.stdout)["error"].startswith("bad.tflite:")


BUNDLE_FILES = {
    "model_int8.tflite",
    "model_data.cc",
    "model_data.h",
    "model_ops.h",
    "model_io.h",
    "labels.txt",
    "preprocessing.json",
    "fit.json",
    "MODEL_CARD.md",
    "SHA256SUMS",
    "Makefile",
    "tflm_sources.mk",
    "main.cc",
    "harness",
    "check_outputs.py",
    "sample_inputs.bin",
    "sample_outputs.bin",
    "sample_input.c",
}


def bundle_recipe(tmp_path, project, measure: str):
    recipe = converted_recipe(tmp_path, project)
    import yaml

    spec = yaml.safe_load(recipe.read_text())
    spec["stages"]["bench_host"] = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {"target": "host", "warmup": 2, "runs": 20, "threads": [1]},
    }
    spec["stages"]["bench"]["params"]["measure"] = measure
    spec["stages"]["firmware"] = {
        "kind": "bundle",
        "inputs": {"data": "data", "model": "tflite", "benches": ["bench_host", "bench"]},
        "params": {"intended_use": "a test"},
        "publish": ["cortex-m4/**/*"],
    }
    recipe.write_text(yaml.safe_dump(spec))
    return recipe


def test_cortex_m4_bundle_compiles_and_lists_exactly_the_model_ops(cli, tmp_path, project):
    done = cli("run", bundle_recipe(tmp_path, project, "estimate"), "--target", "cortex-m4")
    assert done.returncode == 0, done.stderr
    assert "fits cortex-m4" in done.stdout
    out = tmp_path / "models/tiny/cortex-m4"
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out).returncode == 0
    # The C array is the model, byte for byte, 16-byte aligned, and compiles as C++.
    (tmp_path / "check.cc").write_text(
        '#include <cstdio>\n#include <cstdint>\n#include "model_data.h"\nint main(int, char** argv) {\n'
        '  FILE* f = std::fopen(argv[1], "rb"); unsigned int n = 0; int c;\n'
        "  while ((c = std::fgetc(f)) != EOF) { if (n >= g_model_data_len || g_model_data[n] != c) return 1; ++n; }\n"
        "  return (n == g_model_data_len && reinterpret_cast<uintptr_t>(g_model_data) % 16 == 0) ? 0 : 2; }\n"
    )
    if shutil.which("g++"):
        exe = tmp_path / "check"
        subprocess.run(
            [
                "g++",
                "-std=c++17",
                "-I",
                str(out),
                str(tmp_path / "check.cc"),
                str(out / "model_data.cc"),
                "-o",
                str(exe),
            ],
            check=True,
        )
        assert subprocess.run([str(exe), str(out / "model_int8.tflite")]).returncode == 0
    ops = sorted({op.name for op in lint.read_graph(out / "model_int8.tflite")[0]})
    header = (out / "model_ops.h").read_text()
    assert f"kModelOpCount = {len(ops)};" in header
    assert header.count("if (resolver.Add") == len(ops)
    assert "resolver.AddConv2D(tflite::Register_CONV_2D_INT8())" in header and "resolver.AddFullyConnected(" in header
    fit = json.loads((out / "fit.json").read_text())
    io_h = (out / "model_io.h").read_text()
    assert f"kTensorArenaSize = {-(-fit['ram_needed_bytes'] // 16) * 16};" in io_h and fit["measured"] is None
    card = (out / "MODEL_CARD.md").read_text()
    assert "**estimate**" in card and "Verdict: fits" in card and "a test" in card
    assert card.count("| model/int8 |") == 1 and card.count("| model/float32 |") == 1  # one row per model
    mk = (out / "tflm_sources.mk").read_text()
    assert "kernels/cmsis_nn/conv.cc" in mk and "cmsis_nn/Source/" in mk and "pooling" not in mk  # only its ops


@needs_toolchain
def test_the_bundle_is_what_was_measured_and_builds_by_itself(cli, tmp_path, project):
    """Benched on the emulated Cortex-M4, the bundle quotes the measured flash and RAM; copied to a clean
    folder, its own Makefile builds TFLite Micro and the harness and reproduces every measured output."""
    done = cli("run", bundle_recipe(tmp_path, project, "profile"), "--target", "cortex-m4")
    assert done.returncode == 0, done.stderr
    bench = json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())
    emulated = next(r for r in bench["rows"] if r["variant"] == "int8")["target"]["emulated"]
    fit = json.loads((tmp_path / "models/tiny/cortex-m4/fit.json").read_text())
    assert fit["measured"] == emulated and fit["arena_hint_bytes"] == emulated["arena_bytes"]
    card = (tmp_path / "models/tiny/cortex-m4/MODEL_CARD.md").read_text()
    assert f"Flash: {emulated['flash_bytes']:,} of" in card and f"RAM: {emulated['ram_used_bytes']:,} of" in card
    clean = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "models/tiny/cortex-m4", clean)
    from edgepipe.targets.mcu.sources import locate_sources

    tflm = locate_sources(None).root
    built = subprocess.run(["make", "-j2", f"TFLM_DIR={tflm}", "check"], cwd=clean, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "8 of 8 sample outputs identical to edgepipe's measurement" in built.stdout
    example = subprocess.run(["make", f"TFLM_DIR={tflm}", "run-example"], cwd=clean, capture_output=True, text=True)
    assert example.returncode == 0 and "class of the first sample input: " in example.stdout, example.stderr[-2000:]


STAND_IN_COMPILER = """#!/bin/sh
# Stands in for edgetpu_compiler (x86-64 from Coral's own apt repository, not installable here): same
# arguments, same output files, same log lines; the "compiled" model is the input unchanged.
while [ $# -gt 1 ]; do case "$1" in -o) out="$2"; shift 2;; *) shift;; esac; done
stem=$(basename "$1" .tflite)
cp "$1" "$out/${stem}_edgetpu.tflite"; echo "op table" > "$out/${stem}_edgetpu.log"
echo "Edge TPU Compiler version 16.0.384591198"
echo "On-chip memory used for caching model parameters: 20.25KiB"
echo "Number of operations that will run on Edge TPU: 5"
echo "Number of operations that will run on CPU: 0"
"""


def test_coral_bundle_ships_the_model_the_bench_compiled(tmp_path, project):
    from edgepipe.stages.bundle import BundleParams, run_bundle_stage
    from edgepipe.targets import edgetpu
    from edgepipe.testing import run_stage

    converted_recipe(tmp_path, project)
    compiler = tmp_path / "edgetpu_compiler"
    compiler.write_text(STAND_IN_COMPILER)
    compiler.chmod(0o755)
    model = tmp_path / "runs/tiny/tflite/model_int8.tflite"
    bench = tmp_path / "bench_coral"
    (bench / "edgetpu").mkdir(parents=True)
    compiled, counts = edgetpu.compile_model(model, bench / "edgetpu", str(compiler))
    assert counts == {
        "ops_edgetpu": 5,
        "ops_cpu": 0,
        "fully_mapped": True,
        "on_chip_used_bytes": 20736,
        "on_chip_remaining_bytes": None,
        "off_chip_bytes": None,
    }
    (bench / "bench.json").write_text(json.dumps({"target": {"name": "coral"}, "rows": []}))
    inputs = {"data": str(tmp_path / "runs/tiny/data"), "model": str(model.parent)}
    out = run_stage(
        tmp_path, "bundle_ok", run_bundle_stage, BundleParams, {"target": "coral"}, **inputs, benches=[str(bench)]
    )
    files = {p.name for p in (out / "coral").iterdir()}
    assert {
        "model_int8.tflite",
        "model_int8_edgetpu.tflite",
        "model_int8_edgetpu.log",
        "model_int8_edgetpu.compile.log",
        "SHA256SUMS",
        "MODEL_CARD.md",
    } <= files
    assert (out / "coral/model_int8_edgetpu.tflite").read_bytes() == compiled.read_bytes()
    assert "model_int8_edgetpu.tflite" in (out / "coral/SHA256SUMS").read_text()
    with pytest.raises(EdgepipeError, match="no Edge TPU compilation of model_int8.tflite"):
        run_stage(tmp_path, "bundle_no_bench", run_bundle_stage, BundleParams, {"target": "coral"}, **inputs)


def test_report_has_per_target_columns_tagged_with_provenance(cli, tmp_path, project):
    recipe = converted_recipe(tmp_path, project)
    import yaml

    spec = yaml.safe_load(recipe.read_text())
    spec["stages"]["bench_m4"] = {
        "kind": "bench",
        "inputs": {"data": "data", "models": ["tflite"]},
        "params": {"target": "cortex-m4", "warmup": 2, "runs": 20, "threads": [1], "measure": "estimate"},
    }
    spec["stages"]["report"] = {"kind": "report", "inputs": {"benches": ["bench", "bench_m4"]}}
    recipe.write_text(yaml.safe_dump(spec))
    done = cli("bench", recipe)  # `bench` runs the bench stages and what reads them: the report
    assert done.returncode == 0, done.stderr
    assert "acc@host" in done.stdout and "acc@cortex-m4" in done.stdout and "[est]" in done.stdout
    report = json.loads((tmp_path / "runs/tiny/report/report.json").read_text())
    assert report["targets"] == ["host", "cortex-m4"]
    rows = {r["name"]: r for r in report["rows"]}
    assert len(rows) == 2  # one row per model, not one per bench
    m4 = rows["model/int8"]["targets"]["cortex-m4"]
    assert m4["accuracy"]["provenance"] == "tflm-host" and m4["latency_p50_us"]["provenance"] == "estimate"
    assert m4["memory"]["what"] == "arena" and m4["fits"] is True
    assert rows["model/float32"]["targets"]["cortex-m4"]["deployable"] is False
    assert rows["model/int8"]["targets"]["host"]["accuracy"]["provenance"] == "host-litert"
    md = (tmp_path / "runs/tiny/report/report.md").read_text()
    assert "| model | acc@host | p50@host | mem@host | acc@cortex-m4 |" in md and "[tflm]" in md
    assert "id='targets'" in (tmp_path / "runs/tiny/report/report.html").read_text()


@needs_sshd
def test_fleet_bench_fans_out_to_several_hosts_in_parallel(cli, tmp_path, sshd, project):
    recipe = converted_recipe(tmp_path, project)
    done = cli(
        "bench",
        recipe,
        "--target",
        "rpi4",
        "--host",
        sshd.host,
        *ssh_sets(sshd),
        "--set",
        f"bench.fleet=[{sshd.other_name}]",
        "--set",
        "bench.parallel=2",
    )
    assert done.returncode == 0, done.stderr
    bench = json.loads((tmp_path / "runs/tiny/bench/bench.json").read_text())
    assert set(bench["fleet"]) == {sshd.host, sshd.other_name}
    for row in bench["rows"]:
        assert set(row["fleet"]) == {sshd.host, sshd.other_name}
        for figures in row["fleet"].values():
            assert figures["accuracy"]["value"] == row["accuracy"] and figures["same_predictions_as_host"]
    report_names = {t["name"] for row in bench["rows"] for t in row["fleet"].values()}
    assert report_names == {f"rpi4@{sshd.host}", f"rpi4@{sshd.other_name}"}


def test_bench_summary_names_the_most_accurate_int8_model_beside_the_most_accurate():
    """Chosen on validation accuracy; the test figure is printed beside it, never chosen on."""
    from edgepipe.stages.bench import best_lines

    rows = [
        {"name": "s/float32", "variant": "float32", "val_accuracy": 0.9950, "accuracy": 0.9930, "size_bytes": 94_208},
        {"name": "s/int8", "variant": "int8", "val_accuracy": 0.9940, "accuracy": 0.9920, "size_bytes": 28_979},
        {"name": "q/int8", "variant": "int8", "val_accuracy": 0.9910, "accuracy": 0.9990, "size_bytes": 29_320},
        {"name": "t/float32", "variant": "float32", "val_accuracy": 0.9900, "accuracy": 0.9999, "size_bytes": 1024},
    ]
    assert best_lines(rows) == (
        "most accurate (val) s/float32 val 99.50 %, test 99.30 % (92.0 KB); most accurate "
        "int8 (val) s/int8 val 99.40 %, test 99.20 % (28.3 KB)"
    )
    assert best_lines(rows[1:3]) == "most accurate (val) s/int8 val 99.40 %, test 99.20 % (28.3 KB)"
    assert best_lines(rows[3:]) == "most accurate (val) t/float32 val 99.00 %, test 99.99 % (1.0 KB)"
