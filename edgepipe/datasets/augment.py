"""On-the-fly augmentation of training batches, and the tf.data pipeline every trainer reads.

Augmentation is applied to the train split only, never to validation or test, and composes flip,
rotation, translation and zoom into one resampling per image (one bilinear blur, not three).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from edgepipe.core.params import param
from edgepipe.datasets.artifact import Dataset
from edgepipe.tasks import task_of


@dataclasses.dataclass
class Augment:
    """On-the-fly augmentation of training batches (never val/test)."""

    flip: Literal["none", "horizontal", "vertical", "both"] = param("none", "random flips (not for digits!)")
    rotate: float = param(0.0, "max rotation as a fraction of a full turn (0.03 = +-11 deg)", min=0, max=0.5)
    translate: float = param(0.0, "max shift as a fraction of height and width", min=0, max=0.5)
    zoom: float = param(0.0, "max zoom in or out as a fraction", min=0, max=0.9)
    noise: float = param(0.0, "stddev of Gaussian noise added to the normalised input", min=0)
    fill: Literal["constant", "reflect", "nearest"] = param("constant", "how pixels moved in are filled")

    def geometric(self) -> bool:
        """Whether any pixel moves (flip, rotate, translate, zoom): then each image is resampled once."""
        return self.flip != "none" or any(v > 0 for v in (self.rotate, self.translate, self.zoom))


def tf_dataset(ds: Dataset, split: str, batch_size: int, *, training: bool, seed: int = 0, extra=None):
    """A tf.data pipeline of (input, target) batches: preprocessed, and augmented when `training`; the
    targets are what the dataset's task trains a model to output (one-hot classes, heat maps).

    `extra`, an array with one row per sample of the split, rides along unchanged as a third element
    (the distiller's cached teacher logits); shuffling keeps it aligned with its image.
    """
    from edgepipe.core._tf import tf

    x, y = ds.splits[split]
    spec = ds.info["preprocessing"]
    aug = Augment(**ds.info["augment"]) if training else Augment()
    mean = tf.constant(spec["mean"], tf.float32)
    std = tf.constant(spec["std"], tf.float32)

    def prepare(images, labels):
        images = tf.cast(images, tf.float32)
        if aug.geometric():
            images = random_affine(images, aug, seed)
        images = (images * spec["scale"] - mean) / std
        if aug.noise:
            images += tf.random.normal(tf.shape(images), stddev=aug.noise, seed=seed + 4)
        return images, labels

    targets = task_of(ds.info).targets(y, ds.info)
    columns = (x, targets) if extra is None else (x, targets, extra)
    d = tf.data.Dataset.from_tensor_slices(columns)
    if training:
        d = d.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    d = d.batch(batch_size).map(
        lambda images, labels, *rest: (*prepare(images, labels), *rest),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return d.prefetch(tf.data.AUTOTUNE)


def random_affine(images, aug: Augment, seed: int = 0):
    """Flip, rotate, translate and zoom a batch (N, H, W, C) in one resampling per image.

    The ranges are tf_keras' RandomFlip, RandomRotation, RandomTranslation and RandomZoom (zoom keeps the
    aspect ratio), composed into one output-to-input affine matrix per image. Chaining the three layers
    resamples each image three times: three bilinear blurs, and three times the work (benchmarks/README.md
    has the figures).
    """
    from edgepipe.core._tf import tf

    n = tf.shape(images)[0]
    h = tf.cast(tf.shape(images)[1], tf.float32)
    w = tf.cast(tf.shape(images)[2], tf.float32)
    one, zero = tf.ones([n]), tf.zeros([n])

    def uniform(limit, k):
        return tf.random.uniform([n], -limit, limit, seed=seed + k)

    def matrix(*rows):  # rows of 3 per-image vectors -> (N, 3, 3)
        return tf.reshape(tf.stack([e for row in rows for e in row], axis=1), [n, 3, 3])

    cx, cy = (w - 1) / 2, (h - 1) / 2
    m = tf.eye(3, batch_shape=[n])
    if aug.flip != "none":  # mirror about the centre, each axis with probability 1/2
        fx = one if aug.flip == "vertical" else tf.where(uniform(1.0, 0) < 0, -one, one)
        fy = one if aug.flip == "horizontal" else tf.where(uniform(1.0, 5) < 0, -one, one)
        m = matrix((fx, zero, cx * (1 - fx)), (zero, fy, cy * (1 - fy)), (zero, zero, one))
    if aug.rotate:
        angle = uniform(aug.rotate * 2 * np.pi, 1)
        c, s = tf.cos(angle), tf.sin(angle)
        m = m @ matrix((c, -s, cx - c * cx + s * cy), (s, c, cy - s * cx - c * cy), (zero, zero, one))
    if aug.translate:
        dx, dy = uniform(aug.translate, 2) * w, uniform(aug.translate, 6) * h
        m = m @ matrix((one, zero, -dx), (zero, one, -dy), (zero, zero, one))
    if aug.zoom:
        z = 1 + uniform(aug.zoom, 3)
        m = m @ matrix((z, zero, cx * (1 - z)), (zero, z, cy * (1 - z)), (zero, zero, one))
    transforms = tf.reshape(m, [n, 9])[:, :8]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=aug.fill.upper(),
    )
