"""The data stage: load a dataset, split it, record its preprocessing, describe it.

Sources (the `source` param):
    keras:NAME   mnist, fashion_mnist, cifar10, cifar100: the canonical files from a mirror directory,
                 Debian's /usr/share/datasets, or ~/.keras/datasets, else keras' own download
    tfds:NAME    a TensorFlow Datasets dataset, prepared data from a mirror or tfds' own download
    idx:DIR      MNIST-family IDX files (gzipped or not)
    folder:DIR   one sub-folder per class of PNG/JPEG/BMP images
    npz:FILE     arrays x_train, y_train[, x_test, y_test][, class_names], or x, y

The artifact (`dataset.npz`, uint8 images) stays raw; `dataset.json` records how to turn pixels into model
input (``x = (pixel * scale - mean) / std``, resize, channels) so that training, conversion and the device
harness all apply exactly the same thing.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import pickle
import tarfile
from pathlib import Path
from typing import Literal

import numpy as np

from edgepipe import fsio
from edgepipe.errors import EdgepipeError
from edgepipe.params import param
from edgepipe.stages import StageIO, StageKind

log = logging.getLogger(__name__)

KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
MIRROR_ENV = "EDGEPIPE_DATA_MIRROR"
SYSTEM_DIRS = (Path("/usr/share/datasets"), Path.home() / ".keras" / "datasets")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}
# Folder names a mirror may use for a keras dataset (the first is the canonical one).
MIRROR_NAMES = {"mnist": ["mnist"], "fashion_mnist": ["fashion-mnist", "fashion_mnist"],
                "cifar10": ["cifar-10-batches-py", "cifar10"], "cifar100": ["cifar-100-python", "cifar100"]}


@dataclasses.dataclass
class Augment:
    """On-the-fly augmentation of training batches (never val/test)."""

    flip: Literal["none", "horizontal", "vertical", "both"] = param("none", "random flips (not for digits!)")
    rotate: float = param(0.0, "max rotation as a fraction of a full turn (0.03 = +-11 deg)", min=0, max=0.5)
    translate: float = param(0.0, "max shift as a fraction of height and width", min=0, max=0.5)
    zoom: float = param(0.0, "max zoom in or out as a fraction", min=0, max=0.9)
    noise: float = param(0.0, "stddev of Gaussian noise added to the normalised input", min=0)
    fill: Literal["constant", "reflect", "nearest"] = param("constant", "how pixels moved in are filled")

    def active(self) -> bool:
        return self.flip != "none" or any(v > 0 for v in (self.rotate, self.translate, self.zoom, self.noise))


@dataclasses.dataclass
class DataParams:
    """Parameters of the data stage."""

    source: str = param("", "keras:NAME | tfds:NAME | idx:DIR | folder:DIR | npz:FILE")
    mirror: list[str] = param([], "directories searched for the canonical files before any download")
    val_fraction: float = param(0.1, "share of train carved out (stratified) for validation", min=0.01, max=0.5)
    test_fraction: float = param(0.2, "share held out for test when the source has no official test split",
                                 min=0.05, max=0.5)
    limit_train: int | None = param(None, "keep at most this many training images (stratified), for smoke runs",
                                    min=2)
    limit_test: int | None = param(None, "keep at most this many test images (stratified)", min=2)
    image_size: list[int] | None = param(None, "resize to [height, width]; null keeps the source size")
    channels: int | None = param(None, "1 (grayscale) or 3 (RGB); null keeps the source's", min=1, max=3)
    normalize: Literal["scale", "standardize", "none"] = param(
        "scale", "scale: pixel/255; standardize: then minus train mean over train std; none: raw pixels")
    balance: Literal["none", "oversample", "undersample"] = param(
        "none", "resample the train split so every class has the same count")
    augment: Augment = param(Augment(), "on-the-fly training augmentation")
    seed: int = param(0, "seed for splits, subsets and resampling")
    samples_per_class: int = param(8, "images per class in samples.png", min=1, max=32)
    class_names: list[str] | None = param(None, "names for labels 0..n-1, overriding the source's")

    def __post_init__(self) -> None:
        scheme, _, rest = self.source.partition(":")
        if scheme not in ("keras", "tfds", "idx", "folder", "npz") or not rest:
            raise ValueError(f"source {self.source!r} is not valid; use keras:NAME, tfds:NAME, idx:DIR, "
                             f"folder:DIR or npz:FILE")
        if scheme == "keras" and rest not in KERAS_DATASETS:
            raise ValueError(f"source {self.source!r}: unknown keras dataset; use one of: {', '.join(KERAS_DATASETS)}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size {self.image_size} must be [height, width]")
        if self.channels == 2:
            raise ValueError("channels must be 1 or 3")


# -- the dataset artifact, as other stages read it ------------------------------------------------------


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


def tf_dataset(ds: Dataset, split: str, batch_size: int, *, training: bool, seed: int = 0, extra=None):
    """A tf.data pipeline of (input, label) batches: preprocessed, and augmented when `training`.

    `extra`, an array with one row per sample of the split, rides along unchanged as a third element
    (the distiller's cached teacher logits); shuffling keeps it aligned with its image.
    """
    from edgepipe._tf import tf

    x, y = ds.splits[split]
    spec = ds.info["preprocessing"]
    aug = Augment(**ds.info["augment"]) if training else Augment()
    geometric = aug.flip != "none" or aug.rotate or aug.translate or aug.zoom
    mean = tf.constant(spec["mean"], tf.float32)
    std = tf.constant(spec["std"], tf.float32)

    def prepare(images, labels):
        images = tf.cast(images, tf.float32)
        if geometric:
            images = random_affine(images, aug, seed)
        images = (images * spec["scale"] - mean) / std
        if aug.noise:
            images += tf.random.normal(tf.shape(images), stddev=aug.noise, seed=seed + 4)
        return images, labels

    columns = (x, y.astype(np.int32)) if extra is None else (x, y.astype(np.int32), extra)
    d = tf.data.Dataset.from_tensor_slices(columns)
    if training:
        d = d.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    d = d.batch(batch_size).map(lambda images, labels, *rest: (*prepare(images, labels), *rest),
                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return d.prefetch(tf.data.AUTOTUNE)


def random_affine(images, aug: Augment, seed: int = 0):
    """Flip, rotate, translate and zoom a batch (N, H, W, C) in one resampling per image.

    The ranges are tf_keras' RandomFlip, RandomRotation, RandomTranslation and RandomZoom (zoom keeps the
    aspect ratio), composed into one output-to-input affine matrix per image. Chaining the three layers
    resamples each image three times: three bilinear blurs, and three times the work (on MNIST, 3.0 s
    against 1.2 s per epoch of 54 k images on the 2-core test machine).
    """
    from edgepipe._tf import tf

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
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=aug.fill.upper())


# -- the stage ----------------------------------------------------------------------------------------------


def dataset_files(params: DataParams) -> list[Path]:
    """The local files the source resolves to (hashed into the cache key); raises if a path is missing."""
    scheme, _, rest = params.source.partition(":")
    if scheme == "idx":
        return list(_idx_paths(_existing_dir(rest, "idx")).values())
    if scheme == "npz":
        p = Path(rest)
        if not p.is_file():
            raise EdgepipeError(f"npz:{rest}: file not found", "give the path of an existing .npz file")
        return [p]
    if scheme == "folder":
        root = _existing_dir(rest, "folder")
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if scheme == "keras":
        found = _find_keras_local(rest, params.mirror)
        return found[1] if found else []
    return []  # tfds: tfds checks its own prepared data


def run_data_stage(params: DataParams, io: StageIO) -> str:
    """Load, split, resample and describe the dataset; write dataset.npz, dataset.json, samples.png."""
    rng = np.random.default_rng(params.seed)
    x_train, y_train, x_test, y_test, classes = _load_source(params)
    if params.class_names is not None:
        if len(params.class_names) < len(classes):
            raise EdgepipeError(f"class_names lists {len(params.class_names)} names for {len(classes)} classes",
                                "give one name per class, in label order")
        classes = list(params.class_names)
    x_train, y_train = _check_labels(x_train, y_train, classes, params.source, "train")
    if x_test is not None:
        x_test, y_test = _check_labels(x_test, y_test, classes, params.source, "test")
    x_train = _adapt(x_train, params)
    if x_test is not None:
        x_test = _adapt(x_test, params)

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
    info = _describe(params, classes, splits)
    write_npz(io.out / "dataset.npz", {f"{k}_{s}": a for s, xy in splits.items() for k, a in zip("xy", xy)})
    fsio.write_json(io.out / "dataset.json", info)
    _sample_grid(x_train, y_train, classes, params.samples_per_class, io.out / "samples.png")
    n = {s: len(v[1]) for s, v in splits.items()}
    return (f"{n['train']} train / {n['val']} val / {n['test']} test, {len(classes)} classes, "
            f"{'x'.join(map(str, info['input_shape']))}, imbalance {info['imbalance_ratio']:.2f}")


KIND = StageKind(
    name="data", params=DataParams, run=run_data_stage, inputs={}, code=("edgepipe.data",),
    main_output="dataset.npz", deps=dataset_files, doc="load, split, normalise and describe a dataset",
)


def write_npz(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-for-byte reproducible.

    numpy stamps the current time into each zip entry, so the same data would hash differently on
    every run and needlessly retrain everything downstream of a data stage that reran.
    """
    import io
    import zipfile

    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                       compress_type=zipfile.ZIP_DEFLATED)


