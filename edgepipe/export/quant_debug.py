"""Which layer int8 hurts, and int8 with chosen layers kept in float: TensorFlow's quantization debugger.

The debugger (`tf.lite.experimental.QuantizationDebugger`) runs the int8 model with every quantized
operator's float twin beside it, on the same dequantized input, so each layer's own quantization error is
measured without the errors of the layers before it. The error that ranks layers here is relative and per
channel: in each output channel, the RMS of (float - dequantized int8) over the RMS of the float values,
averaged over the channels that are not all zero. An error in units of the layer's scale cannot rank
layers, and neither can one RMS over the whole tensor: a tensor whose range one outlier channel stretches
quantizes "correctly" to its huge scale, and its RMS is the outlier's, while every other channel is lost.
The debugger's float twin of a later layer also runs on that damaged input, so its relative error is high
as a consequence. What ranks layers first is therefore measured on the float model itself: the share of a
layer's output channels whose RMS (on the debug images, in float) is below one int8 step of that tensor's
scale, the channels int8 cannot resolve; the relative error of the whole tensor breaks ties.

`keep_float` converts again with the chosen layers' operators denylisted: they run in float between
dequantize and quantize operators, the rest stays int8 (selective quantization).
"""

from __future__ import annotations

import csv
import io as _io
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import quiet_native
from edgepipe.export.converter import Granularity, int8_converter

COLUMNS = (
    "rank",
    "layer",
    "op",
    "tensor",
    "unresolved_channels",
    "channel_relative_rmse",
    "relative_rmse",
    "rmse",
    "max_abs_error",
    "scale",
    "zero_point",
    "range_min",
    "range_max",
)


def _relative_rmse(f, q, scale, zero_point) -> float:
    f = np.asarray(f, dtype=np.float64).ravel()
    d = (np.asarray(q, dtype=np.float64).ravel() - zero_point) * scale
    return float(np.sqrt(np.mean((f - d) ** 2)) / max(np.sqrt(np.mean(f**2)), 1e-12))


def _channel_relative_rmse(f, q, scale, zero_point) -> float:
    f = np.asarray(f, dtype=np.float64)
    d = (np.asarray(q, dtype=np.float64) - zero_point) * scale
    f, d = f.reshape(-1, f.shape[-1]), d.reshape(-1, d.shape[-1])
    signal = np.sqrt(np.mean(f**2, axis=0))
    live = signal > 1e-6 * max(float(signal.max()), 1e-30)
    if not live.any():
        return 0.0
    return float(np.mean(np.sqrt(np.mean((f - d) ** 2, axis=0))[live] / signal[live]))


def _range(f, q, scale, zero_point) -> float:
    return float(np.max(np.abs(np.asarray(f))))


def _debugger(model, representative, samples, io_type, granularity, denylisted_nodes=()):
    from edgepipe.core._tf import tf

    converter = int8_converter(model, representative, "float32" if io_type == "float32" else "int8", granularity)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={
            "channel_relative_rmse": _channel_relative_rmse,
            "relative_rmse": _relative_rmse,
            "float_abs_max": _range,
        },
        denylisted_nodes=list(denylisted_nodes) or None,
        fully_quantize=io_type != "float32",
    )
    return tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([x[None]] for x in samples), debug_options=options
    )


def layer_names(model) -> list[str]:
    """The Keras layers a LiteRT tensor name can be traced back to (those that compute something)."""
    return [layer.name for layer in model.layers if type(layer).__name__ not in ("InputLayer", "Flatten", "Dropout")]


def _layers_of(tensor: str, names: Sequence[str]) -> list[str]:
    """Keras layer names inside a LiteRT tensor name ('model/conv2d/Conv2D;model/re_lu/Relu' -> both)."""
    parts = set(re.split(r"[/;]", tensor))
    return [n for n in names if n in parts]


