"""The report stage on fixture bench.json content (no training, no toolchain): a host bench and a bench on the
emulated Cortex-M4, shaped as `edgepipe.stages.bench` and the targets' backends (`edgepipe.targets.backends`)
write them."""

import dataclasses
import json
import re

import pytest

from edgepipe.stages.report import ReportParams, run_report_stage
from edgepipe.targets.profiles import load_target
from edgepipe.testing import run_stage

HOST_PROVENANCE = {
    "target": "host",
    "cpu": "AMD EPYC",
    "cores": 2,
    "machine": "x86_64",
    "python": "3.11.2",
    "ai_edge_litert": "1.2.0",
    "tflite_micro": "0.dev20250305",
}
EMULATOR = {
    "machine": "mps2-an386",
    "cpu": "cortex-m4",
    "arm-none-eabi-gcc": "12.2.1",
    "qemu-system-arm": "7.2.15",
    "wall_seconds": 3.1,
    "instructions_per_tick": 1,
}
# name -> (variant, qat, size, host p50 us, host test accuracy, M4 figures or None (not benched there))
MODELS = {
    "teacher/float32": ("float32", False, 361_472, 51.2, 0.9945, None),
    "student_scratch/float32": ("float32", False, 94_208, 17.4, 0.9943, "not int8"),
    "student_qat/int8": (
        "int8",
        True,
        29_286,
        7.1,
        0.9941,
        {"accuracy": 0.9936, "instructions": 1_155_873.0, "latency_ms": 15.0357, "flash": 75_469, "ram": 8_908},
    ),
    "tfmot_ref_qat/int8": (
        "int8",
        True,
        23_757,
        10.9,
        0.9704,
        {"accuracy": 0.9704, "instructions": 988_530.0, "latency_ms": 12.8591, "flash": 72_601, "ram": 13_004},
    ),
}


def _host_row(name: str) -> dict:
    variant, qat, size, p50, acc, _ = MODELS[name]
    latency = {
        "threads_1": {"p50_us": p50, "p90_us": 1.2 * p50, "p99_us": 1.5 * p50, "fps": 1e6 / p50},
        "threads_0": {"p50_us": 2 * p50, "p90_us": 2.2 * p50, "p99_us": 3 * p50, "fps": 5e5 / p50},
    }
    return {
        "name": name,
        "variant": variant,
        "source": name.split("/")[0],
        "qat": qat,
        "file": f"{name}.tflite",
        "size_bytes": size,
        "compressed_bytes": int(0.8 * size),
        "params": 23_236,
        "macs": 440_000,
        "label": variant,
        "accuracy": acc,
        "val_accuracy": acc - 0.0005,
        "val_samples": 6000,
        "test_samples": 10000,
        "parity": {},
        "latency": latency,
        "model_rss_bytes": 32_768,
        "lint": [],
        **({"tflm": {"ok": True, "arena_bytes": 7_475}} if variant == "int8" else {}),
    }


def _bench(target: str, rows: list[dict], device: dict | None) -> dict:
    return {
        "provenance": HOST_PROVENANCE,
        "target": dataclasses.asdict(load_target(target)),
        "device": device,
        "fleet": {},
        "data": "data",
        "classes": [str(i) for i in range(10)],
        "rows": rows,
    }


def host_bench() -> dict:
    rows = []
    for name in MODELS:
        row = _host_row(name)
        row["target"] = {
            "name": "host",
            "deployable": True,
            "accuracy": {"value": row["accuracy"], "provenance": "host-litert"},
            "latency_p50_us": {"value": row["latency"]["threads_1"]["p50_us"], "provenance": "host-litert"},
            "memory": {"value": row["model_rss_bytes"], "what": "RSS growth", "provenance": "host-litert"},
        }
        rows.append(row)
    return _bench("host", rows, None)


