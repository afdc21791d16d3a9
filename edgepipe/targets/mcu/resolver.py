"""Generate the op-resolver header from TFLM's own ``micro_mutable_op_resolver.h``.

The op-name -> method mapping is read from the header itself: every
``TfLiteStatus Add<Name>(...) { ... }`` method is parsed for the
``AddBuiltin(BuiltinOperator_<OP>, ...)`` or ``AddCustom("<name>", ...)`` call
it makes and for its default ``Register_<FN>()`` registration.  Nothing is
guessed from op names (guessing gives wrong names such as ``AddPadv2``,
``AddUnidirectionalSequenceLstm`` or ``AddCumsum``; TFLM's are ``AddPadV2``,
``AddUnidirectionalSequenceLSTM``, ``AddCumSum``).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.model import ModelInfo, builtin_operator_names

__all__ = [
    "ResolverMethod",
    "parse_resolver_header",
    "resolver_header_path",
    "model_ops_header",
    "all_ops_header",
    "check_header_compiles",
    "int8_registrations",
    "RESOLVER_REL",
]

RESOLVER_REL = "tensorflow/lite/micro/micro_mutable_op_resolver.h"

# "TfLiteStatus AddFoo(<params>) {" -- params may span lines.
_METHOD_RE = re.compile(r"TfLiteStatus\s+(Add\w+)\s*\(([^)]*(?:\([^)]*\)[^)]*)*)\)\s*\{")
_BUILTIN_RE = re.compile(r"AddBuiltin\s*\(\s*BuiltinOperator_(\w+)")
_CUSTOM_RE = re.compile(r"AddCustom\s*\(\s*(?:\"([^\"]+)\"|([\w:]+\(\)))")
_REGISTER_RE = re.compile(r"((?:tflite::)?(?:tflm_signal::)?Register_\w+)\s*\(\)")


@dataclass(frozen=True)
class ResolverMethod:
    """One ``Add<Name>`` method of ``MicroMutableOpResolver``.

    Attributes:
        method: e.g. ``"AddConv2D"``.
        kind: ``"builtin"`` or ``"custom"``.
        op: ``BuiltinOperator`` name (``"CONV_2D"``) or the custom op name
            string, or a C++ expression yielding it (``tflite::GetString_ETHOSU()``).
        register_fn: the default registration function, e.g. ``"Register_CONV_2D"``
            (without namespace), or ``None`` if not found.
        takes_registration: the method accepts a registration argument.
    """

    method: str
    kind: str
    op: str
    register_fn: str | None
    takes_registration: bool


def _method_body(text: str, start: int) -> str:
    """Text of the brace block that opens just before *start*."""
    depth, i = 1, start
    while i < len(text) and depth:
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        i += 1
    return text[start : i - 1]


def parse_resolver_header(text: str) -> dict[str, ResolverMethod]:
    """Parse the header text; return ``{op key: ResolverMethod}``.

    The key is the builtin op name (``"CONV_2D"``) for builtin ops and
    ``"custom:<name>"`` for custom ops.  ``AddBuiltin``/``AddCustom`` themselves
    are not op methods and are skipped.
    """
    out: dict[str, ResolverMethod] = {}
    text = re.sub(r"//[^\n]*", "", text)
    for m in _METHOD_RE.finditer(text):
        name, params = m.group(1), m.group(2)
        if name in ("AddBuiltin", "AddCustom"):
            continue
        body = _method_body(text, m.end())
        reg = _REGISTER_RE.search(params) or _REGISTER_RE.search(body)
        reg_fn = reg.group(1).split("::")[-1] if reg else None
        takes = "TFLMRegistration" in params
        b = _BUILTIN_RE.search(body)
        if b:
            meth = ResolverMethod(name, "builtin", b.group(1), reg_fn, takes)
            out[b.group(1)] = meth
            continue
        c = _CUSTOM_RE.search(body)
        if c:
            op = c.group(1) or c.group(2)
            out[f"custom:{op}"] = ResolverMethod(name, "custom", op, reg_fn, takes)
    if not out:
        raise McuError(
            "no Add<Op> methods found in micro_mutable_op_resolver.h", "pass an unmodified TFLite Micro source tree"
        )
    return out


def resolver_header_path(tflm_root: str | Path) -> Path:
    p = Path(tflm_root) / RESOLVER_REL
    if not p.is_file():
        raise McuError(f"{p} not found", "pass a complete TFLite Micro source tree")
    return p


def _methods(tflm_root) -> dict[str, ResolverMethod]:
    return parse_resolver_header(resolver_header_path(tflm_root).read_text())


def int8_registrations(tflm_root: str | Path) -> dict[str, str]:
    """``{Register_X: header}`` for every ``Register_X_INT8()`` TFLM declares.

    Maps the base registration (``Register_CONV_2D``) to the kernel header
    (relative path) that declares ``Register_CONV_2D_INT8()``.
    """
    kdir = Path(tflm_root) / "tensorflow/lite/micro/kernels"
    out = {}
    for h in sorted(kdir.glob("*.h")):
        for fn in re.findall(r"TFLMRegistration\s+(Register_\w+)_INT8\s*\(\s*\)\s*;", h.read_text()):
            out[fn] = str(h.relative_to(tflm_root))
    return out


def _header(calls: list[str], includes: list[str], comment: str) -> str:
    n = len(calls)
    inc = "".join(f'#include "{i}"\n' for i in includes)
    lines = "".join(f"  if (resolver.{c} != kTfLiteOk) return kTfLiteError;\n" for c in calls)
    return f"""// Generated by edgepipe (mcu target). Do not edit.