def debug(
    model, representative: np.ndarray, samples: np.ndarray, io_type: str, granularity: Granularity = "per_channel"
) -> list[dict]:
    """Per quantized operator: its layer, relative and absolute error, scale and range; worst first."""
    with quiet_native():
        dbg = _debugger(model, representative, samples, io_type, granularity)
        dbg.run()
        buf = _io.StringIO()
        dbg.layer_statistics_dump(buf)
    names = layer_names(model)
    stats = list(csv.DictReader(_io.StringIO(buf.getvalue())))

    def layers_of(tensor: str) -> list[str]:
        # The model's output tensor is named after the graph call, not a layer: it is the last layer's.
        return _layers_of(tensor, names) or ([names[-1]] if tensor.startswith("StatefulPartitionedCall") else [])

    first = {r["tensor_name"]: next(iter(layers_of(r["tensor_name"].split(";")[0])), None) for r in stats}
    channel_rms = _channel_rms(model, [n for n in first.values() if n], samples)
    rows = []
    for r in stats:
        layers = layers_of(r["tensor_name"])
        scale = float(r["scale"])
        zero = int(float(r["zero_point"]))
        rms = channel_rms.get(first[r["tensor_name"]])
        live = rms[rms > 0] if rms is not None else np.zeros(0)
        rows.append(
            {
                "layer": layers[-1] if layers else r["tensor_name"].split(";")[0],
                "is_layer": bool(layers),  # False: `layer` is the debugger's tensor name, no Keras layer's
                "op": r["op_name"],
                "tensor": r["tensor_name"],
                "unresolved_channels": float(np.mean(live < scale)) if live.size else 0.0,
                "channel_relative_rmse": float(r["channel_relative_rmse"]),
                "relative_rmse": float(r["relative_rmse"]),
                "rmse": float(np.sqrt(float(r["mean_squared_error"]))),
                "max_abs_error": float(r["max_abs_error"]),
                "scale": scale,
                "zero_point": zero,
                "range_min": scale * (-128 - zero),
                "range_max": scale * (127 - zero),
            }
        )
    # Ties (no channel lost) go by the whole tensor's relative error: per channel, a softmax's near-zero
    # probabilities would rank it first for rounding what no decision depends on.
    rows.sort(key=lambda r: (-r["unresolved_channels"], -r["relative_rmse"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def _channel_rms(model, layers: list[str], samples: np.ndarray) -> dict[str, np.ndarray]:
    """Per layer: the RMS of each output channel of the float model on `samples`."""
    from edgepipe.core._tf import keras

    layers = list(dict.fromkeys(layers))
    if not layers:
        return {}
    probe = keras.Model(model.input, [model.get_layer(n).get_output_at(-1) for n in layers])
    outs = probe.predict(samples, batch_size=256, verbose=0)
    outs = outs if isinstance(outs, list) else [outs]
    return {
        n: np.sqrt(np.mean(o.reshape(-1, o.shape[-1]).astype(np.float64) ** 2, axis=0)) for n, o in zip(layers, outs)
    }


def write(rows: list[dict], out: Path, title: str) -> None:
    """quant_debug.csv (worst first) and quant_debug.png (relative error per layer)."""
    lines = [",".join(COLUMNS)] + [",".join(_cell(r[c]) for c in COLUMNS) for r in rows]
    fsio.write_text(out.with_suffix(".csv"), "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.2))
    labels = [f"{r['layer']} ({r['op']})" for r in shown]
    ax.barh(labels, [r["unresolved_channels"] for r in shown], color="tab:red", label="channels below one int8 step")
    ax.barh(
        labels,
        [min(1.0, r["channel_relative_rmse"]) for r in shown],
        color="tab:gray",
        alpha=0.5,
        height=0.4,
        label="relative error (debugger)",
    )
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with fsio.atomic_path(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    text = str(v)
    return f'"{text}"' if "," in text else text


def worst_layers(rows: list[dict], n: int) -> list[str]:
    """The Keras layers of the n worst operators (each layer once), in Keras' names: `keep_float` takes those.

    An operator the debugger names by a tensor no Keras layer can be traced to (a reshape LiteRT added, the
    graph call's own output) is passed over, not looked up as a layer name it is not.

    Raises:
        EdgepipeError: no operator of the rows belongs to a Keras layer.
    """
    out: list[str] = []
    for r in rows:
        if r.get("is_layer", True) and r["layer"] not in out:
            out.append(r["layer"])
        if len(out) == n:
            break
    if rows and not out:
        raise EdgepipeError(
            "keep_float_worst: no quantized operator the debugger ranked belongs to a Keras layer (it names "
            f"{', '.join(dict.fromkeys(r['op'] + ' ' + r['layer'] for r in rows[:3]))})",
            "name the layers to keep float with keep_float (see quant_debug.csv)",
        )
    return out


def convert_keeping_float(
    model, representative, samples, io_type: str, keep: Sequence[str], granularity: Granularity, name: str
) -> tuple[bytes, list[str]]:
    """int8 with the operators of the `keep` layers in float; returns the bytes and the denylisted tensors."""
    names = layer_names(model)
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise EdgepipeError(
            f"keep_float: model '{name}' has no layer {', '.join(map(repr, unknown))}",
            f"use layer names of the model: {', '.join(names)}",
        )
    if io_type == "uint8":
        raise EdgepipeError(
            "keep_float with io_type uint8: the debugger's converter writes int8 or float I/O",
            "use io_type: int8 or float32 with keep_float",
        )
    with quiet_native():
        probe = _debugger(model, representative, samples[:1], io_type, granularity)
        tensors = _quantized_tensors(probe.quant_model)
    nodes = [t for t in tensors if set(_layers_of(t, names)) & set(keep)]
    if not nodes:
        raise EdgepipeError(
            f"keep_float: no operator of '{name}' belongs to {', '.join(keep)}",
            "name layers that compute (Conv2D, Dense, ...), not BatchNormalization or ReLU folded into them",
        )
    with quiet_native():
        blob = _debugger(model, representative, samples[:1], io_type, granularity, nodes).get_nondebug_quantized_model()
    return blob, nodes


def _quantized_tensors(model_bytes: bytes) -> list[str]:
    """Every named tensor of a (debug) model, read with the LiteRT interpreter."""
    from edgepipe.targets import litert

    return [d["name"] for d in litert.interpreter(model_bytes).get_tensor_details() if d["name"]]
