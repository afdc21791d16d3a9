"""The learning-rate range test (Smith, 2017; fastai's `lr_find`): what `lr: auto` runs before training.

A fresh copy of the model trains for a few hundred steps while the learning rate grows exponentially from
`low` to `high`; the loss, smoothed, first falls and then blows up. The suggestion is the rate where the
loss falls fastest per decade of learning rate (fastai's "steep" point), which lies below the minimum:
high enough to train fast, below where it blows up. (A tenth of the minimum, fastai's other rule, was
ten times too cautious on the validation curve: benchmarks/README.md has the figures.)

The curve is the validation loss in inference mode, measured every few steps on a few hundred images,
not the training loss: with BatchNormalization, a rate that still lowers the training-mode loss can
already wreck the moving statistics that inference uses, so the training loss would suggest rates that
ruin the model.
"""

from __future__ import annotations

import math

import numpy as np

from edgepipe.core import fsio
from edgepipe.datasets.artifact import Dataset
from edgepipe.datasets.augment import tf_dataset

SMOOTHING = 0.7  # exponential moving average of the measured losses (bias-corrected)
EVERY = 4  # measure the validation loss every this many steps...
VAL_IMAGES = 256  # ...on this many validation images
BLOW_UP = 4.0  # stop once the smoothed loss is this many times its minimum


def lr_range_test(
    model,
    ds: Dataset,
    optimizer,
    batch_size: int,
    loss,
    *,
    steps: int = 200,
    low: float = 1e-6,
    high: float = 10.0,
    seed: int = 0,
) -> dict:
    """Sweep the learning rate over `steps` training steps of `model` (which it trains: pass a throwaway).

    Returns:
        {"suggested_lr", "min_loss_lr", "steepest_lr", "lrs", "losses" (smoothed), "steps_run", ...}.
    """
    from edgepipe.core._tf import keras

    train = tf_dataset(ds, "train", batch_size, training=True, seed=seed).repeat()
    x_val, y_val = ds.splits["val"]
    x_val, y_val = ds.preprocess(x_val[:VAL_IMAGES]), y_val[:VAL_IMAGES]
    model.compile(optimizer=optimizer, loss=loss)
    lrs, losses = [], []
    state = {"avg": 0.0, "n": 0, "best": math.inf}

    class Sweep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.lr = low * (high / low) ** (batch / max(1, steps - 1))
            self.model.optimizer.learning_rate.assign(self.lr)

        def on_train_batch_end(self, batch, logs=None):
            if batch % EVERY:
                return
            probs = self.model(x_val, training=False).numpy()
            value = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_val)), y_val], 1e-7, 1.0))))
            state["n"] += 1
            state["avg"] = SMOOTHING * state["avg"] + (1 - SMOOTHING) * value
            smoothed = state["avg"] / (1 - SMOOTHING ** state["n"])
            lrs.append(self.lr)
            losses.append(smoothed)
            state["best"] = min(state["best"], smoothed)
            if not math.isfinite(smoothed) or smoothed > BLOW_UP * state["best"]:
                self.model.stop_training = True

    model.fit(train, steps_per_epoch=steps, epochs=1, callbacks=[Sweep()], verbose=0)
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    best = min(finite, key=losses.__getitem__)
    # slope of the smoothed loss per decade of learning rate, up to the minimum; skip the first 10 % of
    # points, where the moving average is still settling
    start = max(1, len(losses) // 10)
    slopes = [(losses[i] - losses[i - 1]) / math.log10(lrs[i] / lrs[i - 1]) for i in range(start, best + 1)]
    steepest = lrs[start + int(np.argmin(slopes))] if slopes else lrs[best] / 10
    return {
        "suggested_lr": steepest,
        "min_loss_lr": lrs[best],
        "steepest_lr": steepest,
        "lrs": lrs,
        "losses": losses,
        "steps_run": len(losses) * EVERY,
        "low": low,
        "high": high,
    }


def write_lr_range(result: dict, out_dir) -> None:
    """lr_range.json (the sweep) and lr_range.png (loss against learning rate, the suggestion marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fsio.write_json(out_dir / "lr_range.json", result)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    losses = np.asarray(result["losses"], float)
    ax.plot(result["lrs"], losses)
    ax.set_xscale("log")
    finite = losses[np.isfinite(losses)]
    ax.set_ylim(finite.min() * 0.9, min(finite.max(), finite[0] * 1.5) * 1.05)
    ax.axvline(result["suggested_lr"], color="tab:red", ls="--", label=f"suggested {result['suggested_lr']:.2g}")
    ax.axvline(result["min_loss_lr"], color="grey", ls=":", label=f"loss minimum {result['min_loss_lr']:.2g}")
    ax.axvline(result["steepest_lr"], color="tab:green", ls=":", label=f"steepest {result['steepest_lr']:.2g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss (smoothed)")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with fsio.atomic_path(out_dir / "lr_range.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
