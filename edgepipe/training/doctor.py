"""The training doctor: after a training-type stage, say what went wrong, with evidence and a remedy.

Each check reads only what the stage already wrote (per-epoch history, test metrics, the dataset's
description), so it is cheap, runs after every train, distill, transfer and qat stage, and can be rerun
on old outputs. Findings go to `diagnostics.json` in the stage's output; the runner prints them.

Thresholds are module constants, each with the reason for its value. They are deliberately loose: a flag
should mean "look at this", and a healthy run should raise none.
"""

from __future__ import annotations

import dataclasses
import math

OVERFIT_RISE = 0.10  # val loss at least 10 % above its minimum, at the end...
OVERFIT_MIN_EPOCHS = 3  # ...and still rising or flat for 3+ epochs after that minimum
OVERFIT_GAP_RATIO = 3.0  # or: final val loss 3x the train loss, and at least OVERFIT_GAP_MIN above it,
OVERFIT_GAP_MIN = 0.5  # after train loss halved: memorised, not learned (a 50-image subset does this)
CHANCE_FACTOR = 10.0  # a loss 10x that of uniform guessing, ln(classes): weights have blown up
UNDERFIT_TRAIN_ACCURACY = 0.80
LOW_ACCURACY = 0.60
LOW_CLASS_SCORE = 0.50  # precision or recall of one class
IMBALANCE_RATIO = 3.0  # largest over smallest class in the train split
MISMATCH_GAP = 0.10  # test accuracy this far above train accuracy
DIVERGED_FACTOR = 2.0  # final train loss this many times the first epoch's: the optimiser is lost
PLATEAU_IMPROVEMENT = 0.01  # train loss improved < 1 % over the first epochs: the learning rate is too low
PLATEAU_EPOCHS = 3
EXPLODING_NORM = 100.0  # a kernel's loss gradient above this: cross-entropy gradients are normally < 10
VANISHING_RATIO = 1e-4  # first layer's gradient this far below the largest: the early layers barely learn
DEAD_SHARE = 0.5  # half of a ReLU layer's channels silent on every validation image
BATCHNORM_GAP = 0.10  # train accuracy with each batch's statistics this far above the moving ones
MIN_EPOCHS_FOR_ACCURACY = 3  # a first epoch's training accuracy averages over the learning itself: too early


@dataclasses.dataclass
class Finding:
    """One diagnosis: a stable code, what was seen (with numbers), and what to do."""

    code: str
    message: str
    remedy: str
    epoch: int | None = None

    def line(self) -> str:
        where = f" (epoch {self.epoch})" if self.epoch is not None else ""
        return f"{self.code}{where}: {self.message}; try: {self.remedy}"


def diagnose(
    history: list[dict],
    metrics: dict,
    dataset: dict,
    settings: dict | None = None,
    *,
    gradients: list[dict] | None = None,
    dead: dict[str, float] | None = None,
    batchnorm: dict | None = None,
) -> list[Finding]:
    """Every check on one training stage's outputs.

    Args:
        history: per-epoch rows of history.csv (loss, accuracy, val_loss, val_accuracy as strings or floats).
        metrics: the stage's metrics.json (`test` with accuracy and per-class scores).
        dataset: the data stage's dataset.json (counts, imbalance ratio).
        settings: the stage's params that remedies depend on (class_weights, restore_best), when known.
        gradients: per epoch, {"epoch", "norms": {layer: gradient L2 norm}} (gradients.json).
        dead: per ReLU layer, the share of channels that never fire on validation images.
        batchnorm: train accuracy with BatchNorm's moving and with per-batch statistics (`moving`, `batch`,
            `samples`), for a model whose BatchNorm layers learn.
    """
    settings = settings or {}
    rows = [{k: _float(v) for k, v in r.items()} for r in history]
    diverged = _diverged(rows, dataset.get("num_classes") or len(dataset.get("classes") or []) or 2)
    if diverged:  # the root cause: low accuracy, underfitting and the rest follow from it; gradients say why
        findings = [diverged] + [f for f in (_gradients(gradients or []),) if f]
    else:
        findings = [
            f for check in (_plateau, _overfitting, _underfitting, _mismatch) if (f := check(rows, metrics, settings))
        ]
        findings += [f for f in (_gradients(gradients or []), _dead(dead or {}), _batchnorm(batchnorm)) if f]
        findings += _low_accuracy(metrics)
    imbalance = _imbalance(dataset, settings)
    if imbalance:
        findings.append(imbalance)
    return findings


def _series(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if key in r and r[key] is not None]