def m4_bench() -> dict:
    """The emulated Cortex-M4's bench.json, as `measure: emulated` writes it (`backends.mcu_emulated`'s figures)."""
    rows = []
    for name, (*_, m4) in MODELS.items():
        if m4 is None:
            continue
        row = _host_row(name)
        if m4 == "not int8":
            row["target"] = {
                "name": "cortex-m4",
                "deployable": False,
                "why_not": "cortex-m4 runs full-int8 models only",
            }
        else:
            device = {
                "accuracy": m4["accuracy"],
                "latency_ms": m4["latency_ms"],
                "fits": True,
                "instructions": {"median": m4["instructions"]},
                "flash_bytes": m4["flash"],
                "ram_used_bytes": m4["ram"],
                "emulator": EMULATOR,
            }
            row["target"] = {
                "name": "cortex-m4",
                "deployable": True,
                "emulated": device,
                "fits": True,
                "accuracy": {"value": m4["accuracy"], "provenance": "emulated"},
                "latency_p50_us": {"value": 1000 * m4["latency_ms"], "provenance": "emulated"},
                "instructions": {"value": m4["instructions"], "provenance": "emulated"},
                "flash": {"value": m4["flash"], "provenance": "emulated"},
                "memory": {"value": m4["ram"], "what": "RAM", "provenance": "emulated"},
            }
        rows.append(row)
    return _bench("cortex-m4", rows, {"emulated": True, **EMULATOR})


def _report(tmp_path, benches: dict[str, dict], **params):
    for name, bench in benches.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "bench.json").write_text(json.dumps(bench))
    return run_stage(
        tmp_path, "report", run_report_stage, ReportParams, params, benches=[str(tmp_path / name) for name in benches]
    )


@pytest.fixture
def host_and_m4(tmp_path):
    return _report(
        tmp_path,
        {"bench": host_bench(), "bench_m4": m4_bench()},
        title="mnist_student: accuracy vs latency on {targets}",
        reference="teacher/float32",
    )


def estimated_m4_bench() -> dict:
    """The Cortex-M4 with `measure: estimate`: TFLite Micro on this host, latency from MACs."""
    bench = m4_bench()
    bench["target"]["measure"], bench["device"] = "estimate", None
    for row in bench["rows"]:
        t = row["target"]
        if t["deployable"]:
            row["target"] = {
                "name": "cortex-m4",
                "deployable": True,
                "fits": True,
                "accuracy": {"value": t["accuracy"]["value"], "provenance": "tflm-host"},
                "latency_p50_us": {"value": 2.0 * row["macs"] / 120, "provenance": "estimate"},
                "memory": {"value": 7_475, "what": "arena", "provenance": "tflm-host"},
            }
    return bench


def uncalibrated_m7_bench() -> dict:
    """An emulated Cortex-M7: instructions measured, no calibration to turn them into ms."""
    bench = m4_bench()
    bench["target"] = dataclasses.asdict(load_target("cortex-m7"))
    for row in bench["rows"]:
        row["target"]["name"] = "cortex-m7"
        if row["target"]["deployable"]:
            row["target"]["latency_p50_us"] = {"value": None, "provenance": "emulated"}
        else:
            row["target"]["why_not"] = "cortex-m7 runs full-int8 models only"
    return bench


def _md_tables(md: str) -> list[tuple[str, list[list[str]]]]:
    """report.md's tables in order, each with the last `## ` heading above it: (heading, header + rows)."""
    out, heading, current = [], "", None
    for line in md.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if current is None:
                current = (heading, [])
                out.append(current)
            current[1].append(cells)
        elif not line.startswith("|"):
            current = None
    return out


def test_title_names_the_targets_measured_microcontroller_first(host_and_m4, tmp_path):
    heading = "mnist_student: accuracy vs latency on Cortex-M4 (emulated) and this host (x86_64, AMD EPYC)"
    assert (host_and_m4 / "report.md").read_text().splitlines()[0] == f"# {heading}"
    assert json.loads((host_and_m4 / "report.json").read_text())["title"] == heading
    assert f"<h1>{heading}</h1>" in (host_and_m4 / "report.html").read_text()

    alone = _report(tmp_path / "alone", {"bench": host_bench()})  # the default title, on this host alone
    assert (
        (alone / "report.md")
        .read_text()
        .startswith("# edgepipe report: accuracy vs latency on this host (x86_64, AMD EPYC)\n")
    )
    estimated = _report(tmp_path / "est", {"bench": host_bench(), "bench_m4": estimated_m4_bench()})
    assert "on Cortex-M4 (estimated) and this host" in (estimated / "report.md").read_text().splitlines()[0]
    # a title written without {targets} is kept as written; the line under it names the targets
    kept = _report(tmp_path / "kept", {"bench": host_bench(), "bench_m4": m4_bench()}, title="smoke")
    assert (
        (kept / "report.md")
        .read_text()
        .startswith("# smoke\n\nMeasured on Cortex-M4 (emulated) and this host (x86_64, AMD EPYC).\n")
    )


