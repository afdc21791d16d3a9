"""The training loop every training-type stage shares, and the knobs it takes.

`Fit` holds the knobs (optimizer, schedule, early stopping, ...) that train, distill, qat and transfer
stages all have; `fit()` is the one loop that runs them: compile, callbacks (checkpoints that survive a
crash, history, gradient probe, TensorBoard (in `io.logs`), schedule, early stopping), then Keras' own `fit`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Literal

import numpy as np

from edgepipe.core import progress
from edgepipe.core.params import MAX_EPOCHS, param
from edgepipe.core.stage import StageIO
from edgepipe.datasets.artifact import Dataset
from edgepipe.datasets.augment import tf_dataset
from edgepipe.tasks import task_of
from edgepipe.training.history import read_history, write_history
from edgepipe.training.probes import gradient_norms


@dataclasses.dataclass
class Schedule:
    """Learning-rate schedule."""

    kind: Literal["constant", "step", "cosine", "plateau"] = param("cosine", "how the learning rate evolves")
    warmup_epochs: int = param(0, "linear warm-up from 0 (cosine only)", min=0, max=MAX_EPOCHS)
    step_epochs: int = param(10, "epochs between decays (step only)", min=1, max=MAX_EPOCHS)
    gamma: float = param(0.1, "decay factor (step, plateau)", min=0.0, max=1.0)
    patience: int = param(2, "epochs without improvement before decaying (plateau only)", min=1)
    min_lr: float = param(0.0, "floor of the learning rate (cosine end value, plateau floor)", min=0.0)


@dataclasses.dataclass
class EarlyStopping:
    """Stop when the monitored metric stops improving."""

    enabled: bool = param(True, "use early stopping")
    monitor: Literal["val_loss", "val_accuracy"] = param("val_loss", "what to watch")
    patience: int = param(5, "epochs without improvement before stopping", min=1)
    min_delta: float = param(0.0, "smallest change that counts as improvement", min=0.0)
    restore_best: bool = param(True, "keep the weights of the best epoch, not the last")


@dataclasses.dataclass
class Fit:
    """Training knobs shared by every training-type stage."""

    optimizer: Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"] = param("adam", "optimizer")
    lr: float = param(1e-3, "initial (peak, with warm-up) learning rate", min=0.0, max=10.0)
    momentum: float = param(0.9, "momentum for momentum, nesterov, rmsprop", min=0.0, max=1.0)
    weight_decay: float = param(1e-4, "decoupled weight decay (adamw only)", min=0.0)
    schedule: Schedule = param(Schedule(), "learning-rate schedule")
    batch_size: int = param(128, "samples per step", min=1)
    steps_per_execution: int = param(
        16,
        "training steps per call into TensorFlow, the same updates with fewer "
        "round trips from Python (it pays when trainings share the cores); per-batch "
        "callbacks see every Nth batch",
        min=1,
    )
    epochs: int = param(10, f"maximum epochs (at most {MAX_EPOCHS})", min=1, max=MAX_EPOCHS)
    early_stopping: EarlyStopping = param(EarlyStopping(), "early stopping")
    label_smoothing: float = param(0.0, "cross-entropy label smoothing (classification)", min=0.0, max=0.5)
    object_weight: float = param(
        100.0,
        "detection: the cross-entropy weight of a cell holding an object against a "
        "background cell (FOMO's 100: most cells are background)",
        min=1.0,
        max=10000.0,
    )
    clipnorm: float | None = param(None, "clip each gradient to this L2 norm", min=0.0)
    class_weights: Literal["none", "balanced"] = param("none", "weight the loss by inverse class frequency")
    seed: int = param(0, "seed for initialisation, shuffling and augmentation")
    tensorboard: bool = param(
        True,
        "write TensorBoard logs to runs/<recipe>/.tb/<stage>/ (outside the stage's "
        "output, so they never make it look changed)",
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic (same seed -> same weights on CPU)."""
    from edgepipe.core._tf import keras, tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def steps_per_epoch(ds: Dataset, batch_size: int) -> int:
    """Training steps in one epoch of ds's train split (the last batch may be short)."""
    return int(np.ceil(len(ds.splits["train"][1]) / batch_size))


