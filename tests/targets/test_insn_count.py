"""Instruction classes counted on the emulated Pi's core (issue #31, first piece).

The real thing: bookworm's aarch64 CPython with the pinned LiteRT wheel under Debian's dynamic
`qemu-aarch64 -cpu <core>` with edgepipe's TCG plugin. Skips, saying why, on a machine without a
plugin-capable qemu-user, a C compiler or the cached emulated Pi.
"""

from __future__ import annotations

import os

import pytest

from edgepipe.targets import emulated_pi
from edgepipe.targets.emulated_pi import insn_count


def _why_not() -> str | None:
    why = insn_count.plugin_unavailable()
    if why:
        return why
    if emulated_pi.missing_tools("python"):
        return f"missing {', '.join(emulated_pi.missing_tools('python'))}"
    for cpu in ("cortex-a72", "cortex-a76"):
        if emulated_pi.user_build_state(cpu) == "none" and os.geteuid() != 0:
            return "the emulated Pi is not built and building it needs root (mmdebstrap)"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))

#: What QEMU's own disassembler calls the instructions each class must hold (and nothing else may).
EXPECTED = {
    "fmla": "vfma_f32",
    "smlal": "vmla_int",
    "smlal2": "vmla_int",
    "sadalp": "vmla_int",
    "ld1": "vec_load",
    "ld1r": "vec_load",
    "st1": "vec_store",
    "prfm": "prefetch",
    "b.ne": "branch",
    "cbz": "branch",
    "ret": "branch",
    "madd": "alu",
    "svc": "system",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small conv net (28x28x1 -> 3 convs -> 10) as float32 and full-int8 `.tflite` files."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf

    keras = tf.keras
    tf.random.set_seed(0)
    net = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    root = tmp_path_factory.mktemp("models")
    out = {}
    for precision in ("float32", "int8"):
        conv = tf.lite.TFLiteConverter.from_keras_model(net)
        if precision == "int8":
            rng = np.random.default_rng(0)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([rng.random((1, 28, 28, 1), np.float32)] for _ in range(8))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        out[precision] = root / f"net_{precision}.tflite"
        out[precision].write_bytes(conv.convert())
    return out


def _is_sdot(word: int) -> bool:
    """SDOT (vector) or SDOT (by element), register fields cleared (QEMU 7.2 prints these as `.byte`)."""
    return (word & 0xBFE0FC00) == 0x0E809400 or (word & 0xBFC0F400) == 0x0F80E000


def test_int8_kernels_follow_the_named_core_and_every_class_holds_what_it_should(models):
    """XNNPACK picks its int8 GEMM by the core it detects: SDOT on a Cortex-A76 (dotprod), the
    SMULL/SMLAL/SADALP kernels on a Cortex-A72 (none). The encoding classes agree with QEMU's
    disassembler on every executed instruction named in EXPECTED; what it cannot name in the dot
    product class is SDOT."""
    seen = {}
    for cpu in ("cortex-a72", "cortex-a76"):
        run = insn_count.run_counted(models["int8"], 2, cpu=cpu, mnemonics=True)
        by_mnemonic = {}
        for key, n in run["mnemonics"].items():
            mnemonic, cls = key.rsplit("/", 1)
            by_mnemonic.setdefault(mnemonic, {})[cls] = n
        for mnemonic, cls in EXPECTED.items():
            assert set(by_mnemonic.get(mnemonic, {})) <= {cls}, (cpu, mnemonic, by_mnemonic[mnemonic])
        seen[cpu] = {m: c for m, c in by_mnemonic.items() if "vdot_i8" in c}
        assert "smlal" in by_mnemonic if cpu == "cortex-a72" else "smlal" not in by_mnemonic
    assert seen["cortex-a72"] == {}
    assert seen["cortex-a76"] and all(m.startswith("raw:") and _is_sdot(int(m[4:], 16)) for m in seen["cortex-a76"])


def test_steady_state_counts_are_cached_and_the_multiply_accumulates_repeat_exactly(models, tmp_path):
    """N and 2N invokes, subtracted: float32 work is vector FMLA; two counts of the same model agree
    exactly on the multiply-accumulate classes and within 3 % in total (the scalar classes move by a
    few tenths of a percent from run to run); a second call is a cache lookup."""
    first = insn_count.steady_state_counts(models["float32"], cpu="cortex-a72", invokes=2, cache_dir=tmp_path)
    assert first["per_invoke"]["vfma_f32"] > 0 and first["per_invoke"]["vdot_i8"] == 0
    again = insn_count.run_counted(models["float32"], 2, cpu="cortex-a72")
    more = insn_count.run_counted(models["float32"], 4, cpu="cortex-a72")
    repeat = insn_count.steady_state(again, more, 2)
    macs = ("vfma_f32", "vdot_i8", "vmla_int")
    assert {c: first["per_invoke"][c] for c in macs} == {c: repeat["per_invoke"][c] for c in macs}
    assert repeat["total"] == pytest.approx(first["total"], rel=0.03)  # scalar spin-waits move with the load
    assert insn_count.steady_state_counts(models["float32"], cpu="cortex-a72", invokes=2, cache_dir=tmp_path) == first
