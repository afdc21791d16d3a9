"""Where datasets come from: the readers of every `source:` scheme and the offline-mirror search.

    keras:NAME   mnist, fashion_mnist, cifar10, cifar100: the canonical files from a mirror directory,
                 Debian's /usr/share/datasets, or ~/.keras/datasets, else keras' own download
    tfds:NAME    a TensorFlow Datasets dataset, prepared data from a mirror or tfds' own download
    idx:DIR      MNIST-family IDX files (gzipped or not)
    folder:DIR   one sub-folder per class of PNG/JPEG/BMP images
    npz:FILE     arrays x_train, y_train[, x_test, y_test][, class_names], or x, y

Each reader returns raw uint8 images; splitting, resizing and describing are the data stage's.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.core.requirements import Requirement
from edgepipe.datasets.readers import (
    IDX_FILES,
    IMAGE_EXTS,
    idx_paths,
    nhwc,
    read_cifar,
    read_folder,
    read_idx_dir,
    read_npz,
    resize,
)

log = logging.getLogger(__name__)

KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
MIRROR_ENV = "EDGEPIPE_DATA_MIRROR"
SYSTEM_DIRS = (Path("/usr/share/datasets"), Path.home() / ".keras" / "datasets")
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": [
        "t-shirt/top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
# Folder names a mirror may use for a keras dataset (the first is the canonical one).
MIRROR_NAMES = {
    "mnist": ["mnist"],
    "fashion_mnist": ["fashion-mnist", "fashion_mnist"],
    "cifar10": ["cifar-10-batches-py", "cifar10"],
    "cifar100": ["cifar-100-python", "cifar100"],
}
CIFAR_TARBALLS = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def load(source: str, *, mirror: list[str], image_size: list[int] | None = None, channels: int | None = None):
    """Read a source (`keras:NAME`, `tfds:NAME`, `idx:DIR`, `folder:DIR`, `npz:FILE`).

    Returns:
        (x_train, y_train, x_test, y_test, class names); x_test and y_test are None when the source has
        no official test split. Images are uint8 (N, H, W, C).
    """
    scheme, _, rest = source.partition(":")
    if scheme == "idx":
        x, y, xt, yt = read_idx_dir(_existing_dir(rest, "idx"))
        return x, y, xt, yt, [str(i) for i in range(int(max(y.max(), yt.max())) + 1)]
    if scheme == "npz":
        return read_npz(Path(rest))
    if scheme == "folder":
        return read_folder(_existing_dir(rest, "folder"), image_size, channels)
    if scheme == "keras":
        return _load_keras(rest, mirror)
    return _load_tfds(rest, mirror, image_size)


def files(source: str, mirror: list[str]) -> list[Path]:
    """The local files a source resolves to (hashed into the cache key); raises if a path is missing."""
    scheme, _, rest = source.partition(":")
    if scheme == "idx":
        return list(idx_paths(_existing_dir(rest, "idx")).values())
    if scheme == "npz":
        p = Path(rest)
        if not p.is_file():
            raise EdgepipeError(f"npz:{rest}: file not found", "give the path of an existing .npz file")
        return [p]
    if scheme == "folder":
        root = _existing_dir(rest, "folder")
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if scheme == "keras":
        found = _find_keras_local(rest, mirror)
        return found[1] if found else []
    return []  # tfds: tfds checks its own prepared data


def _existing_dir(path: str, scheme: str) -> Path:
    d = Path(path)
    if not d.is_dir():
        raise EdgepipeError(
            f"{scheme}:{path}: dataset directory not found",
            "check the path in the recipe's source (relative paths start at the current directory)",
        )
    return d


def _mirror_dirs(mirror: list[str]) -> list[Path]:
    env = [p for p in os.environ.get(MIRROR_ENV, "").split(os.pathsep) if p]
    return [Path(m) for m in [*mirror, *env]] + list(SYSTEM_DIRS)


def _find_keras_local(name: str, mirror: list[str]) -> tuple[str, list[Path]] | None:
    """Look for a keras dataset's canonical files locally: (layout, files) or None."""
    for base in _mirror_dirs(mirror):
        for sub in MIRROR_NAMES[name]:
            d = base / sub
            if name in ("mnist", "fashion_mnist") and d.is_dir():
                paths = idx_paths(d, required=False)
                if paths:
                    return "idx", [paths[n] for n in IDX_FILES]
            if name.startswith("cifar") and d.is_dir():
                return "cifar_dir", sorted(f for f in d.iterdir() if f.is_file())
        if name == "mnist" and (base / "mnist.npz").is_file():  # keras' own download
            return "keras_npz", [base / "mnist.npz"]
        tarname = CIFAR_TARBALLS.get(name)
        if tarname and (base / tarname).is_file():
            return "cifar_tar", [base / tarname]
    return None


