"""Read what the MCU build needs from a ``.tflite`` flatbuffer (stdlib only).

Parses the TFLite schema's ``Model.operator_codes`` (builtin or custom op per
code), the operators' opcode indices, and the main subgraph's input/output
tensors (shape, type, quantization).  Builtin op numbers are turned into
names with TFLM's own ``schema.fbs`` (``enum BuiltinOperator``) when a source
tree is given, so no enum table is copied here.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe.targets.mcu.errors import McuError

__all__ = ["TensorInfo", "ModelInfo", "read_model", "builtin_operator_names"]

# TensorType enum of the TFLite schema (stable since its first versions).
_TENSOR_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: "string",
    6: "bool",
    7: "int16",
    8: "complex64",
    9: "int8",
    10: "float64",
    11: "complex128",
    12: "uint64",
    13: "resource",
    14: "variant",
    15: "uint32",
    16: "uint16",
    17: "int4",
}
_SCHEMA_REL = "tensorflow/compiler/mlir/lite/schema/schema.fbs"


class _Table:
    """A flatbuffer table view: ``buf`` and the table's absolute position."""

    __slots__ = ("buf", "pos", "vt", "vt_len")

    def __init__(self, buf: bytes, pos: int):
        self.buf = buf
        self.pos = pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _off(self, field_idx: int) -> int:
        o = 4 + 2 * field_idx
        if o >= self.vt_len:
            return 0
        return struct.unpack_from("<H", self.buf, self.vt + o)[0]

    def scalar(self, idx: int, fmt: str, default=0):
        o = self._off(idx)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o)[0] if o else default

    def _indirect(self, idx: int) -> int | None:
        o = self._off(idx)
        if not o:
            return None
        p = self.pos + o
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def table(self, idx: int) -> "_Table | None":
        p = self._indirect(idx)
        return _Table(self.buf, p) if p is not None else None

    def string(self, idx: int) -> str | None:
        p = self._indirect(idx)
        if p is None:
            return None
        n = struct.unpack_from("<I", self.buf, p)[0]
        return self.buf[p + 4 : p + 4 + n].decode("utf-8", "replace")

    def vector(self, idx: int, fmt: str) -> list:
        p = self._indirect(idx)
        if p is None:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        return list(struct.unpack_from(f"<{n}{fmt}", self.buf, p + 4))

    def tables(self, idx: int) -> list["_Table"]:
        p = self._indirect(idx)
        if p is None:
            return []
        n = struct.unpack_from("<I", self.buf, p)[0]
        out = []
        for i in range(n):
            e = p + 4 + 4 * i
            out.append(_Table(self.buf, e + struct.unpack_from("<I", self.buf, e)[0]))
        return out


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of the main subgraph."""

    name: str
    shape: tuple
    dtype: str  # numpy dtype name ("int8", "uint8", "float32", ...)
    scale: float | None
    zero_point: int | None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class ModelInfo:
    """What the build and the harness need to know about a model.

    Attributes:
        path: the ``.tflite`` file.
        builtin_codes: sorted builtin operator numbers used by any subgraph.
        custom_codes: sorted custom op names.
        op_types: builtin code -> set of the types of all input and output
            tensors of its operators (used to pick int8-only registrations).
        inputs, outputs: main subgraph I/O tensors.
        num_operators: operators over all subgraphs.
        op_versions: the version of each operator of the main subgraph, in graph order.
    """

    path: Path
    size: int
    builtin_codes: tuple
    custom_codes: tuple
    op_types: dict = field(default_factory=dict)
    inputs: tuple = ()
    outputs: tuple = ()
    num_operators: int = 0
    op_versions: tuple = ()  # the operator version of each operator of the main subgraph, in order


def _tensor(t: _Table) -> TensorInfo:
    shape = tuple(t.vector(0, "i"))
    ttype = t.scalar(1, "b", 0)
    name = t.string(3) or ""
    q = t.table(4)
    scale = zp = None
    if q is not None:
        sc = q.vector(2, "f")
        z = q.vector(3, "q")
        if sc:
            scale = float(sc[0])
            zp = int(z[0]) if z else 0
    return TensorInfo(
        name=name, shape=shape, dtype=_TENSOR_TYPES.get(ttype, f"type{ttype}"), scale=scale, zero_point=zp
    )


def read_model(path: str | Path) -> ModelInfo:
    """Parse a ``.tflite`` file.

    Raises:
        McuError: unreadable file or not a TFLite flatbuffer.
    """
    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise McuError(f"cannot read model {path} ({e.strerror})", "pass the path of an existing .tflite file")
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise McuError(
            f"{path} is not a TFLite flatbuffer (no TFL3 identifier)",
            "pass a .tflite model exported by the TFLite converter",
        )
    try:
        model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        codes = []
        for oc in model.tables(1):
            dep = oc.scalar(0, "b", 0)
            ext = oc.scalar(3, "i", 0)
            custom = oc.string(1)
            # The real code is max(deprecated, extended) (schema_utils.cc).
            codes.append((max(dep, ext), custom, oc.scalar(2, "i", 1)))
        builtins, customs, op_types, versions = set(), set(), {}, []
        nops = 0
        subgraphs = model.tables(2)
        for k, sg in enumerate(subgraphs):
            tensors = sg.tables(0)
            for op in sg.tables(3):
                nops += 1
                code, custom, version = codes[op.scalar(0, "I", 0)]
                if k == 0:
                    versions.append(version)
                if custom is not None and code == 32:  # BuiltinOperator_CUSTOM
                    customs.add(custom)
                    continue
                builtins.add(code)
                types = op_types.setdefault(code, set())
                for ti in op.vector(1, "i") + op.vector(2, "i"):
                    if ti >= 0:
                        ttype = tensors[ti].scalar(1, "b", 0)
                        types.add(_TENSOR_TYPES.get(ttype, str(ttype)))
        main = subgraphs[0]
        tens = main.tables(0)
        inputs = tuple(_tensor(tens[i]) for i in main.vector(1, "i"))
        outputs = tuple(_tensor(tens[i]) for i in main.vector(2, "i"))
    except (struct.error, IndexError) as e:
        raise McuError(f"{path} is a corrupt TFLite flatbuffer ({e})", "re-export the model")
    return ModelInfo(
        path=path,
        size=len(buf),
        builtin_codes=tuple(sorted(builtins)),
        custom_codes=tuple(sorted(customs)),
        op_types=op_types,
        inputs=inputs,
        outputs=outputs,
        num_operators=nops,
        op_versions=tuple(versions),
    )


def builtin_operator_names(tflm_root: str | Path) -> dict[int, str]:
    """``{code: NAME}`` from TFLM's own ``schema.fbs`` ``enum BuiltinOperator``."""
    p = Path(tflm_root) / _SCHEMA_REL
    try:
        text = p.read_text()
    except OSError:
        raise McuError(f"TFLM schema {p} not found", "pass a complete TFLite Micro source tree")
    m = re.search(r"enum\s+BuiltinOperator\s*:\s*\w+\s*\{(.*?)\}", text, re.S)
    if not m:
        raise McuError(f"no enum BuiltinOperator in {p}", "pass a complete TFLite Micro source tree")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    out = {}
    for name, val in re.findall(r"([A-Z0-9_]+)\s*=\s*(-?\d+)", body):
        out[int(val)] = name
    return out
