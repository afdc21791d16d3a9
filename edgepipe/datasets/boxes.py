"""What the detection readers share: the arrays they return, a box checked against its image, images loaded.

The readers (`edgepipe.datasets.coco`, `edgepipe.datasets.yolo`) return a `DetectionSet`: uint8 images
(N, H, W, C) and float32 boxes (N, max_objects, 5) whose rows are [class, x0, y0, x1, y1] in pixels of the
returned image (pixel-edge coordinates: x1 - x0 is the width), padded with [-1, 0, 0, 0, 0]; the layout
`edgepipe.datasets.synth_digits` writes.

Every problem in the user's files is one `EdgepipeError` naming the file and the line or annotation: a box
outside its image, of zero or negative size, NaN or infinite; an unknown class or category; a malformed line
or JSON; a missing image; more objects on an image than `max_objects`. A box may pass the image edge by at most
`EDGE_TOLERANCE` px (exported annotations carry float rounding) and is then clipped to the edge.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.datasets.readers import to_rgb

EDGE_TOLERANCE = 0.5  # px a box may pass the image edge by before it is refused (it is clipped to the edge)


class DetectionSet(NamedTuple):
    """A detection dataset in arrays."""

    images: np.ndarray  # uint8 (N, H, W, C), C 1 or 3
    boxes: np.ndarray  # float32 (N, max_objects, 5): [class, x0, y0, x1, y1], class -1 for padding
    classes: list[str]  # class names, by class index
    files: list[str]  # each image's path


def check_options(max_objects, image_size, channels) -> None:
    """Refuse a reader's bad max_objects, image_size or channels, naming the option."""
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 0:
        raise EdgepipeError(f"max_objects is {short_repr(max_objects)}", "give a whole number >= 0, e.g. 6")
    if image_size is not None and not (
        isinstance(image_size, (list, tuple))
        and len(image_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise EdgepipeError(f"image_size is {short_repr(image_size)}", "give [height, width] in pixels, e.g. [96, 96]")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise EdgepipeError(f"channels is {short_repr(channels)}", "use 1 (grey), 3 (RGB) or leave it out")


def box_in_image(x0, y0, x1, y1, width, height, where, what) -> tuple[float, float, float, float]:
    """A box in pixel-edge coordinates, checked against its width x height image (`where` and `what` name
    it in the error) and clipped to the edge it may pass by `EDGE_TOLERANCE`."""
    if not (x1 > x0 and y1 > y0):
        raise EdgepipeError(f"{where}: {what} has zero or negative width or height", "give every box a positive size")
    tol = EDGE_TOLERANCE
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise EdgepipeError(
            f"{where}: {what} reaches outside the {width}x{height} image (x {x0:g}..{x1:g}, y {y0:g}..{y1:g})",
            "clip or fix the box to lie inside the image",
        )
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if not (x1 > x0 and y1 > y0):
        raise EdgepipeError(
            f"{where}: {what} lies on the image's edge, with no area inside it",
            "remove the box or fix it to lie inside the image",
        )
    return x0, y0, x1, y1


def image_file_size(file: Path, annotations: Path | None) -> tuple[int, int]:
    """An image file's (width, height), read from its header; `annotations` is the file that named it."""
    from PIL import Image, UnidentifiedImageError

    if not file.is_file():
        raise EdgepipeError(
            f"{file}: image not found" + (f" (named in {annotations})" if annotations else ""),
            "check its file_name, or give the folder the names start from" if annotations else "check the path",
        )
    try:
        with Image.open(file) as im:
            return im.width, im.height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EdgepipeError(
            f"{file}: corrupt or unreadable image ({type(e).__name__})", "delete or replace the file"
        ) from None


def load_image(file: Path, channels: int | None, entry: dict, annotations: Path | None) -> np.ndarray:
    """An image as uint8 (H, W, 1) or (H, W, 3); `entry` gets its width and height, which must agree with
    any the annotations recorded."""
    from PIL import Image, UnidentifiedImageError

    width, height = image_file_size(file, annotations)
    if entry.get("width") not in (None, width) or entry.get("height") not in (None, height):
        raise EdgepipeError(
            f"{file}: image is {width}x{height} but {annotations} says {entry['width']}x{entry['height']}",
            "fix width and height in the annotations",
        )
    entry["width"], entry["height"] = width, height
    try:
        with warnings.catch_warnings():
            # PIL warns above its pixel limit and raises above twice it: both are refusals
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                im.load()
                grey = channels == 1 or (channels is None and im.mode in ("L", "1", "I;16", "I", "F"))
                array = np.asarray(im.convert("L" if grey else "RGB"), np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise EdgepipeError(
            f"{file}: image too large to decode safely ({' '.join(str(e).split())[:120]})",
            "downscale the file, or remove it",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise EdgepipeError(
            f"{file}: corrupt or unreadable image ({type(e).__name__})", "delete or replace the file"
        ) from None
    return array[..., None] if array.ndim == 2 else array


def assemble(pixels, rows, names, files, max_objects, image_size) -> DetectionSet:
    """Images and their box rows as one `DetectionSet`: resized to image_size (boxes scaled) if given, else
    all of one size; grey promoted to RGB when mixed with colour; boxes padded to max_objects rows."""
    if image_size is not None:
        from PIL import Image

        h, w = image_size
        resized, scaled = [], []
        for image, image_rows in zip(pixels, rows):
            sy, sx = h / image.shape[0], w / image.shape[1]
            im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).resize((w, h), Image.BILINEAR)
            resized.append(np.asarray(im).reshape(h, w, image.shape[-1]))
            scaled.append([(c, x0 * sx, y0 * sy, x1 * sx, y1 * sy) for c, x0, y0, x1, y1 in image_rows])
        pixels, rows = resized, scaled
    sizes = {p.shape[:2] for p in pixels}
    if len(sizes) > 1:
        first = pixels[0].shape[:2]
        odd = next(i for i, p in enumerate(pixels) if p.shape[:2] != first)
        raise EdgepipeError(
            f"{files[odd]}: image is {pixels[odd].shape[1]}x{pixels[odd].shape[0]}, {files[0]} is "
            f"{first[1]}x{first[0]}",
            "give image_size: [height, width] to resize all (boxes follow)",
        )
    if len({p.shape[-1] for p in pixels}) > 1:  # grey and colour mixed: promote to RGB
        pixels = [to_rgb(p) for p in pixels]
    boxes = np.zeros((len(pixels), max_objects, 5), np.float32)
    boxes[:, :, 0] = -1
    for i, image_rows in enumerate(rows):
        if image_rows:
            boxes[i, : len(image_rows)] = image_rows
    return DetectionSet(np.stack(pixels), boxes, list(names), files)


def short_repr(value) -> str:
    """A value as an error message quotes it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
