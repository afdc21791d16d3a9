"""The report's Pareto plot: accuracy against latency, a panel per target in that target's own units."""

from __future__ import annotations

from pathlib import Path

from edgepipe.core import fsio
from edgepipe.stages.report_tables import WORKED_OUT, capital, latency_provenance


def write_pareto(rows: list[dict], targets: dict, measured: list[dict], dest: Path, short: str = "accuracy") -> None:
    """pareto.png: `pareto_figure`, saved."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(rows, targets, measured, short)
    with fsio.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def pareto_figure(rows: list[dict], targets: dict, measured: list[dict], short: str = "accuracy"):
    """Accuracy against latency, one panel per target in `measured`'s order (this host last), the Pareto
    front drawn; the matplotlib Figure.

    On a target, each model is placed at its accuracy and latency there (emulated or measured on the
    device), in the target's units: ms where the latency is worked out (a microcontroller's, `WORKED_OUT`),
    on this host and the devices timed the unit that fits the values (us, ms or s). A target whose models
    have no latency (an uncalibrated emulated core) is drawn against instructions per inference instead.
    Tick labels are plain numbers, never offsets or powers of ten; the axis is logarithmic only when the
    values span more than tenfold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []  # (title, x label, [(x, accuracy %, row)])
    for m in measured:
        t = m["target"]
        if t == "host":
            points = [
                (
                    ((r["latency"].get("threads_1") or next(iter(r["latency"].values()), {})) or {}).get("p50_us"),
                    100 * r["accuracy"],
                    r,
                )
                for r in rows
            ]
            scale, unit = _time_unit([x for x, _, _ in points if x])
            panels.append(
                (
                    capital(m["label"]),
                    f"p50 latency, 1 thread ({unit})",
                    [(x and x / scale, y, r) for x, y, r in points],
                )
            )
            continue
        figs = [(targets.get(r["name"], {}).get(t), r) for r in rows]
        figs = [(f, r) for f, r in figs if f and f.get("accuracy") and f["accuracy"].get("value") is not None]
        if not figs:
            continue
        timed = [
            f["latency_p50_us"]["value"] for f, _ in figs if (f.get("latency_p50_us") or {}).get("value") is not None
        ]
        if timed:
            worked_out = latency_provenance(f for f, _ in figs) in WORKED_OUT
            key, (scale, unit) = "latency_p50_us", (1000, "ms") if worked_out else _time_unit(timed)
            xlabel = f"{'' if worked_out else 'p50 '}latency ({unit})"
        else:
            key, scale, xlabel = "instructions", 1e6, "instructions per inference (millions)"
        points = [((f.get(key) or {}).get("value"), 100 * f["accuracy"]["value"], r) for f, r in figs]
        panels.append((capital(m["label"]), xlabel, [(x and x / scale, y, r) for x, y, r in points]))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    colors = {"float32": "tab:blue", "float16": "tab:green", "dynamic": "tab:orange", "int8": "tab:red"}
    for ax, (title, xlabel, points) in zip(axes[0], panels):
        points = sorted((p for p in points if p[0]), key=lambda p: (p[0], -p[1]))
        seen = set()
        for x, y, r in points:
            ax.scatter(
                x,
                y,
                s=20 + r["size_bytes"] / 2000,
                alpha=0.6,
                color=colors.get(r["variant"], "gray"),
                marker="D" if r["qat"] else "o",
                label=None if r["variant"] in seen else r["variant"],
            )
            seen.add(r["variant"])
        front, best = [], -1.0
        for x, y, _ in points:  # faster first: a point is on the front if nothing faster is as accurate
            if y > best:
                front.append((x, y))
                best = y
        if front:
            ax.step(
                [x for x, _ in front],
                [y for _, y in front],
                where="post",
                color="black",
                lw=1,
                alpha=0.5,
                label="Pareto front",
            )
        log = _plain_axes(ax, [x for x, _, _ in points])
        ax.set_xlabel(xlabel[:-1] + ", log scale)" if log else xlabel)
        ax.set_ylabel(f"test {short} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        _label_without_overlap(fig, ax, points)
    fig.suptitle(f"{short} vs latency (marker area ~ file size, diamond = QAT)")
    fig.tight_layout()
    return fig


def _time_unit(values_us: list[float]) -> tuple[float, str]:
    """(divisor, unit) in which the largest of these microsecond values reads under 1,000."""
    top = max(values_us, default=0)
    return next(((d, u) for d, u in ((1, "us"), (1e3, "ms")) if top < 1000 * d), (1e6, "s"))


def _plain_axes(ax, xs: list[float]) -> bool:
    """Plain-number ticks on both axes (a firmware engineer reads 13.5, not 1.35 x 10^4 or an offset);
    a log x axis, ticked at 1, 2 and 5 of each decade, only when xs span more than tenfold. Whether it is log."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:.6f}".rstrip("0").rstrip("."))
    log = bool(xs) and max(xs) > 10 * min(xs)
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    return log


def _label_without_overlap(fig, ax, points) -> None:
    """Name every point, each label placed at the first of a few offsets where it overlaps no label placed
    before it (neighbours in latency otherwise print over each other)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(6, 4), (6, -11), (6, 14), (6, -21), (-6, 4), (-6, -11), (6, 24), (6, -31)]
    for x, y, r in points:
        for i, (dx, dy) in enumerate(offsets):
            text = ax.annotate(
                r["name"],
                (x, y),
                fontsize=7,
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx > 0 else "right",
            )
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or i == len(offsets) - 1:
                placed.append(box)
                break
            text.remove()
