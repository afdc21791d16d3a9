"""Op-compatibility lint: what in a `.tflite` a target cannot run, found before any device work.

It reads the graph the converter wrote (operators and tensor types, through the LiteRT interpreter with
no delegate applied) and reports, one line each:

- `float_op`: an operator computing in float inside a model that is meant to be fully int8 (an int8
  variant, or any model for an int8-only target such as the Edge TPU or a microcontroller);
- `quant_island`: a DEQUANTIZE -> float ops -> QUANTIZE detour in the middle of an int8 graph;
- `unsupported_op`: an operator the target's runtime does not have (TFLite Micro, the Edge TPU).

Each finding names the operator and, when the converter kept it in the tensor name, the Keras layer
that produced it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import quiet_native

# Built-in operators of TFLite Micro's op resolver (tflite-micro `micro_mutable_op_resolver.h`, 2025).
TFLM_OPS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND BROADCAST_ARGS
BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE
DIV ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND
GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND
LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAX_POOL_2D MAXIMUM MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK
PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_MAX RELU RELU6 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR
ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE
SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM
UNPACK VAR_HANDLE WHILE ZEROS_LIKE
""".split())

# Operators the Edge TPU compiler can map (coral.ai "TensorFlow models on the Edge TPU", supported
# operations); anything else, and everything after it in the graph, runs on the host CPU.
EDGETPU_OPS = frozenset("""
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D EXPAND_DIMS FULLY_CONNECTED HARD_SWISH
L2_NORMALIZATION LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PACK PAD PRELU QUANTIZE DEQUANTIZE REDUCE_MAX
REDUCE_MIN RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SLICE SOFTMAX
SPACE_TO_DEPTH SPLIT SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM TANH TRANSPOSE TRANSPOSE_CONV
""".split())

RUNTIME_OPS = {"mcu": ("TFLite Micro", TFLM_OPS), "edgetpu": ("the Edge TPU", EDGETPU_OPS)}
FLOAT = (np.float32, np.float16, np.float64)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One lint finding: a code, the operator, the layer (if known) and a one-line message with its fix."""

    code: str
    op: str
    layer: str | None
    message: str

    def line(self, model: str) -> str:
        return f"{model}: {self.code}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Op:
    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def read_graph(path: Path) -> tuple[list[Op], dict[int, dict], set[int], set[int]]:
    """Operators (as written, no delegate), tensor details by index, and the model's input/output tensors."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        with quiet_native():
            interp = Interpreter(model_path=str(path),
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError) as e:
        raise EdgepipeError(f"{path}: not a valid LiteRT model ({' '.join(str(e).split())[:160]})",
                            "re-run the convert stage to regenerate it") from None
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = [Op(o["index"], o["op_name"], tuple(i for i in o["inputs"] if i >= 0), tuple(o["outputs"]))
           for o in interp._get_ops_details()]  # noqa: SLF001 - the interpreter's only per-op listing
    ins = {d["index"] for d in interp.get_input_details()}
    outs = {d["index"] for d in interp.get_output_details()}
    return ops, tensors, ins, outs


def layer_of(tensor_name: str) -> str | None:
    """The Keras layer in a converter tensor name: 'model/quant_conv2d_3/Conv2D' -> 'conv2d_3'."""
    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    if len(parts) < 3:
        return None
    layer = parts[1]
    return layer[len("quant_"):] if layer.startswith("quant_") else layer


def lint(path: Path, *, int8: bool, target_kind: str | None = None) -> list[Finding]:
    """Findings for `path`; `int8` says the model is meant to be fully integer, `target_kind` adds op checks."""
    ops, tensors, model_in, model_out = read_graph(path)
    consumers: dict[int, list[Op]] = {}
    for op in ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)

    def is_float(t: int) -> bool:
        return tensors[t]["dtype"] in FLOAT

    def where(op: Op) -> str | None:
        for t in op.outputs:
            name = layer_of(tensors[t]["name"])
            if name:
                return name
        return None

    def at(op: Op) -> str:
        layer = where(op)
        return f"{op.name}" + (f" (layer {layer})" if layer else "")

    findings: list[Finding] = []
    if int8:
        for op in ops:
            boundary = (op.name == "QUANTIZE" and set(op.inputs) <= model_in) or \
                       (op.name == "DEQUANTIZE" and set(op.outputs) <= model_out)
            if op.name in ("QUANTIZE", "DEQUANTIZE") or boundary:
                continue
            if any(is_float(t) for t in (*op.inputs, *op.outputs)):
                findings.append(Finding("float_op", op.name, where(op),
                                        f"{at(op)} computes in float in an int8 model; fix: replace the layer with "
                                        "one that has an int8 kernel, or keep this model off int8-only targets"))
        for op in ops:
            if op.name != "DEQUANTIZE" or set(op.outputs) <= model_out:
                continue
            island, todo, seen = [], [t for t in op.outputs], set()
            while todo:  # follow the float tensors to the QUANTIZE ops that close the island
                t = todo.pop()
                for nxt in consumers.get(t, []):
                    if nxt.index in seen or nxt.name == "QUANTIZE":
                        continue
                    seen.add(nxt.index)
                    island.append(nxt)
                    todo += [o for o in nxt.outputs if is_float(o) and o not in model_out]
            inner = ", ".join(at(o) for o in island) or "nothing"
            findings.append(Finding("quant_island", op.name, island and where(island[0]) or where(op),
                                    f"DEQUANTIZE -> {inner} -> QUANTIZE: the graph leaves int8 here; fix: use "
                                    "layers with int8 kernels so the converter keeps the graph integer"))
    if target_kind in RUNTIME_OPS:
        runtime, supported = RUNTIME_OPS[target_kind]
        for op in ops:
            if op.name not in supported:
                findings.append(Finding("unsupported_op", op.name, where(op),
                                        f"{at(op)} is not an operator {runtime} has; fix: replace the layer, or "
                                        "pick a target whose runtime has it"))
    return findings


def integer_input(path: Path) -> bool:
    """True when the model takes int8/uint8 input: converted as a full-integer model."""
    _, tensors, ins, _ = read_graph(path)
    return all(tensors[i]["dtype"] in (np.int8, np.uint8) for i in ins)


def lint_for(path: Path, target, int8: bool | None = None) -> list[Finding]:
    """Lint `path` for a `Target`, from the file alone (`edgepipe lint`).

    Whether a model is meant to be fully int8 is known from its sidecar's variant when a bench lints it;
    from the file alone it is: when said (`int8`), when the target runs int8 only, or when the model's
    input is integer (the converter's full-integer output).
    """
    meant_int8 = int8 if int8 is not None else (target.needs_int8 or integer_input(path))
    return lint(path, int8=meant_int8, target_kind=target.kind)
