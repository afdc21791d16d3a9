"""Object-detection datasets users bring: COCO JSON and YOLO txt folders, read into padded box arrays.

Both readers return a `DetectionSet`: uint8 images (N, H, W, C) and float32 boxes (N, max_objects, 5) whose
rows are [class, x0, y0, x1, y1] in pixels of the returned image (pixel-edge coordinates: x1 - x0 is the
width), padded with [-1, 0, 0, 0, 0]; the layout `edgepipe.datasets.synth_digits` writes.

Every problem in the user's files is one `EdgepipeError` naming the file and the line or annotation: a box
outside its image, of zero or negative size, NaN or infinite; an unknown class or category; a malformed line
or JSON; a missing image; more objects on an image than `max_objects`. A box may pass the image edge by at most
`EDGE_TOLERANCE` px (exported annotations carry float rounding) and is then clipped to the edge.

    COCO:  one JSON file with "images" (id, file_name, width, height), "annotations" (id, image_id,
           category_id, bbox [x, y, width, height] in pixels) and "categories" (id, name). Class i is the
           category with the i-th smallest id. Crowd annotations (iscrowd: 1) are regions COCO's own
           evaluation ignores; they are skipped. An image without annotations has no objects.
    YOLO:  root/images/**/NAME.{png,jpg,...} with root/labels/**/NAME.txt beside them (the same relative
           path), one object a line, "class cx cy w h", the last four as fractions of the image's width and
           height. As in YOLO, an image whose label file is empty or absent has no objects. Class names
           come from root/classes.txt, root/obj.names, root/labels/classes.txt (one name a line) or the
           `names` of root/data.yaml or root/dataset.yaml, the first found.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgepipe.core.errors import EdgepipeError
from edgepipe.datasets.readers import IMAGE_EXTS, to_rgb

EDGE_TOLERANCE = 0.5  # px a box may pass the image edge by before it is refused (it is clipped to the edge)
CLASS_FILES = ("classes.txt", "obj.names", "labels/classes.txt", "data.yaml", "dataset.yaml")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CLASS_ID = re.compile(r"[0-9]+")


class DetectionSet(NamedTuple):
    """A detection dataset in arrays."""

    images: np.ndarray  # uint8 (N, H, W, C), C 1 or 3
    boxes: np.ndarray  # float32 (N, max_objects, 5): [class, x0, y0, x1, y1], class -1 for padding
    classes: list[str]  # class names, by class index
    files: list[str]  # each image's path


def read_coco(
    annotations: str | Path,
    images_dir: str | Path | None = None,
    *,
    max_objects: int = 6,
    image_size=None,
    channels: int | None = None,
) -> DetectionSet:
    """Read a COCO detection JSON and its images.

    Args:
        annotations: the JSON file.
        images_dir: where the images' file_name paths start; by default the JSON file's folder.
        max_objects: the rows of the boxes array; an image with more objects is refused.
        image_size: (height, width) to resize every image (and scale its boxes) to; by default all images
            must have one size.
        channels: 1 (grey) or 3 (RGB); by default grey when every image is, else RGB.

    Raises:
        EdgepipeError: naming the file and the annotation or image at fault.
    """
    _check_options(max_objects, image_size, channels)
    path = Path(annotations)
    root = Path(images_dir) if images_dir is not None else path.parent
    data = _read_json(path)
    categories = _coco_categories(data, path)
    class_of = {cid: i for i, cid in enumerate(sorted(categories, key=_id_order))}
    images = _coco_images(data, path, root)
    per_image: dict = {image_id: [] for image_id in images}
    anns = data["annotations"]
    for index, ann in enumerate(anns):
        where = f"{path}: annotations[{index}]"
        if not isinstance(ann, dict):
            raise EdgepipeError(
                f"{where} is {_show(ann)}, not an object",
                'write each annotation as {"id", "image_id", "category_id", "bbox"}',
            )
        if "id" in ann:
            where = f"{path}: annotation id {_show(ann['id'])}"
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if not _is_id(image_id) or image_id not in images:
            raise EdgepipeError(
                f"{where}: image_id {_show(image_id)} is not the id of an entry in images",
                "point image_id at an image listed under images",
            )
        entry = images[image_id]
        where += f" (image {entry['file_name']!r})"
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise EdgepipeError(f"{where}: iscrowd is {_show(crowd)}", "write iscrowd as 0 or 1")
        if not _is_id(category_id) or category_id not in categories:
            known = ", ".join(f"{k} ({categories[k]})" for k in sorted(categories, key=_id_order)[:12])
            raise EdgepipeError(
                f"{where}: unknown category_id {_show(category_id)}", f"use one of the categories' ids: {known}"
            )
        if crowd:
            continue
        box = _coco_box(ann.get("bbox"), entry["width"], entry["height"], where)
        per_image[image_id].append((class_of[category_id], *box))
    for image_id, rows in per_image.items():
        if len(rows) > max_objects:
            raise EdgepipeError(
                f"{path}: image {images[image_id]['file_name']!r} (id {_show(image_id)}) has "
                f"{len(rows)} objects, more than max_objects {max_objects}",
                f"set max_objects to at least {len(rows)}",
            )
    files = [images[i]["path"] for i in images]
    pixels = [_load_image(f, channels, images[i], path) for f, i in zip(files, images)]
    names = [categories[cid] for cid in sorted(categories, key=_id_order)]
    return _assemble(pixels, [per_image[i] for i in images], names, [str(f) for f in files], max_objects, image_size)


def read_yolo(
    root: str | Path,
    *,
    split: str | None = None,
    max_objects: int = 6,
    image_size=None,
    channels: int | None = None,
    classes: list[str] | None = None,
) -> DetectionSet:
    """Read a YOLO txt dataset: root/images/... and root/labels/... (or images/SPLIT and labels/SPLIT).

    Args:
        root: the dataset folder.
        split: a sub-folder of images/ and labels/ to read (e.g. "train"); by default all of images/.
        max_objects: the rows of the boxes array; an image with more objects is refused.
        image_size: (height, width) to resize every image to; by default all images must have one size.
        channels: 1 (grey) or 3 (RGB); by default grey when every image is, else RGB.
        classes: the class names, overriding the dataset's classes file.

    Raises:
        EdgepipeError: naming the file and line at fault.
    """
    _check_options(max_objects, image_size, channels)
    if classes is not None and (
        isinstance(classes, str)
        or not all(isinstance(c, str) and c.strip() for c in classes)
        or not classes
        or len(set(classes)) != len(classes)
    ):
        raise EdgepipeError(
            f"classes {_show(classes)} is not a list of distinct class names",
            'give the names in class-id order, e.g. ["bolt", "nut"]',
        )
    root = Path(root)
    image_root, label_root = root / "images", root / "labels"
    if split is not None:
        image_root, label_root = image_root / split, label_root / split
    if not image_root.is_dir():
        raise EdgepipeError(
            f"yolo:{root}: no folder {image_root}",
            "put the images under images/ and their .txt labels under labels/, same names",
        )
    names = list(classes) if classes is not None else _yolo_classes(root)
    found = sorted(p for p in image_root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not found:
        raise EdgepipeError(f"yolo:{image_root}: no PNG/JPEG/BMP/GIF images", "put the images under images/")
    label_of: dict[Path, Path] = {}
    for image in found:
        label = (label_root / image.relative_to(image_root)).with_suffix(".txt")
        if label in label_of.values():
            other = next(i for i, lab in label_of.items() if lab == label)
            raise EdgepipeError(
                f"yolo:{image} and {other} share the label file {label}",
                "give every image its own name (not only its own extension)",
            )
        label_of[image] = label
    if label_root.is_dir():
        expected = set(label_of.values()) | {root / "labels" / "classes.txt"}
        for label in sorted(label_root.rglob("*.txt")):
            if label not in expected:
                raise EdgepipeError(
                    f"{label}: a label file without an image (looked for "
                    f"{(image_root / label.relative_to(label_root)).with_suffix('.*')})",
                    "add its image (PNG, JPEG, BMP or GIF) or delete the label file",
                )
    rows, pixels = [], []
    for image in found:
        entry = {"path": image}
        pixels.append(_load_image(image, channels, entry, None))
        rows.append(_yolo_labels(label_of[image], len(names), entry["width"], entry["height"]))
        if len(rows[-1]) > max_objects:
            raise EdgepipeError(
                f"{label_of[image]}: {len(rows[-1])} objects, more than max_objects {max_objects}",
                f"set max_objects to at least {len(rows[-1])}",
            )
    return _assemble(pixels, rows, names, [str(p) for p in found], max_objects, image_size)


# -- COCO ---------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise EdgepipeError.from_os_error(e) from None
    except UnicodeDecodeError as e:
        raise EdgepipeError(f"{path}: not UTF-8 text (byte {e.start})", "save the annotations as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EdgepipeError(
            f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})",
            "fix the JSON there (a COCO file is one JSON object)",
        ) from None
    except (ValueError, RecursionError) as e:  # a number too long to parse, nesting too deep
        raise EdgepipeError(
            f"{path}: unreadable JSON ({type(e).__name__}: {' '.join(str(e).split())[:80]})",
            "write a plain COCO JSON object",
        ) from None
    if not isinstance(data, dict):
        raise EdgepipeError(
            f"{path}: the JSON is {_show(data)}, not an object",
            'a COCO file is one object with "images", "annotations" and "categories"',
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EdgepipeError(
                f"{path}: {key!r} is {'missing' if key not in data else _show(data[key])}, not a list",
                f'give the COCO object a "{key}" list',
            )
    return data


def _coco_categories(data: dict, path: Path) -> dict:
    categories = {}
    for index, cat in enumerate(data["categories"]):
        where = f"{path}: categories[{index}]"
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise EdgepipeError(f"{where} is {_show(cat)}", 'write each category as {"id": 1, "name": "..."}')
        if cat["id"] in categories:
            raise EdgepipeError(
                f"{where}: category id {_show(cat['id'])} is listed twice", "give each category its own id"
            )
        if not cat["name"].strip() or cat["name"] in categories.values():
            raise EdgepipeError(
                f"{where}: category name {cat['name']!r} is empty or listed twice", "give each category its own name"
            )
        categories[cat["id"]] = cat["name"]
    if not categories:
        raise EdgepipeError(f"{path}: no categories", 'list the classes under "categories"')
    return categories


def _coco_images(data: dict, path: Path, root: Path) -> dict:
    images = {}
    for index, entry in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if (
            not isinstance(entry, dict)
            or not _is_id(entry.get("id"))
            or not isinstance(entry.get("file_name"), str)
            or not entry["file_name"].strip()
        ):
            raise EdgepipeError(
                f"{where} is {_show(entry)}",
                'write each image as {"id": 1, "file_name": "a.jpg", "width": W, "height": H}',
            )
        if entry["id"] in images:
            raise EdgepipeError(f"{where}: image id {_show(entry['id'])} is listed twice", "give each image its own id")
        size = {}
        for key in ("width", "height"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EdgepipeError(
                    f"{where} ({entry['file_name']!r}): {key} is {_show(value)}",
                    f"write {key} as the image's size in pixels, or leave it out",
                )
            size[key] = value
        images[entry["id"]] = {"file_name": entry["file_name"], "path": root / entry["file_name"], **size}
    if not images:
        raise EdgepipeError(f"{path}: no images", 'list the images under "images"')
    for entry in images.values():  # sizes the JSON leaves out come from the image files
        if entry["width"] is None or entry["height"] is None:
            entry["width"], entry["height"] = _image_size(entry["path"], path)
    return images


def _coco_box(bbox, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise EdgepipeError(f"{where}: bbox is {_show(bbox)}", "write bbox as [x, y, width, height] in pixels")
    values = [_finite(v) for v in bbox]
    if None in values:
        raise EdgepipeError(f"{where}: bbox {_show(bbox)} holds NaN or infinity", "write finite numbers")
    x, y, w, h = values
    return _box_in_image(x, y, x + w, y + h, width, height, where, f"bbox {_show(bbox)}")


def _image_size(file: Path, annotations: Path | None) -> tuple[int, int]:
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


# -- YOLO ---------------------------------------------------------------------------------------------------


def _yolo_classes(root: Path) -> list[str]:
    for name in CLASS_FILES:
        f = root / name
        if f.is_file():
            return _yaml_names(f) if f.suffix == ".yaml" else _names_file(f)
    raise EdgepipeError(
        f"yolo:{root}: no class names (looked for {', '.join(CLASS_FILES)})",
        "write the class names, one a line in class-id order, to classes.txt there",
    )


def _text(f: Path) -> str:
    try:
        return f.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise EdgepipeError.from_os_error(e) from None
    except UnicodeDecodeError as e:
        raise EdgepipeError(f"{f}: not UTF-8 text (byte {e.start})", "save it as UTF-8 text") from None


def _lines(text: str) -> list[str]:
    # str.splitlines, as Ultralytics reads label files: "\n", "\r\n" and old Macs' "\r" all end a line (so do
    # the rare form feed and Unicode separators, which editors show as line breaks too).
    return text.splitlines()


def _names_file(f: Path) -> list[str]:
    lines = _lines(_text(f))
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise EdgepipeError(
                f"{f}:{number}: empty line: class {number - 1} has no name",
                "write one class name a line, in class-id order, with no blank lines between",
            )
    if not lines:
        raise EdgepipeError(f"{f}: no class names", "write one class name a line, in class-id order")
    if len(set(n.strip() for n in lines)) != len(lines):
        raise EdgepipeError(f"{f}: a class name is listed twice", "give each class its own name")
    return [n.strip() for n in lines]


def _yaml_names(f: Path) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(_text(f))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise EdgepipeError(f"{f}{at}: malformed YAML", "fix the YAML there") from None
    names = data.get("names") if isinstance(data, dict) else None
    if (
        isinstance(names, dict)
        and all(isinstance(k, int) and not isinstance(k, bool) for k in names)
        and sorted(names) == list(range(len(names)))
    ):
        names = [names[i] for i in range(len(names))]
    if isinstance(names, list):  # YAML reads `names: [0, 1, 7]` as numbers; they are names all the same
        names = [str(n) if isinstance(n, int) and not isinstance(n, bool) else n for n in names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise EdgepipeError(
            f"{f}: names is {_show(names)}",
            "write names: as a list of class names in class-id order, or {0: name, 1: name, ...}",
        )
    if len(set(names)) != len(names):
        raise EdgepipeError(f"{f}: a class name is listed twice", "give each class its own name")
    return names


def _yolo_labels(f: Path, num_classes: int, width: int, height: int) -> list[tuple]:
    if not f.exists():
        return []  # YOLO's convention: an image without a label file has no objects
    rows = []
    for number, line in enumerate(_lines(_text(f)), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{f}:{number}"
        if len(tokens) != 5:
            raise EdgepipeError(
                f"{where}: {_show(line.strip())} has {len(tokens)} fields",
                "write one object a line: class cx cy w h (cx..h as fractions of the image)",
            )
        if not _CLASS_ID.fullmatch(tokens[0]):
            raise EdgepipeError(
                f"{where}: class {_show(tokens[0])} is not a class number", f"write a class number 0..{num_classes - 1}"
            )
        if len(tokens[0]) > 9 or int(tokens[0]) >= num_classes:
            raise EdgepipeError(
                f"{where}: unknown class {_show(tokens[0])}; there are {num_classes} classes",
                f"use a class number 0..{num_classes - 1}, or add the class to the classes file",
            )
        values = []
        for token in tokens[1:]:
            value = float(token) if _NUMBER.fullmatch(token) else None
            if value is None or not math.isfinite(value):
                raise EdgepipeError(
                    f"{where}: {_show(token)} is not a finite number", "write cx cy w h as numbers between 0 and 1"
                )
            values.append(value)
        cx, cy, w, h = values
        box = _box_in_image(
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
            width,
            height,
            where,
            f"box {_show(' '.join(tokens[1:]))}",
        )
        rows.append((int(tokens[0]), *box))
    return rows


# -- shared -------------------------------------------------------------------------------------------------


def _box_in_image(x0, y0, x1, y1, width, height, where, what) -> tuple[float, float, float, float]:
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


def _load_image(file: Path, channels: int | None, entry: dict, annotations: Path | None) -> np.ndarray:
    """An image as uint8 (H, W, 1) or (H, W, 3); `entry` gets its width and height, which must agree with
    any the annotations recorded."""
    from PIL import Image, UnidentifiedImageError

    width, height = _image_size(file, annotations)
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


def _check_options(max_objects, image_size, channels) -> None:
    if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 0:
        raise EdgepipeError(f"max_objects is {_show(max_objects)}", "give a whole number >= 0, e.g. 6")
    if image_size is not None and not (
        isinstance(image_size, (list, tuple))
        and len(image_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise EdgepipeError(f"image_size is {_show(image_size)}", "give [height, width] in pixels, e.g. [96, 96]")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise EdgepipeError(f"channels is {_show(channels)}", "use 1 (grey), 3 (RGB) or leave it out")


def _assemble(pixels, rows, names, files, max_objects, image_size) -> DetectionSet:
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


def _is_id(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


def _id_order(value):
    return (isinstance(value, str), value)  # numbers first, by value; then names


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> float | None:
    try:
        value = float(value)
    except OverflowError:  # an integer beyond a float's range
        return None
    return value if math.isfinite(value) else None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