def test_first_table_is_the_microcontrollers_then_this_hosts(host_and_m4, tmp_path):
    tables = _md_tables((host_and_m4 / "report.md").read_text())
    (m4_heading, m4), (host_heading, host) = tables[:2]
    assert m4_heading == "Cortex-M4 (emulated)"
    assert m4[0] == ["model", "accuracy", "instructions", "latency (ms)", "FPS", "flash", "memory"]
    assert [r[0] for r in m4[1:]] == ["student_scratch/float32", "student_qat/int8", "tfmot_ref_qat/int8"]
    assert host_heading == "This host (x86_64, AMD EPYC)" and host[0][:3] == ["model", "quant", "size"]
    assert [r[0] for r in host[1:]] == list(MODELS)  # every model, as before
    page = (host_and_m4 / "report.html").read_text()
    assert page.index("id='target-cortex-m4'") < page.index("id='results'") < page.index("id='targets'")

    alone = _report(tmp_path / "alone", {"bench": host_bench()})
    assert _md_tables((alone / "report.md").read_text())[0][1][0][:3] == ["model", "quant", "size"]


def test_mcu_latency_in_ms_and_fps_each_tagged(host_and_m4, tmp_path):
    header, *cells = _md_tables((host_and_m4 / "report.md").read_text())[0][1]
    m4 = {r[0]: dict(zip(header, r)) for r in cells}
    for name in ("student_qat/int8", "tfmot_ref_qat/int8"):
        ms = MODELS[name][5]["latency_ms"]
        assert m4[name]["latency (ms)"] == f"{ms:.1f} [emu]"
        assert m4[name]["FPS"] == f"{1000 / ms:.1f} [emu]"
    assert m4["student_qat/int8"]["latency (ms)"] == "15.0 [emu]" and m4["student_qat/int8"]["FPS"] == "66.5 [emu]"
    assert m4["tfmot_ref_qat/int8"]["latency (ms)"] == "12.9 [emu]" and m4["tfmot_ref_qat/int8"]["FPS"] == "77.8 [emu]"
    assert m4["student_qat/int8"]["memory"] == "8.7 KB RAM [emu] fits"
    # a model the target cannot run: n/a, and why under the table
    assert set(m4["student_scratch/float32"].values()) == {"student_scratch/float32", "n/a"}
    md = (host_and_m4 / "report.md").read_text()
    assert "- n/a on student_scratch/float32: cortex-m4 runs full-int8 models only." in md
    # the side-by-side table says why every n/a is there: a model the target cannot run, one not benched on it
    side = md[md.index("## Every target side by side") :]
    not_benched = [n for n in MODELS if n not in ("student_scratch/float32", "student_qat/int8", "tfmot_ref_qat/int8")]
    assert "n/a on student_scratch/float32: cortex-m4 runs full-int8 models only." in side
    assert f"n/a on {', '.join(not_benched)}: not among the models of a bench on cortex-m4." in side
    # report.json: the same figures in ms and FPS beside the existing microseconds, tagged alike
    rows = {r["name"]: r for r in json.loads((host_and_m4 / "report.json").read_text())["rows"]}
    fig = rows["student_qat/int8"]["targets"]["cortex-m4"]
    assert fig["latency_p50_us"] == {"value": pytest.approx(15035.7), "provenance": "emulated"}
    assert fig["latency_ms"] == {"value": pytest.approx(15.0357), "provenance": "emulated"}
    assert fig["fps"] == {"value": pytest.approx(1000 / 15.0357), "provenance": "emulated"}

    estimated = _report(tmp_path / "est", {"bench": host_bench(), "bench_m4": estimated_m4_bench()})
    est = _md_tables((estimated / "report.md").read_text())[0][1]
    assert est[0] == ["model", "accuracy", "latency (ms)", "FPS", "memory"]
    qat = dict(zip(est[0], next(r for r in est if r[0] == "student_qat/int8")))
    ms = 2.0 * 440_000 / 120 / 1000  # MACs x cycles per MAC / clock
    assert qat["latency (ms)"] == f"{ms:.2f} [est]" and qat["FPS"] == f"{1000 / ms:.0f} [est]"
    assert qat["accuracy"] == "99.36 % [tflm]" and qat["memory"] == "7.3 KB arena [tflm] fits"

    # without a calibration an emulated core has no ms, and says so in both columns
    m7 = _report(tmp_path / "m7", {"bench": host_bench(), "bench_m7": uncalibrated_m7_bench()})
    (heading, table), _ = _md_tables((m7 / "report.md").read_text())[:2]
    qat = dict(zip(table[0], next(r for r in table if r[0] == "student_qat/int8")))
    assert heading == "Cortex-M7 (emulated)" and qat["latency (ms)"] == qat["FPS"] == "uncalibrated"
    assert qat["instructions"] == "1.16 M [emu]"


