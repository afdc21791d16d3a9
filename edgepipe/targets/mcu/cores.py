"""The Cortex-M cores edgepipe builds for, the QEMU boards that emulate them, and TFLite Micro's compiler
flags and include folders for each (those of ``make TARGET=cortex_m_generic TARGET_ARCH=<cpu>+fp
OPTIMIZED_KERNEL_DIR=cmsis_nn BUILD_TYPE=release``)."""

from __future__ import annotations

from dataclasses import dataclass

from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.sources import DOWNLOADS_REL

__all__ = [
    "Core",
    "CORES",
    "get_core",
    "BOARDS",
    "compile_flags",
    "include_dirs",
    "OPT_CORE",
    "OPT_KERNEL",
    "OPT_THIRD_PARTY",
]


@dataclass(frozen=True)
class Core:
    """A Cortex-M CPU and the QEMU board that emulates it.

    Attributes:
        name: ``cortex-m4`` etc. (TFLM's ``TARGET_ARCH`` minus ``+fp``).
        core: TFLM's ``CORE`` (M4, M7, M55) -> ``-DCPU_<core>=1``.
        machine: QEMU ``-M`` board.
        qemu_cpu: QEMU ``-cpu``.
        extra_defines: target-specific defines TFLM adds.

    The board's memory map, linker script and timer are in :data:`BOARDS`.
    """

    name: str
    core: str
    machine: str
    qemu_cpu: str
    extra_defines: tuple = ()

    @property
    def arm_cpu(self) -> str:
        return f"ARMC{self.core}"

    @property
    def cpu_flags(self) -> list[str]:
        # TARGET_ARCH=cortex-mX+fp -> GCC_TARGET_ARCH=cortex-mX, FPU auto, hard.
        return [f"-mcpu={self.name}", "-mfpu=auto", "-mfloat-abi=hard", "-mthumb"]


CORES = {
    "cortex-m4": Core("cortex-m4", "M4", "mps2-an386", "cortex-m4"),
    "cortex-m7": Core("cortex-m7", "M7", "mps2-an500", "cortex-m7"),
    "cortex-m55": Core("cortex-m55", "M55", "mps3-an547", "cortex-m55", ("-DARM_MODEL_USE_PMU_COUNTERS",)),
}


def get_core(name: str | Core) -> Core:
    if isinstance(name, Core):
        return name
    key = str(name).lower().replace("+fp", "")
    if key not in CORES:
        raise McuError(f"unknown MCU target {name!r}", "use one of " + ", ".join(sorted(CORES)))
    return CORES[key]


#: QEMU machine -> memory layout and timer clock.
BOARDS = {
    "mps2-an386": {
        "cpu": "cortex-m4",
        "flash": (0x00000000, 0x400000),
        "ram": (0x20000000, 0x400000),
        "instr_per_tick": 40,
        "script": "mps2_an386.ld",
        "timer": 0x40000000,
    },
    "mps2-an500": {
        "cpu": "cortex-m7",
        "flash": (0x00000000, 0x400000),
        "ram": (0x20000000, 0x400000),
        "instr_per_tick": 40,
        "script": "mps2_an500.ld",
        "timer": 0x40000000,
    },
    # The AN547's CMSDK timers sit behind a TrustZone PPC and read as zero
    # from the reset (secure) state; the harness times with SysTick instead.
    # SysTick runs from the 32 MHz CPU clock: 31.25 ns = 31.25 instructions.
    "mps3-an547": {
        "cpu": "cortex-m55",
        "flash": (0x00000000, 0x80000),
        "ram": (0x20000000, 0x80000),
        "instr_per_tick": 31.25,
        "script": "mps3_an547.ld",
        "timer": None,
    },
}


# ----------------------------------------------------------------- flags ---

_WARNINGS = [
    "-Wsign-compare",
    "-Wdouble-promotion",
    "-Wunused-variable",
    "-Wunused-function",
    "-Wswitch",
    "-Wvla",
    "-Wall",
    "-Wextra",
    "-Wmissing-field-initializers",
    "-Wstrict-aliasing",
    "-Wno-unused-parameter",
]
# COMMON_FLAGS of TFLM's Makefile + ADDITIONAL_DEFINES (OPTIMIZED_KERNEL_DIR,
# OPTIMIZE_KERNELS_FOR) + BUILD_TYPE=release.
_COMMON = [
    "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables",
    "-ffunction-sections",
    "-fdata-sections",
    "-fmessage-length=0",
    "-DTF_LITE_STATIC_MEMORY",
    "-DTF_LITE_DISABLE_X86_NEON",
    *_WARNINGS,
    "-DCMSIS_NN",
    "-DKERNELS_OPTIMIZED_FOR_SPEED",
    "-DNDEBUG",
    "-DTF_LITE_STRIP_ERROR_STRINGS",
]
_CXX_ONLY = ["-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics", "-Wnon-virtual-dtor", "-std=c++17"]
_C_ONLY = ["-Wimplicit-function-declaration", "-std=c17"]

OPT_CORE = "-Os"  # CORE_OPTIMIZATION_LEVEL (gcc)
OPT_KERNEL = "-O2"  # KERNEL_OPTIMIZATION_LEVEL
OPT_THIRD_PARTY = "-O2"  # THIRD_PARTY_KERNEL_OPTIMIZATION_LEVEL


def _platform_flags(t: Core) -> list[str]:
    # PLATFORM_FLAGS of targets/cortex_m_generic_makefile.inc (minus -MD).
    return [
        *t.cpu_flags,
        "-DTF_LITE_MCU_DEBUG_LOG",
        "-mlittle-endian",
        "-Wno-type-limits",
        "-Wno-unused-private-field",
        "-fomit-frame-pointer",
        f"-DCPU_{t.core}=1",
        "-funsigned-char",
        f'-DCMSIS_DEVICE_ARM_CORTEX_M_XX_HEADER_FILE="{t.arm_cpu}.h"',
        f"-D{t.arm_cpu}",
        *t.extra_defines,
        # ext_libs/cmsis_nn.inc
        "-DARM_NN_ENABLE_F16=0",
        "-DARM_NN_ENABLE_F32=0",
    ]


def compile_flags(core: Core | str, lang: str) -> list[str]:
    """TFLM's flags for *lang* (``"c"`` or ``"c++"``), without -O and -I."""
    t = get_core(core)
    extra = _CXX_ONLY if lang == "c++" else _C_ONLY
    return [*extra, *_COMMON, *_platform_flags(t)]


def include_dirs(core: Core | str) -> list[str]:
    """Include dirs relative to the TFLM root, in TFLM's order."""
    t = get_core(core)
    dl = DOWNLOADS_REL
    return [
        ".",
        dl,
        f"{dl}/gemmlowp",
        f"{dl}/flatbuffers/include",
        f"{dl}/kissfft",
        f"{dl}/ruy",
        # cortex_m_generic_makefile.inc
        f"{dl}/cmsis/Cortex_DFP/Device/{t.arm_cpu}/Include",
        f"{dl}/cmsis/CMSIS/Core/Include",
        # ext_libs/cmsis_nn.inc
        f"{dl}/cmsis",
        f"{dl}/cmsis_nn",
        f"{dl}/cmsis/CMSIS/Core/Include",
        f"{dl}/cmsis_nn/Include",
    ]
