"""The report's tables: a bench row's figures as printed cells, each target's own table, the side-by-side one.

Kept apart from the stage so the results page (`tools/results_page.py`) formats rows exactly as the report
prints them.
"""

from __future__ import annotations

from edgepipe.core import fsio
from edgepipe.targets.provenance import PROVENANCE

#: what the benches judged by, when they do not say (benches written before tasks existed classify)
ACCURACY = {"name": "accuracy", "short": "accuracy", "label": "accuracy", "shown": []}


def columns(short: str = "accuracy") -> tuple[str, ...]:
    """The results table's columns, the headline metric named `short` ("accuracy", "F1")."""
    return (
        "model",
        "quant",
        "size",
        "compressed",
        "params",
        "MACs",
        f"val {short}",
        f"test {short}",
        "delta",
        "p50 1T",
        "p99 1T",
        "FPS 1T",
        "p50 all",
        "arena",
    )


COLUMNS = columns()


def metric_of(benches: list[dict]) -> dict:
    """The headline metric the benches judged every model by (`name`, `short`, `label`, and `shown`: the task's
    other metrics the report tabulates)."""
    return next((b["metric"] for b in benches if b.get("metric")), ACCURACY)


def task_table(rows: list[dict], metric: dict) -> list[list[str]]:
    """Header + rows of the task's other metrics on the test split (a detector's precision, recall, mAP, ...),
    or [] when the task has none to show."""
    shown = [k for k in metric.get("shown", []) if any(k in (r.get("task_metrics") or {}) for r in rows)]
    if not shown:
        return []
    table = [["model", metric["short"], *shown]]
    for r in rows:
        m = r.get("task_metrics") or {}
        table.append([r["name"], f"{r['accuracy']:.3f}", *("-" if m.get(k) is None else f"{m[k]:.3f}" for k in shown)])
    return table


TAGS = {key: tag for key, (tag, _) in PROVENANCE.items()}
TAG_LEGEND = ", ".join(f"[{tag}] {meaning}" for tag, meaning in PROVENANCE.values())

# A latency worked out rather than timed, by its provenance -> how a target's label says so. Instructions x
# a calibrated cycles per instruction (emulated) or MACs x cycles per MAC (estimate), at the board's clock:
# one number per model, not a percentile of timed runs, so the report shows it in ms (a firmware engineer's
# unit) and FPS, without "p50"; and a target whose latencies are worked out (a microcontroller's) leads the
# report, since it is the one a model must be fitted to. A timed latency (target, host-litert) is a p50.
WORKED_OUT = {"emulated": "emulated", "estimate": "estimated"}


def flat_row(r: dict, ref: float | None) -> dict:
    """A bench row as report.json keeps it: its figures flattened, the delta against `ref` in points."""
    one = r["latency"].get("threads_1")
    many = max(r["latency"].items(), key=lambda kv: int(kv[0].split("_")[1]))[1] if r["latency"] else None
    return {
        "name": r["name"],
        "quantization": r.get("label", r["variant"]),
        "qat": r["qat"],
        "accuracy": r["accuracy"],
        "val_accuracy": r.get("val_accuracy"),
        "val_samples": r.get("val_samples"),
        "delta_points": None if ref is None else 100 * (r["accuracy"] - ref),
        "size_bytes": r["size_bytes"],
        "compressed_bytes": r.get("compressed_bytes"),
        "params": r["params"],
        "macs": r["macs"],
        "latency_p50_us": one and one["p50_us"],
        "latency_p90_us": one and one["p90_us"],
        "latency_p99_us": one and one["p99_us"],
        "fps": one and one["fps"],
        "latency_p50_us_all_threads": many and many["p50_us"],
        "fps_all_threads": many and many["fps"],
        "arena_bytes": (r.get("tflm") or {}).get("arena_bytes"),
        "tflm_ok": (r.get("tflm") or {}).get("ok"),
        "test_samples": r["test_samples"],
        "parity": r["parity"],
        # a task's other metrics (a detector's precision, recall, mAP); a classifier's row has none
        **({"task_metrics": r["task_metrics"]} if "task_metrics" in r else {}),
    }


