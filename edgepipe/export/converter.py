"""Keras to LiteRT: TensorFlow's converter, one small function per format, `FORMATS` the table of them.

The convert stage and a search's trials (a quick int8 model per trial) both convert through `convert`.
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import quiet_native

Variant = Literal["float32", "float16", "dynamic", "int8", "int16x8"]
Granularity = Literal["per_channel", "per_tensor"]


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


def int8_converter(model, representative, io_type, granularity: Granularity = "per_channel"):
    """The converter set up for full-integer int8 (what `to_int8` and the quantization debugger start from)."""
    from edgepipe.core._tf import tf

    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([x[None]] for x in representative)
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # fail rather than leave float ops
    c.inference_input_type = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[io_type]
    c.inference_output_type = c.inference_input_type
    # One scale per tensor instead of per output channel: what several NPUs and older accelerators take.
    c._experimental_disable_per_channel = granularity == "per_tensor"
    return c


def to_int8(model, representative, io_type, granularity: Granularity = "per_channel") -> bytes:
    """Full-integer: int8 weights and activations (ranges from QAT, or calibrated on `representative`)."""
    return int8_converter(model, representative, io_type, granularity).convert()


def to_int16x8(model, representative, io_type, granularity: Granularity = "per_channel") -> bytes:
    """16-bit activations, 8-bit weights: closer to float than int8 where activations have a wide range, at
    twice the activation memory; integer I/O is int16 (float32 with io_type float32)."""
    from edgepipe.core._tf import tf

    c = _converter(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([x[None]] for x in representative)
    c.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    c.inference_input_type = tf.float32 if io_type == "float32" else tf.int16
    c.inference_output_type = c.inference_input_type
    c._experimental_disable_per_channel = granularity == "per_tensor"
    return c.convert()


FORMATS: dict[str, Callable[..., bytes]] = {
    "float32": to_float32,
    "float16": to_float16,
    "dynamic": to_dynamic,
    "int8": to_int8,
    "int16x8": to_int16x8,
}
QUANTIZED = ("int8", "int16x8")  # the formats calibrated on representative data, with a granularity


def convert(
    model, variant: str, representative, io_type: str, name: str, granularity: Granularity = "per_channel"
) -> bytes:
    """The `.tflite` bytes of `model` in format `variant`; a converter failure is one error line."""
    try:
        # int8 I/O makes the converter warn about "statistics for quantized inputs"; the sidecar records the
        # input scale and zero point instead, so that warning is noise here.
        with quiet_native(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            if variant in QUANTIZED:
                return FORMATS[variant](model, representative, io_type, granularity)
            return FORMATS[variant](model, representative, io_type)
    except Exception as e:  # noqa: BLE001 - the converter raises ConverterError, RuntimeError, ValueError
        raise EdgepipeError(
            f"converting '{name}' to {variant} failed: {' '.join(str(e).split())[:200]}",
            "check the model uses ops LiteRT supports for this format",
        ) from None
