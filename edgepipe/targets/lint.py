"""Op-compatibility lint: what in a `.tflite` a target cannot run, found before any device work.

It reads the graph the converter wrote (operators and tensor types, through the LiteRT interpreter with
no delegate applied) and reports, one line each:

- `float_op`: an operator computing in float inside a model that is meant to be fully int8 (an int8
  variant, or any model for an int8-only target such as the Edge TPU or a microcontroller);
- `quant_island`: a DEQUANTIZE -> float ops -> QUANTIZE detour in the middle of an int8 graph;
- `unsupported_op`: an operator the target's runtime does not have (TFLite Micro, the Edge TPU);
- `unsupported_op_version`: an operator written in a version the target's compiler refuses.

What a target's runtime runs is its backend's knowledge (`Backend.runtime` in `edgepipe.targets.backends`,
a `Runtime`); the checks here are the same for every device. Each finding names the operator and, when the
converter kept it in the tensor name, the Keras layer that produced it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.native import quiet_native

FLOAT = (np.float32, np.float16, np.float64)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What a device's runtime runs, as its backend declares it (`Backend.runtime`): the lint's op checks.

    Attributes:
        name: the runtime as a finding names it ("is not an operator TFLite Micro has").
        ops: the built-in operators it has.
        refused_versions: operator -> the first version of it the device's compiler refuses.
        refused_by: that compiler, as a finding names it ("edgetpu_compiler 16.0").
        refused_fix: what a finding of a refused version says to do.
    """

    name: str
    ops: frozenset[str]
    refused_versions: Mapping[str, int] = dataclasses.field(default_factory=dict)
    refused_by: str = ""
    refused_fix: str = ""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One lint finding: a code, the operator, the layer (if known) and a one-line message with its fix."""

    code: str
    op: str
    layer: str | None
    message: str
    intended: bool = False  # float in a layer the recipe keeps float on purpose (selective quantization)

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
            interp = Interpreter(
                model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
    except (ValueError, RuntimeError) as e:
        raise EdgepipeError(
            f"{path}: not a valid LiteRT model ({' '.join(str(e).split())[:160]})",
            "re-run the convert stage to regenerate it",
        ) from None
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = [
        Op(o["index"], o["op_name"], tuple(i for i in o["inputs"] if i >= 0), tuple(o["outputs"]))
        for o in interp._get_ops_details()
    ]  # the interpreter's only per-op listing
    ins = {d["index"] for d in interp.get_input_details()}
    outs = {d["index"] for d in interp.get_output_details()}
    return ops, tensors, ins, outs


def layer_of(tensor_name: str) -> str | None:
    """The Keras layer in a converter tensor name: 'model/quant_conv2d_3/Conv2D' -> 'conv2d_3'."""
    parts = [p for p in tensor_name.split(";")[0].split("/") if p]
    if len(parts) < 3:
        return None
    layer = parts[1]
    return layer[len("quant_") :] if layer.startswith("quant_") else layer


def lint(path: Path, *, int8: bool, runtime: Runtime | None = None, kept_float: Sequence[str] = ()) -> list[Finding]:
    """Findings for `path`; `int8` says the model is meant to be fully integer, `runtime` (what the target's
    runtime runs, from its backend; None: any operator LiteRT has) adds the op checks. Float operators of
    the `kept_float` layers come back marked intended."""
    graph = _Graph(*read_graph(path))
    findings: list[Finding] = []
    if int8:
        findings += _float_ops(graph, set(kept_float)) + _quant_islands(graph, set(kept_float))
    if runtime is not None:
        findings += _unsupported_ops(graph, runtime.name, runtime.ops)
        if runtime.refused_versions:
            findings += _refused_versions(graph, op_versions(path), runtime)
    return findings


def op_versions(path: Path) -> list[int]:
    """The version of each operator of the model's main graph, in graph order (from the flatbuffer)."""
    from edgepipe.targets.mcu.errors import McuError
    from edgepipe.targets.mcu.model import read_model

    try:
        return list(read_model(path).op_versions)
    except McuError as e:
        raise EdgepipeError(f"{path}: not a valid LiteRT model ({e.message})", "re-run the convert stage") from None


def _refused_versions(g: "_Graph", versions: list[int], runtime: Runtime) -> list[Finding]:
    """Operators written in a version the device's compiler refuses."""
    findings = []
    for op, version in zip(g.ops, versions):
        first = runtime.refused_versions.get(op.name)
        if first is not None and version >= first:
            findings.append(
                Finding(
                    "unsupported_op_version",
                    op.name,
                    g.layer(op),
                    f"{g.at(op)} is version {version}; {runtime.refused_by} takes it up to version "
                    f"{first - 1}; fix: {runtime.refused_fix}",
                )
            )
    return findings


@dataclasses.dataclass
class _Graph:
    """A model's operators and tensors, with what the checks ask of them."""

    ops: list[Op]
    tensors: dict[int, dict]
    inputs: set[int]
    outputs: set[int]

    def is_float(self, t: int) -> bool:
        return self.tensors[t]["dtype"] in FLOAT

    def consumers(self) -> dict[int, list[Op]]:
        out: dict[int, list[Op]] = {}
        for op in self.ops:
            for t in op.inputs:
                out.setdefault(t, []).append(op)
        return out

    def layer(self, op: Op) -> str | None:
        """The Keras layer that produced the op's output, when the converter kept it in the tensor name."""
        for t in op.outputs:
            name = layer_of(self.tensors[t]["name"])
            if name:
                return name
        return None

    def mentions(self, op: Op, layers: set[str]) -> bool:
        """Whether any of the op's output tensor names names one of `layers` (fused ops name several)."""
        return any(set(re.split(r"[/;]", self.tensors[t]["name"])) & layers for t in op.outputs)

    def at(self, op: Op) -> str:
        layer = self.layer(op)
        return f"{op.name}" + (f" (layer {layer})" if layer else "")


