"""The ARM cores of the Raspberry Pis, as qemu names them, and the /proc/cpuinfo each Pi's kernel prints.

qemu's user mode passes the host's x86 /proc/cpuinfo through, and LiteRT's cpuinfo library then crashes
at `Interpreter()`; the user variant therefore ships an ARM one for the named core. The core is always
named: qemu's `-cpu max` makes XNNPACK's int8 and dynamic-range kernels wrong (SME).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from edgepipe.targets.emulated_pi.tools import BuildError


@dataclasses.dataclass(frozen=True)
class CpuModel:
    """A Raspberry Pi's ARM core, as qemu names it and as the Pi's kernel prints it in /proc/cpuinfo."""

    qemu: str  # qemu's -cpu name
    core: str  # ARM's name of the core
    board: str  # the board's `Model` line
    part: int  # MIDR part number (`CPU part`)
    variant: int  # MIDR variant (`CPU variant`)
    revision: int  # MIDR revision (`CPU revision`)
    features: str  # the `Features` line of the Pi's own kernel
    board_revision: str  # the `Revision` line (board revision code)
    hardware: str | None = "BCM2835"  # the `Hardware` line, where the Pi's kernel prints one
    bogomips: str = "108.00"  # 54 MHz arch timer, as on every Pi 3/4/5


#: The cores of the Raspberry Pis one would bench on, keyed by qemu's name. Features are each board's
#: own (a BCM2711 has no crypto extensions); what programs see through HWCAP is qemu's model of the core.
CPUS: dict[str, CpuModel] = {
    "cortex-a72": CpuModel(
        "cortex-a72",
        "Cortex-A72",
        "Raspberry Pi 4 Model B Rev 1.1",
        0xD08,
        0x0,
        3,
        "fp asimd evtstrm crc32 cpuid",
        "c03111",
    ),
    "cortex-a76": CpuModel(
        "cortex-a76",
        "Cortex-A76",
        "Raspberry Pi 5 Model B Rev 1.0",
        0xD0B,
        0x4,
        1,
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
        "d04170",
        hardware=None,
    ),
    "cortex-a53": CpuModel(
        "cortex-a53",
        "Cortex-A53",
        "Raspberry Pi 3 Model B Rev 1.2",
        0xD03,
        0x0,
        4,
        "fp asimd evtstrm crc32 cpuid",
        "a02082",
    ),
}


def cpu_model(name: str) -> CpuModel:
    try:
        return CPUS[name]
    except KeyError:
        raise BuildError(
            f"unknown cpu {name!r}",
            f"use one of {', '.join(CPUS)} (qemu's -cpu max breaks "
            "XNNPACK's int8 kernels, so a Pi emulation always names its core)",
        ) from None


def cpuinfo_text(cpu: str = "cortex-a72", cores: int = 4) -> str:
    """The /proc/cpuinfo a Raspberry Pi with this core prints (64-bit Raspberry Pi OS kernel).

    `cores` processor blocks (every Pi 3/4/5 has 4), then the board lines. The serial number is zeros.
    """
    m = cpu_model(cpu)
    if not 1 <= cores <= 64:
        raise ValueError(f"cores must be 1..64, not {cores}")
    blocks = [
        f"processor\t: {i}\nBogoMIPS\t: {m.bogomips}\nFeatures\t: {m.features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: {m.variant:#x}\nCPU part\t: {m.part:#05x}\n"
        f"CPU revision\t: {m.revision}\n"
        for i in range(cores)
    ]
    board = (f"Hardware\t: {m.hardware}\n" if m.hardware else "") + (
        f"Revision\t: {m.board_revision}\nSerial\t\t: 0000000000000000\nModel\t\t: {m.board}\n"
    )
    return "\n".join(blocks) + "\n" + board


def write_cpuinfo(rootfs: str | Path, cpu: str = "cortex-a72", cores: int = 4) -> Path:
    """Write an ARM /proc/cpuinfo for `cpu` at ROOTFS/proc/cpuinfo (what qemu-user's -L makes programs read).

    Without it, qemu 7.2 user mode shows aarch64 programs the host's x86 cpuinfo and LiteRT segfaults.
    """
    path = Path(rootfs) / "proc" / "cpuinfo"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".cpuinfo.tmp")
    tmp.write_text(cpuinfo_text(cpu, cores))
    tmp.chmod(0o444)
    os.replace(tmp, path)
    return path