# -- sources ------------------------------------------------------------------------------------------------


def _load_source(p: DataParams):
    scheme, _, rest = p.source.partition(":")
    if scheme == "idx":
        x, y, xt, yt = _read_idx_dir(_existing_dir(rest, "idx"))
        return x, y, xt, yt, [str(i) for i in range(int(max(y.max(), yt.max())) + 1)]
    if scheme == "npz":
        return _read_npz(Path(rest))
    if scheme == "folder":
        return _read_folder(_existing_dir(rest, "folder"), p)
    if scheme == "keras":
        return _load_keras(rest, p.mirror)
    return _load_tfds(rest, p)


def _existing_dir(path: str, scheme: str) -> Path:
    d = Path(path)
    if not d.is_dir():
        raise EdgepipeError(f"{scheme}:{path}: dataset directory not found",
                            "check the path in the recipe's source (relative paths start at the current directory)")
    return d


def _mirror_dirs(mirror: list[str]) -> list[Path]:
    env = [p for p in os.environ.get(MIRROR_ENV, "").split(os.pathsep) if p]
    return [Path(m) for m in [*mirror, *env]] + list(SYSTEM_DIRS)


def _idx_paths(d: Path, required: bool = True) -> dict[str, Path]:
    found = {}
    for name in IDX_FILES:
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            if required:
                raise EdgepipeError(f"idx:{d}: missing {name}.gz (or {name})",
                                    f"place the four MNIST-format files {', '.join(IDX_FILES)} (.gz or not) there")
            return {}
    return found


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise EdgepipeError(f"{path}: cannot read IDX file ({e})", "replace it with an intact copy") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise EdgepipeError(f"{path}: not an IDX file of unsigned bytes (bad magic number)",
                            "use the canonical MNIST-format files")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise EdgepipeError(f"{path}: IDX header says {tuple(dims)} but the file holds {body.size} bytes",
                            "the file is truncated; replace it with an intact copy")
    return body.reshape(dims)