def _float_ops(g: _Graph, kept: set[str]) -> list[Finding]:
    """Operators computing in float inside an int8 model (the I/O QUANTIZE/DEQUANTIZE excepted)."""
    findings = []
    for op in g.ops:
        boundary = (op.name == "QUANTIZE" and set(op.inputs) <= g.inputs) or (
            op.name == "DEQUANTIZE" and set(op.outputs) <= g.outputs
        )
        if op.name in ("QUANTIZE", "DEQUANTIZE") or boundary:
            continue
        if any(g.is_float(t) for t in (*op.inputs, *op.outputs)):
            if g.mentions(op, kept):
                findings.append(
                    Finding(
                        "float_op",
                        op.name,
                        g.layer(op),
                        f"{g.at(op)} computes in float, as keep_float asks",
                        intended=True,
                    )
                )
                continue
            findings.append(
                Finding(
                    "float_op",
                    op.name,
                    g.layer(op),
                    f"{g.at(op)} computes in float in an int8 model; fix: replace the layer with "
                    "one that has an int8 kernel, or keep this model off int8-only targets",
                )
            )
    return findings


def _quant_islands(g: _Graph, kept: set[str]) -> list[Finding]:
    """DEQUANTIZE -> float ops -> QUANTIZE detours in the middle of an int8 graph."""
    consumers = g.consumers()
    findings = []
    for op in g.ops:
        if op.name != "DEQUANTIZE" or set(op.outputs) <= g.outputs:
            continue
        island, todo, seen = [], [t for t in op.outputs], set()
        while todo:  # follow the float tensors to the QUANTIZE ops that close the island
            t = todo.pop()
            for nxt in consumers.get(t, []):
                if nxt.index in seen or nxt.name == "QUANTIZE":
                    continue
                seen.add(nxt.index)
                island.append(nxt)
                todo += [o for o in nxt.outputs if g.is_float(o) and o not in g.outputs]
        inner = ", ".join(g.at(o) for o in island) or "nothing"
        if island and all(g.mentions(o, kept) for o in island):
            findings.append(
                Finding(
                    "quant_island",
                    op.name,
                    g.layer(island[0]),
                    f"DEQUANTIZE -> {inner} -> QUANTIZE: kept float, as keep_float asks",
                    intended=True,
                )
            )
            continue
        findings.append(
            Finding(
                "quant_island",
                op.name,
                island and g.layer(island[0]) or g.layer(op),
                f"DEQUANTIZE -> {inner} -> QUANTIZE: the graph leaves int8 here; fix: use "
                "layers with int8 kernels so the converter keeps the graph integer",
            )
        )
    return findings


def _unsupported_ops(g: _Graph, runtime: str, supported: frozenset[str]) -> list[Finding]:
    """Operators the target's runtime does not have."""
    return [
        Finding(
            "unsupported_op",
            op.name,
            g.layer(op),
            f"{g.at(op)} is not an operator {runtime} has; fix: replace the layer, or "
            "pick a target whose runtime has it",
        )
        for op in g.ops
        if op.name not in supported
    ]


def integer_input(path: Path) -> bool:
    """True when the model takes int8/uint8 input: converted as a full-integer model."""
    _, tensors, ins, _ = read_graph(path)
    return all(tensors[i]["dtype"] in (np.int8, np.uint8) for i in ins)


def lint_for(path: Path, target, runtime: Runtime | None, int8: bool | None = None) -> list[Finding]:
    """Lint `path` for a `Target` whose runtime runs `runtime` (its backend's), from the file alone
    (`edgepipe lint`).

    Whether a model is meant to be fully int8 is known from its sidecar's variant when a bench lints it;
    from the file alone it is: when said (`int8`), when the target runs int8 only, or when the model's
    input is integer (the converter's full-integer output).
    """
    meant_int8 = int8 if int8 is not None else (target.needs_int8 or integer_input(path))
    return lint(path, int8=meant_int8, runtime=runtime)


def lint_models(models: list[tuple[Path, dict]], target, runtime: Runtime | None) -> list[dict]:
    """Lint findings of every model (`.tflite` path and its sidecar), as bench.json records them; the op checks
    of the target's `runtime` (its backend's) apply to the models it can run."""
    findings = []
    for path, side in models:
        kept = side.get("quantization", {}).get("float_layers", ())
        for f in lint(
            path,
            int8=side["variant"] == "int8",
            runtime=runtime if target.runs(side["variant"]) else None,
            kept_float=kept,
        ):
            findings.append(
                {
                    "source": "keep_float" if f.intended else "lint",
                    "model": path.name,
                    "code": f.code,
                    "op": f.op,
                    "layer": f.layer,
                    "line": f.line(path.name),
                    **({"intended": True} if f.intended else {}),
                }
            )
    return findings
