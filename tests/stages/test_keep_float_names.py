"""Issue #35, class 7: `keep_float_worst` takes the debugger's worst operators to Keras layer names, which
`keep_float` looks up; an operator the debugger names by a tensor no Keras layer can be traced to is passed
over, never looked up as a layer, and when none can be traced the error speaks of the operators it saw."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepipe.core.errors import EdgepipeError
from edgepipe.export.quant_debug import worst_layers

LAYERS = st.sampled_from(["conv2d", "dense", "depthwise_conv2d", "logits", "conv2d_1"])
TENSORS = st.sampled_from(
    ["StatefulPartitionedCall:0", "model/flatten/Reshape", "tfl.quantize", "sequential/tf.reshape", "x;y"]
)


@st.composite
def debugger_rows(draw):
    """The debugger's rows, worst first: an operator traced to a Keras layer, or named by a tensor only."""
    rows = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            rows.append(
                {"layer": draw(LAYERS), "op": draw(st.sampled_from(["CONV_2D", "FULLY_CONNECTED"])), "is_layer": True}
            )
        else:
            rows.append(
                {"layer": draw(TENSORS), "op": draw(st.sampled_from(["RESHAPE", "QUANTIZE"])), "is_layer": False}
            )
    return rows


@given(rows=debugger_rows(), n=st.integers(1, 6))
def test_the_worst_layers_are_keras_layer_names_never_operator_tensors(rows, n):
    traced = [r["layer"] for r in rows if r["is_layer"]]
    if not traced:
        with pytest.raises(EdgepipeError) as e:
            worst_layers(rows, n)
        assert "keep_float_worst" in str(e.value) and "keep_float" in e.value.fix
        assert rows[0]["op"] in str(e.value)
        return
    got = worst_layers(rows, n)
    assert got == list(dict.fromkeys(traced))[:n]


def test_an_untraced_output_tensor_ranked_worst_is_passed_over():
    rows = [
        {"layer": "StatefulPartitionedCall:0", "op": "FULLY_CONNECTED", "is_layer": False},
        {"layer": "conv2d", "op": "CONV_2D", "is_layer": True},
    ]
    assert worst_layers(rows, 1) == ["conv2d"]
