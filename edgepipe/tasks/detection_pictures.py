"""Pictures of detection scenes: ground-truth boxes and, when given, a model's detections over each image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.tasks.detection_decode import CLASS, CX, CY, SCORE, X0, X1, Y0, Y1

TRUTH, PREDICTED = "#2ca02c", "#d62728"


def box_grid(
    images: np.ndarray,
    gts: np.ndarray,
    preds: list[np.ndarray] | None,
    classes: list[str],
    dest: Path,
    *,
    columns: int = 8,
    title: str = "",
) -> None:
    """`box_grid_figure` saved as a PNG at `dest` (atomically)."""
    import matplotlib.pyplot as plt

    fig = box_grid_figure(images, gts, preds, classes, columns=columns, title=title)
    with fsio.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def box_grid_figure(
    images: np.ndarray, gts: np.ndarray, preds: list[np.ndarray] | None, classes: list[str], *, columns=8, title=""
):
    """A grid of `images` with their ground truth (green boxes, class names) and `preds` (red: a cross at
    each detected centre with its class and score, and its box when the model has a size head)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        for c, x0, y0, x1, y1 in gts[i]:
            if c < 0:
                continue
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.8, ec=TRUTH))
            ax.text(x0, y0 - 1, classes[int(c)], color=TRUTH, fontsize=5, va="bottom")
        for d in [] if preds is None else preds[i]:
            ax.plot(d[CX] - 0.5, d[CY] - 0.5, "+", color=PREDICTED, ms=5, mew=1)
            if not np.isnan(d[X0]):
                ax.add_patch(
                    Rectangle(
                        (d[X0] - 0.5, d[Y0] - 0.5),
                        d[X1] - d[X0],
                        d[Y1] - d[Y0],
                        fill=False,
                        lw=0.6,
                        ec=PREDICTED,
                        ls="--",
                    )
                )
            ax.text(
                d[CX] + 2,
                d[CY] + 2,
                f"{classes[int(d[CLASS])]} {d[SCORE]:.2f}",
                color=PREDICTED,
                fontsize=4.5,
                va="top",
            )
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig
