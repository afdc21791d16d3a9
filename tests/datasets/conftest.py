"""Digit images for the detection-data tests: MNIST from the offline mirror, and fake digits that need none."""

from pathlib import Path

import numpy as np
import pytest

from edgepipe.datasets.readers import read_idx_dir

# Fake digit d is a filled rectangle of grey level LEVEL0 + LEVEL_STEP * d: drawn at a fixed contrast on a
# black background, the grey level inside a box says which digit is there.
LEVEL0, LEVEL_STEP = 120, 13


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path):
    """MNIST's (train images, train labels), (N, 28, 28, 1) uint8 and (N,)."""
    x, y, _, _ = read_idx_dir(mnist_dir)
    return x, y


@pytest.fixture(scope="session")
def fake_digits():
    """Five rectangles per digit 0-9, of varied size, each digit at its own grey level: (50, 28, 28), (50,)."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for d in range(10):
        for _ in range(5):
            h, w = rng.integers(12, 21), rng.integers(8, 19)
            image = np.zeros((28, 28), np.uint8)
            top, left = (28 - h) // 2, (28 - w) // 2
            image[top : top + h, left : left + w] = LEVEL0 + LEVEL_STEP * d
            images.append(image)
            labels.append(d)
    return np.stack(images), np.array(labels)
