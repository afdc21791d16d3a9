"""Deployable flash and RAM of a linked firmware, broken down by origin (model data, CMSIS-NN, TFLM, libc, harness)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from edgepipe.targets.mcu.errors import McuError, one_line

__all__ = ["MemoryReport", "memory_report", "parse_map", "classify"]

FLASH_SECTIONS = (
    ".vectors",
    ".text",
    ".rodata",
    ".ARM.extab",
    ".ARM.exidx",
    ".preinit_array",
    ".init_array",
    ".fini_array",
)
RAM_SECTIONS = (".data", ".bss", ".heap", ".stack")

#: "padding" is alignment fill; it can be slightly negative when the linker
#: merged duplicate strings (the map lists input sizes before merging).
ORIGINS = ("model data", "CMSIS-NN", "TFLM kernels", "TFLM runtime", "libc/libm/libgcc", "harness", "padding", "other")


def classify(file: str, section: str = "") -> str:
    """Origin of an input section, from its file in the linker map."""
    if section.startswith(".rodata.edgepipe_model") or "model_data" in file:
        return "model data"
    base = os.path.basename(file)
    if "libep_cmsis_nn.a" in base:
        return "CMSIS-NN"
    if "libep_tflm_kernels.a" in base:
        return "TFLM kernels"
    if "libep_tflm_core.a" in base:
        member = base.split("(", 1)[-1]
        if member.startswith(("tensorflow_lite_kernels_", "tensorflow_lite_micro_kernels_")):
            return "TFLM kernels"
        return "TFLM runtime"
    if (
        re.search(r"lib(c|c_nano|m|gcc|g|g_nano|stdc\+\+|stdc\+\+_nano|supc\+\+|supc\+\+_nano|nosys)\.a", base)
        or "crt" in base
    ):
        return "libc/libm/libgcc"
    if base in ("harness.o", "startup.o", "syscalls.o", "arena.o"):
        return "harness"
    return "other"


def parse_map(text: str) -> list[tuple[str, str, int, str]]:
    """Input sections from a GNU ld map: ``[(output sec, input sec, size, file)]``.

    ``*fill*`` padding is reported with file ``"*fill*"``.  Only the part
    after "Linker script and memory map" is read (the discarded-sections list
    before it is ignored).
    """
    out = []
    lines = text.splitlines()
    try:
        start = next(i for i, l in enumerate(lines) if l.startswith("Linker script and memory map"))
    except StopIteration:
        raise McuError("not a GNU ld map file (no 'Linker script and memory map')", "link with -Wl,-Map=FILE")
    cur = None
    pending = None
    rx_full = re.compile(r"^ (\S+)\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(\S.*)$")
    rx_cont = re.compile(r"^\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)\s+(\S.*)$")
    rx_fill = re.compile(r"^ \*fill\*\s+(0x[0-9a-fA-F]+)\s+(0x[0-9a-fA-F]+)")
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        if not line[0].isspace():
            name = line.split()[0]
            cur = name if name.startswith(".") else None
            pending = None
            continue
        if cur is None:
            continue
        m = rx_fill.match(line)
        if m:
            out.append((cur, "*fill*", int(m.group(2), 16), "*fill*"))
            pending = None
            continue
        m = rx_full.match(line)
        if m and not m.group(1).startswith("*"):
            size = int(m.group(3), 16)
            if size:
                out.append((cur, m.group(1), size, m.group(4).strip()))
            pending = None
            continue
        if pending is not None:
            m = rx_cont.match(line)
            if m:
                size = int(m.group(2), 16)
                if size:
                    out.append((cur, pending, size, m.group(3).strip()))
            pending = None
            continue
        s = line.strip()
        if line.startswith(" ") and not line.startswith("  ") and " " not in s and not s.startswith("*"):
            pending = s
    return out


@dataclass
class MemoryReport:
    """Deployable flash and RAM of a linked image.

    Attributes:
        sections: ``{name: (size, addr)}`` from ``arm-none-eabi-size -A``.
        flash_bytes: code + read-only data + the ``.data`` load image.
        ram_bytes: ``.data + .bss + .heap + .stack`` as linked (reserved).
        flash_by_origin: bytes per origin (model data, CMSIS-NN, TFLM kernels,
            TFLM runtime, libc/libm/libgcc, harness, padding, other).
        ram_by_origin: ``.data``/``.bss`` bytes per origin, plus
            ``tensor arena``, ``stack (reserved)``, ``heap (reserved)``.
        arena_bytes: size of the tensor arena section.
        measured: filled by :meth:`with_measured` from a run summary:
            ``ram_used_bytes = .data + .bss - arena + arena_used + stack_used +
            heap_used``.
    """

    sections: dict
    flash_bytes: int
    ram_bytes: int
    flash_by_origin: dict
    ram_by_origin: dict
    arena_bytes: int
    measured: dict = field(default_factory=dict)

    def with_measured(self, summary: dict) -> "MemoryReport":
        statics = self.sections.get(".data", (0, 0))[0] + self.sections.get(".bss", (0, 0))[0]
        arena_used = int(summary.get("arena_used_bytes", 0))
        stack = int(summary.get("stack_used_bytes", 0))
        heap = int(summary.get("heap_used_bytes", 0))
        self.measured = {
            "arena_used_bytes": arena_used,
            "stack_used_bytes": stack,
            "heap_used_bytes": heap,
            "statics_without_arena_bytes": statics - self.arena_bytes,
            "ram_used_bytes": statics - self.arena_bytes + arena_used + stack + heap,
        }
        return self

    def as_dict(self) -> dict:
        return {
            "flash_bytes": self.flash_bytes,
            "ram_bytes": self.ram_bytes,
            "arena_bytes": self.arena_bytes,
            "flash_by_origin": self.flash_by_origin,
            "ram_by_origin": self.ram_by_origin,
            "sections": {k: v[0] for k, v in self.sections.items()},
            "measured": self.measured,
        }

    def table(self) -> str:
        rows = [f"flash {self.flash_bytes:>9,} B"]
        rows += [f"  {k:<18}{v:>9,}" for k, v in self.flash_by_origin.items() if v]
        rows.append(f"RAM   {self.ram_bytes:>9,} B (as linked)")
        rows += [f"  {k:<18}{v:>9,}" for k, v in self.ram_by_origin.items() if v]
        if self.measured:
            m = self.measured
            rows.append(
                f"RAM used {m['ram_used_bytes']:>6,} B (arena_used "
                f"{m['arena_used_bytes']:,}, stack {m['stack_used_bytes']:,}, "
                f"heap {m['heap_used_bytes']:,}, other statics "
                f"{m['statics_without_arena_bytes']:,})"
            )
        return "\n".join(rows)


def _size_a(size_exe: str, elf: Path) -> dict:
    r = subprocess.run([size_exe, "-A", "-d", str(elf)], capture_output=True, text=True)
    if r.returncode != 0:
        raise McuError(f"arm-none-eabi-size failed on {elf}: {one_line(r.stderr, 150)}", "pass a linked ELF file")
    out = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = (int(parts[1]), int(parts[2]))
    return out


def memory_report(elf: str | Path, map_path: str | Path, *, size_exe: str | None = None) -> MemoryReport:
    """Flash and RAM of *elf* (``size -A``), broken down by origin from *map_path*.

    Test inputs are never in the image (they are streamed over semihosting),
    so nothing needs excluding.
    """
    if size_exe is None:
        from edgepipe.targets.mcu.toolchain import find_toolchain

        size_exe = find_toolchain().size
    secs = _size_a(size_exe, Path(elf))
    flash = sum(secs.get(s, (0, 0))[0] for s in FLASH_SECTIONS) + secs.get(".data", (0, 0))[0]
    ram = sum(secs.get(s, (0, 0))[0] for s in RAM_SECTIONS)
    fl_o = {o: 0 for o in ORIGINS}
    ram_o = {o: 0 for o in ORIGINS}
    ram_o.update({"tensor arena": 0})
    arena = 0
    for out_sec, in_sec, size, file in parse_map(Path(map_path).read_text()):
        origin = "padding" if file == "*fill*" else classify(file, in_sec)
        if out_sec in FLASH_SECTIONS:
            fl_o[origin] += size
        elif out_sec == ".data":
            fl_o[origin] += size
            ram_o[origin] += size
        elif out_sec == ".bss":
            if in_sec.startswith(".bss.edgepipe_arena"):
                arena += size
                ram_o["tensor arena"] += size
            else:
                ram_o[origin] += size
    # Bytes the map does not attribute (section alignment) -> padding; negative
    # when merged strings (SHF_MERGE) were counted at their pre-merge size.
    fl_o["padding"] += flash - sum(fl_o.values())
    ram_o["heap (reserved)"] = secs.get(".heap", (0, 0))[0]
    ram_o["stack (reserved)"] = secs.get(".stack", (0, 0))[0]
    ram_o["padding"] += ram - sum(ram_o.values())
    return MemoryReport(
        sections=secs, flash_bytes=flash, ram_bytes=ram, flash_by_origin=fl_o, ram_by_origin=ram_o, arena_bytes=arena
    )