def _diverged(rows, num_classes: int) -> Finding | None:
    loss, val = _series(rows, "loss"), _series(rows, "val_loss")
    if not loss:
        return None
    for name, series in (("training", loss), ("validation", val)):
        bad = next((i for i, v in enumerate(series) if not math.isfinite(v)), None)
        if bad is not None:
            return Finding(
                "diverged",
                f"{name} loss became {series[bad]}",
                "lower lr (by 10x), or set clipnorm; check the input normalisation",
                epoch=bad + 1,
            )
    chance = math.log(num_classes)
    blown = next((i for i, v in enumerate(val) if v > CHANCE_FACTOR * chance), None)
    if blown is not None:
        return Finding(
            "diverged",
            f"validation loss reached {val[blown]:.3g}, far above uniform guessing ({chance:.3g}): the weights blew up",
            "lower lr (by 10x), or set clipnorm",
            epoch=blown + 1,
        )
    if len(loss) >= 2 and loss[-1] > DIVERGED_FACTOR * loss[0]:
        return Finding(
            "diverged",
            f"training loss rose from {loss[0]:.3g} to {loss[-1]:.3g}",
            "lower lr (by 10x), or set clipnorm",
            epoch=len(loss),
        )
    return None


def _plateau(rows, metrics, settings) -> Finding | None:
    loss = _series(rows, "loss")
    if len(loss) < PLATEAU_EPOCHS or not all(map(math.isfinite, loss)):
        return None
    first, later = loss[0], min(loss[1:PLATEAU_EPOCHS])
    if first > 0 and (first - later) / first < PLATEAU_IMPROVEMENT and _last(rows, "accuracy", 1.0) < 0.9:
        return Finding(
            "lr_too_low",
            f"training loss barely moved over the first {PLATEAU_EPOCHS} epochs ({first:.3g} -> {later:.3g})",
            "raise lr (by 10x), or use lr warm-up with a higher peak",
        )
    return None


def _overfitting(rows, metrics, settings) -> Finding | None:
    val, train = _series(rows, "val_loss"), _series(rows, "loss")
    if len(val) < OVERFIT_MIN_EPOCHS + 1 or len(train) != len(val) or not all(map(math.isfinite, val + train)):
        return None
    best = min(range(len(val)), key=val.__getitem__)
    gap = val[-1] - train[-1]
    rising = (
        len(val) - 1 - best >= OVERFIT_MIN_EPOCHS
        and val[-1] >= val[best] * (1 + OVERFIT_RISE)
        and train[-1] < train[best]
        and gap > 0
    )
    memorised = val[-1] > OVERFIT_GAP_RATIO * train[-1] and gap > OVERFIT_GAP_MIN and train[-1] < train[0] / 2
    if not (rising or memorised):
        return None
    # Train loss over the same epochs as the val figures: after the best epoch when val loss rose.
    trend, since = (
        (f"val loss rose from {val[best]:.3g} (epoch {best + 1}) to {val[-1]:.3g}", best)
        if rising
        else (f"val loss stayed at {val[-1]:.3g} (best {val[best]:.3g}, epoch {best + 1})", 0)
    )
    kept = settings.get("restore_best") and rising
    return Finding(
        "overfitting",
        f"{trend} while train loss fell from {train[since]:.3g} to {train[-1]:.3g}; final gap "
        f"{gap:.3g}" + (f"; early stopping kept epoch {best + 1}'s weights" if kept else ""),
        "more data or augmentation, dropout or l2"
        + ("" if kept else ", or early_stopping with restore_best to keep the best epoch's weights"),
        epoch=best + 1,
    )


def _underfitting(rows, metrics, settings) -> Finding | None:
    acc = _series(rows, "accuracy")
    if len(acc) < MIN_EPOCHS_FOR_ACCURACY or not math.isfinite(acc[-1]) or acc[-1] >= UNDERFIT_TRAIN_ACCURACY:
        return None
    return Finding(
        "underfitting",
        f"training accuracy is only {100 * acc[-1]:.1f} % after {len(acc)} epochs",
        "train longer, a larger model (width/alpha), a higher lr, or less regularisation",
    )


def _mismatch(rows, metrics, settings) -> Finding | None:
    acc, test = _last(rows, "accuracy", None), metrics.get("test", {}).get("accuracy")
    if len(rows) < MIN_EPOCHS_FOR_ACCURACY or acc is None or test is None or test - acc < MISMATCH_GAP:
        return None
    return Finding(
        "train_test_mismatch",
        f"test accuracy {100 * test:.1f} % is far above training accuracy {100 * acc:.1f} %",
        "the training data is harder than the test data: check augmentation "
        "strength, dropout, label noise, or that the splits come from the same distribution",
    )