def fit(
    model,
    ds: Dataset,
    p: Fit,
    io: StageIO,
    *,
    loss=None,
    compile_model: bool = True,
    target=None,
    train_extra=None,
    callbacks=(),
):
    """Compile (unless the caller did) and fit `model` on ds's train split, validating on val.

    Resumes from `io.work` after a crash (BackupAndRestore keeps the last finished epoch there). Writes
    history to `io.work` first, so only a finished stage's output directory holds it. `target` is the
    model whose gradients the doctor watches when `model` is a wrapper (the distiller's student).
    `train_extra` (one row per train sample) reaches train_step beside the labels: y = (one_hot, extra).
    `callbacks` are the caller's own Keras callbacks (a search's pruning), after the loop's.

    Returns:
        the list of per-epoch history rows (dicts).
    """
    task = task_of(ds.info)
    train = _pack(tf_dataset(ds, "train", p.batch_size, training=True, seed=p.seed, extra=train_extra))
    val = tf_dataset(ds, "val", max(p.batch_size, 256), training=False)
    if compile_model:
        model.compile(
            optimizer=make_optimizer(p, steps_per_epoch(ds, p.batch_size)),
            loss=loss or task.loss(ds.info, p),
            metrics=task.keras_metrics(),
            steps_per_execution=p.steps_per_execution,
        )
    history_csv = io.work / "history.csv"
    callbacks = [*_callbacks(p, ds, io, target or model, history_csv), *callbacks]
    class_weight = None
    if p.class_weights == "balanced":
        class_weight = dict(enumerate(ds.info["class_weights_balanced"]))
    # Keras' per-batch bar only in a terminal nobody else draws progress in (the runner's live lines)
    model.fit(
        train,
        validation_data=val,
        epochs=p.epochs,
        callbacks=callbacks,
        class_weight=class_weight,
        verbose=1 if sys.stdout.isatty() and not progress.active() else 2,
    )
    rows = read_history(history_csv)
    write_history(rows, io.out / "history.csv")
    return rows


def _callbacks(p: Fit, ds: Dataset, io: StageIO, watched, history_csv):
    """Checkpoints that survive a crash, the history, NaN stop, the doctor's gradient probe on `watched`,
    TensorBoard, the plateau schedule and early stopping, as the knobs say."""
    from edgepipe.core._tf import keras, tf

    callbacks = [
        keras.callbacks.BackupAndRestore(str(io.work / "backup")),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        keras.callbacks.TerminateOnNaN(),
        _epoch_progress(p.epochs),
    ]
    if not tf.distribute.has_strategy():  # the probe's eager gradient cannot read distributed variables
        callbacks.append(gradient_norms(watched, ds, io.out / "gradients.json"))
    if p.tensorboard and io.logs is not None:  # never in io.out: event files hold wall times
        callbacks.append(keras.callbacks.TensorBoard(str(io.logs), profile_batch=0))
    if p.schedule.kind == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                factor=p.schedule.gamma, patience=p.schedule.patience, min_lr=p.schedule.min_lr, verbose=1
            )
        )
    es = p.early_stopping
    if es.enabled:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=es.monitor,
                patience=es.patience,
                min_delta=es.min_delta,
                restore_best_weights=es.restore_best,
                mode="min" if es.monitor == "val_loss" else "max",
            )
        )
    return callbacks


def _epoch_progress(epochs: int):
    """A Keras callback reporting epoch k/N and the last validation metric to `edgepipe.core.progress`."""
    from edgepipe.core._tf import keras

    class EpochProgress(keras.callbacks.Callback):
        started = False

        def on_epoch_begin(self, epoch, logs=None):
            if not self.started:  # the count starts at the first epoch run (not 0 when resuming a checkpoint)
                self.started = True
                progress.update(epoch, epochs, "epoch")

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            name = "val_accuracy" if "val_accuracy" in logs else next((k for k in logs if k.startswith("val_")), None)
            progress.update(epoch + 1, epochs, "epoch", f"{name} {float(logs[name]):.4f}" if name else "")

    return EpochProgress()


def make_optimizer(p: Fit, steps_per_epoch: int):
    """The optimizer `p` names, with its learning-rate schedule and gradient clipping."""
    from edgepipe.core._tf import keras

    s = p.schedule
    lr: Any = p.lr
    if s.kind == "step":
        lr = keras.optimizers.schedules.ExponentialDecay(p.lr, s.step_epochs * steps_per_epoch, s.gamma, staircase=True)
    elif s.kind == "cosine":
        warmup = s.warmup_epochs * steps_per_epoch
        decay = max(1, (p.epochs - s.warmup_epochs) * steps_per_epoch)
        alpha = s.min_lr / p.lr if p.lr else 0.0
        lr = (
            keras.optimizers.schedules.CosineDecay(0.0, decay, alpha=alpha, warmup_target=p.lr, warmup_steps=warmup)
            if warmup
            else keras.optimizers.schedules.CosineDecay(p.lr, decay, alpha=alpha)
        )
    kw: dict[str, Any] = {"learning_rate": lr}
    if p.clipnorm:
        kw["clipnorm"] = p.clipnorm
    O = keras.optimizers
    return {
        "sgd": lambda: O.SGD(**kw),
        "momentum": lambda: O.SGD(momentum=p.momentum, **kw),
        "nesterov": lambda: O.SGD(momentum=p.momentum, nesterov=True, **kw),
        "adam": lambda: O.Adam(**kw),
        "adamw": lambda: O.AdamW(weight_decay=p.weight_decay, **kw),
        "rmsprop": lambda: O.RMSprop(momentum=p.momentum if p.momentum < 1 else 0.0, **kw),
    }[p.optimizer]()


def _pack(d):
    """An extra third element joins the targets as y = (targets, extra)."""
    return d.map(lambda x, y, *extra: (x, (y, *extra) if extra else y))
