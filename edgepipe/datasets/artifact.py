"""The dataset artifact: what a data stage writes (`dataset.npz`, `dataset.json`) and how others read it.

The images stay raw uint8; `dataset.json` records how pixels become model input
(``x = (pixel * scale - mean) / std``, resize, channels) so that training, conversion and the device
harness all apply exactly the same thing.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Dataset:
    """A data stage's output, loaded: raw uint8 splits plus the recorded description."""

    info: dict
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def classes(self) -> list[str]:
        return self.info["classes"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.info["input_shape"])

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        """uint8 pixels -> float32 model input, exactly as recorded in dataset.json."""
        return preprocess(x, self.info["preprocessing"])


def preprocess(x: np.ndarray, spec: dict) -> np.ndarray:
    """Apply a recorded preprocessing spec: ``(pixel * scale - mean) / std`` as float32."""
    mean = np.asarray(spec["mean"], np.float32)
    std = np.asarray(spec["std"], np.float32)
    return (x.astype(np.float32) * np.float32(spec["scale"]) - mean) / std


def load_dataset(stage_dir: Path) -> Dataset:
    """Read a data stage's output directory."""
    info = json.loads((Path(stage_dir) / "dataset.json").read_text())
    with np.load(Path(stage_dir) / "dataset.npz") as z:
        splits = {s: (z[f"x_{s}"], z[f"y_{s}"]) for s in ("train", "val", "test")}
    return Dataset(info, splits)


def write_npz(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-for-byte reproducible.

    numpy stamps the current time into each zip entry, so the same data would hash differently on
    every run and needlessly retrain everything downstream of a data stage that reran.
    """
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            z.writestr(
                zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                buf.getvalue(),
                compress_type=zipfile.ZIP_DEFLATED,
            )