def _gradients(rows: list[dict]) -> Finding | None:
    for row in rows:
        norms = row["norms"]
        big = {k: v for k, v in norms.items() if not math.isfinite(v) or v > EXPLODING_NORM}
        if big:
            layer, value = max(big.items(), key=lambda kv: kv[1] if math.isfinite(kv[1]) else math.inf)
            return Finding(
                "exploding_gradients",
                f"the loss gradient of layer {layer} reached {value:.3g}",
                "lower lr, set clipnorm (e.g. 1.0), check for unnormalised inputs",
                epoch=row["epoch"],
            )
    if rows:
        norms = list(rows[-1]["norms"].items())
        top = max(v for _, v in norms)
        if len(norms) > 2 and top > 0 and norms[0][1] < VANISHING_RATIO * top:
            return Finding(
                "vanishing_gradients",
                f"the first layer's gradient ({norms[0][0]}: {norms[0][1]:.2e}) is "
                f"{top / max(norms[0][1], 1e-30):.0e}x below the largest",
                "BatchNormalization after each conv, ReLU rather than sigmoid/tanh, residual "
                "connections, or he_normal initialisation",
                epoch=rows[-1]["epoch"],
            )
    return None


def _dead(shares: dict[str, float]) -> Finding | None:
    dead = {k: v for k, v in shares.items() if v >= DEAD_SHARE}
    if not dead:
        return None
    listed = ", ".join(f"{k} {100 * v:.0f} %" for k, v in list(dead.items())[:4])
    return Finding(
        "dead_relus",
        f"{len(dead)} ReLU layer(s) with most channels silent on every validation image: {listed}",
        "lower lr, he_normal initialisation, BatchNormalization before the ReLU, or LeakyReLU",
    )


def _batchnorm(modes: dict | None) -> Finding | None:
    if not modes or modes["batch"] - modes["moving"] < BATCHNORM_GAP:
        return None
    return Finding(
        "batchnorm_lag",
        f"on {modes['samples']} train images the model scores {100 * modes['moving']:.1f} % "
        f"with BatchNorm's moving statistics (as exported) against {100 * modes['batch']:.1f} % with each "
        "batch's own: the moving averages lag the weights",
        "let the learning rate decay to the end (early stopping while the rate is high keeps a "
        "lagging epoch), or smaller batches (more steps per epoch)",
    )


def _low_accuracy(metrics) -> list[Finding]:
    test = metrics.get("test", {})
    found = []
    if "accuracy" in test and test["accuracy"] < LOW_ACCURACY:
        found.append(
            Finding(
                "low_accuracy",
                f"test accuracy is {100 * test['accuracy']:.1f} %",
                "see the other findings; check labels and preprocessing, train longer",
            )
        )
    weak = [c for c in test.get("per_class", []) if c["support"] and min(c["precision"], c["recall"]) < LOW_CLASS_SCORE]
    if weak and len(weak) < len(test.get("per_class", [])):  # every class weak is low_accuracy's business
        names = ", ".join(
            f"{c['class']} (precision {100 * c['precision']:.0f} %, recall {100 * c['recall']:.0f} %)" for c in weak[:5]
        )
        found.append(
            Finding(
                "weak_classes",
                f"{len(weak)} class(es) below {100 * LOW_CLASS_SCORE:.0f} % precision or recall: {names}",
                "more or cleaner examples of these classes; class_weights: balanced",
            )
        )
    return found


def _imbalance(dataset: dict, settings: dict) -> Finding | None:
    ratio = dataset.get("imbalance_ratio")
    if (
        not ratio
        or ratio < IMBALANCE_RATIO
        or dataset.get("balance", "none") != "none"
        or settings.get("class_weights") == "balanced"
    ):
        return None
    counts = dataset.get("counts", {}).get("train") or []
    classes = dataset.get("classes") or [str(i) for i in range(len(counts))]
    rare = min(range(len(counts)), key=counts.__getitem__) if counts else None
    share = f"; rarest: {classes[rare]} with {counts[rare]} of {sum(counts)} train images" if rare is not None else ""
    return Finding(
        "class_imbalance",
        f"the largest class has {ratio:.1f}x the images of the smallest{share}",
        "class_weights: balanced in this stage, or balance: oversample in the data stage",
    )


def _last(rows, key, default):
    values = _series(rows, key)
    return values[-1] if values else default


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v
