"""The train stage: fit a model from the zoo (or a user builder) on a data stage's output.

`Fit` holds the knobs every training-type stage shares (optimizer, schedule, early stopping, ...), and
`fit()` / `evaluate()` / `write_training_outputs()` are the one implementation of them that the later
stages (distill, qat, transfer) call too.
"""

from __future__ import annotations

import csv
import dataclasses
import io as io_module
import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe import fsio
from edgepipe.data import Dataset, load_dataset, tf_dataset
from edgepipe.params import param
from edgepipe.stages import StageIO, StageKind

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Schedule:
    """Learning-rate schedule."""

    kind: Literal["constant", "step", "cosine", "plateau"] = param("cosine", "how the learning rate evolves")
    warmup_epochs: int = param(0, "linear warm-up from 0 (cosine only)", min=0)
    step_epochs: int = param(10, "epochs between decays (step only)", min=1)
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
    steps_per_execution: int = param(16, "training steps per call into TensorFlow, the same updates; fewer "
                                     "round trips from Python, which pays when trainings share the cores (MNIST "
                                     "teacher beside student on 2 cores: 12.3 against 16.0 s an epoch); per-batch "
                                     "callbacks see every Nth batch", min=1)
    epochs: int = param(10, "maximum epochs", min=1)
    early_stopping: EarlyStopping = param(EarlyStopping(), "early stopping")
    label_smoothing: float = param(0.0, "cross-entropy label smoothing", min=0.0, max=0.5)
    clipnorm: float | None = param(None, "clip each gradient to this L2 norm", min=0.0)
    class_weights: Literal["none", "balanced"] = param("none", "weight the loss by inverse class frequency")
    seed: int = param(0, "seed for initialisation, shuffling and augmentation")
    tensorboard: bool = param(True, "write TensorBoard logs to tb/")


@dataclasses.dataclass
class TrainParams(Fit):
    """Parameters of the train stage: the model, regularisation, then the shared training knobs."""

    arch: str = param("cnn_teacher", "architecture from edgepipe.nets, or package.module:function")
    arch_args: dict[str, Any] = param({}, "extra keyword arguments for the builder (e.g. width, alpha)")
    dropout: float | None = param(None, "dropout before the classifier; null keeps the builder's default",
                                  min=0.0, max=0.9)
    l1: float = param(0.0, "L1 penalty on kernels", min=0.0)
    l2: float = param(0.0, "L2 penalty on kernels", min=0.0)
    initializer: str = param("he_normal", "kernel initializer (any tf_keras initializer name)")
    lr: float | Literal["auto"] = param(1e-3, "initial (peak, with warm-up) learning rate, or auto: a learning-rate "
                                        "range test on a throwaway copy of the model picks it", min=0.0, max=10.0)
    folds: int = param(1, "k-fold cross-validation: k more models, each validated on one stratified fold of "
                       "train+val; metrics.json gets their mean and std (1: off)", min=1, max=20)
    strategy: Literal["default", "mirrored", "multi_worker"] = param(
        "default", "tf.distribute strategy: default (one process), mirrored (local GPUs), multi_worker "
        "(machines named by TF_CONFIG; see edgepipe.distribute)")

    def __post_init__(self):
        if self.strategy != "default" and (self.folds > 1 or self.lr == "auto"):
            raise ValueError(f"strategy {self.strategy} trains one model; it cannot be combined with folds or "
                             "lr: auto; fix: use strategy: default, or drop folds and lr: auto")


