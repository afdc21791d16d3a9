"""Target profiles: what a device is, how edgepipe reaches it, and what it can hold.

A recipe names one with `target:` (top level, the default for its bench and bundle stages) or a stage's
own `target:` param; `--target` on the command line overrides both. A name is a built-in profile below
or the path of a user's YAML file with the same keys (validated like a recipe: unknown keys, wrong types
and out-of-range values are one error line).

A microcontroller profile with `measure: emulated` is measured on QEMU's model of its core, with TFLite
Micro and CMSIS-NN cross-compiled for it (`edgepipe.targets.mcu`): accuracy, instructions, flash and RAM
are measured on the target's instruction set, and latency is instructions x a `cycles_per_instruction`
calibrated against published measurements of a real board, when the profile has one. `measure: estimate`
falls back to MACs x `cycles_per_mac`, a planning estimate labelled as such wherever it is shown.

A Raspberry Pi profile (`rpi4`, `rpi5`) is measured on the device over SSH; with `measure: emulated` (the
profile's or a bench's) its arm64 Python and LiteRT run under QEMU's model of its `cpu` on this machine:
accuracy on the Pi's instruction set, no latency.

What a profile's kind, reach and measure mean is its backend's business: `edgepipe.targets.backends`
resolves the backend that measures on a profile, and refuses a profile that lacks what that backend
needs (a microcontroller's RAM, flash and clock; an emulated one's cpu and qemu_machine; an emulated
Pi's cpu).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import yaml

from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.params import build, param
from edgepipe.core.paths import SAFE_NAME
from edgepipe.core.yamlio import load_yaml

Kind = Literal["cpu", "edgetpu", "android", "mcu"]


@dataclasses.dataclass
class Target:
    """One device profile."""

    name: str = param("", "profile name (the file name for a user profile)")
    description: str = param("", "the board, in a few words")
    kind: Kind = param("cpu", "cpu: LiteRT on Linux; edgetpu: Coral; android: adb + benchmark_model; mcu: TFLite Micro")
    runtime: str = param("ai-edge-litert", "what runs the model on the device")
    delegate: str | None = param(None, "external delegate the runtime loads (Coral: libedgetpu.so.1)")
    reach: Literal["local", "ssh", "adb", "none"] = param(
        "local", "how figures are measured: this process, ssh user@host, adb, or not at all (estimates)"
    )
    needs_int8: bool = param(False, "the runtime executes only fully int8-quantized graphs")
    ram_bytes: int | None = param(None, "RAM available to the model (MCU: for the tensor arena)", min=1)
    flash_bytes: int | None = param(None, "flash available for the model and the runtime's code", min=1)
    clock_mhz: int | None = param(None, "CPU clock", min=1)
    cycles_per_mac: float | None = param(None, "int8 cycles per multiply-accumulate (MCU latency estimate)", min=0.01)
    runtime_flash_bytes: int | None = param(None, "the runtime's own code size, before kernels (estimate)", min=0)
    arena_margin: float = param(0.1, "fraction added to the measured arena before the fit check", min=0.0, max=4.0)
    python: str = param("python3", "Python with ai-edge-litert and numpy on the device (reach: ssh)")
    cpu: str | None = param(
        None,
        "the core: MCU: TFLite Micro is compiled for it and emulated (cortex-m4, cortex-m7, "
        "cortex-m55); Pi: QEMU emulates it with measure: emulated (cortex-a72, cortex-a76)",
    )
    measure: Literal["emulated", "estimate"] | None = param(
        None,
        "emulated: MCU: TFLite Micro + CMSIS-NN built for cpu, run on qemu_machine; Pi: LiteRT in the Pi's arm64 "
        "Python under QEMU's cpu, no latency. estimate: MCU: MACs x cycles_per_mac, no toolchain needed. null: "
        "measured on the device",
    )
    qemu_machine: str | None = param(None, "MCU: the QEMU board that emulates cpu (mps2-an386, mps2-an500, mps3-an547)")
    cycles_per_instruction: float | None = param(
        None,
        "MCU: cycles per emulated instruction, calibrated on a real board (latency = instructions x this / "
        "clock); null: uncalibrated, no latency in ms is shown",
        min=0.1,
        max=20.0,
    )
    calibration: str = param("", "where cycles_per_instruction comes from")
    tflm_src: str | None = param(
        None,
        "MCU: TensorFlow Lite Micro sources (a checkout or an offline mirror); null: "
        "$EDGEPIPE_TFLM_SRC, else ../shared/mcu",
    )

    def __post_init__(self):
        if not SAFE_NAME.match(self.name):  # it names the bundle's folder
            raise ValueError(
                f"name {self.name!r} is not usable as a folder name; fix: use letters, digits, _, - "
                "and . (not first), no / or .."
            )

    def runs(self, variant: str) -> bool:
        """Whether this target's runtime can execute a model of `variant` (an int8-only runtime, such as
        TFLite Micro or the Edge TPU, runs the int8 variant alone)."""
        return variant == "int8" or not self.needs_int8


# Built-in profiles. MCU cycles/MAC are rough CMSIS-NN / ESP-NN int8 figures for small CNNs: an estimate
# to rank models by, labelled as such, not a substitute for a measurement on the board.
BUILTIN: dict[str, dict] = {
    "host": dict(description="this machine, LiteRT (XNNPACK) on the CPU", kind="cpu", reach="local"),
    "rpi4": dict(
        description="Raspberry Pi 4 (Cortex-A72 x4, 1.5 GHz), LiteRT on 64-bit Raspberry Pi OS",
        kind="cpu",
        reach="ssh",
        ram_bytes=1 << 30,
        clock_mhz=1500,
        cpu="cortex-a72",
    ),
    "rpi5": dict(
        description="Raspberry Pi 5 (Cortex-A76 x4, 2.4 GHz), LiteRT on 64-bit Raspberry Pi OS",
        kind="cpu",
        reach="ssh",
        ram_bytes=2 << 30,
        clock_mhz=2400,
        cpu="cortex-a76",
    ),
    "coral": dict(
        description="Coral USB Accelerator (Edge TPU) on a Linux host reached over SSH",
        kind="edgetpu",
        runtime="ai-edge-litert + libedgetpu",
        delegate="libedgetpu.so.1",
        reach="ssh",
        needs_int8=True,
    ),
    "android": dict(
        description="an Android phone over adb, LiteRT's benchmark_model binary",
        kind="android",
        runtime="benchmark_model",
        reach="adb",
    ),
    # The Cortex-M4's latency factor is fitted to MLPerf Tiny's published results of this very board with
    # CMSIS-NN kernels (benchmarks/README.md, `make bench`); the M7 and M55 have no published match, so
    # they report instructions and no milliseconds.
    "cortex-m4": dict(
        description="STM32L4R5-class Cortex-M4F (MLPerf Tiny's NUCLEO-L4R5ZI), 120 MHz, 640 KB SRAM, "
        "2 MB flash; TFLite Micro + CMSIS-NN, emulated on QEMU mps2-an386",
        kind="mcu",
        runtime="tflite-micro",
        reach="none",
        needs_int8=True,
        ram_bytes=640 * 1024,
        flash_bytes=2048 * 1024,
        clock_mhz=120,
        cycles_per_mac=2.0,
        runtime_flash_bytes=24 * 1024,
        cpu="cortex-m4",
        measure="emulated",
        qemu_machine="mps2-an386",
        cycles_per_instruction=1.561,
        calibration="the median cycles per emulated instruction of MLPerf Tiny v1.0's microTVM + "
        "CMSIS-NN results on the NUCLEO-L4R5ZI at 120 MHz (the fit and its error: benchmarks/README.md)",
    ),
    "cortex-m7": dict(
        description="STM32F746-class Cortex-M7, 216 MHz, 320 KB RAM, 1 MB flash; TFLite Micro + "
        "CMSIS-NN, emulated on QEMU mps2-an500 (instructions; latency uncalibrated)",
        kind="mcu",
        runtime="tflite-micro",
        reach="none",
        needs_int8=True,
        ram_bytes=320 * 1024,
        flash_bytes=1024 * 1024,
        clock_mhz=216,
        cycles_per_mac=1.0,
        runtime_flash_bytes=24 * 1024,
        cpu="cortex-m7",
        measure="emulated",
        qemu_machine="mps2-an500",
    ),
    "cortex-m55": dict(
        description="Cortex-M55 with Helium (Corstone-300 class), 512 KB RAM, 512 KB flash at 32 MHz "
        "as emulated; TFLite Micro + CMSIS-NN MVE kernels on QEMU mps3-an547 (instructions only)",
        kind="mcu",
        runtime="tflite-micro",
        reach="none",
        needs_int8=True,
        ram_bytes=512 * 1024,
        flash_bytes=512 * 1024,
        clock_mhz=32,
        runtime_flash_bytes=24 * 1024,
        cpu="cortex-m55",
        measure="emulated",
        qemu_machine="mps3-an547",
    ),
    "esp32-s3": dict(
        description="ESP32-S3 (Xtensa LX7, 240 MHz), 512 KB SRAM, 8 MB flash, TFLite Micro + ESP-NN",
        kind="mcu",
        runtime="tflite-micro",
        reach="none",
        needs_int8=True,
        ram_bytes=512 * 1024,
        flash_bytes=8 * 1024 * 1024,
        clock_mhz=240,
        cycles_per_mac=1.5,
        runtime_flash_bytes=32 * 1024,
        measure="estimate",
    ),
}


def load_target(name_or_path: str) -> Target:
    """A built-in profile by name, or a user's profile YAML file.

    Raises:
        EdgepipeError: unknown name, unreadable file or an invalid profile, in one line.
    """
    if name_or_path in BUILTIN:
        return build(Target, {"name": name_or_path, **BUILTIN[name_or_path]}, f"target {name_or_path}")
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise EdgepipeError(
            f"unknown target '{name_or_path}'", f"use one of: {', '.join(BUILTIN)}, or the path of a profile .yaml file"
        )
    try:
        raw = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RecipeError(
            f"{path}: cannot read target profile ({' '.join(str(e).split())[:160]})",
            "fix the file (see `edgepipe targets` for the keys)",
        ) from None
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: a target profile is a mapping of key: value", "see `edgepipe targets cortex-m4` for the keys"
        )
    raw.setdefault("name", path.stem)
    return build(Target, raw, str(path))
