"""The train stage: fit a model from the zoo (or a user builder) on a data stage's output.

The training loop, evaluation and outputs it shares with distill, qat and transfer are in
`edgepipe.training` (its parameters, `TrainParams`, too: a distill stage and a search's trials take them);
what is the train stage's own is here: `lr: auto`,
k-fold cross-validation and the tf.distribute strategies.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import Dataset, load_dataset
from edgepipe.tasks import task_of
from edgepipe.training import distribute, nets
from edgepipe.training.evaluate import evaluate
from edgepipe.training.fit import Schedule, fit, make_optimizer, seed_everything
from edgepipe.training.history import read_history
from edgepipe.training.outputs import test_figure, write_training_outputs
from edgepipe.training.params import TrainParams

log = logging.getLogger(__name__)


def run_train_stage(params: TrainParams, io: StageIO) -> str:
    """Build, fit and evaluate a model; write model.h5, history.csv, curves.png, metrics.json, tb/.

    With `lr: auto`, a learning-rate range test on a throwaway copy of the model picks the rate first
    (lr_range.json and lr_range.png); the recipe keeps saying auto, metrics.json says what was used.
    """
    from edgepipe.core._tf import keras

    ds = load_dataset(io.inputs["data"])

    def build():
        return nets.build_for(params, ds)

    extra = {}
    if params.lr == "auto":
        from edgepipe.training.lr_range import lr_range_test, write_lr_range

        seed_everything(params.seed)
        sweep = dataclasses.replace(params, lr=1e-6, schedule=Schedule(kind="constant"))
        result = lr_range_test(
            build(),
            ds,
            make_optimizer(sweep, 1),
            params.batch_size,
            task_of(ds.info).loss(ds.info, params),
            seed=params.seed,
        )
        write_lr_range(result, io.out)
        params = dataclasses.replace(params, lr=result["suggested_lr"])
        extra = {"lr": params.lr, "lr_chosen_by": "range test (lr_range.json)"}
        keras.backend.clear_session()  # the real model's layer names as without the probe
    if params.folds > 1:
        extra["cross_validation"] = cross_validate(build, ds, params, io)
        keras.backend.clear_session()
    strategy = distribute.make_strategy(params.strategy)
    seed_everything(params.seed)
    with distribute.scope(strategy):
        model = build()
        log.info("%s: %d params, %d MACs", params.arch, model.count_params(), nets.count_macs(model))
        fit(model, ds, params, io)
    if strategy is not None:
        extra["strategy"] = {
            "kind": params.strategy,
            "replicas": strategy.num_replicas_in_sync,
            "cluster": distribute.cluster(),
        }
    metrics = write_training_outputs(distribute.local_copy(model, strategy), ds, io, params, extra=extra)
    chosen = f", lr {params.lr:.2g} from the range test" if "lr" in extra else ""
    if "cross_validation" in extra:
        cv = extra["cross_validation"]
        chosen += f"; {params.folds}-fold val {cv['metric']} {100 * cv['mean']:.2f} ± {100 * cv['std']:.2f} %"
    return f"{test_figure(metrics)} ({metrics['epochs_run']} epochs{chosen})"


KIND = StageKind(
    name="train",
    params=TrainParams,
    run=run_train_stage,
    inputs={"data": False},
    output="model",
    accepts={"data": ("dataset",)},
    main_output="model.h5",
    deps=lambda p: nets.builder_files(p.arch),
    # a worker trains its share of a multi-worker training as the chief does; TF_CONFIG names the others
    join=run_train_stage,
    joinable=lambda p: "own" if p.strategy == "multi_worker" else None,
    doc="train a model from the zoo on a dataset",
)


def cross_validate(build, ds: Dataset, params: TrainParams, io: StageIO) -> dict:
    """k-fold cross-validation over train+val (stratified, seeded); the test split is never touched.

    Each fold trains a fresh model with the stage's knobs and is scored on its held-out fold. A fold that
    finished survives a crash (its result is kept in the stage's work directory).
    """
    k = params.folds
    x = np.concatenate([ds.splits["train"][0], ds.splits["val"][0]])
    y = np.concatenate([ds.splits["train"][1], ds.splits["val"][1]])
    rng = np.random.default_rng(params.seed)
    fold_of = np.empty(len(y), np.int64)
    if y.ndim == 1:
        for c in np.unique(y):  # deal each class's images round-robin into the folds: stratified
            idx = rng.permutation(np.flatnonzero(y == c))
            fold_of[idx] = (np.arange(len(idx)) + int(c)) % k
    else:  # boxes: images dealt at random
        fold_of[rng.permutation(len(y))] = np.arange(len(y)) % k
    sizes = np.bincount(fold_of, minlength=k)
    if sizes.min() < 1 or any(np.sum(fold_of != i) == 0 for i in range(k)):
        raise EdgepipeError(
            f"folds: {k} folds of {len(y)} train+val images leave a fold empty",
            f"use at most {len(y) // 2} folds, or more images",
        )
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
        headline = task_of(ds.info).headline
        result = {
            "fold": i + 1,
            "val_samples": int(held.sum()),
            headline: scores[headline],
            "loss": scores.get("loss"),
            "epochs_run": len(read_history(where / "history.csv")),
        }
        fsio.write_json(done, result)
        results.append(result)
    headline = task_of(ds.info).headline
    scores = np.array([r[headline] for r in results])
    losses = [r["loss"] for r in results if r["loss"] is not None]
    return {
        "folds": results,
        "metric": headline,
        "mean": float(scores.mean()),
        "std": float(scores.std(ddof=1)),
        "loss_mean": float(np.mean(losses)) if losses else None,
    }
