"""Where a detection dataset's images and boxes come from: drawn (`synth:digits`), or a user's COCO or YOLO files
(`coco:ANNOTATIONS.json`, `yolo:DIR`; read by `boxes`, which refuses a bad box in one line).

`load_detection` returns the three splits, each `(images uint8 (N, H, W, C), boxes float32 (N, max_objects,
5))` with `[class, x0, y0, x1, y1]` rows in pixels and class -1 for padding, and the class names.

`synth:digits` draws each split from its own digits: train scenes from the first 50,000 of MNIST's training
digits, validation scenes from the last 10,000, test scenes from MNIST's test digits, so that no handwritten
glyph is seen in training and judged in test. The test split is drawn from another generator family (other
backgrounds, another size range) by default: the figures a model is judged by are of transfer, not of
memorised synthesis; validation stays in distribution.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.datasets import synth_digits
from edgepipe.datasets.synth_digits import FAMILIES, SynthParams

#: MNIST training digits kept for validation scenes (the rest draw training scenes)
VAL_DIGITS = 10_000
SYNTH_SOURCES = ("digits",)
#: the most objects an image of a user's dataset may hold (COCO's cap on detections per image)
MAX_OBJECTS = 100
#: the source schemes that give boxes
BOX_SOURCES = ("synth", "coco", "yolo")
#: YOLO's split folders (images/train, labels/train, ...) and the name each has here
YOLO_SPLITS = {"train": "train", "val": "val", "valid": "val", "test": "test"}


@dataclasses.dataclass
class SynthData:
    """What `synth:digits` draws: which digits are the classes, how many scenes per split, and how."""

    classes: list[str] = param(["0", "1", "7"], "the digits that are objects; the other digits are distractors")
    train: int = param(6000, "training scenes", min=1)
    val: int = param(1000, "validation scenes (the drawing's family)", min=1)
    test: int = param(1000, "test scenes", min=1)
    test_family: Literal["base", "heldout"] = param(
        "heldout",
        "the test scenes' family: heldout (other backgrounds and sizes) judges transfer; base judges in distribution",
    )
    draw: SynthParams = param(SynthParams(), "how scenes are drawn (family, sizes, distractors, occlusion, ...)")

    def __post_init__(self):
        if (
            not self.classes
            or len(set(self.classes)) != len(self.classes)
            or any(c not in [str(d) for d in range(10)] for c in self.classes)
        ):
            raise ValueError(
                f"classes {self.classes!r} must be distinct digits '0'..'9'; fix: e.g. classes: ['0', '1', '7']"
            )


def load_detection(
    source: str,
    *,
    synth: SynthData,
    mirror: list[str],
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    image_size=None,
    channels=None,
):
    """The splits `{"train", "val", "test"}: (images, boxes)` and class names of detection source `source`.

    A user's files (`coco:ANNOTATIONS.json`, `yolo:DIR`) are split at random (seeded) into `val_fraction` and
    `test_fraction` of the images, except where YOLO split folders (images/train, images/val, images/test)
    already say which image is in which split. Their boxes array has as many rows as the most crowded image
    (at most `MAX_OBJECTS`, COCO's own cap on detections per image).

    Raises:
        EdgepipeError: an unknown source, missing files, or bad boxes (naming the file and the box).
    """
    scheme, _, rest = source.partition(":")
    if scheme == "synth":
        if rest not in SYNTH_SOURCES:
            raise EdgepipeError(
                f"source {source!r}: no such generator", f"use synth:{' or synth:'.join(SYNTH_SOURCES)}"
            )
        return _synth_digits(synth, mirror, seed)
    from edgepipe.datasets import coco, yolo

    options = dict(max_objects=MAX_OBJECTS, image_size=image_size, channels=channels)
    if scheme == "coco":
        whole = coco.read_coco(rest, **options)
        return _trimmed(_random_splits(whole.images, whole.boxes, val_fraction, test_fraction, seed)), whole.classes
    if scheme == "yolo":
        root = Path(rest)
        folders = [d.name for d in sorted((root / "images").glob("*")) if d.is_dir() and d.name in YOLO_SPLITS]
        if "train" not in folders:  # one folder of images: split here
            whole = yolo.read_yolo(root, **options)
            return _trimmed(_random_splits(whole.images, whole.boxes, val_fraction, test_fraction, seed)), whole.classes
        parts = {YOLO_SPLITS[f]: yolo.read_yolo(root, split=f, **options) for f in folders}
        classes = parts["train"].classes
        splits = {name: (part.images, part.boxes) for name, part in parts.items()}
        if "val" not in splits or "test" not in splits:  # carve what the folders lack out of train
            carved = _random_splits(
                *splits["train"],
                0.0 if "val" in splits else val_fraction,
                0.0 if "test" in splits else test_fraction,
                seed,
            )
            splits = {name: splits.get(name, carved[name]) for name in ("val", "test")} | {"train": carved["train"]}
        return _trimmed(splits), classes
    raise EdgepipeError(f"source {source!r} gives no boxes", "for detection use synth:digits, coco:FILE or yolo:DIR")


def detection_files(scheme: str, where: str) -> list[Path]:
    """The files of a user's detection dataset (hashed into the data stage's key): the COCO JSON and every
    file beside it, or every file under a YOLO folder."""
    path = Path(where)
    if not path.exists():
        raise EdgepipeError(
            f"{scheme}:{where}: no such {'file' if scheme == 'coco' else 'folder'}",
            "give the path of the annotations JSON (coco:) or of the dataset folder (yolo:)",
        )
    root = path.parent if scheme == "coco" else path
    return sorted(p for p in root.rglob("*") if p.is_file())


def _trimmed(splits: dict) -> dict:
    """The boxes arrays cut to the rows the most crowded image needs (at least one)."""
    rows = max([1] + [int((b[..., 0] >= 0).sum(-1).max()) for _, b in splits.values() if len(b)])
    return {name: (x, b[:, :rows]) for name, (x, b) in splits.items()}


def _random_splits(images: np.ndarray, boxes: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Images dealt at random (seeded) into val, test and train, in that order of the permutation."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_val, n_test = int(round(val_fraction * len(images))), int(round(test_fraction * len(images)))
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {name: (images[np.sort(idx)], boxes[np.sort(idx)]) for name, idx in parts.items()}


def _synth_digits(p: SynthData, mirror: list[str], seed: int):
    from edgepipe.datasets import sources

    x, y, xt, yt, _ = sources.load("keras:mnist", mirror=mirror)
    pools = {"train": (x[:-VAL_DIGITS], y[:-VAL_DIGITS]), "val": (x[-VAL_DIGITS:], y[-VAL_DIGITS:]), "test": (xt, yt)}
    draw = dataclasses.asdict(p.draw)
    splits = {}
    for k, split in enumerate(("train", "val", "test")):
        options = dict(draw)
        if split == "test" and p.test_family != p.draw.family:
            options.update(family=p.test_family, size_range=None)
        # each split its own stream: scene i of a split depends on (seed, split, i) only
        split_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        images, boxes = synth_digits.generate(
            *pools[split], getattr(p, split), seed=split_seed, classes=p.classes, **options
        )
        splits[split] = (images[..., None], boxes)
    return splits, list(p.classes)


def describe(p: SynthData) -> dict:
    """What `dataset.json` records of a drawn dataset: the generator's version (part of the cache key through
    the code) and what each split was drawn with."""
    test_family = FAMILIES[p.test_family]
    return {
        "generator": "synth:digits",
        "generator_version": synth_digits.VERSION,
        "families": {"train": p.draw.family, "val": p.draw.family, "test": p.test_family},
        "test_size_range": list(p.draw.sizes()) if p.test_family == p.draw.family else list(test_family.size_range),
    }