def run_train_stage(params: TrainParams, io: StageIO) -> str:
    """Build, fit and evaluate a model; write model.h5, history.csv, curves.png, metrics.json, tb/.

    With `lr: auto`, a learning-rate range test on a throwaway copy of the model picks the rate first
    (lr_range.json and lr_range.png); the recipe keeps saying auto, metrics.json says what was used.
    """
    from edgepipe import nets
    from edgepipe._tf import keras

    ds = load_dataset(io.inputs["data"])
    common: dict[str, Any] = {"kernel_initializer": params.initializer}
    if params.l1 or params.l2:
        common["kernel_regularizer"] = keras.regularizers.L1L2(l1=params.l1, l2=params.l2)
    if params.dropout is not None:
        common["dropout"] = params.dropout

    def build():
        return nets.build_model(params.arch, ds.input_shape, len(ds.classes), params.arch_args, **common)

    extra = {}
    if params.lr == "auto":
        from edgepipe.lr_range import lr_range_test, write_lr_range

        seed_everything(params.seed)
        sweep = dataclasses.replace(params, lr=1e-6, schedule=Schedule(kind="constant"))
        result = lr_range_test(build(), ds, make_optimizer(sweep, 1), params.batch_size,
                               keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing),
                               seed=params.seed)
        write_lr_range(result, io.out)
        params = dataclasses.replace(params, lr=result["suggested_lr"])
        extra = {"lr": params.lr, "lr_chosen_by": "range test (lr_range.json)"}
        keras.backend.clear_session()  # the real model's layer names as without the probe
    if params.folds > 1:
        extra["cross_validation"] = cross_validate(build, ds, params, io)
        keras.backend.clear_session()
    from edgepipe import distribute

    strategy = distribute.make_strategy(params.strategy)
    seed_everything(params.seed)
    with distribute.scope(strategy):
        model = build()
        log.info("%s: %d params, %d MACs", params.arch, model.count_params(), nets.count_macs(model))
        fit(model, ds, params, io)
    if strategy is not None:
        extra["strategy"] = {"kind": params.strategy, "replicas": strategy.num_replicas_in_sync,
                             "cluster": distribute.cluster()}
    metrics = write_training_outputs(distribute.local_copy(model, strategy), ds, io, params, extra=extra)
    chosen = f", lr {params.lr:.2g} from the range test" if "lr" in extra else ""
    if "cross_validation" in extra:
        cv = extra["cross_validation"]
        chosen += f"; {params.folds}-fold val accuracy {100 * cv['mean']:.2f} ± {100 * cv['std']:.2f} %"
    return f"test accuracy {100 * metrics['test']['accuracy']:.2f} % ({metrics['epochs_run']} epochs{chosen})"


KIND = StageKind(
    name="train", params=TrainParams, run=run_train_stage, inputs={"data": False},
    code=("edgepipe.train", "edgepipe.nets", "edgepipe.data", "edgepipe.doctor", "edgepipe.lr_range",
          "edgepipe.distribute"),
    main_output="model.h5",
    doc="train a model from the zoo on a dataset",
)


# -- the shared training loop ------------------------------------------------------------------------------