def _read_idx_dir(d: Path):
    paths = _idx_paths(d)
    arrays = [_read_idx(paths[n]) for n in IDX_FILES]
    for images, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if len(images) != len(labels):
            raise EdgepipeError(f"idx:{d}: {split} has {len(images)} images but {len(labels)} labels",
                                "the files do not belong together; use a matching images/labels pair")
    return arrays[0][..., None], arrays[1], arrays[2][..., None], arrays[3]


def _read_npz(path: Path):
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise EdgepipeError(f"npz:{path}: cannot read ({e})", "give a .npz made with numpy.savez") from None
    with z:
        keys = set(z.files)
        names = [str(c) for c in z["class_names"]] if "class_names" in keys else None
        if {"x_train", "y_train"} <= keys:
            xt, yt = (z["x_test"], z["y_test"]) if {"x_test", "y_test"} <= keys else (None, None)
            x, y = z["x_train"], z["y_train"]
        elif {"x", "y"} <= keys:
            x, y, xt, yt = z["x"], z["y"], None, None
        else:
            raise EdgepipeError(f"npz:{path}: has arrays {sorted(keys)}",
                                "provide x_train and y_train (and optionally x_test, y_test, class_names) or x and y")
    x, xt = _nhwc(x), None if xt is None else _nhwc(xt)
    if names is None:
        names = [str(i) for i in range(int(max(y.max(), -1 if yt is None else yt.max())) + 1)]
    return x, y, xt, yt, names


