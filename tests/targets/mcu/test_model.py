"""The stdlib .tflite reader."""

import pytest

from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.model import builtin_operator_names, read_model
from tests.targets.mcu.conftest import MLPERF


def test_not_tflite(tmp_path):
    p = tmp_path / "x.tflite"
    p.write_bytes(b"\0" * 64)
    with pytest.raises(McuError) as ei:
        read_model(p)
    assert "TFL3" in str(ei.value)
    with pytest.raises(McuError):
        read_model(tmp_path / "missing.tflite")


def test_mnist_model(mnist_model):
    m = read_model(mnist_model)
    assert m.builtin_codes == (3, 9, 22, 25)  # CONV_2D FC RESHAPE SOFTMAX
    assert m.inputs[0].shape == (1, 28, 28, 1) and m.inputs[0].dtype == "int8"
    assert m.inputs[0].zero_point == -128
    assert abs(m.inputs[0].scale - 1 / 255) < 1e-6
    assert m.outputs[0].nbytes == 10


def test_op_names_from_schema(tflm_sources):
    names = builtin_operator_names(tflm_sources.root)
    assert names[3] == "CONV_2D" and names[4] == "DEPTHWISE_CONV_2D"
    assert names[9] == "FULLY_CONNECTED" and names[0] == "ADD"


@pytest.mark.parametrize("f,ops", [("ad01_int8.tflite", (9,)), ("pretrainedResnet_quant.tflite", (0, 1, 3, 9, 22, 25))])
def test_mlperf_ops(f, ops):
    p = MLPERF / f
    if not p.exists():
        pytest.skip("MLPerf models not present")
    assert read_model(p).builtin_codes == ops
