"""benchmarks/run_all.py: the interleaved latency comparison, and its one error line for a bad file."""

import importlib.util
import subprocess
import sys

import numpy as np

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_all)


def _run_dir(root, ours: bytes, ref: bytes):
    for name, content in zip(run_all.MNIST_STUDENT_PAIR, (ours, ref)):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def _int8(arch: str, shape=(28, 28, 1)) -> bytes:
    from edgepipe.export import converter as convert
    from edgepipe.training import nets

    x = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
    return convert.to_int8(nets.build_model(arch, shape, 10, {}), x, "int8")


def test_latency_vs_reference_interleaves_two_real_models(tmp_path, capsys):
    run_all.report(["latency_vs_reference"], tmp_path)  # nothing converted yet
    assert "latency_vs_reference: skipped" in capsys.readouterr().out
    run_dir = _run_dir(tmp_path, _int8("tiny_conv"), _int8("strided_cnn"))
    ours, ref = (run_dir / f for f in run_all.MNIST_STUDENT_PAIR)
    lat = run_all.latency_vs_reference(ours, ref, rounds=3, runs=200)
    assert all(0 < p50 for p50 in lat["p50_us"])
    assert lat["ratio_range"][0] <= lat["ratio"] <= lat["ratio_range"][1] and lat["rounds"] == 3
    assert lat["ratio"] < 1  # one 3x3 conv against strided_cnn's 0.44 M MACs
    assert run_all.latency_vs_reference(ref, ours, rounds=3, runs=200)["ratio"] > 1
    run_all.report(["latency_vs_reference"], tmp_path / "elsewhere", pair=(ours, ref))
    assert "student_qat_int8.tflite p50 " in capsys.readouterr().out


def test_pair_of_different_inputs_is_one_error_line(tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    a.write_bytes(_int8("tiny_conv"))
    b.write_bytes(_int8("tiny_conv", (12, 12, 1)))
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "latency_vs_reference", "--pair", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "a.tflite takes (28, 28, 1) and b.tflite (12, 12, 1)" in done.stderr


def test_a_corrupt_model_is_one_error_line(tmp_path):
    run_dir = _run_dir(tmp_path, b"not a flatbuffer", b"nor this")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "latency_vs_reference", "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("benchmarks: error: ") and "not a valid LiteRT model" in done.stderr
    assert "fix: re-run the convert stage" in done.stderr