def _nhwc(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise EdgepipeError(f"images have shape {x.shape}", "use (N, H, W), (N, H, W, 1) or (N, H, W, 3)")
    if x.dtype != np.uint8:
        x = np.clip(x * 255.0 if x.max() <= 1.0 else x, 0, 255).astype(np.uint8)
    return x


def _read_folder(root: Path, p: DataParams):
    """`root/<class>/*.png|jpg`, or `root/train/<class>/...` with `root/test/<class>/...` as the official test split."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = _read_class_folders(root / "train", p)
        xt, yt, _ = _read_class_folders(root / "test", p, classes=classes, size=x.shape[1:3])
        if xt.shape[-1] != x.shape[-1]:  # one split all grayscale, the other colour: promote to RGB
            x, xt = (np.repeat(a, 3, -1) if a.shape[-1] == 1 else a for a in (x, xt))
        return x, y, xt, yt, classes
    x, y, classes = _read_class_folders(root, p)
    return x, y, None, None, classes


def _read_class_folders(root: Path, p: DataParams, classes: list[str] | None = None, size=None):
    from PIL import Image, UnidentifiedImageError

    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is not None and found != classes:
        raise EdgepipeError(f"folder:{root}: class folders {found} differ from train's {classes}",
                            "give test/ the same class sub-folders as train/")
    classes = found
    if len(classes) < 2:
        raise EdgepipeError(f"folder:{root}: found {len(classes)} class folder(s)",
                            "put each class's images in its own sub-folder (at least two)")
    images, labels = [], []
    size = tuple(p.image_size) if p.image_size else (tuple(size) if size is not None else None)
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise EdgepipeError(f"folder:{root}: class folder '{name}' has no PNG/JPEG/BMP images",
                                "add images or remove the folder")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    im = im.convert("L" if (p.channels or (3 if im.mode not in ("L", "1", "I;16") else 1)) == 1
                                    else "RGB")
            except (UnidentifiedImageError, OSError, SyntaxError) as e:
                raise EdgepipeError(f"{f}: corrupt or unreadable image ({type(e).__name__})",
                                    "delete or replace the file") from None
            if size is None:
                size = (im.height, im.width)
            if (im.height, im.width) != size:
                if not p.image_size:
                    raise EdgepipeError(f"{f}: image is {im.width}x{im.height}, others are {size[1]}x{size[0]}",
                                        "set image_size: [height, width] in the data params to resize all")
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, np.uint8)
            images.append(arr[..., None] if arr.ndim == 2 else arr)
            labels.append(label)
    channels = {a.shape[-1] for a in images}
    if len(channels) > 1:  # mixed grayscale and colour: promote to RGB
        images = [np.repeat(a, 3, -1) if a.shape[-1] == 1 else a for a in images]
    return np.stack(images), np.array(labels), classes


def _find_keras_local(name: str, mirror: list[str]) -> tuple[str, list[Path]] | None:
    """Look for a keras dataset's canonical files locally: (layout, files) or None."""
    for base in _mirror_dirs(mirror):
        for sub in MIRROR_NAMES[name]:
            d = base / sub
            if name in ("mnist", "fashion_mnist") and d.is_dir():
                paths = _idx_paths(d, required=False)
                if paths:
                    return "idx", [paths[n] for n in IDX_FILES]
            if name.startswith("cifar") and d.is_dir():
                return "cifar_dir", sorted(f for f in d.iterdir() if f.is_file())
        if name == "mnist" and (base / "mnist.npz").is_file():  # keras' own download
            return "keras_npz", [base / "mnist.npz"]
        tarname = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}.get(name)
        if tarname and (base / tarname).is_file():
            return "cifar_tar", [base / tarname]
    return None