def cross_validate(build, ds: Dataset, params: "TrainParams", io: StageIO) -> dict:
    """k-fold cross-validation over train+val (stratified, seeded); the test split is never touched.

    Each fold trains a fresh model with the stage's knobs and is scored on its held-out fold. A fold that
    finished survives a crash (its result is kept in the stage's work directory).
    """
    k = params.folds
    x = np.concatenate([ds.splits["train"][0], ds.splits["val"][0]])
    y = np.concatenate([ds.splits["train"][1], ds.splits["val"][1]])
    rng = np.random.default_rng(params.seed)
    fold_of = np.empty(len(y), np.int64)
    for c in np.unique(y):  # deal each class's images round-robin into the folds: stratified
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = (np.arange(len(idx)) + int(c)) % k
    results = []
    for i in range(k):
        where = io.work / f"fold{i + 1}"
        done = where / "result.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        where.mkdir(parents=True, exist_ok=True)
        held = fold_of == i
        fold = Dataset(ds.info, {"train": (x[~held], y[~held]), "val": (x[held], y[held]), "test": ds.splits["test"]})
        seed_everything(params.seed + i)
        model = build()
        fit(model, fold, params, StageIO(io.inputs, out=where, work=where))
        scores = evaluate(model, fold, "val")
        result = {"fold": i + 1, "val_samples": int(held.sum()), "accuracy": scores["accuracy"], "loss": scores["loss"],
                  "epochs_run": len(read_history(where / "history.csv"))}
        fsio.write_json(done, result)
        results.append(result)
    accuracy = np.array([r["accuracy"] for r in results])
    return {"folds": results, "mean": float(accuracy.mean()), "std": float(accuracy.std(ddof=1)),
            "loss_mean": float(np.mean([r["loss"] for r in results]))}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic (same seed -> same weights on CPU)."""
    from edgepipe._tf import keras, tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(model, ds: Dataset, p: Fit, io: StageIO, *, loss=None, compile_model: bool = True, target=None,
        train_extra=None):
    """Compile (unless the caller did) and fit `model` on ds's train split, validating on val.

    Resumes from `io.work` after a crash (BackupAndRestore keeps the last finished epoch there). Writes
    history to `io.work` first, so only a finished stage's output directory holds it. `target` is the
    model whose gradients the doctor watches when `model` is a wrapper (the distiller's student).
    `train_extra` (one row per train sample) reaches train_step beside the labels: y = (one_hot, extra).

    Returns:
        the list of per-epoch history rows (dicts).
    """
    from edgepipe._tf import keras, tf

    train = _one_hot(tf_dataset(ds, "train", p.batch_size, training=True, seed=p.seed, extra=train_extra),
                     len(ds.classes))
    val = _one_hot(tf_dataset(ds, "val", max(p.batch_size, 256), training=False), len(ds.classes))
    steps = int(np.ceil(len(ds.splits["train"][1]) / p.batch_size))
    if compile_model:
        model.compile(optimizer=make_optimizer(p, steps),
                      loss=loss or keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                      steps_per_execution=p.steps_per_execution)
    history_csv = io.work / "history.csv"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(io.work / "backup")),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        keras.callbacks.TerminateOnNaN(),
    ]
    if not tf.distribute.has_strategy():  # the probe's eager gradient cannot read distributed variables
        callbacks.append(gradient_norms(target or model, ds, io.out / "gradients.json"))
    if p.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(io.out / "tb"), profile_batch=0))
    if p.schedule.kind == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(factor=p.schedule.gamma, patience=p.schedule.patience,
                                                           min_lr=p.schedule.min_lr, verbose=1))
    es = p.early_stopping
    if es.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience,
                                                       min_delta=es.min_delta, restore_best_weights=es.restore_best,
                                                       mode="min" if es.monitor == "val_loss" else "max"))
    class_weight = None
    if p.class_weights == "balanced":
        class_weight = dict(enumerate(ds.info["class_weights_balanced"]))
    model.fit(train, validation_data=val, epochs=p.epochs, callbacks=callbacks, class_weight=class_weight,
              verbose=1 if sys.stdout.isatty() else 2)
    rows = read_history(history_csv)
    write_history(rows, io.out / "history.csv")
    return rows


def gradient_norms(watched, ds: Dataset, dest: Path, samples: int = 64):
    """A callback: after each epoch, the L2 norm of the loss gradient of every kernel of `watched`, on one
    fixed batch of val images, appended to `dest` (gradients.json) for the doctor.

    The forward pass is in inference mode, so that measuring does not move BatchNorm statistics.
    """
    from edgepipe._tf import keras, tf

    x, y = ds.splits["val"]
    x, y = tf.constant(ds.preprocess(x[:samples])), tf.one_hot(y[:samples], len(ds.classes))
    rows: list[dict] = []

    def measure(epoch, logs=None):
        kernels = [v for v in watched.trainable_variables if "kernel" in v.name]
        if not kernels:
            return
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(y, watched(x, training=False)))
        grads = tape.gradient(loss, kernels)
        rows.append({"epoch": epoch + 1, "norms": {v.name.rsplit("/", 1)[0]: float(tf.norm(g)) if g is not None
                                                    else 0.0 for v, g in zip(kernels, grads)}})
        fsio.write_json(dest, rows)

    return keras.callbacks.LambdaCallback(on_epoch_end=measure)


def batchnorm_modes(model, ds: Dataset, samples: int = 512, batch: int = 128) -> dict | None:
    """Accuracy on train images with BatchNorm's moving statistics (inference, as exported) and with each
    batch's own statistics (as in training); None for a model with no BatchNorm layer that learns.

    A large gap means the moving averages lag the weights. The model's non-trainable variables (moving
    statistics, QAT ranges) are restored afterwards, so measuring changes nothing.
    """
    from edgepipe._tf import keras

    if not any(isinstance(m, keras.layers.BatchNormalization) and m.trainable for m in model.submodules):
        return None
    x, y = ds.splits["train"]
    x, y = ds.preprocess(x[:samples]), y[:samples]
    moving = model.predict(x, batch_size=batch, verbose=0).argmax(1)
    kept = [v.numpy() for v in model.non_trainable_variables]
    try:
        batched = np.concatenate([model(x[i:i + batch], training=True).numpy() for i in range(0, len(x), batch)])
    finally:
        for v, value in zip(model.non_trainable_variables, kept):
            v.assign(value)
    return {"moving": float(np.mean(moving == y)), "batch": float(np.mean(batched.argmax(1) == y)),
            "samples": int(len(y))}


def dead_relus(model, ds: Dataset, samples: int = 256) -> dict[str, float]:
    """Share of each ReLU layer's channels that output zero for every one of `samples` val images."""
    from edgepipe._tf import keras

    relus = [layer for layer in model.layers
             if isinstance(getattr(layer, "layer", layer), keras.layers.ReLU)
             or getattr(getattr(layer, "layer", layer), "activation", None) is keras.activations.relu]
    if not relus:
        return {}
    probe = keras.Model(model.input, [layer.output for layer in relus])
    outputs = probe.predict(ds.preprocess(ds.splits["val"][0][:samples]), batch_size=256, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    shares = {}
    for layer, out in zip(relus, outputs):
        alive = (out.reshape(-1, out.shape[-1]) > 0).any(axis=0)
        shares[layer.name] = float(1 - alive.mean())
    return shares


def make_optimizer(p: Fit, steps_per_epoch: int):
    """The optimizer `p` names, with its learning-rate schedule and gradient clipping."""
    from edgepipe._tf import keras

    s = p.schedule
    lr: Any = p.lr
    if s.kind == "step":
        lr = keras.optimizers.schedules.ExponentialDecay(p.lr, s.step_epochs * steps_per_epoch, s.gamma, staircase=True)
    elif s.kind == "cosine":
        warmup = s.warmup_epochs * steps_per_epoch
        decay = max(1, (p.epochs - s.warmup_epochs) * steps_per_epoch)
        alpha = s.min_lr / p.lr if p.lr else 0.0
        lr = (keras.optimizers.schedules.CosineDecay(0.0, decay, alpha=alpha, warmup_target=p.lr, warmup_steps=warmup)
              if warmup else keras.optimizers.schedules.CosineDecay(p.lr, decay, alpha=alpha))
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


def predict(model, ds: Dataset, split: str, batch_size: int = 512) -> np.ndarray:
    """Class probabilities for a whole split (preprocessed as recorded)."""
    x, _ = ds.splits[split]
    return model.predict(ds.preprocess(x), batch_size=batch_size, verbose=0)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1 with macro and weighted averages, and the confusion matrix."""
    k = len(classes)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "samples": int(cm.sum()),
        "per_class": [{"class": c, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(support[i])} for i, c in enumerate(classes)],
        "macro": {m: float(v[present].mean()) for m, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted": {m: float((v * support).sum() / max(1, support.sum()))
                     for m, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "confusion_matrix": cm.tolist(),
    }


def evaluate(model, ds: Dataset, split: str = "test") -> dict:
    """classification_metrics() of `model` on a split, plus the cross-entropy loss."""
    probs = predict(model, ds, split)
    y = ds.splits[split][1]
    metrics = classification_metrics(y, probs.argmax(1), ds.classes)
    metrics["loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))
    return metrics


def write_training_outputs(model, ds: Dataset, io: StageIO, params: Fit, *, extra: dict | None = None,
                           title: str = "") -> dict:
    """Save the model; write metrics.json (plus `extra`), curves.png, confusion_matrix.csv/.png (test split)
    and the doctor's diagnostics.json."""
    from edgepipe import doctor, nets

    save_model(model, io.out / "model.h5")
    rows = read_history(io.out / "history.csv")
    metrics = {
        "test": evaluate(model, ds, "test"),
        "val": {k: v for k, v in evaluate(model, ds, "val").items() if k in ("accuracy", "loss")},
        "epochs_run": len(rows),
        "params": int(model.count_params()),
        "macs": nets.count_macs(model),
        **(extra or {}),
    }
    fsio.write_json(io.out / "metrics.json", metrics)
    plot_curves(rows, io.out / "curves.png", title)
    cm = metrics["test"]["confusion_matrix"]
    table = io_module.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["true \\ predicted", *ds.classes])
    writer.writerows([c, *r] for c, r in zip(ds.classes, cm))
    fsio.write_text(io.out / "confusion_matrix.csv", table.getvalue())
    plot_confusion(cm, ds.classes, io.out / "confusion_matrix.png")
    es = params.early_stopping
    gradients = io.out / "gradients.json"
    findings = doctor.diagnose(rows, metrics, ds.info, {"class_weights": params.class_weights,
                                                        "restore_best": es.enabled and es.restore_best},
                               gradients=json.loads(gradients.read_text()) if gradients.is_file() else [],
                               dead=dead_relus(model, ds), batchnorm=batchnorm_modes(model, ds))
    fsio.write_json(io.out / "diagnostics.json", [dataclasses.asdict(f) | {"line": f.line()} for f in findings])
    return metrics


