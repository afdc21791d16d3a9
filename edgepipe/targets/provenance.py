"""Where a figure comes from, and reading several benches' rows as one table (the bench.json format).

Every accuracy, latency and memory figure a bench records carries a provenance key from `PROVENANCE`:
measured on the target itself, LiteRT on this host, TFLite Micro on this host, or an estimate. The report
prints the key's tag beside the figure and the legend under the table, so no figure is shown without
saying where it comes from.
"""

from __future__ import annotations

# provenance key -> (the report's tag, what the tag means)
PROVENANCE = {
    "target": ("tgt", "measured on the target"),
    "host-litert": ("host", "LiteRT on this host"),
    "tflm-host": ("tflm", "TFLite Micro on this host"),
    "emulated": (
        "emu",
        "TFLite Micro + CMSIS-NN (a microcontroller) or LiteRT (a Raspberry Pi) on the target's "
        "instruction set, emulated (QEMU); ms only from a calibrated cycles per instruction",
    ),
    "estimate": ("est", "estimate from MACs"),
}


def rows_by_name(benches: list[dict]) -> dict[str, dict]:
    """One row per model name across several benches' bench.json: a model benched on several targets
    is the same model, and its first bench's row (its host figures) stands for it."""
    by_name: dict[str, dict] = {}
    for b in benches:
        for r in b["rows"]:
            by_name.setdefault(r["name"], r)
    return by_name
