"""Issue #35, class 5: a .tflite of a type edgepipe does not run (a bool or string input, an unquantized
integer or float16 tensor) is refused at import in one line that says what edgepipe supports, never an
internal error; float32 models still import."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgepipe.testing import check_clean_outcome, run_cli, write_idx_dataset, write_recipe

_MADE: dict = {}


def tflite_of(folder: Path, in_dtype: str, out_dtype: str) -> Path:
    """A 12x12x1 -> 4 model (write_idx_dataset's images and classes) whose input and output tensors are of the given TensorFlow dtypes (cached)."""
    if (in_dtype, out_dtype) in _MADE:
        return _MADE[in_dtype, out_dtype]
    from edgepipe.core._tf import tf

    din, dout = tf.as_dtype(in_dtype), tf.as_dtype(out_dtype)

    @tf.function(input_signature=[tf.TensorSpec([None, 12, 12, 1], din)])
    def model(x):
        if din == tf.string:
            x = tf.cast(tf.equal(x, "a"), tf.float32)
        x = tf.reshape(tf.cast(x, tf.float32), [-1, 144])
        y = tf.nn.softmax(tf.matmul(x, tf.ones([144, 4]) / 144.0))
        return tf.equal(y, 0.25) if dout == tf.bool else tf.cast(y, dout)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    path = folder / f"m_{in_dtype}_{out_dtype}.tflite"
    path.write_bytes(converter.convert())
    _MADE[in_dtype, out_dtype] = path
    return path


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("types")
    return root, write_idx_dataset(root / "idx", n_train=40, n_test=12)


def import_it(root: Path, idx: Path, model: Path) -> tuple[int, str]:
    recipe = write_recipe(
        root / "r.yaml",
        {
            "name": "t",
            "stages": {
                "data": {"kind": "data", "params": {"source": f"idx:{idx}"}},
                "mine": {"kind": "import", "inputs": {"data": "data"}, "params": {"path": str(model)}},
            },
        },
    )
    code, _, err = run_cli(["run", recipe, "--root", root], root)
    return code, check_clean_outcome(code, err, root)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(in_dtype="float32", out_dtype="float32")
@given(
    in_dtype=st.sampled_from(["bool", "string", "int32", "int64", "float16", "float32"]),
    out_dtype=st.sampled_from(["float32", "bool", "int32"]),
)
def test_a_tflite_of_an_unsupported_type_is_refused_saying_what_is_supported(place, in_dtype, out_dtype):
    root, idx = place
    code, line = import_it(root, idx, tflite_of(root, in_dtype, out_dtype))
    if in_dtype == out_dtype == "float32":
        assert code == 0, line
        return
    assert code == 1 and "which edgepipe does not run" in line and "float32" in line, line
    bad = ("input", in_dtype) if in_dtype != "float32" else ("output", out_dtype)
    assert f"its {bad[0]} is {bad[1]}" in line, line


@pytest.mark.parametrize("in_dtype", ["bool", "string"])
def test_a_bool_or_string_input_is_refused_in_one_line(place, in_dtype):
    root, idx = place
    code, line = import_it(root, idx, tflite_of(root, in_dtype, "float32"))
    assert code == 1 and f"its input is {in_dtype}, which edgepipe does not run" in line, line