def table_row(r: dict, ref: float | None) -> list[str]:
    """A bench row as the host table prints it (`COLUMNS`), its delta against `ref`."""
    return row_cells(flat_row(r, ref))


def row_cells(f: dict) -> list[str]:
    """One row of the results table (`COLUMNS`), as printed, from a report.json row."""
    us = lambda v: "-" if v is None else micros_text(v)  # noqa: E731
    return [
        f["name"],
        f["quantization"] + (" (QAT)" if f["qat"] else ""),
        fsio.human_size(f["size_bytes"]),
        "-" if f["compressed_bytes"] is None else fsio.human_size(f["compressed_bytes"]),
        f"{f['params']:,}",
        f"{f['macs'] / 1e6:.2f} M",
        "-" if f["val_accuracy"] is None else f"{100 * f['val_accuracy']:.2f} %",
        f"{100 * f['accuracy']:.2f} %",
        "-" if f["delta_points"] is None else f"{f['delta_points']:+.2f}",
        us(f["latency_p50_us"]),
        us(f["latency_p99_us"]),
        "-" if f["fps"] is None else f"{f['fps']:,.0f}",
        us(f["latency_p50_us_all_threads"]),
        "-" if f["arena_bytes"] is None else fsio.human_size(f["arena_bytes"]),
    ]


def figures_by_target(benches: list[dict]) -> dict[str, dict[str, dict]]:
    """model name -> target name -> its figures there (accuracy, latency, memory, fit), provenance-tagged."""
    out: dict[str, dict[str, dict]] = {}
    for b in benches:
        for r in b["rows"]:
            for t in list((r.get("fleet") or {}).values()) or ([r["target"]] if r.get("target") else []):
                fig = {
                    k: t[k]
                    for k in (
                        "deployable",
                        "why_not",
                        "accuracy",
                        "latency_p50_us",
                        "memory",
                        "fits",
                        "edgetpu",
                        "instructions",
                        "flash",
                        "emulated_device",
                    )
                    if k in t
                }
                if "latency_p50_us" in fig:  # the same figure in a firmware engineer's units, tagged alike
                    fig["latency_ms"] = _derived(fig["latency_p50_us"], lambda us: us / 1000)
                    fig["fps"] = _derived(fig["latency_p50_us"], lambda us: 1e6 / us if us > 0 else None)
                out.setdefault(r["name"], {})[t["name"]] = fig
    return out


def _derived(figure: dict, fn) -> dict:
    """`figure` with fn applied to its value (kept None, with its reason, when it has none)."""
    return {**figure, "value": None if figure.get("value") is None else fn(figure["value"])}


def latency_provenance(figures) -> str | None:
    """Where one target's latencies come from, from its models' figures there (`figures_by_target`'s values
    for that target; None where a model was not benched on it): the provenance of the first latency figure,
    since every model of a target is measured alike. None when no model has one (none ran there)."""
    for f in figures:
        latency = (f or {}).get("latency_p50_us")
        if isinstance(latency, dict) and latency.get("provenance"):
            return latency["provenance"]
    return None


def measured_targets(benches: list[dict], targets: dict) -> list[dict]:
    """The targets the report's figures come from, in the order it shows them: those whose latencies are
    worked out (`WORKED_OUT`: a microcontroller, emulated or estimated) first, then the devices timed, this
    host last (every bench measures on this host: the results table is its own).

    Each is `{"target": name, "label": what the report calls it, "kind": the profile's kind}`; the kind is
    recorded for report.json's readers, the report decides nothing on it.
    """
    profiles, emulated = {}, {}
    for b in benches:
        t = b.get("target") or {}
        if not t.get("name"):
            continue
        profiles[t["name"]] = t
        emulated[t["name"]] = (b.get("device") or {}).get("emulated")
        for h, device in (b.get("fleet") or {}).items():
            profiles[f"{t['name']}@{h}"] = t
            emulated[f"{t['name']}@{h}"] = (device or {}).get("emulated")
    out, worked_out = [], set()
    for name in dict.fromkeys(n for per in targets.values() for n in per if n != "host"):
        t = profiles.get(name, {})
        core = t["cpu"].title() if t.get("cpu") and t["cpu"] == name else name  # cortex-m4 -> Cortex-M4
        how = WORKED_OUT.get(latency_provenance(per.get(name) for per in targets.values()))
        if how:
            worked_out.add(name)
        label = f"{core} ({how})" if how else f"{core} (emulated)" if emulated.get(name) else core
        out.append({"target": name, "label": label, "kind": t.get("kind")})
    out.sort(key=lambda m: m["target"] not in worked_out)  # stable: benches keep their order otherwise
    host = (benches[0].get("provenance") or {}) if benches else {}
    what = ", ".join(str(host[k]) for k in ("machine", "cpu") if host.get(k))
    return out + [{"target": "host", "label": f"this host ({what})" if what else "this host", "kind": "cpu"}]