// {comment}
#ifndef EDGEPIPE_MODEL_OPS_H_
#define EDGEPIPE_MODEL_OPS_H_

#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
{inc}
// Number of ops registered by RegisterModelOps().
constexpr unsigned int kModelOpCount = {n};

// Registers every op the model uses with `resolver`.
template <unsigned int tOpCount>
inline TfLiteStatus RegisterModelOps(
    tflite::MicroMutableOpResolver<tOpCount>& resolver) {{
  static_assert(tOpCount >= kModelOpCount, "resolver too small");
{lines}  return kTfLiteOk;
}}

#endif  // EDGEPIPE_MODEL_OPS_H_
"""


def model_ops_header(
    model: ModelInfo, tflm_root: str | Path, *, int8_kernels: bool = False
) -> tuple[str, list[ResolverMethod]]:
    """The ``model_ops.h`` text for *model* and the methods it calls.

    Args:
        int8_kernels: for an op whose every input/output tensor in the model is
            int8 (or int32, i.e. biases) and for which TFLM declares an
            ``Register_<OP>_INT8()`` variant, register that variant (smaller
            flash: CMSIS-NN's int16/int4 paths are not linked).  Only valid
            when everything is compiled with ``-DCMSIS_NN`` (build.py does).

    Raises:
        McuError: the model uses an op TFLM has no ``Add`` method for.
    """
    methods = _methods(tflm_root)
    names = builtin_operator_names(tflm_root)
    int8 = int8_registrations(tflm_root) if int8_kernels else {}
    chosen, calls, includes, missing = [], [], [], []
    for code in model.builtin_codes:
        op = names.get(code, f"#{code}")
        m = methods.get(op)
        if m is None:
            missing.append(op)
            continue
        chosen.append(m)
        types = model.op_types.get(code, set())
        if int8_kernels and m.takes_registration and m.register_fn in int8 and types and types <= {"int8", "int32"}:
            calls.append(f"{m.method}(tflite::{m.register_fn}_INT8())")
            if int8[m.register_fn] not in includes:
                includes.append(int8[m.register_fn])
        else:
            calls.append(f"{m.method}()")
    for cname in model.custom_codes:
        m = methods.get(f"custom:{cname}")
        if m is None:
            missing.append(f"custom op {cname}")
            continue
        chosen.append(m)
        calls.append(f"{m.method}()")
    if missing:
        raise McuError(
            f"model {model.path.name} uses ops TFLite Micro cannot run: {', '.join(missing)}",
            "re-export the model with only TFLM-supported builtin ops (see micro_mutable_op_resolver.h)",
        )
    comment = (
        f"Ops of {model.path.name}: "
        + ", ".join(m.op for m in chosen)
        + (" (int8-only kernels where available)" if int8_kernels else "")
    )
    return _header(calls, includes, comment), chosen


def all_ops_header(tflm_root: str | Path) -> tuple[str, list[ResolverMethod]]:
    """A header that registers EVERY op TFLM's resolver has an ``Add`` method for."""
    methods = sorted(_methods(tflm_root).values(), key=lambda m: m.method)
    calls = [f"{m.method}()" for m in methods]
    return _header(calls, [], "Every op of micro_mutable_op_resolver.h"), methods


def check_header_compiles(
    header_text: str, tflm_root: str | Path, *, include_dirs: list[str], flags: list[str], gxx: str
) -> None:
    """Compile a translation unit using *header_text* with ``-fsyntax-only``.

    It instantiates ``RegisterModelOps`` on a resolver of exactly
    ``kModelOpCount`` entries, so a wrong method name or signature fails.

    Raises:
        McuError: the header does not compile (first error line in the message).
    """
    with tempfile.TemporaryDirectory(prefix="ep-ops-") as td:
        (Path(td) / "model_ops.h").write_text(header_text)
        tu = Path(td) / "check.cc"
        tu.write_text(
            '#include "model_ops.h"\n'
            "TfLiteStatus edgepipe_check() {\n"
            "  static tflite::MicroMutableOpResolver<kModelOpCount> r;\n"
            "  return RegisterModelOps(r);\n}\n"
        )
        cmd = [gxx, *flags, f"-I{td}", *[f"-I{d}" for d in include_dirs], "-fsyntax-only", str(tu)]
        r = subprocess.run(cmd, cwd=tflm_root, capture_output=True, text=True)
    if r.returncode != 0:
        err = next((l for l in r.stderr.splitlines() if "error" in l), r.stderr[:200])
        raise McuError(
            f"generated op-resolver header does not compile: {err}",
            "regenerate it from this TFLM tree's micro_mutable_op_resolver.h",
            detail=r.stderr,
        )