def carried_forward(stage_dir) -> dict:
    """Facts of a model stage that stay true of models made from it (its QAT version, its .tflite files).

    Today that is the in-model input adapter a transfer stage records, which devices must know about.
    """
    path = Path(stage_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    return {k: metrics[k] for k in ("input_adapter",) if k in metrics}


def save_model(model, dest: Path) -> None:
    """Save a model as HDF5, weights only with no optimizer state.

    HDF5, not the `.keras` format: tfmot's quantize-aware layers do not reload from `.keras` (their
    variables are not restored), and one format must work for every stage's model.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HDF5 file.*legacy.*")
        model.save(dest, include_optimizer=False)


def load_model(stage_dir: Path):
    """Load a training-type stage's model.h5 (QAT models included: tfmot's layers are in scope)."""
    import tensorflow_model_optimization as tfmot

    from edgepipe._tf import keras

    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(Path(stage_dir) / "model.h5", compile=False)


def plot_curves(rows: list[dict], dest: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train against validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "val")):
            values = [float(r[prefix + metric]) for r in rows if r.get(prefix + metric) not in (None, "")]
            if values:
                ax.plot(epochs[: len(values)], values, marker="o", ms=3, label=label)
        for i in range(1, len(rows)):  # multi-phase training (transfer): mark where each phase starts
            if rows[i].get("phase") != rows[i - 1].get("phase"):
                ax.axvline(epochs[i] - 0.5, color="grey", ls="--", lw=1)
                ax.text(epochs[i] - 0.4, ax.get_ylim()[1], rows[i]["phase"], va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(dest, dpi=90)
    plt.close(fig)


def plot_confusion(cm, classes, dest: Path) -> None:
    """The test confusion matrix as a picture (colour on a log scale, so that small counts show)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    k = len(cm)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.2, 0.45 * k + 1.8))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if i == j else "black")
    ax.set_xticks(range(k), [str(c)[:10] for c in classes], rotation=90, fontsize=7)
    ax.set_yticks(range(k), [str(c)[:10] for c in classes], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test)", fontsize=9)
    fig.tight_layout()
    with fsio.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _one_hot(d, k: int):
    """Labels to one-hot; an extra third element joins them as y = (one_hot, extra)."""
    from edgepipe._tf import tf

    return d.map(lambda x, y, *extra: (x, (tf.one_hot(y, k), *extra) if extra else tf.one_hot(y, k)))


def read_history(path: Path) -> list[dict]:
    """The rows of a history.csv, one per epoch (a resumed run's repeated epochs keep their last row)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_epoch: dict[str, dict] = {}
    for r in rows:  # a resumed run may log an epoch twice: keep the last
        if r.get("epoch") not in (None, "", "epoch"):
            by_epoch[r["epoch"]] = r
    return [by_epoch[k] for k in sorted(by_epoch, key=int)]


def write_history(rows: list[dict], dest: Path) -> None:
    """Write history rows as CSV, atomically; the columns are the union of the rows' keys."""
    if not rows:
        fsio.write_text(dest, "")
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(fields)] + [",".join(str(r.get(f, "")) for f in fields) for r in rows]
    fsio.write_text(dest, "\n".join(lines) + "\n")