def _load_keras(name: str, mirror: list[str]):
    found = _find_keras_local(name, mirror)
    if found:
        layout, files = found
        log.info("keras:%s from %s", name, files[0].parent)
        if layout == "idx":
            return (*_read_idx_dir(files[0].parent), CLASS_NAMES[name])
        if layout == "keras_npz":
            with np.load(files[0]) as z:
                return z["x_train"][..., None], z["y_train"], z["x_test"][..., None], z["y_test"], CLASS_NAMES[name]
        return _read_cifar(name, files)
    from edgepipe._tf import keras  # the real download, cached by keras under ~/.keras/datasets

    try:
        (x, y), (xt, yt) = getattr(keras.datasets, name).load_data()
    except Exception as e:  # keras raises plain Exception on network failure
        need = (", ".join(f"{n}.gz" for n in IDX_FILES) if name in ("mnist", "fashion_mnist")
                else {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[name])
        raise EdgepipeError(
            f"keras:{name}: not found locally and the download failed ({type(e).__name__})",
            f"put {need} in <mirror>/{MIRROR_NAMES[name][0]}/ and set the data param mirror or ${MIRROR_ENV} "
            f"to <mirror>") from None
    names = CLASS_NAMES.get(name) or [str(i) for i in range(100)]
    return _nhwc(x), y.reshape(-1), _nhwc(xt), yt.reshape(-1), names


def _read_cifar(name: str, files: list[Path]):
    def batches():
        if files[0].suffixes[-2:] == [".tar", ".gz"]:
            with tarfile.open(files[0]) as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        yield Path(m.name).name, tar.extractfile(m).read()
        else:
            for f in files:
                yield f.name, f.read_bytes()

    train, test, meta = [], [], {}
    for fname, blob in batches():
        if fname.startswith(("data_batch", "train", "test")) or fname in ("meta", "batches.meta"):
            d = pickle.loads(blob, encoding="latin1")  # the canonical CIFAR format is a Python pickle
            if fname in ("meta", "batches.meta"):
                meta = d
            else:
                (test if fname.startswith("test") else train).append(d)
    key = "labels" if name == "cifar10" else "fine_labels"

    def stack(parts):
        x = np.concatenate([p["data"] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x.astype(np.uint8), np.concatenate([p[key] for p in parts])

    names = meta.get("label_names") or meta.get("fine_label_names") or [str(i) for i in range(10 if name == "cifar10" else 100)]
    return (*stack(train), *stack(test), list(names))


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host opens within `timeout` seconds."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_tfds(name: str, p: DataParams):
    import tensorflow_datasets as tfds

    from edgepipe._tf import tf  # noqa: F401  (tfds needs TensorFlow imported with the legacy Keras flag)

    dirs = [d for m in _mirror_dirs(p.mirror) for d in (m / "tfds", m) if (m / "tfds").is_dir() or d == m]
    builder = None
    for d in [*dirs, None]:
        try:
            b = tfds.builder(name, data_dir=str(d) if d else None)
        except Exception as e:  # noqa: BLE001 - tfds raises many types for an unknown name
            raise EdgepipeError(f"tfds:{name}: unknown dataset ({type(e).__name__})", "check the name at tensorflow.org/datasets") from None
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
            raise EdgepipeError(f"tfds:{name}: not prepared locally and the download failed ({type(e).__name__})",
                                f"run tfds once online and copy its data_dir ({name}/<version>) to <mirror>/tfds/, "
                                f"then set the data param mirror or ${MIRROR_ENV}") from None
    features = builder.info.features
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if image_key not in features or label_key not in features or not hasattr(features[label_key], "names"):
        raise EdgepipeError(f"tfds:{name}: no image/label features (it has {', '.join(features.keys())})",
                            "edgepipe reads image classification datasets with a ClassLabel label")
    classes = list(features[label_key].names)
    size = tuple(p.image_size) if p.image_size else None

    def read(split):
        from PIL import Image

        xs, ys = [], []
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            image, label = example[image_key], example[label_key]
            if size and image.shape[:2] != size:
                squeeze = image.shape[-1] == 1
                im = Image.fromarray(image[..., 0] if squeeze else image).resize((size[1], size[0]), Image.BILINEAR)
                image = np.asarray(im)[..., None] if squeeze else np.asarray(im)
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


# -- transforms and description -------------------------------------------------------------------------------


def _check_labels(x, y, classes, source, split):
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(x) != len(y):
        raise EdgepipeError(f"{source}: {split} has {len(x)} images but {len(y)} labels", "fix the source files")
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise EdgepipeError(f"{source}: {split} labels run {y.min()}..{y.max()} for {len(classes)} classes",
                            "labels must be 0..num_classes-1")
    present = np.unique(y)
    if split == "train" and len(present) < 2:
        raise EdgepipeError(f"{source}: only one class ({classes[present[0]] if len(present) else 'none'}) in the data",
                            "a classifier needs at least two classes")
    return x, y


def _adapt(x: np.ndarray, p: DataParams) -> np.ndarray:
    if p.image_size and tuple(x.shape[1:3]) != tuple(p.image_size):
        from PIL import Image

        h, w = p.image_size
        squeeze = x.shape[-1] == 1
        x = np.stack([np.asarray(Image.fromarray(a[..., 0] if squeeze else a).resize((w, h), Image.BILINEAR))
                      for a in x])
        x = x[..., None] if squeeze else x
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
    idx = [rng.choice(np.flatnonzero(y == c), target, replace=how == "oversample" and counts[c] < target)
           for c in present]
    return rng.permutation(np.concatenate(idx))


def _describe(p: DataParams, classes: list[str], splits: dict) -> dict:
    x_train = splits["train"][0]
    channels = x_train.shape[-1]
    if p.normalize == "standardize":
        scaled = x_train.reshape(-1, channels).astype(np.float64) / 255.0
        mean, std = scaled.mean(0).tolist(), np.maximum(scaled.std(0), 1e-6).tolist()
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    counts = {s: np.bincount(xy[1], minlength=len(classes)).tolist() for s, xy in splits.items()}
    train_counts = np.array(counts["train"])
    nonzero = train_counts[train_counts > 0]
    return {
        "source": p.source,
        "classes": classes,
        "num_classes": len(classes),
        "input_shape": list(x_train.shape[1:]),
        "sizes": {s: len(xy[1]) for s, xy in splits.items()},
        "counts": counts,
        "imbalance_ratio": float(nonzero.max() / nonzero.min()),
        "class_weights_balanced": [float(len(splits["train"][1]) / (len(nonzero) * c)) if c else 0.0
                                   for c in train_counts],
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
    fig.savefig(dest, dpi=80)
    plt.close(fig)
