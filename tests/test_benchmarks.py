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
    for stage, name, content in (("qat_tflite", "student_qat_int8", ours), ("ref_tflite", "tfmot_ref_qat_int8", ref)):
        (root / stage).mkdir(parents=True, exist_ok=True)
        (root / stage / f"{name}.tflite").write_bytes(content)
    return root


def test_latency_vs_reference_interleaves_two_real_models(tmp_path):
    from edgepipe import convert, nets

    x = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    small = convert.to_int8(nets.build_model("tiny_conv", (28, 28, 1), 10, {}), x, "int8")
    large = convert.to_int8(nets.build_model("strided_cnn", (28, 28, 1), 10, {}), x, "int8")
    assert run_all.latency_vs_reference(tmp_path) is None  # nothing converted yet
    lat = run_all.latency_vs_reference(_run_dir(tmp_path, small, large), rounds=3, runs=200)
    ours, ref = lat["p50_us"]["student_qat/int8"], lat["p50_us"]["tfmot_ref_qat/int8"]
    assert 0 < ours and 0 < ref
    assert lat["ratio_range"][0] <= lat["ratio"] <= lat["ratio_range"][1] and lat["rounds"] == 3
    assert lat["ratio"] < 1  # one 3x3 conv against strided_cnn's 0.44 M MACs


def test_a_corrupt_model_is_one_error_line(tmp_path):
    run_dir = _run_dir(tmp_path, b"not a flatbuffer", b"nor this")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "latency_vs_reference",
                           "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("benchmarks: error: ") and "not a valid LiteRT model" in done.stderr
    assert "fix: re-run the convert stage" in done.stderr
