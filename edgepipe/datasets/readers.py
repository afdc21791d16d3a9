"""The file formats datasets come in, read into arrays: IDX (MNIST's), .npz, folders of images per class,
CIFAR's pickled batches; and the checks every source's arrays pass (labels, NHWC images).

`edgepipe.datasets.sources` decides where a source's files are (a mirror, a download); this module only
reads them.
"""

from __future__ import annotations

import gzip
import logging
import math
import pickle
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgepipe.core.errors import EdgepipeError

log = logging.getLogger(__name__)

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def idx_paths(d: Path, required: bool = True) -> dict[str, Path]:
    found = {}
    for name in IDX_FILES:
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            if required:
                raise EdgepipeError(
                    f"idx:{d}: missing {name}.gz (or {name})",
                    f"place the four MNIST-format files {', '.join(IDX_FILES)} (.gz or not) there",
                )
            return {}
    return found


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise EdgepipeError(
            f"{path}: cannot read IDX file ({' '.join(str(e).split())[:120]})", "replace it with an intact copy"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] == 0:
        raise EdgepipeError(
            f"{path}: not an IDX file of unsigned bytes (bad magic number)", "use the canonical MNIST-format files"
        )
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise EdgepipeError(
            f"{path}: IDX header is cut short ({len(data)} bytes for {ndim} dimensions)",
            "the file is truncated; replace it with an intact copy",
        )
    dims = [int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise EdgepipeError(
            f"{path}: IDX header says {tuple(dims)} but the file holds {body.size} bytes",
            "the file is truncated; replace it with an intact copy",
        )
    return body.reshape(dims)


def read_idx_dir(d: Path):
    paths = idx_paths(d)
    arrays = [_read_idx(paths[n]) for n in IDX_FILES]
    for name, array, want in zip(IDX_FILES, arrays, (3, 1, 3, 1)):
        if array.ndim != want:
            what = "a labels file?" if want == 3 else "an images file?"
            raise EdgepipeError(
                f"idx:{d}: {name} holds a {array.ndim}-dimensional array ({what}); "
                f"{'images are (N, H, W)' if want == 3 else 'labels are (N,)'}",
                "use the matching MNIST-format file under that name",
            )
    for images, labels, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if len(images) != len(labels):
            raise EdgepipeError(
                f"idx:{d}: {split} has {len(images)} images but {len(labels)} labels",
                "the files do not belong together; use a matching images/labels pair",
            )
    return arrays[0][..., None], arrays[1], arrays[2][..., None], arrays[3]


def read_npz(path: Path):
    where = f"npz:{path}"
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise EdgepipeError(
            f"{where}: cannot read ({' '.join(str(e).split())[:120]})", "give a .npz made with numpy.savez"
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise EdgepipeError(
            f"{where}: holds one array (made with numpy.save), not named arrays",
            "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)",
        )
    with z:
        keys = set(z.files)
        if {"x_train", "y_train"} <= keys:
            wanted = ["x_train", "y_train"] + (["x_test", "y_test"] if {"x_test", "y_test"} <= keys else [])
        elif {"x", "y"} <= keys:
            wanted = ["x", "y"]
        else:
            raise EdgepipeError(
                f"{where}: has arrays {sorted(keys)}",
                "provide x_train and y_train (and optionally x_test, y_test, class_names) or x and y",
            )
        arrays = {}
        for key in wanted + (["class_names"] if "class_names" in keys else []):
            try:
                arrays[key] = z[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # object arrays, a broken member
                raise EdgepipeError(
                    f"{where}: array {key} cannot be read ({' '.join(str(e).split())[:100]})",
                    "store plain numeric arrays (no Python objects, no ragged lists)",
                ) from None
    x, y = arrays[wanted[0]], arrays[wanted[1]]
    xt, yt = (arrays["x_test"], arrays["y_test"]) if "x_test" in wanted else (None, None)
    x = nhwc(x, f"{where}: {wanted[0]}")
    y = labels_of(y, f"{where}: {wanted[1]}")
    if xt is not None:
        xt, yt = nhwc(xt, f"{where}: x_test"), labels_of(yt, f"{where}: y_test")
        if xt.shape[1:] != x.shape[1:]:
            raise EdgepipeError(
                f"{where}: test images are {xt.shape[1:]}, train images {x.shape[1:]}",
                "give train and test images of one size and channel count",
            )
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "USO":
            raise EdgepipeError(f"{where}: class_names is not a list of names", "store class_names as strings")
        names = [str(c) for c in names]
    else:
        names = [str(i) for i in range(int(max(y.max(), -1 if yt is None else yt.max())) + 1)]
    return x, y, xt, yt, names


def labels_of(y: np.ndarray, where: str) -> np.ndarray:
    """Integer class labels (N,) from an array: non-negative whole numbers, finite, not text or one-hot."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise EdgepipeError(
            f"{where}: labels have shape {y.shape}", "give one class index per image, shape (N,), not one-hot vectors"
        )
    if y.size == 0:
        raise EdgepipeError(f"{where}: no labels", "give at least one image per class")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise EdgepipeError(
            f"{where}: labels are {y.dtype} values, not class indices",
            "map each class to 0..num_classes-1 (names go in class_names)",
        )
    y = y.astype(np.int64)
    if y.min() < 0:
        raise EdgepipeError(f"{where}: a label is {y.min()}", "labels must be 0..num_classes-1")
    return y


def nhwc(x: np.ndarray, where: str) -> np.ndarray:
    """Images as uint8 (N, H, W, C) with C 1 or 3: values in [0, 1] are scaled by 255, others must be 0..255."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or 0 in x.shape:
        raise EdgepipeError(
            f"{where}: images have shape {x.shape}",
            "use (N, H, W), (N, H, W, 1) or (N, H, W, 3), with N, H and W at least 1",
        )
    if x.dtype.kind not in "uifb":
        raise EdgepipeError(f"{where}: images are {x.dtype} values, not numbers", "store pixels as uint8 or float")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise EdgepipeError(
            f"{where}: {int(np.sum(~np.isfinite(x)))} pixel values are NaN or infinite", "fix or drop those images"
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise EdgepipeError(
            f"{where}: pixel values run {lo:g}..{hi:g}", "store 8-bit pixels (0..255) or floats in [0, 1]"
        )
    return np.clip(x * 255.0 if hi <= 1.0 else x, 0, 255).astype(np.uint8)


def read_folder(root: Path, image_size, channels):
    """`root/<class>/*.png|jpg`, or `root/train/<class>/...` with `root/test/<class>/...` as the official test split."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = _read_class_folders(root / "train", image_size, channels)
        xt, yt, _ = _read_class_folders(root / "test", image_size, channels, classes=classes, size=x.shape[1:3])
        if xt.shape[-1] != x.shape[-1]:  # one split all grayscale, the other colour: promote to RGB
            x, xt = to_rgb(x), to_rgb(xt)
        return x, y, xt, yt, classes
    x, y, classes = _read_class_folders(root, image_size, channels)
    return x, y, None, None, classes


def _read_class_folders(root: Path, image_size, channels, classes: list[str] | None = None, size=None):
    from PIL import Image, UnidentifiedImageError

    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is not None and found != classes:
        raise EdgepipeError(
            f"folder:{root}: class folders {found} differ from train's {classes}",
            "give test/ the same class sub-folders as train/",
        )
    classes = found
    if len(classes) < 2:
        raise EdgepipeError(
            f"folder:{root}: found {len(classes)} class folder(s)",
            "put each class's images in its own sub-folder (at least two)",
        )
    images, labels = [], []
    size = tuple(image_size) if image_size else (tuple(size) if size is not None else None)
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise EdgepipeError(
                f"folder:{root}: class folder '{name}' has no PNG/JPEG/BMP images", "add images or remove the folder"
            )
        for f in files:
            try:
                with warnings.catch_warnings():
                    # PIL warns (to stderr) above its pixel limit and raises above twice it: both are refusals
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    with Image.open(f) as im:
                        im.load()
                        im = im.convert(
                            "L" if (channels or (3 if im.mode not in ("L", "1", "I;16") else 1)) == 1 else "RGB"
                        )
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise EdgepipeError(
                    f"{f}: image too large to decode safely ({' '.join(str(e).split())[:120]})",
                    "downscale the file, or remove it",
                ) from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise EdgepipeError(
                    f"{f}: corrupt or unreadable image ({type(e).__name__})", "delete or replace the file"
                ) from None
            if size is None:
                size = (im.height, im.width)
            if (im.height, im.width) != size:
                if not image_size:
                    raise EdgepipeError(
                        f"{f}: image is {im.width}x{im.height}, others are {size[1]}x{size[0]}",
                        "set image_size: [height, width] in the data params to resize all",
                    )
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, np.uint8)
            images.append(arr[..., None] if arr.ndim == 2 else arr)
            labels.append(label)
    channels = {a.shape[-1] for a in images}
    if len(channels) > 1:  # mixed grayscale and colour: promote to RGB
        images = [to_rgb(a) for a in images]
    return np.stack(images), np.array(labels), classes


def read_cifar(name: str, files: list[Path]):
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

    names = (
        meta.get("label_names")
        or meta.get("fine_label_names")
        or [str(i) for i in range(10 if name == "cifar10" else 100)]
    )
    return (*stack(train), *stack(test), list(names))


def resize(image: np.ndarray, size) -> np.ndarray:
    """One (H, W, C) uint8 image resized to `size` = (height, width), bilinear, as PIL does it."""
    from PIL import Image

    squeeze = image.shape[-1] == 1
    im = Image.fromarray(image[..., 0] if squeeze else image).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(im)[..., None] if squeeze else np.asarray(im)


def to_rgb(x: np.ndarray) -> np.ndarray:
    """Grayscale images (last axis 1) to RGB by repeating the channel; RGB ones unchanged."""
    return np.repeat(x, 3, -1) if x.shape[-1] == 1 else x
