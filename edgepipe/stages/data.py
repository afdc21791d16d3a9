"""The data stage: load a dataset, split it, record its preprocessing, describe it.

The sources it reads are `edgepipe.datasets.sources`; the artifact it writes (`dataset.npz`, uint8
images, and `dataset.json`, the preprocessing ``x = (pixel * scale - mean) / std`` with resize and
channels) is `edgepipe.datasets.artifact`, which every later stage reads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets import readers, sources
from edgepipe.datasets.artifact import write_npz
from edgepipe.datasets.augment import Augment
from edgepipe.datasets.detection_sources import BOX_SOURCES, SynthData, detection_files, load_detection
from edgepipe.datasets.detection_sources import describe as describe_synth
from edgepipe.datasets.sources import KERAS_DATASETS
from edgepipe.tasks import TASKS
from edgepipe.tasks.detection_decode import STRIDE
from edgepipe.tasks.detection_pictures import box_grid


@dataclasses.dataclass
class DataParams:
    """Parameters of the data stage."""

    source: str = param(
        "",
        "keras:NAME | tfds:NAME | idx:DIR | folder:DIR | npz:FILE; detection: synth:digits | "
        "coco:ANNOTATIONS.json | yolo:DIR",
    )
    task: Literal["classification", "detection"] = param(
        "classification", "what the labels are: one class per image, or objects' boxes (edgepipe.tasks)"
    )
    synth: SynthData = param(SynthData(), "synth:digits only: which digits are objects, how many scenes, how drawn")
    mirror: list[str] = param([], "directories searched for the canonical files before any download")
    val_fraction: float = param(0.1, "share of train carved out (stratified) for validation", min=0.01, max=0.5)
    test_fraction: float = param(
        0.2, "share held out for test when the source has no official test split", min=0.05, max=0.5
    )
    limit_train: int | None = param(None, "keep at most this many training images (stratified), for smoke runs", min=2)
    limit_test: int | None = param(None, "keep at most this many test images (stratified)", min=2)
    image_size: list[int] | None = param(None, "resize to [height, width]; null keeps the source size")
    channels: int | None = param(None, "1 (grayscale) or 3 (RGB); null keeps the source's", min=1, max=3)
    normalize: Literal["scale", "standardize", "none"] = param(
        "scale", "scale: pixel/255; standardize: then minus train mean over train std; none: raw pixels"
    )
    balance: Literal["none", "oversample", "undersample"] = param(
        "none", "resample the train split so every class has the same count"
    )
    augment: Augment = param(Augment(), "on-the-fly training augmentation")
    seed: int = param(0, "seed for splits, subsets and resampling")
    samples_per_class: int = param(8, "images per class in samples.png", min=1, max=32)
    class_names: list[str] | None = param(None, "names for labels 0..n-1, overriding the source's")

    def __post_init__(self) -> None:
        scheme, _, rest = self.source.partition(":")
        if self.task == "detection":
            if scheme not in BOX_SOURCES or not rest:
                raise ValueError(
                    f"source {self.source!r} gives no boxes; fix: for task: detection use synth:digits, "
                    "coco:ANNOTATIONS.json or yolo:DIR"
                )
            if scheme == "synth" and self.image_size is not None:
                raise ValueError(
                    "image_size does not apply to synth: sources (they draw 96x96 scenes); fix: drop image_size"
                )
            if self.image_size is not None and any(v % 8 for v in self.image_size):
                raise ValueError(
                    f"image_size {self.image_size} is not a multiple of 8 (a detector's heat map has "
                    "one cell per 8x8 pixels); fix: e.g. image_size: [96, 96]"
                )
            if self.augment.geometric() or self.balance != "none":
                raise ValueError(
                    "task: detection takes no geometric augmentation or balance (they would move or "
                    "drop objects without their boxes); fix: drop augment's flip/rotate/translate/zoom "
                    "and balance (noise is fine)"
                )
            return
        if scheme not in ("keras", "tfds", "idx", "folder", "npz") or not rest:
            raise ValueError(
                f"source {self.source!r} is not valid; fix: use keras:NAME, tfds:NAME, idx:DIR, "
                f"folder:DIR or npz:FILE (synth:digits is a detection source: add task: detection)"
            )
        if scheme == "keras" and rest not in KERAS_DATASETS:
            raise ValueError(
                f"source {self.source!r}: unknown keras dataset; fix: use one of: {', '.join(KERAS_DATASETS)}"
            )
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(
                f"image_size {self.image_size} must be [height, width] of at least 1; fix: e.g. "
                "image_size: [96, 96], or null to keep the source's size"
            )
        if self.channels == 2:
            raise ValueError("channels must be 1 or 3; fix: use 1 (grayscale), 3 (RGB) or null (the source's)")


def dataset_files(params: DataParams) -> list[Path]:
    """The local files the source resolves to (hashed into the cache key); raises if a path is missing."""
    scheme, _, rest = params.source.partition(":")
    if scheme == "synth":  # drawn from MNIST's digits
        return sources.files("keras:mnist", params.mirror)
    if scheme in ("coco", "yolo"):
        return detection_files(scheme, rest)
    return sources.files(params.source, params.mirror)


def run_data_stage(params: DataParams, io: StageIO) -> str:
    """Load, split, resample and describe the dataset; write dataset.npz, dataset.json, samples.png."""
    if params.task == "detection":
        return _run_detection(params, io)
    rng = np.random.default_rng(params.seed)
    x_train, y_train, x_test, y_test, classes = sources.load(
        params.source, mirror=params.mirror, image_size=params.image_size, channels=params.channels
    )
    if params.class_names is not None:
        if len(params.class_names) < len(classes):
            raise EdgepipeError(
                f"class_names lists {len(params.class_names)} names for {len(classes)} classes",
                "give one name per class, in label order",
            )
        classes = list(params.class_names)
    x_train, y_train = _check_labels(x_train, y_train, classes, params.source, "train")
    if x_test is not None:
        x_test, y_test = _check_labels(x_test, y_test, classes, params.source, "test")
    x_train = _adapt(x_train, params)
    if x_test is not None:
        x_test = _adapt(x_test, params)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise EdgepipeError(
                f"{params.source}: test images are {list(x_test.shape[1:])}, train images {list(x_train.shape[1:])}",
                "set image_size and channels to make them one size",
            )

    if x_test is None:  # no official test split: carve one, stratified
        test_idx, keep = _stratified(y_train, params.test_fraction, rng)
        x_test, y_test, x_train, y_train = x_train[test_idx], y_train[test_idx], x_train[keep], y_train[keep]
    if params.limit_train and params.limit_train < len(y_train):
        idx, _ = _stratified(y_train, params.limit_train / len(y_train), rng)
        x_train, y_train = x_train[idx], y_train[idx]
    if params.limit_test and params.limit_test < len(y_test):
        idx, _ = _stratified(y_test, params.limit_test / len(y_test), rng)
        x_test, y_test = x_test[idx], y_test[idx]
    val_idx, train_idx = _stratified(y_train, params.val_fraction, rng)
    x_val, y_val, x_train, y_train = x_train[val_idx], y_train[val_idx], x_train[train_idx], y_train[train_idx]
    if params.balance != "none":
        idx = _balanced_indices(y_train, params.balance, rng)
        x_train, y_train = x_train[idx], y_train[idx]

    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    _check_splits(splits, params)
    info = _describe(params, classes, splits)
    write_npz(io.out / "dataset.npz", {f"{k}_{s}": a for s, xy in splits.items() for k, a in zip("xy", xy)})
    fsio.write_json(io.out / "dataset.json", info)
    _sample_grid(x_train, y_train, classes, params.samples_per_class, io.out / "samples.png")
    n = {s: len(v[1]) for s, v in splits.items()}
    return (
        f"{n['train']} train / {n['val']} val / {n['test']} test, {len(classes)} classes, "
        f"{'x'.join(map(str, info['input_shape']))}, imbalance {info['imbalance_ratio']:.2f}"
    )


def _run_detection(params: DataParams, io: StageIO) -> str:
    """A detection dataset: drawn or read with its boxes, checked, described; dataset.npz holds the boxes as
    `y_<split>` (`[class, x0, y0, x1, y1]` rows, class -1 for padding)."""
    task = TASKS["detection"]
    splits, classes = load_detection(
        params.source,
        synth=params.synth,
        mirror=params.mirror,
        seed=params.seed,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        image_size=params.image_size,
        channels=params.channels,
    )
    if params.class_names is not None:
        if len(params.class_names) != len(classes):
            raise EdgepipeError(
                f"class_names lists {len(params.class_names)} names for {len(classes)} classes",
                "give one name per class, in label order",
            )
        classes = list(params.class_names)
    limits = {"train": params.limit_train, "test": params.limit_test}
    for split, (x, y) in list(splits.items()):
        y = task.check_labels(y, classes, f"{params.source}: {split}")
        if limits.get(split):
            x, y = x[: limits[split]], y[: limits[split]]
        splits[split] = (_adapt(x, params), y)
    _check_splits(splits, params, classes=False)
    objects = {
        s: np.bincount(y[..., 0][y[..., 0] >= 0].astype(np.int64), minlength=len(classes)).tolist()
        for s, (_, y) in splits.items()
    }
    if not sum(objects["train"]):
        raise EdgepipeError(f"{params.source}: the training scenes hold no object", "give images with boxes")
    info = _describe(params, classes, splits, counts=objects) | {
        "grid_stride": STRIDE,
        "max_objects": int(splits["train"][1].shape[1]),
    }
    if params.source.startswith("synth:"):
        info["synth"] = describe_synth(params.synth)
    write_npz(io.out / "dataset.npz", {f"{k}_{s}": a for s, xy in splits.items() for k, a in zip("xy", xy)})
    fsio.write_json(io.out / "dataset.json", info)
    x, y = splits["train"]
    shown = params.samples_per_class * 4
    box_grid(x[:shown], y[:shown], None, classes, io.out / "samples.png", columns=params.samples_per_class)
    n = {s: len(v[1]) for s, v in splits.items()}
    size = "x".join(map(str, info["input_shape"]))
    return (
        f"{n['train']} train / {n['val']} val / {n['test']} test scenes, {sum(objects['train'])} "
        f"training objects of {len(classes)} classes, {size}"
    )


KIND = StageKind(
    name="data",
    params=DataParams,
    run=run_data_stage,
    inputs={},
    output="dataset",
    output_task=lambda p: p.task,
    main_output="dataset.npz",
    deps=dataset_files,
    needs=lambda p: [r for r in [sources.requirement(p.source, p.mirror)] if r],
    doc="load, split, normalise and describe a dataset",
)


# -- transforms and description -------------------------------------------------------------------------


def _check_labels(x, y, classes, source, split):
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(x) != len(y):
        raise EdgepipeError(f"{source}: {split} has {len(x)} images but {len(y)} labels", "fix the source files")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise EdgepipeError(
            f"{source}: {split} labels run {y.min()}..{y.max()} for {len(classes)} classes",
            "labels must be 0..num_classes-1",
        )
    present = np.unique(y)
    if split == "train" and len(present) < 2:
        raise EdgepipeError(
            f"{source}: only one class ({classes[present[0]] if len(present) else 'none'}) in the data",
            "a classifier needs at least two classes",
        )
    return x, y


def _check_splits(splits: dict, p: DataParams, classes: bool = True) -> None:
    """Every split holds images, and (a classifier's) train at least two classes: otherwise training cannot run."""
    for split, (_, y) in splits.items():
        if len(y) == 0:
            raise EdgepipeError(
                f"{p.source}: the {split} split is empty after splitting "
                f"({', '.join(f'{s} {len(v[1])}' for s, v in splits.items())})",
                "give more images, or raise val_fraction / test_fraction, or limit_train / limit_test",
            )
    if classes and len(np.unique(splits["train"][1])) < 2:
        raise EdgepipeError(
            f"{p.source}: the train split holds one class after splitting", "give more images of each class"
        )


def _adapt(x: np.ndarray, p: DataParams) -> np.ndarray:
    if p.image_size and tuple(x.shape[1:3]) != tuple(p.image_size):
        x = np.stack([readers.resize(a, p.image_size) for a in x])
    if p.channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif p.channels == 1 and x.shape[-1] == 3:  # ITU-R 601 luma, as PIL's "L"
        x = (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)[..., None]
    return x


def _stratified(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified sample of round(fraction * len(y)) items, and of the rest.

    Per-class counts follow the class proportions by largest remainder, so the total is exact; a class
    with two or more items keeps at least one on each side.
    """
    classes, counts = np.unique(y, return_counts=True)
    total = int(round(len(y) * fraction))
    ideal = counts * total / len(y)
    n = np.floor(ideal).astype(int)
    for i in np.argsort(-(ideal - n), kind="stable")[: total - n.sum()]:
        n[i] += 1
    n = np.where(counts > 1, np.clip(n, 1, counts - 1), 0)
    take, rest = [], []
    for c, k in zip(classes, n):
        idx = rng.permutation(np.flatnonzero(y == c))
        take.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(take)), np.sort(np.concatenate(rest))


def _balanced_indices(y: np.ndarray, how: str, rng: np.random.Generator) -> np.ndarray:
    counts = np.bincount(y)
    present = np.flatnonzero(counts)
    target = counts[present].max() if how == "oversample" else counts[present].min()
    idx = [
        rng.choice(np.flatnonzero(y == c), target, replace=how == "oversample" and counts[c] < target) for c in present
    ]
    return rng.permutation(np.concatenate(idx))


def _describe(p: DataParams, classes: list[str], splits: dict, counts: dict | None = None) -> dict:
    """dataset.json: the source, classes, shapes, per-class `counts` (of images; a detection dataset passes
    its objects'), the preprocessing every later stage applies, augmentation and seed."""
    x_train = splits["train"][0]
    channels = x_train.shape[-1]
    if p.normalize == "standardize":
        scaled = x_train.reshape(-1, channels).astype(np.float64) / 255.0
        mean, std = scaled.mean(0).tolist(), np.maximum(scaled.std(0), 1e-6).tolist()
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    if counts is None:
        counts = {s: np.bincount(xy[1], minlength=len(classes)).tolist() for s, xy in splits.items()}
    train_counts = np.array(counts["train"])
    nonzero = train_counts[train_counts > 0]
    return {
        "task": p.task,
        "source": p.source,
        "classes": classes,
        "num_classes": len(classes),
        "input_shape": list(x_train.shape[1:]),
        "sizes": {s: len(xy[1]) for s, xy in splits.items()},
        "counts": counts,
        "imbalance_ratio": float(nonzero.max() / nonzero.min()),
        "class_weights_balanced": [
            float(len(splits["train"][1]) / (len(nonzero) * c)) if c else 0.0 for c in train_counts
        ],
        "pixel_mean": float(x_train.mean()),
        "pixel_std": float(x_train.std()),
        "preprocessing": {
            "formula": "x = (pixel * scale - mean) / std",
            "scale": 1.0 if p.normalize == "none" else 1.0 / 255.0,
            "mean": mean,
            "std": std,
            "image_size": list(x_train.shape[1:3]),
            "channels": int(channels),
            "resize": "bilinear" if p.image_size else None,
        },
        "augment": dataclasses.asdict(p.augment),
        "balance": p.balance,
        "seed": p.seed,
    }


def _sample_grid(x, y, classes, per_class, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(range(min(len(classes), 20)))
    fig, axes = plt.subplots(len(shown), per_class, figsize=(per_class * 0.9, len(shown) * 0.95), squeeze=False)
    rng = np.random.default_rng(0)
    for row, c in enumerate(shown):
        idx = np.flatnonzero(y == c)
        pick = rng.choice(idx, min(per_class, len(idx)), replace=False) if len(idx) else []
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(pick):
                img = x[pick[col]]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        axes[row][0].set_title(classes[c][:14], fontsize=7, loc="left")
    fig.tight_layout()
    with fsio.atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