def _load_keras(name: str, mirror: list[str]):
    found = _find_keras_local(name, mirror)
    if found:
        layout, files = found
        log.info("keras:%s from %s", name, files[0].parent)
        if layout == "idx":
            return (*read_idx_dir(files[0].parent), CLASS_NAMES[name])
        if layout == "keras_npz":
            with np.load(files[0]) as z:
                return z["x_train"][..., None], z["y_train"], z["x_test"][..., None], z["y_test"], CLASS_NAMES[name]
        return read_cifar(name, files)
    from edgepipe.core._tf import keras  # the real download, cached by keras under ~/.keras/datasets

    try:
        (x, y), (xt, yt) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # noqa: BLE001 - keras raises plain Exception on network failure
        raise EdgepipeError(
            f"keras:{name}: not found locally and the download failed ({type(e).__name__})", _mirror_fix(name)
        ) from None
    names = CLASS_NAMES.get(name) or [str(i) for i in range(100)]
    return nhwc(x, f"keras:{name}"), y.reshape(-1), nhwc(xt, f"keras:{name}"), yt.reshape(-1), names


# Where keras' own download of each dataset comes from (keras.datasets), for the preflight.
_DOWNLOAD_HOSTS = {
    "mnist": "storage.googleapis.com",
    "fashion_mnist": "storage.googleapis.com",
    "cifar10": "www.cs.toronto.edu",
    "cifar100": "www.cs.toronto.edu",
}


def requirement(source: str, mirror: list[str]) -> Requirement | None:
    """A keras dataset must be in a mirror or its download host must answer (checked before a run starts);
    None for the other schemes (a missing path is refused when the key is computed, tfds checks itself).
    `synth:digits` draws MNIST's digits, so it needs MNIST."""
    if source.startswith("synth:"):
        source = "keras:mnist"
    scheme, _, name = source.partition(":")
    if scheme != "keras" or name not in _DOWNLOAD_HOSTS:
        return None
    host = _DOWNLOAD_HOSTS[name]

    def unmet() -> str | None:
        if _find_keras_local(name, mirror) is not None or _reachable(host):
            return None
        dirs = ", ".join(str(d) for d in _mirror_dirs(mirror))
        return f"{source} is in no mirror (looked in {dirs}) and its download host {host} does not answer"

    return Requirement(f"the {name} dataset", unmet, _mirror_fix(name))


def _mirror_fix(name: str) -> str:
    need = ", ".join(f"{n}.gz" for n in IDX_FILES) if name in ("mnist", "fashion_mnist") else CIFAR_TARBALLS[name]
    return (
        f"put {need} in <mirror>/{MIRROR_NAMES[name][0]}/ and set the data param mirror, data_mirror in "
        f"edgepipe.toml or ${MIRROR_ENV} to <mirror>"
    )


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host opens within `timeout` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_tfds(name: str, mirror: list[str], image_size):
    # TensorFlow first: tfds needs it imported with the legacy Keras flag, and its import noise silenced
    from edgepipe.core._tf import tf  # noqa: F401, I001

    import tensorflow_datasets as tfds

    dirs = [d for m in _mirror_dirs(mirror) for d in (m / "tfds", m) if (m / "tfds").is_dir() or d == m]
    builder = None
    for d in [*dirs, None]:
        try:
            b = tfds.builder(name, data_dir=str(d) if d else None)
        except Exception as e:  # noqa: BLE001 - tfds raises many types for an unknown name
            raise EdgepipeError(
                f"tfds:{name}: unknown dataset ({type(e).__name__})", "check the name at tensorflow.org/datasets"
            ) from None
        if b.is_prepared():
            builder = b
            break
    if builder is None:
        try:
            if not _reachable("storage.googleapis.com"):  # tfds' mirror; offline, tfds retries for minutes
                raise ConnectionError("no network")
            b.download_and_prepare()
            builder = b
        except Exception as e:  # noqa: BLE001
            raise EdgepipeError(
                f"tfds:{name}: not prepared locally and the download failed ({type(e).__name__})",
                f"run tfds once online and copy its data_dir ({name}/<version>) to <mirror>/tfds/, "
                f"then set the data param mirror or ${MIRROR_ENV}",
            ) from None
    features = builder.info.features
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if image_key not in features or label_key not in features or not hasattr(features[label_key], "names"):
        raise EdgepipeError(
            f"tfds:{name}: no image/label features (it has {', '.join(features.keys())})",
            "edgepipe reads image classification datasets with a ClassLabel label",
        )
    classes = list(features[label_key].names)
    size = tuple(image_size) if image_size else None

    def read(split):
        xs, ys = [], []
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            image, label = example[image_key], example[label_key]
            if size and image.shape[:2] != size:
                image = resize(image, size)
            xs.append(image)
            ys.append(label)
        shapes = {x.shape for x in xs}
        if len(shapes) > 1:
            raise EdgepipeError(f"tfds:{name}: images have different sizes", "set image_size: [height, width]")
        return np.stack(xs), np.array(ys)

    splits = builder.info.splits
    x, y = read("train")
    xt, yt = read("test") if "test" in splits else (None, None)
    return x, y, xt, yt, classes
