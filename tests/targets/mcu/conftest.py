"""What the MCU tests need: TFLite Micro's sources, the cross toolchain and QEMU (each skips, saying what to
install, when missing), MLPerf Tiny's reference models and a small int8 MNIST-shaped model made here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgepipe.core import system
from edgepipe.targets.mcu.sources import default_mirrors

MIRROR = (
    Path(os.environ["EDGEPIPE_TFLM_SRC"])
    if os.environ.get("EDGEPIPE_TFLM_SRC")
    else next((m for m in default_mirrors() if m.is_dir()), default_mirrors()[0])
)
MLPERF = MIRROR / "mlperf_tiny"
APT = system.install_command([p for p in system.PACKAGES if p.group == "run"])


def have_toolchain() -> bool:
    return all(
        shutil.which(t) for t in ("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-size", "qemu-system-arm")
    )


needs_toolchain = pytest.mark.skipif(not have_toolchain(), reason=f"no Cortex-M toolchain or QEMU ({APT})")


@pytest.fixture(scope="session")
def tflm_sources():
    """The unpacked TFLite Micro tree, or skip when no sources are available."""
    from edgepipe.targets.mcu.errors import McuError
    from edgepipe.targets.mcu.sources import locate_sources

    if not MIRROR.exists():
        pytest.skip(f"no TFLite Micro sources ({MIRROR} missing; set EDGEPIPE_TFLM_SRC)")
    try:
        return locate_sources(MIRROR)
    except McuError as e:
        pytest.skip(f"no usable TFLite Micro sources: {e}")


@pytest.fixture(scope="session")
def toolchain():
    if not have_toolchain():
        pytest.skip(f"arm-none-eabi toolchain / qemu-system-arm not installed ({APT})")
    from edgepipe.targets.mcu.toolchain import find_toolchain

    return find_toolchain()


@pytest.fixture(scope="session")
def mnist_model(tmp_path_factory) -> Path:
    """An int8 28x28x1 classifier with the MNIST student's op set (CONV_2D, RESHAPE, FULLY_CONNECTED,
    SOFTMAX), from random weights: what the emulator must reproduce bit for bit, whatever it predicts."""
    from edgepipe.core._tf import keras, tf
    from edgepipe.training.nets import strided_cnn

    keras.utils.set_random_seed(0)
    model = strided_cnn((28, 28, 1), 10, widths=(8, 16, 16))
    rng = np.random.default_rng(0)
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([rng.random((1, 28, 28, 1), np.float32)] for _ in range(16))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("mnist_model") / "student_int8.tflite"
    path.write_bytes(c.convert())
    return path
