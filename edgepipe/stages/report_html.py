"""report.html: one self-contained page (pictures embedded) beside report.md.

Sections, each with an id a test or a browser can find: first `target-<name>` for each target a bench
measured besides this host (its own table, a microcontroller's first), then `results` (this host's table),
`targets` (every target side by side, each figure tagged with its provenance), `gates`, `pareto`,
`int8` (the classes quantization hurt most), `training` (per training stage: curves, confusion matrix,
the doctor's findings) and `misclassified` (test images the deployable model gets wrong).

It reads the stages behind the benched models from the report's upstream (`StageIO.upstream`, which the
runner keys the report on): a bench's rows name the stage each model came from (`source`) and the data
stage it was measured on (`data`).
"""

from __future__ import annotations

import base64
import html
import io as _io
import json
from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.stage import FINDINGS

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}tr:hover{background:#f6f8fa}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.finding{background:#fff8c5;border-left:4px solid #d4a72c;padding:4px 8px;margin:4px 0}
.ok{color:#57606a}.stage{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}
img{max-width:100%}.small{color:#57606a;font-size:12px}
"""


def write_html(
    dest: Path,
    title: str,
    table: list[list[str]],
    columns,
    gates: list[dict],
    rows: list[dict],
    benches: list[dict],
    upstream: dict[str, Path],
    pareto: Path,
    provenance: dict,
    deployable: str | None,
    int8_cost: list[dict],
    target_table: list[list[str]] | None = None,
    legend: str = "",
    searches: list[tuple[str, list[str], Path]] = (),
    target_tables: list[dict] = (),
    host_heading: str = "Results",
    subtitle: str | None = None,
    metric: dict | None = None,
    task_table: list[list[str]] = (),
) -> None:
    """Write the page to `dest` (atomically). `target_tables` are `report.target_tables`' (shown first)."""
    short = (metric or {}).get("short", "accuracy")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>",
        f"<p>{_e(subtitle)}</p>" if subtitle else "",
        *(_own(t) for t in target_tables),
        _results(table, columns, host_heading),
        _task(task_table),
        _targets(target_table, legend),
        _gates(gates),
        _picture("pareto", f"{short[:1].upper()}{short[1:]} against latency", pareto),
        *(_search(*x) for x in searches),
        _int8(int8_cost),
        _training(rows, upstream, metric),
        _mistakes(rows, benches, upstream, deployable),
        f"<h2 id='provenance'>Measured on</h2><p>{_e(', '.join(f'{k} {v}' for k, v in provenance.items()))}</p>",
        "</body></html>",
    ]
    fsio.write_text(dest, "\n".join(parts))


def _task(table: list[list[str]]) -> str:
    """The task's other metrics (a detector's precision, recall, mAP, ...) on the test split."""
    return f"<h2 id='task'>Task metrics (test split)</h2>{_table(table[0], table[1:])}" if table else ""


def _e(text) -> str:
    return html.escape(str(text))


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _picture(section: str, heading: str, path: Path) -> str:
    body = _img(path.read_bytes(), heading) if path.is_file() else "<p class='ok'>not produced</p>"
    return f"<h2 id='{section}'>{_e(heading)}</h2>{body}"


def _search(heading: str, lines: list[str], png: Path) -> str:
    """A search's section: its markdown lines as paragraphs and a table, and its front picture."""
    body, table = [], []
    for line in lines:
        if line.startswith("|"):
            if not line.startswith("|---"):
                cells = [c.strip() for c in line.strip("|").split("|")]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{_e(c)}</{tag}>" for c in cells) + "</tr>")
        elif line and not line.startswith("!["):
            body.append(f"<p>{_e(line)}</p>")
    pic = _img(png.read_bytes(), heading) if png.is_file() else ""
    return f"<h2>{_e(heading)}</h2>{''.join(body)}<table>{''.join(table)}</table>{pic}"


def _table(header, rows) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _own(t: dict) -> str:
    """One target's own table and the notes under it."""
    notes = "".join(f"<p class='small'>{_e(n)}</p>" for n in t["notes"])
    return f"<h2 id='target-{_e(t['target'])}'>{_e(t['label'])}</h2>{_table(t['table'][0], t['table'][1:])}{notes}"


def _results(table, columns, heading: str = "Results") -> str:
    return (
        f"<h2 id='results'>{_e(heading)}</h2>{_table(columns, table)}"
        "<p class='small'>Accuracy from each exported <code>.tflite</code> in the LiteRT interpreter on the full "
        "test split; latency: single-image invoke after warm-up; arena: smallest TFLite Micro arena.</p>"
    )


def _targets(target_table, legend: str) -> str:
    if not target_table:
        return ""
    return (
        f"<h2 id='targets'>Every target side by side</h2>{_table(target_table[0], target_table[1:])}"
        f"<p class='small'>{_e(legend)}</p>"
    )


def _gates(gates) -> str:
    if not gates:
        return "<h2 id='gates'>Accuracy gates</h2><p class='ok'>none set</p>"
    items = "".join(
        f"<li><span class='{'pass' if g['passed'] else 'fail'}'>{'PASSED' if g['passed'] else 'FAILED'}</span> "
        f"{_e(g['model'])} loses {g['drop_points']:.2f} validation points against {_e(g['against'])} "
        f"(allowed {g['max_drop']})</li>"
        for g in gates
    )
    return f"<h2 id='gates'>Accuracy gates</h2><ul>{items}</ul>"


def _int8(int8_cost: list[dict]) -> str:
    """For each stage with both a float32 and an int8 model: the classes whose accuracy int8 cut most."""
    head = "<h2 id='int8'>What int8 cost, per class</h2>"
    if not int8_cost:
        return head + "<p class='ok'>no model has both float32 and int8</p>"
    lines = "".join(
        f"<tr><td>{_e(c['model'])}</td><td>{c['points_lost']:+.2f}</td><td style='text-align:left'>"
        + ", ".join(f"{_e(x['class'])} {x['points_lost']:+.2f}" for x in c["classes"][:3])
        + "</td></tr>"
        for c in int8_cost
    )
    return (
        head + "<table><tr><th>int8 model</th><th>points lost overall</th><th>classes hurt most (points lost "
        "against its float32)</th></tr>" + lines + "</table>"
    )


def _training(rows, upstream: dict[str, Path], metric: dict | None = None) -> str:
    """Curves, confusion matrix (a detector's predictions) and the doctor's findings of every stage a benched
    model came from."""
    name, short = (metric or {}).get("name", "accuracy"), (metric or {}).get("short", "accuracy")
    out = ["<h2 id='training'>Training</h2>"]
    for source in dict.fromkeys(r["source"] for r in rows):
        stage = upstream.get(source)
        if stage is None or not (stage / "metrics.json").is_file():
            continue
        metrics = json.loads((stage / "metrics.json").read_text())
        findings = json.loads((stage / FINDINGS).read_text()) if (stage / FINDINGS).is_file() else []
        doctor = (
            "".join(f"<div class='finding'>{_e(f['line'])}</div>" for f in findings)
            or "<p class='ok'>doctor: no findings</p>"
        )
        test = metrics.get("test", {})
        pics = []
        if (stage / "curves.png").is_file():
            pics.append(_img((stage / "curves.png").read_bytes(), f"{source} curves"))
        if (stage / "confusion_matrix.png").is_file():
            pics.append(_img((stage / "confusion_matrix.png").read_bytes(), f"{source} confusion matrix"))
        if (stage / "predictions.png").is_file():
            pics.append(_img((stage / "predictions.png").read_bytes(), f"{source} detections on test scenes"))
        macro = f"; macro F1 {test['macro']['f1']:.3f}" if "macro" in test else ""
        out.append(
            f"<h3>{_e(source)}</h3><p>test {_e(short)} {100 * test.get(name, 0):.2f} % after "
            f"{metrics.get('epochs_run', '?')} epochs{macro}</p>"
            f"{doctor}<div class='stage'>{''.join(pics)}</div>"
        )
    return "".join(out)


def _mistakes(rows, benches, upstream: dict[str, Path], deployable: str | None) -> str:
    """What the deployable model gets wrong: a classifier's misclassified test images, a detector's detections
    over the first test scenes."""
    row = next((r for r in rows if r["name"] == deployable), None) or next(
        (r for r in reversed(rows) if r["variant"] == "int8"), rows[-1] if rows else None
    )
    data = upstream.get(next((b.get("data") for b in benches if b.get("data")), None))
    head = "<h2 id='misclassified'>What the deployable model gets wrong</h2>"
    if row is None or data is None or not (data / "dataset.npz").is_file():
        return head + "<p class='ok'>no data to show</p>"
    if "detections_shown" in row:
        return _detections(row, data)
    wrong = row.get("misclassified") or []
    if not wrong:
        return head + f"<p class='ok'>{_e(row['name'])}: no mistakes on the test split</p>"
    with np.load(data / "dataset.npz") as z:
        images = z["x_test"][[i for i, _, _ in wrong]]
    classes = json.loads((data / "dataset.json").read_text())["classes"]
    return (
        head + f"<p>{_e(row['name'])}: the first {len(wrong)} of its mistakes on the test split "
        "(true → predicted)</p>"
        + _img(_grid_png(images, [(classes[t], classes[p]) for _, t, p in wrong]), "misclassified test images")
    )


def _detections(row: dict, data: Path) -> str:
    """The deployable detector's detections (red) and the truth (green) on the first test scenes."""
    from edgepipe.tasks.detection_pictures import box_grid_figure

    shown = [np.asarray(d, np.float32).reshape(-1, 8) for d in row["detections_shown"]]
    with np.load(data / "dataset.npz") as z:
        images, truth = z["x_test"][: len(shown)], z["y_test"][: len(shown)]
    classes = json.loads((data / "dataset.json").read_text())["classes"]
    png = _png(box_grid_figure(images, truth, shown, classes))
    return (
        "<h2 id='misclassified'>What the deployable model finds</h2>"
        f"<p>{_e(row['name'])} on the first {len(shown)} test scenes: truth in green, its detections in red "
        "(a cross at each centre, the class and score, the box when it has a size head)</p>" + _img(png, "detections")
    )


def _grid_png(images: np.ndarray, labels: list[tuple[str, str]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, (true, pred) in zip(axes.flat, images, labels):
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(f"{str(true)[:8]}→{str(pred)[:8]}", fontsize=7)
    return _png(fig)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