def joined(names: list[str]) -> str:
    """Names as a sentence lists them: a, b and c."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def capital(text: str) -> str:
    """`text` with its first letter capitalised (a label that starts a heading)."""
    return text[:1].upper() + text[1:]


def target_tables(
    rows: list[dict], targets: dict, measured: list[dict], devices: dict, short: str = "accuracy"
) -> list[dict]:
    """Each target's own table (every target but this host, whose table is the results table), in
    `measured`'s order: `{"target", "label", "table": header + rows, "notes": lines under it}`.

    Columns: accuracy, instructions and flash when measured (an emulated microcontroller), latency and
    FPS in the target's units (ms where the latency is worked out, `WORKED_OUT`; else the timed p50),
    memory; each figure tagged with its provenance.
    A row is a model benched on the target; one the target cannot run reads n/a, the reason under the table.
    """
    out = []
    for m in measured:
        t = m["target"]
        benched = [(r["name"], targets[r["name"]][t]) for r in rows if t in targets.get(r["name"], {})]
        if t == "host" or not benched:
            continue
        has = {key for _, f in benched for key in f}
        columns = [(short, "accuracy", lambda v: f"{100 * v:.2f} %")]
        if "instructions" in has:
            columns.append(("instructions", "instructions", lambda v: f"{v / 1e6:.2f} M"))
        if latency_provenance(f for _, f in benched) in WORKED_OUT:
            columns += [("latency (ms)", "latency_ms", _figure), ("FPS", "fps", _figure)]
        else:
            columns += [("p50 latency", "latency_p50_us", micros_text), ("FPS", "fps", _figure)]
        if "flash" in has:
            columns.append(("flash", "flash", fsio.human_size))
        columns.append(("memory", "memory", None))
        table = [["model"] + [title for title, _, _ in columns]]
        table += [[name] + [_cell(f, key, fmt) for _, key, fmt in columns] for name, f in benched]
        tags = dict.fromkeys(
            f[key]["provenance"]
            for _, f in benched
            for _, key, _ in columns
            if isinstance(f.get(key), dict) and f[key].get("provenance") in PROVENANCE
        )
        notes = ["; ".join(f"[{TAGS[p]}] {PROVENANCE[p][1]}" for p in tags) + "."] if tags else []
        why: dict[str, list[str]] = {}
        for name, f in benched:
            if f.get("why_not"):
                why.setdefault(f["why_not"], []).append(name)
        notes += [f"n/a on {', '.join(names)}: {reason}." for reason, names in why.items()]
        if devices.get(t):
            notes.append(capital(devices[t]))
        out.append({"target": t, "label": capital(m["label"]), "table": table, "notes": notes})
    return out


def _figure(v: float) -> str:
    """A latency in ms or an FPS, three significant digits, never in scientific notation: 15.0, 66.5, 1,204."""
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.{1 if v >= 10 else 2 if v >= 1 else 3}f}"


def targets_table(rows: list[dict], targets: dict, short: str = "accuracy") -> list[list[str]]:
    """Header + rows of per-target columns, or [] when every figure is this host's own.

    Each target has accuracy, latency and memory columns; one whose figures include instructions and
    flash (an emulated microcontroller) has those columns too.
    """
    names = list(dict.fromkeys(t for per in targets.values() for t in per))
    if names in ([], ["host"]):
        return []
    columns = []  # (target, column title, figure key, format)
    for t in names:
        figures = [per[t] for per in targets.values() if t in per]
        has = {key for f in figures for key in f}
        columns.append((t, f"{'acc' if short == 'accuracy' else short}@{t}", "accuracy", lambda v: f"{100 * v:.2f} %"))
        if "instructions" in has:
            columns.append((t, f"instr@{t}", "instructions", lambda v: f"{v / 1e6:.2f} M"))
        columns.append((t, f"p50@{t}", "latency_p50_us", micros_text))
        if "flash" in has:
            columns.append((t, f"flash@{t}", "flash", fsio.human_size))
        columns.append((t, f"mem@{t}", "memory", None))
    table = [["model"] + [title for _, title, _, _ in columns]]
    for r in rows:
        table.append([r["name"]] + [_cell(targets.get(r["name"], {}).get(t), key, fmt) for t, _, key, fmt in columns])
    return table


def targets_notes(rows: list[dict], targets: dict) -> list[str]:
    """Why the side-by-side table reads n/a: per target, the models it did not bench or cannot run."""
    names = [t for t in dict.fromkeys(t for per in targets.values() for t in per) if t != "host"]
    notes = []
    for t in names:
        why: dict[str, list[str]] = {}
        for r in rows:
            f = targets.get(r["name"], {}).get(t)
            if f is None:
                reason = f"not among the models of a bench on {t}"
            elif not f.get("deployable", True) or "accuracy" not in f:
                reason = f.get("why_not") or f"not run on {t}"
            else:
                continue
            why.setdefault(reason, []).append(r["name"])
        notes += [f"n/a on {', '.join(models)}: {reason}." for reason, models in why.items()]
    return notes


def _cell(f: dict | None, key: str, fmt) -> str:
    """One model's figure `key` on one target (`f`: its figures there), formatted and tagged; n/a when the
    target did not run it, `n/a (why)` when the figure was not measured, `uncalibrated` for an emulated
    latency without a calibration."""

    def tagged(fig: dict | None, fmt) -> str:
        if not fig or fig.get("value") is None:
            if fig and fig.get("not_measured"):
                return f"n/a ({fig['not_measured']})"
            return "uncalibrated" if fig and fig.get("provenance") == "emulated" else "-"
        return f"{fmt(fig['value'])} [{TAGS[fig['provenance']]}]"

    if f is None or not f.get("deployable", True) or (key != "memory" and "accuracy" not in f):
        return "NO FIT" if f is not None and f.get("fits") is False and key == "memory" else "n/a"
    if key == "memory":
        mem = f.get("memory") or {}
        fits = "" if f.get("fits") is None else (" fits" if f["fits"] else " NO FIT")
        return tagged(mem, lambda v, w=mem.get("what"): f"{fsio.human_size(v)} {w}") + fits
    return tagged(f.get(key), fmt)


def short(v):
    """A sampled value as a person reads it: 0.00976 and 1.18, not 0.009764507263345905."""
    return f"{v:.3g}" if isinstance(v, float) else v


def micros_text(v: float) -> str:
    """A latency in microseconds as printed: us below a millisecond, ms from one up."""
    return f"{v:.0f} us" if v < 1000 else f"{v / 1000:.1f} ms"  # one column reads alike: 8.5 ms beside 12.9 ms


def text_table(table: list[list[str]], columns) -> list[str]:
    """A table as aligned plain-text lines for the terminal."""
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in table]


def devices_measured(benches: list[dict]) -> dict[str, str]:
    """Target name -> what its figures were measured on, an emulator named as one."""
    out = {}
    for b in benches:
        name, device = b.get("target", {}).get("name"), b.get("device") or {}
        if not name or name == "host" or not device:
            continue
        if device.get("machine") and device.get("cpu") and "arm-none-eabi-gcc" in device:  # an emulated MCU
            out[name] = f"emulated: QEMU {device['machine']} ({device['cpu']}), {device['qemu-system-arm']}"
        else:
            where = device.get("host", "")
            emulated = f", emulated ({device['emulated']})" if device.get("emulated") else ""
            out[name] = f"{device.get('cpu') or device.get('machine') or '?'} at {where}{emulated}".replace(
                " at ,", ","
            )
    return out