def test_what_a_target_shows_comes_from_its_figures_not_its_profiles_kind(tmp_path):
    """Units, label and place of each target's table follow its figures and their provenance: the same benches
    with the profile's kind and measure left out of bench.json give the same report."""
    benches = {"bench": host_bench(), "bench_m7": uncalibrated_m7_bench(), "bench_m4": estimated_m4_bench()}
    blind = json.loads(json.dumps(benches))
    for bench in blind.values():
        del bench["target"]["kind"], bench["target"]["measure"]
    seen = _report(tmp_path / "seen", benches)
    unseen = _report(tmp_path / "unseen", blind)
    assert (unseen / "report.md").read_text() == (seen / "report.md").read_text()
    headings = [h for h, _ in _md_tables((seen / "report.md").read_text())]
    assert headings[:3] == ["Cortex-M7 (emulated)", "Cortex-M4 (estimated)", "This host (x86_64, AMD EPYC)"]


def _pareto_axes(benches: list[dict]) -> dict:
    from edgepipe.stages.report_pareto import pareto_figure
    from edgepipe.stages.report_tables import figures_by_target, measured_targets
    from edgepipe.targets.provenance import rows_by_name

    targets = figures_by_target(benches)
    fig = pareto_figure(list(rows_by_name(benches).values()), targets, measured_targets(benches, targets))
    fig.canvas.draw()
    return {ax.get_title(): ax for ax in fig.axes}


PLAIN = re.compile(r"\d+(\.\d+)?")  # a tick label as a person writes it: 13.5, not 1.35x10^4 or 1.35e4


def _tick_texts(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() + axis.get_ticklabels(minor=True) if t.get_text()]


def test_pareto_panels_are_in_each_targets_units_with_plain_ticks():
    import matplotlib.pyplot as plt

    axes = _pareto_axes([host_bench(), m4_bench()])
    assert list(axes) == ["Cortex-M4 (emulated)", "This host (x86_64, AMD EPYC)"]
    m4, host = axes.values()
    assert m4.get_xlabel() == "latency (ms)" and host.get_xlabel() == "p50 latency, 1 thread (us)"
    for ax in (m4, host):
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_offset_text().get_text() == ""
            ticks = _tick_texts(axis)
            assert ticks and all(PLAIN.fullmatch(t) for t in ticks), ticks
    low, high = m4.get_xlim()
    assert 12 < low < 12.9 and 15.0 < high < 16  # 12.9 and 15.0 ms
    plt.close("all")

    # values spanning more than tenfold: a log axis, still ticked in plain numbers
    slow = host_bench()
    slow["rows"][0]["latency"]["threads_1"]["p50_us"] = 2500.0
    axes = _pareto_axes([slow])
    (host,) = axes.values()
    assert host.get_xlabel() == "p50 latency, 1 thread (ms, log scale)" and host.get_xscale() == "log"
    ticks = _tick_texts(host.xaxis)
    assert "1" in ticks and all(PLAIN.fullmatch(t) for t in ticks) and host.xaxis.get_offset_text().get_text() == ""
    plt.close("all")

    m7 = _pareto_axes([host_bench(), uncalibrated_m7_bench()])["Cortex-M7 (emulated)"]  # no ms: instructions
    assert m7.get_xlabel() == "instructions per inference (millions)" and m7.xaxis.get_offset_text().get_text() == ""
    assert all(PLAIN.fullmatch(t) for t in _tick_texts(m7.xaxis))
    plt.close("all")
