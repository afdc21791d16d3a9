"""Keras to LiteRT: TensorFlow's converter, one small function per format, `FORMATS` the table of them.

The convert stage and a search's trials (a quick int8 model per trial) both convert through `convert`.
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import quiet_native

Variant = Literal["float32", "float16", "dynamic", "int8"]


def _converter(model):
    from edgepipe.core._tf import tf

    return tf.lite.TFLiteConverter.from_keras_model(model)


def to_float32(model, representative, io_type) -> bytes:
    return _converter(model).convert()


def to_float16(model, representative, io_type) -> bytes:
    from edgepipe.core._tf import tf

    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.target_spec.supported_types = [tf.float16]
    return c.convert()


def to_dynamic(model, representative, io_type) -> bytes:
    from edgepipe.core._tf import tf

    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: int8 weights, float activations
    return c.convert()


def to_int8(model, representative, io_type) -> bytes:
    """Full-integer: int8 weights and activations (ranges from QAT, or calibrated on `representative`)."""
    from edgepipe.core._tf import tf

    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([x[None]] for x in representative)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # fail rather than leave float ops
    c.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_type]
    c.inference_output_type = c.inference_input_type
    return c.convert()


FORMATS: dict[str, Callable[..., bytes]] = {
    "float32": to_float32, "float16": to_float16, "dynamic": to_dynamic, "int8": to_int8,
}


def convert(model, variant: str, representative, io_type: str, name: str) -> bytes:
    """The `.tflite` bytes of `model` in format `variant`; a converter failure is one error line."""
    try:
        # int8 I/O makes the converter warn about "statistics for quantized inputs"; the sidecar records the
        # input scale and zero point instead, so that warning is noise here.
        with quiet_native(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return FORMATS[variant](model, representative, io_type)
    except Exception as e:  # noqa: BLE001 - the converter raises ConverterError, RuntimeError, ValueError
        raise EdgepipeError(f"converting '{name}' to {variant} failed: {' '.join(str(e).split())[:200]}",
                            "check the model uses ops LiteRT supports for this format") from None
