"""The COCO JSON and YOLO txt readers: generated sets round-trip through both formats, and every bad input,
written by hand or generated, ends in one single-line EdgepipeError naming the file and line or annotation."""

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgepipe.core.errors import EdgepipeError
from edgepipe.datasets import boxes as bx
from edgepipe.datasets import synth_digits as sd
from edgepipe.datasets import yolo as yolo_txt
from edgepipe.datasets.coco import read_coco
from edgepipe.datasets.yolo import read_yolo

SLOW = os.environ.get("EDGEPIPE_SLOW") == "1"
PROPERTY = settings(
    max_examples=500 if SLOW else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLASSES = ["0", "1", "7"]


# -- writers, made here so that a reader bug cannot hide behind a matching writer bug ---------------------------


def save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.ndim == 3 else image).save(path)


def write_coco(root: Path, images, boxes, classes) -> Path:
    """COCO JSON with category ids that are neither 0-based nor contiguous, listed out of order, and image ids
    that are not positions."""
    ids = [3 + 4 * i for i in range(len(classes))]  # class i is the category with the i-th smallest id
    categories = [{"id": ids[i], "name": classes[i], "supercategory": "digit"} for i in range(len(classes))][::-1]
    data = {"info": {"description": "test"}, "images": [], "annotations": [], "categories": categories}
    for i, (image, rows) in enumerate(zip(images, boxes)):
        name = f"pics/{i:03d}.png"
        save_png(root / name, image)
        data["images"].append({"id": 1000 + i, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for c, x0, y0, x1, y1 in rows[rows[:, 0] >= 0].tolist():
            data["annotations"].append(
                {
                    "id": 7 + len(data["annotations"]),
                    "image_id": 1000 + i,
                    "category_id": ids[int(c)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def write_yolo(root: Path, images, boxes, classes, *, skip_empty_labels=False) -> Path:
    for i, (image, rows) in enumerate(zip(images, boxes)):
        save_png(root / "images" / f"{i:03d}.png", image)
        h, w = image.shape[:2]
        lines = [
            f"{int(c)} {(x0 + x1) / 2 / w!r} {(y0 + y1) / 2 / h!r} {(x1 - x0) / w!r} {(y1 - y0) / h!r}"
            for c, x0, y0, x1, y1 in rows[rows[:, 0] >= 0].tolist()
        ]
        if lines or not skip_empty_labels:
            (root / "labels").mkdir(exist_ok=True)
            (root / "labels" / f"{i:03d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


@pytest.fixture(scope="module")
def scenes(fake_digits):
    x, y = fake_digits
    return sd.generate(x, y, 12, seed=0, classes=CLASSES, max_objects=5)


def odd_sized():
    """Two 40x30 images (wider than tall, so a swapped width and height shows) with hand-placed boxes."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 30, 40), dtype=np.uint8)
    boxes = np.full((2, 3, 5), [-1, 0, 0, 0, 0], np.float32)
    boxes[0, 0] = [2, 0, 0, 40, 30]  # the whole image
    boxes[0, 1] = [0, 35.5, 3, 39, 29.25]
    boxes[1, 0] = [1, 0.5, 20, 8, 21]
    return images, boxes


# -- round trips ------------------------------------------------------------------------------------------------


def assert_same(read: bx.DetectionSet, images, boxes, classes):
    assert read.images.dtype == np.uint8 and read.images.shape == (*images.shape, 1)
    assert (read.images[..., 0] == images).all()
    assert read.boxes.dtype == np.float32 and read.boxes.shape == boxes.shape
    assert (read.boxes[..., 0] == boxes[..., 0]).all()
    assert np.allclose(read.boxes, boxes, atol=1e-4)
    assert read.classes == classes


def test_a_generated_set_round_trips_through_coco_json(tmp_path, scenes):
    images, boxes = scenes
    assert (boxes[..., 0] >= 0).sum() > 10 and ((boxes[..., 0] >= 0).sum(1) == 0).any()  # objects, and empty images
    read = read_coco(write_coco(tmp_path, images, boxes, CLASSES), max_objects=5)
    assert_same(read, images, boxes, CLASSES)
    assert read.files[0] == str(tmp_path / "pics/000.png")


def test_a_generated_set_round_trips_through_yolo_txt_with_and_without_empty_label_files(tmp_path, scenes):
    images, boxes = scenes
    assert_same(read_yolo(write_yolo(tmp_path / "a", images, boxes, CLASSES), max_objects=5), images, boxes, CLASSES)
    root = write_yolo(tmp_path / "b", images, boxes, CLASSES, skip_empty_labels=True)
    assert len(list((root / "labels").iterdir())) < len(images)  # YOLO's background images: no label file
    assert_same(read_yolo(root, max_objects=5), images, boxes, CLASSES)


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_non_square_images_keep_width_and_height_apart_and_resizing_scales_the_boxes(tmp_path, fmt):
    images, boxes = odd_sized()
    if fmt == "coco":
        path = write_coco(tmp_path, images, boxes, CLASSES)
        read, resized = read_coco(path, max_objects=3), read_coco(path, max_objects=3, image_size=(15, 80))
    else:
        write_yolo(tmp_path, images, boxes, CLASSES)
        read = read_yolo(tmp_path, max_objects=3)
        resized = read_yolo(tmp_path, max_objects=3, image_size=(15, 80))
    assert_same(read, images, boxes, CLASSES)
    assert resized.images.shape == (2, 15, 80, 1)
    scaled = boxes.copy()
    real = scaled[..., 0] >= 0
    scaled[..., 1:][real] *= [2, 0.5, 2, 0.5]
    assert np.allclose(resized.boxes, scaled, atol=1e-4)


def test_coco_skips_crowd_regions_and_reads_sizes_from_the_files_when_the_json_has_none(tmp_path, scenes):
    images, boxes = scenes
    path = write_coco(tmp_path, images, boxes, CLASSES)
    data = json.loads(path.read_text())
    for entry in data["images"]:
        del entry["width"], entry["height"]
    data["annotations"].append(
        {
            "id": 999,
            "image_id": 1000,
            "category_id": 3,
            "bbox": [0, 0, 96, 96],
            "iscrowd": 1,
            "segmentation": {"counts": [9216], "size": [96, 96]},
        }
    )
    path.write_text(json.dumps(data))
    assert_same(read_coco(path, max_objects=5), images, boxes, CLASSES)


def test_yolo_split_folders_and_class_names_from_data_yaml(tmp_path, scenes):
    images, boxes = scenes
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for split, n in (("train", 12), ("val", 2)):
        write_yolo(tmp_path / split, images[:n], boxes[:n], CLASSES)
        (tmp_path / split / "images").rename(tmp_path / "images" / split)
        (tmp_path / split / "labels").rename(tmp_path / "labels" / split)
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: '0'\n  1: '1'\n  2: '7'\n")
    assert_same(read_yolo(tmp_path, split="train", max_objects=5), images, boxes, CLASSES)
    (tmp_path / "data.yaml").write_text("names: [0, 1, 7]\n")  # YAML numbers, used as names
    assert_same(read_yolo(tmp_path, split="val", max_objects=5), images[:2], boxes[:2], CLASSES)


def test_edge_rounding_is_clipped_but_a_box_further_out_is_refused(tmp_path):
    images, boxes = odd_sized()
    path = write_coco(tmp_path, images, boxes, CLASSES)
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [-0.3, -0.2, 40.6, 30.4]  # within EDGE_TOLERANCE of the edges
    path.write_text(json.dumps(data))
    assert read_coco(path, max_objects=3).boxes[0, 0].tolist() == [2, 0, 0, 40, 30]
    data["annotations"][0]["bbox"] = [0, 0, 40.6, 30]
    path.write_text(json.dumps(data))
    with pytest.raises(
        EdgepipeError,
        match=r"annotation id 7 \(image 'pics/000.png'\): bbox .* reaches outside the "
        r"40x30 image",
    ):
        read_coco(path, max_objects=3)


# -- bad input, by hand ----------------------------------------------------------------------------------------


def one_line(e: EdgepipeError) -> str:
    text = str(e)
    assert "\n" not in text and "\r" not in text and len(text.splitlines()) == 1 and "; fix: " in text
    return text


@pytest.fixture
def coco(tmp_path):
    images, boxes = odd_sized()
    path = write_coco(tmp_path, images, boxes, CLASSES)
    return path, json.loads(path.read_text())


def set_ann(data, index, **values):
    data = copy.deepcopy(data)
    data["annotations"][index].update(values)
    return data


@pytest.mark.parametrize(
    "change, says",
    [
        (
            lambda d: set_ann(d, 1, bbox=[35, 3, 6, 26]),
            "annotation id 8 (image 'pics/000.png'): bbox [35, 3, 6, 26] reaches outside the 40x30 image",
        ),
        (
            lambda d: set_ann(d, 1, bbox=[5, 3, 0, 26]),
            "annotation id 8 (image 'pics/000.png'): bbox [5, 3, 0, 26] has zero",
        ),
        (
            lambda d: set_ann(d, 2, bbox=[5, 3, 4, -1]),
            "annotation id 9 (image 'pics/001.png'): bbox [5, 3, 4, -1] has zero or negative",
        ),
        (lambda d: set_ann(d, 1, bbox=[5, float("nan"), 4, 4]), "bbox [5, nan, 4, 4] holds NaN or infinity"),
        (lambda d: set_ann(d, 1, bbox=[5, 3, 4]), "bbox is [5, 3, 4]"),
        (lambda d: set_ann(d, 1, bbox="5 3 4 4"), "bbox is '5 3 4 4'"),
        (lambda d: set_ann(d, 1, bbox=[5, 3, 10**400, 4]), "holds NaN or infinity"),
        (
            lambda d: set_ann(d, 1, category_id=4),
            "annotation id 8 (image 'pics/000.png'): unknown category_id 4; fix: use "
            "one of the categories' ids: 3 (0), 7 (1), 11 (7)",
        ),
        (lambda d: set_ann(d, 1, image_id=5), "annotation id 8: image_id 5 is not the id of an entry in images"),
        (lambda d: set_ann(d, 1, iscrowd="no"), "iscrowd is 'no'"),
        (lambda d: {**d, "annotations": d["annotations"] + [3]}, "annotations[3] is 3, not an object"),
        (lambda d: {**d, "categories": d["categories"] + [{"id": 3, "name": "x"}]}, "category id 3 is listed twice"),
        (lambda d: {**d, "categories": []}, "no categories"),
        (
            lambda d: {**d, "images": d["images"] + [{"id": 1000, "file_name": "x.png"}]},
            "image id 1000 is listed twice",
        ),
        (lambda d: {**d, "images": d["images"] + [{"id": 5, "file_name": "gone.png"}]}, "gone.png: image not found"),
        (lambda d: {**d, "images": [{**d["images"][0], "width": 41}, d["images"][1]]}, "image is 40x30 but"),
        (lambda d: {**d, "images": [{**d["images"][0], "width": "40"}, d["images"][1]]}, "width is '40'"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "'annotations' is missing, not a list"),
        (lambda d: [d], "the JSON is [{"),
        (
            lambda d: {
                **d,
                "annotations": [{**a, "image_id": 1000} for a in d["annotations"]]
                + [{**d["annotations"][0], "id": 50}],
            },
            "image 'pics/000.png' (id 1000) has 4 objects, more than max_objects 3",
        ),
    ],
)
def test_each_bad_coco_input_is_one_error_naming_where(coco, change, says):
    path, data = coco
    path.write_text(json.dumps(change(data)))
    with pytest.raises(EdgepipeError) as e:
        read_coco(path, max_objects=3)
    assert says in one_line(e.value) and str(path) in str(e.value)


def test_malformed_json_names_its_line_and_column(coco):
    path, data = coco
    path.write_text(json.dumps(data, indent=1).replace('"bbox"', "bbox", 1))
    with pytest.raises(EdgepipeError, match=r"annotations.json:\d+:\d+: malformed JSON \(Expecting property name"):
        read_coco(path, max_objects=3)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(EdgepipeError, match="not UTF-8 text"):
        read_coco(path)
    path.write_text("[" * 100_000)
    with pytest.raises(EdgepipeError, match="unreadable JSON|malformed JSON"):
        read_coco(path)


@pytest.fixture
def yolo(tmp_path):
    images, boxes = odd_sized()
    return write_yolo(tmp_path, images, boxes, CLASSES)


@pytest.mark.parametrize(
    "line, says",
    [
        ("0 0.5 0.5 0.2", "'0 0.5 0.5 0.2' has 4 fields"),
        ("0 0.5 0.5 0.2 0.2 0.9", "has 6 fields"),
        ("3 0.5 0.5 0.2 0.2", "unknown class '3'; there are 3 classes"),
        ("-1 0.5 0.5 0.2 0.2", "class '-1' is not a class number"),
        ("1.0 0.5 0.5 0.2 0.2", "class '1.0' is not a class number"),
        ("1 0.5 nan 0.2 0.2", "'nan' is not a finite number"),
        ("1 0.5 0.5 inf 0.2", "'inf' is not a finite number"),
        ("1 0.5 0.5 1e999 0.2", "'1e999' is not a finite number"),
        ("1 0,5 0.5 0.2 0.2", "'0,5' is not a finite number"),
        ("1 0.5 0.5 0 0.2", "has zero or negative width or height"),
        ("1 0.5 0.5 0.2 -0.2", "has zero or negative width or height"),
        ("1 0.95 0.5 0.2 0.2", "reaches outside the 40x30 image (x 34..42, y 12..18)"),
        ("1 0.5 1.5 0.2 0.2", "reaches outside the 40x30 image"),
        ("1" + "0" * 5000 + " 0.5 0.5 0.2 0.2", "unknown class"),
    ],
)
def test_each_bad_yolo_line_is_one_error_naming_file_and_line(yolo, line, says):
    label = yolo / "labels" / "001.txt"
    label.write_text("1 0.5 0.5 0.2 0.2\n\n" + line + "\n")
    with pytest.raises(EdgepipeError) as e:
        read_yolo(yolo, max_objects=3)
    text = one_line(e.value)
    assert f"{label}:3: " in text and says in text


def test_yolo_lines_end_as_ultralytics_reads_them(yolo):
    label = yolo / "labels" / "001.txt"
    label.write_bytes(b"1 0.5 0.5 0.2 0.2\r2 0.5 0.5 0.5 0.5\r\n\r0 0.5 0.5 0.1 0.1\n")  # old Mac, Windows, Unix
    assert (read_yolo(yolo, max_objects=3).boxes[1, :, 0] == [1, 2, 0]).all()
    label.write_bytes(b"1 0.5 0.5 0.2 0.2\r1 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n")
    with pytest.raises(EdgepipeError, match="001.txt:3: '1 0.5 0.5 0.2' has 4 fields"):
        read_yolo(yolo, max_objects=3)


def test_yolo_folder_problems_are_named(yolo):
    (yolo / "labels" / "001.txt").write_text("1 0.5 0.5 0.2 0.2\n" * 4)
    with pytest.raises(EdgepipeError, match="001.txt: 4 objects, more than max_objects 3"):
        read_yolo(yolo, max_objects=3)
    (yolo / "labels" / "001.txt").write_text("")
    (yolo / "labels" / "002.txt").write_text("")
    with pytest.raises(EdgepipeError, match=r"002.txt: a label file without an image \(looked for .*002.\*\)"):
        read_yolo(yolo, max_objects=3)
    (yolo / "labels" / "002.txt").unlink()
    (yolo / "labels" / "001.txt").write_bytes(b"1 0.5 \xff 0.2 0.2\n")
    with pytest.raises(EdgepipeError, match="001.txt: not UTF-8 text"):
        read_yolo(yolo, max_objects=3)
    (yolo / "labels" / "001.txt").write_text("")
    save_png(yolo / "images" / "001.jpg", np.zeros((30, 40), np.uint8))
    with pytest.raises(EdgepipeError, match="share the label file"):
        read_yolo(yolo, max_objects=3)
    (yolo / "images" / "001.jpg").unlink()
    (yolo / "classes.txt").write_text("a\n\nb\n")
    with pytest.raises(EdgepipeError, match=r"classes.txt:2: empty line: class 1 has no name"):
        read_yolo(yolo, max_objects=3)
    (yolo / "classes.txt").unlink()
    with pytest.raises(EdgepipeError, match="no class names .looked for classes.txt, obj.names"):
        read_yolo(yolo, max_objects=3)
    (yolo / "data.yaml").write_text("names: [a, b\n")
    with pytest.raises(EdgepipeError, match=r"data.yaml:\d+: malformed YAML"):
        read_yolo(yolo, max_objects=3)
    assert read_yolo(yolo, max_objects=3, classes=["a", "b", "c"]).classes == ["a", "b", "c"]
    (yolo / "images" / "000.png").write_bytes(b"not a png")
    with pytest.raises(EdgepipeError, match="000.png: corrupt or unreadable image"):
        read_yolo(yolo, max_objects=3, classes=["a", "b", "c"])
    with pytest.raises(EdgepipeError, match="no folder"):
        read_yolo(yolo / "nowhere")


def test_images_of_different_sizes_need_image_size(yolo):
    save_png(yolo / "images" / "002.png", np.zeros((31, 40), np.uint8))
    with pytest.raises(EdgepipeError, match=r"002.png: image is 40x31, .*000.png is 40x30; fix: give image_size"):
        read_yolo(yolo, max_objects=3)
    assert read_yolo(yolo, max_objects=3, image_size=(30, 40)).images.shape == (3, 30, 40, 1)


@pytest.mark.parametrize("option", [{"max_objects": -1}, {"image_size": (0, 4)}, {"channels": 2}, {"classes": "ab"}])
def test_bad_options_are_refused(yolo, option):
    with pytest.raises(EdgepipeError):
        read_yolo(yolo, **option)


# -- bad input, generated ----------------------------------------------------------------------------------------

WIDTH, HEIGHT = 40, 30
NO_LINE_BREAK = st.characters(blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # str.splitlines


@pytest.fixture(scope="module")
def yolo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    save_png(root / "images" / "a.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("x\ny\nz\n")
    return root


@st.composite
def good_lines(draw):
    x0 = draw(st.floats(0, WIDTH - 1))
    y0 = draw(st.floats(0, HEIGHT - 1))
    x1 = draw(st.floats(x0 + 0.5, WIDTH))
    y1 = draw(st.floats(y0 + 0.5, HEIGHT))
    cls = draw(st.integers(0, 2))
    return f"{cls} {(x0 + x1) / 2 / WIDTH} {(y0 + y1) / 2 / HEIGHT} {(x1 - x0) / WIDTH} {(y1 - y0) / HEIGHT}"


NOT_NUMBERS = st.one_of(
    st.sampled_from(
        ["nan", "NaN", "inf", "-inf", "1e999", "0x10", "1,5", "1_0", "½", "١", "e3", ".", "--1", "1e", "None", "0.5.5"]
    ),
    st.text(NO_LINE_BREAK, min_size=1, max_size=6)
    .filter(lambda t: len(t.split()) == 1 and not yolo_txt._NUMBER.fullmatch(t.strip()))
    .map(str.strip),
)


@st.composite
def bad_lines(draw):
    """A line that is wrong in one of the ways YOLO files go wrong."""
    fields = draw(good_lines()).split()
    kind = draw(st.sampled_from(["count", "token", "class", "outside", "size", "garbage"]))
    if kind == "count":
        n = draw(st.sampled_from([1, 2, 3, 4, 6, 7, 9]))
        fields = (fields * 2)[:n]
    elif kind == "token":
        fields[draw(st.integers(0, 4))] = draw(NOT_NUMBERS)
    elif kind == "class":
        fields[0] = draw(st.one_of(st.integers(3, 10**30).map(str), st.sampled_from(["-1", "1.0", "+1", "x", "1e0"])))
    elif kind == "outside":
        axis = draw(st.integers(0, 1))
        extent = WIDTH if axis == 0 else HEIGHT
        size = draw(st.floats(0.5, extent))
        beyond = draw(st.floats(bx.EDGE_TOLERANCE + 0.01, 100))
        low = draw(st.booleans())
        centre = (-beyond + size / 2) if low else (extent + beyond - size / 2)
        fields[1 + axis], fields[3 + axis] = str(centre / extent), str(size / extent)
    elif kind == "size":
        fields[draw(st.integers(3, 4))] = draw(st.sampled_from(["0", "-0.1", "0.0", "-1e-9", "-3"]))
    else:
        return draw(st.text(NO_LINE_BREAK, max_size=30).filter(lambda t: len(t.split()) not in (0, 5)))
    sep = draw(st.sampled_from([" ", "  ", "\t", " \t "]))
    return sep.join(fields)


@PROPERTY
@given(
    before=st.lists(st.one_of(good_lines(), st.sampled_from(["", "  ", "\t"])), max_size=2),
    bad=bad_lines(),
    after=st.lists(st.text(NO_LINE_BREAK, max_size=20), max_size=3),
    end=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_a_bad_yolo_line_is_always_one_error_at_its_line(yolo_root, before, bad, after, end):
    label = yolo_root / "labels" / "a.txt"
    lines = [*before, bad, *after]
    label.write_bytes(end.join(lines).encode())
    with pytest.raises(EdgepipeError) as e:
        read_yolo(yolo_root, max_objects=4)
    assert f"{label}:{len(before) + 1}: " in one_line(e.value)


@PROPERTY
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_yolo_label_file_reads_or_is_one_error(yolo_root, content):
    (yolo_root / "labels" / "a.txt").write_bytes(content)
    try:
        read = read_yolo(yolo_root, max_objects=4)
    except EdgepipeError as e:
        one_line(e)
    else:
        real = read.boxes[0][read.boxes[0, :, 0] >= 0]
        assert ((real[:, 3] > real[:, 1]) & (real[:, 4] > real[:, 2])).all()
        assert (real[:, 1:] >= 0).all() and (real[:, [1, 3]] <= WIDTH).all() and (real[:, [2, 4]] <= HEIGHT).all()


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    save_png(root / "a.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    save_png(root / "b.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    return root


BASE = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": WIDTH, "height": HEIGHT},
        {"id": 2, "file_name": "b.png", "width": WIDTH, "height": HEIGHT},
    ],
    "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 12]},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [20, 5, 15, 20]},
        {"id": 12, "image_id": 2, "category_id": 2, "bbox": [0, 0, 40, 30]},
    ],
}
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8,
)


@st.composite
def bad_coco(draw):
    """(the JSON text, what the error must name): a COCO file broken in one of the ways they break."""
    data = copy.deepcopy(BASE)
    index = draw(st.integers(0, 2))
    ann = data["annotations"][index]
    name = f"annotation id {ann['id']}"
    kind = draw(
        st.sampled_from(
            [
                "outside",
                "size",
                "bbox",
                "category",
                "image",
                "not_object",
                "section",
                "duplicate",
                "file",
                "crowded",
                "cut",
                "bytes",
            ]
        )
    )
    if kind == "outside":
        x, y, w, h = ann["bbox"]
        beyond = draw(st.floats(bx.EDGE_TOLERANCE + 0.01, 1000))
        ann["bbox"] = draw(
            st.sampled_from(
                [[-beyond, y, w, h], [x, -beyond, w, h], [x, y, WIDTH - x + beyond, h], [x, y, w, HEIGHT - y + beyond]]
            )
        )
    elif kind == "size":
        ann["bbox"][draw(st.integers(2, 3))] = draw(st.one_of(st.just(0), st.floats(-1e9, 0)))
    elif kind == "bbox":
        ann["bbox"] = draw(
            st.one_of(
                st.lists(st.floats(0, 5), max_size=6).filter(lambda b: len(b) != 4),
                st.tuples(
                    st.floats(0, 5), st.floats(0, 5), st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(1, 5)
                ).map(list),
                JSON.filter(lambda v: not isinstance(v, list)),
            )
        )
    elif kind == "category":
        ann["category_id"] = draw(
            st.one_of(
                st.integers().filter(lambda i: i not in (1, 2)),
                st.none(),
                st.floats(),
                st.text(max_size=3),
                st.lists(st.integers(1, 2), max_size=2),
            )
        )
    elif kind == "image":
        ann["image_id"] = draw(
            st.one_of(st.integers().filter(lambda i: i not in (1, 2)), st.none(), st.text(max_size=3))
        )
        name = f"annotation id {ann['id']}: image_id"
    elif kind == "not_object":
        data["annotations"][index] = draw(JSON.filter(lambda v: not isinstance(v, dict)))
        name = f"annotations[{index}]"
    elif kind == "section":
        key = draw(st.sampled_from(["images", "annotations", "categories"]))
        value = draw(JSON.filter(lambda v: not isinstance(v, list)))
        data[key] = value
        name = repr(key)
    elif kind == "duplicate":
        key = draw(st.sampled_from(["images", "categories"]))
        data[key].append({**data[key][0], "name": "other", "file_name": "b.png"})
        name = "listed twice"
    elif kind == "file":
        data["images"][draw(st.integers(0, 1))]["file_name"] = draw(
            st.sampled_from(["missing.png", "sub/a.png", "A.PNG", "a.png.png"])
        )
        name = "image not found"
    elif kind == "crowded":
        data["annotations"] += [{**ann, "id": 100 + i} for i in range(4)]
        name = "more than max_objects 4"
    text = json.dumps(data, allow_nan=True)
    if kind == "cut":
        return text[: draw(st.integers(0, len(text) - 1))].encode(), "JSON"
    if kind == "bytes":
        return draw(st.binary(max_size=64)), "annotations.json"
    return text.encode(), name


@PROPERTY
@given(case=bad_coco())
def test_a_broken_coco_file_is_always_one_error_naming_where(coco_root, case):
    content, name = case
    path = coco_root / "annotations.json"
    path.write_bytes(content)
    with pytest.raises(EdgepipeError) as e:
        read_coco(path, max_objects=4)
    text = one_line(e.value)
    assert name in text and ("annotations.json" in text or "image not found" in text)


def paths(value, at=()):
    """Every place in a JSON tree, as a path of keys and indices."""
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, (*at, i))


PLACES = list(paths(BASE))[1:]


@PROPERTY
@given(place=st.sampled_from(PLACES), value=JSON)
def test_any_value_anywhere_in_a_coco_file_reads_or_is_one_error(coco_root, place, value):
    data = copy.deepcopy(BASE)
    node = data
    for key in place[:-1]:
        node = node[key]
    node[place[-1]] = value
    path = coco_root / "annotations.json"
    path.write_text(json.dumps(data, allow_nan=True))
    try:
        read = read_coco(path, max_objects=4)
    except EdgepipeError as e:
        one_line(e)
    else:
        real = read.boxes[read.boxes[..., 0] >= 0]
        assert len(real) <= 3 and ((real[:, 3] > real[:, 1]) & (real[:, 4] > real[:, 2])).all()
