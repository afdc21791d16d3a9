"""COCO detection JSON, read into a `DetectionSet` (`edgepipe.datasets.boxes`).

One JSON file with "images" (id, file_name, width, height), "annotations" (id, image_id, category_id, bbox
[x, y, width, height] in pixels) and "categories" (id, name). Class i is the category with the i-th smallest
id. Crowd annotations (iscrowd: 1) are regions COCO's own evaluation ignores; they are skipped. An image
without annotations has no objects.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from edgepipe.core.errors import EdgepipeError
from edgepipe.datasets.boxes import (
    DetectionSet,
    assemble,
    box_in_image,
    check_options,
    image_file_size,
    load_image,
    short_repr,
)


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
    check_options(max_objects, image_size, channels)
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
                f"{where} is {short_repr(ann)}, not an object",
                'write each annotation as {"id", "image_id", "category_id", "bbox"}',
            )
        if "id" in ann:
            where = f"{path}: annotation id {short_repr(ann['id'])}"
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        if not _is_id(image_id) or image_id not in images:
            raise EdgepipeError(
                f"{where}: image_id {short_repr(image_id)} is not the id of an entry in images",
                "point image_id at an image listed under images",
            )
        entry = images[image_id]
        where += f" (image {entry['file_name']!r})"
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise EdgepipeError(f"{where}: iscrowd is {short_repr(crowd)}", "write iscrowd as 0 or 1")
        if not _is_id(category_id) or category_id not in categories:
            known = ", ".join(f"{k} ({categories[k]})" for k in sorted(categories, key=_id_order)[:12])
            raise EdgepipeError(
                f"{where}: unknown category_id {short_repr(category_id)}", f"use one of the categories' ids: {known}"
            )
        if crowd:
            continue
        box = _coco_box(ann.get("bbox"), entry["width"], entry["height"], where)
        per_image[image_id].append((class_of[category_id], *box))
    for image_id, rows in per_image.items():
        if len(rows) > max_objects:
            raise EdgepipeError(
                f"{path}: image {images[image_id]['file_name']!r} (id {short_repr(image_id)}) has "
                f"{len(rows)} objects, more than max_objects {max_objects}",
                f"set max_objects to at least {len(rows)}",
            )
    files = [images[i]["path"] for i in images]
    pixels = [load_image(f, channels, images[i], path) for f, i in zip(files, images)]
    names = [categories[cid] for cid in sorted(categories, key=_id_order)]
    return assemble(pixels, [per_image[i] for i in images], names, [str(f) for f in files], max_objects, image_size)


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
            f"{path}: the JSON is {short_repr(data)}, not an object",
            'a COCO file is one object with "images", "annotations" and "categories"',
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise EdgepipeError(
                f"{path}: {key!r} is {'missing' if key not in data else short_repr(data[key])}, not a list",
                f'give the COCO object a "{key}" list',
            )
    return data


def _coco_categories(data: dict, path: Path) -> dict:
    categories = {}
    for index, cat in enumerate(data["categories"]):
        where = f"{path}: categories[{index}]"
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise EdgepipeError(f"{where} is {short_repr(cat)}", 'write each category as {"id": 1, "name": "..."}')
        if cat["id"] in categories:
            raise EdgepipeError(
                f"{where}: category id {short_repr(cat['id'])} is listed twice", "give each category its own id"
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
                f"{where} is {short_repr(entry)}",
                'write each image as {"id": 1, "file_name": "a.jpg", "width": W, "height": H}',
            )
        if entry["id"] in images:
            raise EdgepipeError(
                f"{where}: image id {short_repr(entry['id'])} is listed twice", "give each image its own id"
            )
        size = {}
        for key in ("width", "height"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EdgepipeError(
                    f"{where} ({entry['file_name']!r}): {key} is {short_repr(value)}",
                    f"write {key} as the image's size in pixels, or leave it out",
                )
            size[key] = value
        images[entry["id"]] = {"file_name": entry["file_name"], "path": root / entry["file_name"], **size}
    if not images:
        raise EdgepipeError(f"{path}: no images", 'list the images under "images"')
    for entry in images.values():  # sizes the JSON leaves out come from the image files
        if entry["width"] is None or entry["height"] is None:
            entry["width"], entry["height"] = image_file_size(entry["path"], path)
    return images


def _coco_box(bbox, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise EdgepipeError(f"{where}: bbox is {short_repr(bbox)}", "write bbox as [x, y, width, height] in pixels")
    values = [_finite(v) for v in bbox]
    if None in values:
        raise EdgepipeError(f"{where}: bbox {short_repr(bbox)} holds NaN or infinity", "write finite numbers")
    x, y, w, h = values
    return box_in_image(x, y, x + w, y + h, width, height, where, f"bbox {short_repr(bbox)}")


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
