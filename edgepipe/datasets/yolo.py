"""YOLO txt detection folders, read into a `DetectionSet` (`edgepipe.datasets.boxes`).

root/images/**/NAME.{png,jpg,...} with root/labels/**/NAME.txt beside them (the same relative path), one
object a line, "class cx cy w h", the last four as fractions of the image's width and height. As in YOLO, an
image whose label file is empty or absent has no objects. Class names come from root/classes.txt,
root/obj.names, root/labels/classes.txt (one name a line) or the `names` of root/data.yaml or
root/dataset.yaml, the first found.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.datasets.boxes import DetectionSet, assemble, box_in_image, check_options, load_image, short_repr
from edgepipe.datasets.readers import IMAGE_EXTS

CLASS_FILES = ("classes.txt", "obj.names", "labels/classes.txt", "data.yaml", "dataset.yaml")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CLASS_ID = re.compile(r"[0-9]+")


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
    check_options(max_objects, image_size, channels)
    if classes is not None and (
        isinstance(classes, str)
        or not all(isinstance(c, str) and c.strip() for c in classes)
        or not classes
        or len(set(classes)) != len(classes)
    ):
        raise EdgepipeError(
            f"classes {short_repr(classes)} is not a list of distinct class names",
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
        pixels.append(load_image(image, channels, entry, None))
        rows.append(_yolo_labels(label_of[image], len(names), entry["width"], entry["height"]))
        if len(rows[-1]) > max_objects:
            raise EdgepipeError(
                f"{label_of[image]}: {len(rows[-1])} objects, more than max_objects {max_objects}",
                f"set max_objects to at least {len(rows[-1])}",
            )
    return assemble(pixels, rows, names, [str(p) for p in found], max_objects, image_size)


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
            f"{f}: names is {short_repr(names)}",
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
                f"{where}: {short_repr(line.strip())} has {len(tokens)} fields",
                "write one object a line: class cx cy w h (cx..h as fractions of the image)",
            )
        if not _CLASS_ID.fullmatch(tokens[0]):
            raise EdgepipeError(
                f"{where}: class {short_repr(tokens[0])} is not a class number",
                f"write a class number 0..{num_classes - 1}",
            )
        if len(tokens[0]) > 9 or int(tokens[0]) >= num_classes:
            raise EdgepipeError(
                f"{where}: unknown class {short_repr(tokens[0])}; there are {num_classes} classes",
                f"use a class number 0..{num_classes - 1}, or add the class to the classes file",
            )
        values = []
        for token in tokens[1:]:
            value = float(token) if _NUMBER.fullmatch(token) else None
            if value is None or not math.isfinite(value):
                raise EdgepipeError(
                    f"{where}: {short_repr(token)} is not a finite number", "write cx cy w h as numbers between 0 and 1"
                )
            values.append(value)
        cx, cy, w, h = values
        box = box_in_image(
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
            width,
            height,
            where,
            f"box {short_repr(' '.join(tokens[1:]))}",
        )
        rows.append((int(tokens[0]), *box))
    return rows
