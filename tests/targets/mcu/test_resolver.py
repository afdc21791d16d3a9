"""Op-resolver header parsing and generation."""

import pytest

from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.resolver import parse_resolver_header

SNIPPET = """
class MicroMutableOpResolver : public MicroOpResolver {
 public:
  TfLiteStatus AddCustom(const char* name, const TFLMRegistration* registration) {
    if (x) { return kTfLiteError; }
    return kTfLiteOk;
  }
  TfLiteStatus AddPadV2(
      const TFLMRegistration& registration = Register_PADV2()) {
    return AddBuiltin(BuiltinOperator_PADV2, registration, ParsePadV2);
  }
  // TfLiteStatus AddFake() { return AddBuiltin(BuiltinOperator_FAKE, r, p); }
  TfLiteStatus AddUnidirectionalSequenceLSTM(
      const TFLMRegistration& registration =
          Register_UNIDIRECTIONAL_SEQUENCE_LSTM()) {
    return AddBuiltin(BuiltinOperator_UNIDIRECTIONAL_SEQUENCE_LSTM,
                      registration, ParseUnidirectionalSequenceLSTM);
  }
  TfLiteStatus AddCircularBuffer() {
    return AddCustom("CIRCULAR_BUFFER", tflite::Register_CIRCULAR_BUFFER());
  }
  TfLiteStatus AddDelay() {
    // TODO(b/286250473): change back name to "Delay" and remove namespace
    return AddCustom("SignalDelay", tflite::tflm_signal::Register_DELAY());
  }
  TfLiteStatus AddBuiltin(tflite::BuiltinOperator op, const TFLMRegistration& registration,
                          TfLiteBridgeBuiltinParseFunction parser) { return kTfLiteOk; }
};
"""


def test_parse_snippet():
    m = parse_resolver_header(SNIPPET)
    assert set(m) == {"PADV2", "UNIDIRECTIONAL_SEQUENCE_LSTM", "custom:CIRCULAR_BUFFER", "custom:SignalDelay"}
    assert m["PADV2"].method == "AddPadV2"
    assert m["PADV2"].register_fn == "Register_PADV2"
    assert m["PADV2"].takes_registration
    assert m["UNIDIRECTIONAL_SEQUENCE_LSTM"].method == "AddUnidirectionalSequenceLSTM"
    assert m["custom:SignalDelay"].register_fn == "Register_DELAY"
    assert not m["custom:CIRCULAR_BUFFER"].takes_registration


def test_parse_empty_raises():
    with pytest.raises(McuError):
        parse_resolver_header("class X {};")


def test_real_header_known_names(tflm_sources):
    from edgepipe.targets.mcu.resolver import RESOLVER_REL

    m = parse_resolver_header((tflm_sources.root / RESOLVER_REL).read_text())
    assert len(m) > 100
    # The names a guesser gets wrong:
    assert m["PADV2"].method == "AddPadV2"
    assert m["UNIDIRECTIONAL_SEQUENCE_LSTM"].method == "AddUnidirectionalSequenceLSTM"
    assert m["CUMSUM"].method == "AddCumSum"
    assert m["CONV_2D"].method == "AddConv2D"
    assert m["DEPTHWISE_CONV_2D"].method == "AddDepthwiseConv2D"
    assert all(x.register_fn for x in m.values())


def test_model_header_uses_tflm_names(tflm_sources, mnist_model):
    from edgepipe.targets.mcu.model import read_model
    from edgepipe.targets.mcu.resolver import model_ops_header

    MNIST_MODEL = mnist_model
    h, ms = model_ops_header(read_model(MNIST_MODEL), tflm_sources.root)
    assert [m.method for m in ms] == ["AddConv2D", "AddFullyConnected", "AddReshape", "AddSoftmax"]
    assert "kModelOpCount = 4" in h
    h8, _ = model_ops_header(read_model(MNIST_MODEL), tflm_sources.root, int8_kernels=True)
    assert "AddConv2D(tflite::Register_CONV_2D_INT8())" in h8
    assert "AddReshape()" in h8  # no INT8 variant for RESHAPE


@pytest.mark.e2e
def test_all_ops_header_compiles(tflm_sources, toolchain):
    """Every op TFLM has, compiled against the real headers (-fsyntax-only)."""
    from edgepipe.targets.mcu.cores import compile_flags, include_dirs
    from edgepipe.targets.mcu.resolver import all_ops_header, check_header_compiles

    h, ms = all_ops_header(tflm_sources.root)
    assert len(ms) > 100
    check_header_compiles(
        h,
        tflm_sources.root,
        include_dirs=include_dirs("cortex-m4"),
        flags=compile_flags("cortex-m4", "c++"),
        gxx=toolchain.gxx,
    )


@pytest.mark.e2e
def test_wrong_method_name_fails_compile(tflm_sources, toolchain):
    from edgepipe.targets.mcu.cores import compile_flags, include_dirs
    from edgepipe.targets.mcu.resolver import _header, check_header_compiles

    bad = _header(["AddPadv2()"], [], "guessed name")
    with pytest.raises(McuError) as ei:
        check_header_compiles(
            bad,
            tflm_sources.root,
            include_dirs=include_dirs("cortex-m4"),
            flags=compile_flags("cortex-m4", "c++"),
            gxx=toolchain.gxx,
        )
    assert "does not compile" in str(ei.value) and "\n" not in str(ei.value)
