"""Bad input as a property of the whole tool: generated recipes, command lines and datasets, run through the
real loader and command, must each end in success or exactly one `edgepipe: error: ...; fix: ...` line
(exit 1 or 2), with no traceback, no internal error, nothing half-written and nothing written outside the
run's folders (`runs/<recipe>/`, `models/<recipe>/`).

The fast profile runs a few dozen examples per property (`make test`); `--runslow` / EDGEPIPE_SLOW=1 runs
the `slow` profile, ten times as many. A failing example hypothesis finds is kept as a regular test in
tests/test_bad_inputs.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgepipe.core.params import describe, to_dict
from edgepipe.stages.registry import kinds
from edgepipe.testing import check_clean_outcome, files_under, run_cli, write_idx, write_idx_dataset

KINDS = kinds()
SLOW = os.environ.get("EDGEPIPE_SLOW") == "1"
settings.register_profile(
    "fast",
    max_examples=25,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "slow", max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
PROFILE = settings.get_profile("slow" if SLOW else "fast")

# -- the pieces recipes are made of -------------------------------------------------------------------------

GOOD_NAMES = st.sampled_from(["data", "model", "tflite", "bench", "report", "teacher", "b2"])
BAD_NAMES = st.one_of(
    st.sampled_from(["../up", "/etc", "a/b", "..", ".", "~", "", "Data", "naïve", "名前", "x" * 120, "a b"]),
    st.text(max_size=6),
    st.integers(-3, 3),
    st.none(),
)
NAMES = st.one_of(GOOD_NAMES, GOOD_NAMES, GOOD_NAMES, BAD_NAMES)  # mostly valid, so that later checks are reached
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "",
            "1e-3",
            "auto",
            "../../x",
            "/etc/passwd",
            "none",
            "cosine",
            "int8",
            "${seed}",
            "${nope}",
            "keras:mnist",
            "npz:nowhere.npz",
            "idx:/nonexistent",
            "tiny_conv",
            "json:loads",
            "x:y:z",
        ]
    ),
    st.text(max_size=10),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
PATTERNS = st.one_of(
    st.sampled_from(
        [
            "*.json",
            "../escape.txt",
            "/etc/passwd",
            "",
            "cortex-m4/*",
            "**/*",
            "..",
            "a/../../b",
            "~/x",
            "C:\\x",
            "dataset.npz",
            "samples.png",
        ]
    ),
    st.integers(),
)


def default_of(kind: str, name: str):
    """A field's default, as a recipe would spell it (a valid value); 1 for a name the kind does not have."""
    for f in dataclasses.fields(KINDS[kind].params):
        if f.name == name:
            return to_dict(f.default if f.default is not dataclasses.MISSING else f.default_factory())
    return 1


def field_names(kind: str) -> list[str]:
    return sorted({name.split(".")[0] for name, _, _ in describe(KINDS[kind].params)})


@st.composite
def stage_specs(draw, names: list):
    kind = draw(
        st.one_of(
            st.sampled_from(sorted(KINDS)),
            st.sampled_from(sorted(KINDS)),
            st.sampled_from(["dat", "", "train2"]),
            st.integers(),
            st.none(),
        )
    )
    spec: dict = {}
    if draw(st.integers(0, 9)) or kind is None:
        spec["kind"] = kind
    if isinstance(kind, str) and kind in KINDS:
        keys = draw(st.lists(st.one_of(st.sampled_from(field_names(kind)), st.text(max_size=5)), max_size=4))
        spec["params"] = {k: draw(st.one_of(st.just(default_of(kind, k)), VALUES)) for k in keys}
        roles = list(KINDS[kind].inputs) + draw(st.lists(st.sampled_from(["junk", "data", "models"]), max_size=1))
        inputs = {}
        for role in roles:
            if draw(st.integers(0, 3)):
                inputs[role] = draw(
                    st.one_of(st.sampled_from(names), st.lists(st.sampled_from(names), max_size=3), VALUES)
                )
        spec["inputs"] = inputs
    else:
        spec["params"] = draw(VALUES)
    if draw(st.booleans()):
        spec["publish"] = draw(st.one_of(st.lists(PATTERNS, max_size=3), VALUES))
    if draw(st.integers(0, 9)) == 0:
        spec[draw(st.text(max_size=5))] = draw(VALUES)
    return spec


@st.composite
def recipes(draw):
    names = draw(st.lists(GOOD_NAMES, min_size=1, max_size=5, unique=True))
    if draw(st.integers(0, 3)) == 0:  # now and then one name that must be refused
        names.append(draw(BAD_NAMES))
    stages = {name: draw(stage_specs([n for n in names if isinstance(n, str)] or ["data"])) for name in names}
    raw: dict = {"stages": stages}
    for key, strategy in (
        ("name", NAMES),
        ("description", VALUES),
        ("vars", VALUES),
        ("target", st.one_of(st.sampled_from(["host", "cortex-m4", "rpi4", "../x.yaml", "/etc/hosts"]), VALUES)),
        ("profiles", st.dictionaries(st.text(max_size=5), VALUES, max_size=2)),
    ):
        if draw(st.integers(0, 3)) == 0:
            raw[key] = draw(strategy)
    return raw


def dump(raw) -> str:
    try:
        return yaml.safe_dump(raw, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return "stages: {data: {kind: data}}\n"


def written_outside(before: dict, after: dict, root: Path) -> list[str]:
    """Files created or changed that are not inside root/runs/<one name>/ or root/models/<one name>/."""
    allowed = [Path(root) / "runs", Path(root) / "models"]
    bad = []
    for path, stamp in after.items():
        if before.get(path) == stamp:
            continue
        p = Path(path)
        if not any(base in p.parents and len(p.relative_to(base).parts) >= 2 for base in allowed):
            bad.append(path)
    return bad


class Sandbox:
    """A fresh folder per example: the recipe and data beside it, the run root inside it."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="edgepipe-prop-"))
        self.root = self.dir / "work"
        self.root.mkdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)

    def cli(self, *args) -> tuple[int, str, str]:
        before = files_under(self.dir)
        code, out, err = run_cli(list(args), self.root)
        outside = written_outside(before, files_under(self.dir), self.root)
        assert not outside, f"written outside the run's folders: {outside}"
        check_clean_outcome(code, err, self.root)
        return code, out, err


# -- properties ------------------------------------------------------------------------------------------------


def valid_recipe(data_dir: str) -> dict:
    """A recipe that loads: every stage kind, wired as the shipped recipes wire them."""
    fast = {"epochs": 1, "batch_size": 16, "tensorboard": False}
    return {
        "name": "prop",
        "target": "host",
        "vars": {"seed": 0},
        "profiles": {"smoke": {"model.epochs": 1}},
        "stages": {
            "data": {"kind": "data", "params": {"source": f"idx:{data_dir}", "val_fraction": 0.2, "seed": "${seed}"}},
            "model": {"kind": "train", "inputs": {"data": "data"}, "params": {"arch": "tiny_conv", **fast}},
            "student": {
                "kind": "distill",
                "inputs": {"data": "data", "teacher": "model"},
                "params": {"arch": "tiny_conv", **fast},
            },
            "qat": {"kind": "qat", "inputs": {"data": "data", "model": "student"}, "params": fast},
            "tflite": {
                "kind": "convert",
                "inputs": {"data": "data", "model": "qat"},
                "params": {"variants": ["int8"]},
                "publish": ["*.tflite"],
            },
            "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["tflite"]}, "params": {"runs": 5}},
            "firmware": {
                "kind": "bundle",
                "inputs": {"data": "data", "model": "tflite", "benches": ["bench"]},
                "params": {"target": "cortex-m4"},
                "publish": ["cortex-m4/*"],
            },
            "report": {"kind": "report", "inputs": {"benches": ["bench"]}, "publish": ["report.md"]},
        },
    }


def paths_of(node, prefix=()):
    """Every (path to a value) in a nested recipe, for mutations to pick from."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths_of(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths_of(v, (*prefix, i))


@st.composite
def mutated_recipes(draw):
    """The valid recipe with one to three drawn mutations: a value replaced, a key removed or added."""
    raw = valid_recipe("IDX")
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in paths_of(raw) if p]))
        parent = raw
        for part in path[:-1]:
            parent = parent[part]
        how = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if how == "set":
            parent[path[-1]] = draw(st.one_of(VALUES, NAMES, PATTERNS))
        elif how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.one_of(st.text(max_size=5), NAMES))] = draw(VALUES)
    return raw


def with_data(raw, data_dir: Path):
    text = dump(raw)
    return text.replace("idx:IDX", f"idx:{data_dir}")


@PROFILE
@given(
    raw=st.one_of(recipes(), mutated_recipes(), mutated_recipes()),
    extra=st.lists(
        st.sampled_from(
            [
                ["--profile", "smoke"],
                ["--profile", "a", "--profile", "b"],
                ["--set", "data.seed=1"],
                ["--set", "x"],
                ["--set", "data.params=[1"],
                ["--set", "vars.seed=3"],
                ["--target", "cortex-m4"],
                ["--target", "../t.yaml"],
                ["--host", "pi@10.0.0.2"],
                ["--host", "bad host"],
            ]
        ),
        max_size=2,
    ),
)
def test_any_recipe_loads_or_is_refused_in_one_line(raw, extra):
    with Sandbox() as box:
        path = box.dir / "r.yaml"
        path.write_text(with_data(raw, write_idx_dataset(box.dir / "idx", n_train=40, n_test=12)))
        args = [a for group in extra for a in group]
        box.cli("status", str(path), "--root", str(box.root), *args)
        box.cli("graph", str(path), *[a for a in args if a not in ("--root",)])


@PROFILE
@given(
    text=st.one_of(st.text(max_size=80), st.binary(max_size=80).map(lambda b: b.decode("latin-1"))),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
def test_any_recipe_text_is_read_or_refused_in_one_line(text, encoding):
    with Sandbox() as box:
        path = box.dir / "r.yaml"
        try:
            path.write_bytes(text.encode(encoding))
        except UnicodeEncodeError:
            assume(False)
        box.cli("status", str(path), "--root", str(box.root))


NPZ_DEFECTS = [
    "none",
    "float01",
    "float255",
    "uint16",
    "int_negative",
    "bool",
    "str",
    "object",
    "nan",
    "inf",
    "empty",
    "ndim2",
    "channels2",
    "zero_height",
    "y_float",
    "y_half",
    "y_str",
    "y_negative",
    "y_onehot",
    "y_short",
    "y_nan",
    "one_class",
    "test_size",
    "np.save",
    "bytes",
    "junk_names",
    "class_names_ints",
    "class_names_short",
]
# every defect is tried in every run; hypothesis draws the rest (sizes, values, params) a few times each
PER_CASE = settings(PROFILE, max_examples=30 if SLOW else 2)


@st.composite
def npz_datasets(draw, defect: str):
    """A valid dataset of arrays, then the named defect: a dtype, a shape, a value, a name."""
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    n, h, w = draw(st.integers(8, 20)), draw(st.integers(3, 6)), draw(st.integers(3, 6))
    x = rng.integers(0, 256, (n, h, w, draw(st.sampled_from([1, 3])))).astype(np.uint8)
    y = np.arange(n) % draw(st.integers(2, 4))
    if defect == "float01":
        x = x.astype(np.float32) / 255
    elif defect == "float255":
        x = x.astype(np.float64)
    elif defect == "uint16":
        x = x.astype(np.uint16) * 200
        x.flat[0] = 300  # at least one value no 8-bit image holds
    elif defect == "int_negative":
        x = x.astype(np.int16) - 10
        x.flat[0] = -1
    elif defect == "bool":
        x = x > 128
    elif defect == "str":
        x = np.full(x.shape, "a")
    elif defect == "object":
        x = np.empty(x.shape, dtype=object)
    elif defect in ("nan", "inf"):
        x = x.astype(np.float32)
        x.flat[int(rng.integers(x.size))] = np.nan if defect == "nan" else -np.inf
    elif defect == "empty":
        x, y = x[:0], y[:0]
    elif defect == "ndim2":
        x = x.reshape(n, -1)
    elif defect == "channels2":
        x = np.concatenate([x[..., :1], x[..., :1]], -1)
    elif defect == "zero_height":
        x = x[:, :0]
    elif defect == "y_float":
        y = y.astype(np.float32)
    elif defect == "y_half":
        y = y + 0.5
    elif defect == "y_str":
        y = np.array([f"c{v}" for v in y])
    elif defect == "y_negative":
        y = y - 1
    elif defect == "y_onehot":
        y = np.eye(y.max() + 1)[y]
    elif defect == "y_short":
        y = y[:-1]
    elif defect == "y_nan":
        y = y.astype(np.float32)
        y[0] = np.nan
    elif defect == "one_class":
        y = np.zeros_like(y)
    layout = draw(st.sampled_from(["train_test", "train", "xy"]))
    if defect in ("np.save", "bytes", "junk_names"):
        layout = defect
    elif defect == "test_size":
        layout = "train_test"
    xt, yt = x[: n // 2], y[: n // 2]
    if defect == "test_size":
        xt = np.zeros((len(yt), h + 1, w, x.shape[-1]), np.uint8)
    arrays = {
        "train_test": {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt},
        "train": {"x_train": x, "y_train": y},
        "xy": {"x": x, "y": y},
        "junk_names": {"a": x},
    }.get(layout, {})
    if defect == "class_names_ints":
        arrays["class_names"] = np.arange(4)
    elif defect == "class_names_short":
        arrays["class_names"] = np.array(["only"])
    elif arrays and draw(st.booleans()):
        arrays["class_names"] = np.array(["a", "b", "c", "d"])
    return layout, arrays, x, defect


DATA_CHOICES = {  # the first values are valid, the last ones sometimes not
    "val_fraction": [0.1, 0.5, 0.01, "0.2", 0.6, 0],
    "test_fraction": [0.2, 0.05, 0.5],
    "limit_train": [None, 100, 3, 2, 1],
    "limit_test": [None, 5, 2],
    "image_size": [None, [4, 4], [1, 1], [0, 3], [3]],
    "channels": [None, 1, 3, 2],
    "normalize": ["scale", "standardize", "none"],
    "balance": ["none", "oversample", "undersample"],
    "class_names": [None, ["a", "b", "c", "d", "e"], ["a"]],
}
DATA_PARAMS = st.lists(st.sampled_from(sorted(DATA_CHOICES)), max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.sampled_from(DATA_CHOICES[k]) for k in keys})
)


@pytest.mark.parametrize("defect", NPZ_DEFECTS)
@PER_CASE
@given(
    data=st.data(),
    params=DATA_PARAMS,
    publish=st.lists(PATTERNS, max_size=2),
    name=st.sampled_from([None, "ok", "../out", "a/b"]),
)
def test_any_npz_dataset_is_read_or_refused_in_one_line(defect, data, params, publish, name):
    """Refused in one line, or stored exactly: the images and labels of dataset.npz are the file's own,
    converted by the documented rule, and a defect that must be refused never comes out as a success."""
    layout, arrays, x, defect = data.draw(npz_datasets(defect))
    with Sandbox() as box:
        path = box.dir / "d.npz"
        if layout == "np.save":
            np.save(box.dir / "d.npy", x, allow_pickle=True)
            (box.dir / "d.npy").rename(path)
        elif layout == "bytes":
            path.write_bytes(b"PK\x03\x04 not really a zip")
        else:
            np.savez(path, **arrays)
        recipe = {
            "stages": {"data": {"kind": "data", "params": {"source": f"npz:{path}", **params}, "publish": publish}}
        }
        if name is not None:
            recipe["name"] = name
        (box.dir / "r.yaml").write_text(dump(recipe))
        code, _, _ = box.cli("run", str(box.dir / "r.yaml"), "--root", str(box.root))
        if code != 0:
            return
        assert defect in ACCEPTABLE_NPZ, f"a dataset with defect {defect!r} was accepted"
        if not set(params) & {"image_size", "channels"}:
            stored = stored_pairs(next((box.root / "runs").glob("*/data/dataset.npz")))
            given = {
                (img.tobytes(), int(label))
                for k in ("x_train", "x_test", "x")
                if k in arrays
                for img, label in zip(as_uint8(arrays[k]), arrays["y" + k[1:]])
            }
            assert stored <= given, "dataset.npz holds images or labels the source does not"


ACCEPTABLE_NPZ = {"none", "float01", "float255", "bool", "y_float"}  # the rest must be refused


def as_uint8(x: np.ndarray) -> np.ndarray:
    """The documented pixel rule for a file's images: uint8 kept; if every value is in [0, 1], times 255;
    other numbers 0..255 as they are (truncated)."""
    x = x if x.ndim == 4 else x[..., None]
    if x.dtype == np.uint8:
        return x
    return np.clip(x * 255.0 if x.max() <= 1.0 else x, 0, 255).astype(np.uint8)


def stored_pairs(npz: Path) -> set:
    with np.load(npz) as z:
        return {
            (img.tobytes(), int(label))
            for split in ("train", "val", "test")
            for img, label in zip(z[f"x_{split}"], z[f"y_{split}"])
        }


IDX_DEFECTS = [
    "none",
    "swap_labels",
    "magic",
    "ndim_255",
    "truncated",
    "empty",
    "garbage_gz",
    "dims_zero",
    "smaller_images",
]


@pytest.mark.parametrize("how", IDX_DEFECTS)
@PER_CASE
@given(
    broken=st.sampled_from(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    ),
    params=DATA_PARAMS,
)
def test_any_idx_folder_is_read_or_refused_in_one_line(how, broken, params):
    """One of the four MNIST-format files broken in the named way: refused in one line, or read."""
    with Sandbox() as box:
        d = write_idx_dataset(box.dir / "idx", n_train=40, n_test=12)
        target = d / f"{broken}.gz"
        import gzip

        if how == "swap_labels":
            other = (
                broken.replace("images-idx3", "labels-idx1")
                if "images" in broken
                else broken.replace("labels-idx1", "images-idx3")
            )
            shutil.copy(d / f"{other}.gz", target)
        elif how == "magic":
            target.write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\0" * 12))
        elif how == "ndim_255":
            target.write_bytes(gzip.compress(b"\x00\x00\x08\xff" + b"\0" * 8))
        elif how == "truncated":
            target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes())[:-5]))
        elif how == "empty":
            target.write_bytes(b"")
        elif how == "garbage_gz":
            target.write_bytes(b"\x1f\x8b\x08 not gzip")
        elif how == "dims_zero":
            write_idx(d / broken, np.zeros((0, 12, 12) if "images" in broken else (0,), np.uint8))
        elif how == "smaller_images" and "images" in broken:
            write_idx(d / broken, np.zeros((40 if "train" in broken else 12, 8, 8), np.uint8))
        (box.dir / "r.yaml").write_text(
            dump({"stages": {"data": {"kind": "data", "params": {"source": f"idx:{d}", **params}}}})
        )
        code, _, _ = box.cli("run", str(box.dir / "r.yaml"), "--root", str(box.root))
        harmless = how == "none" or (how == "smaller_images" and ("labels" in broken or params.get("image_size")))
        assert code != 0 or harmless, f"{broken} broken by {how!r} was accepted"


FOLDER_DEFECTS = [
    "none",
    "hidden_folder",
    "empty_class",
    "other_size",
    "broken_file",
    "text_file",
    "one_class",
    "split_mismatch",
    "empty_file",
    "jpeg_named_png",
]


@pytest.mark.parametrize("defect", FOLDER_DEFECTS)
@PER_CASE
@given(
    classes=st.integers(2, 3),
    per_class=st.integers(2, 4),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "I;16"]),
    size=st.sampled_from([(6, 6), (5, 7)]),
    split=st.booleans(),
    params=DATA_PARAMS,
)
def test_any_image_folder_is_read_or_refused_in_one_line(defect, classes, per_class, mode, size, split, params):
    from PIL import Image

    with Sandbox() as box:
        root = box.dir / "imgs"
        names = ["bird", "cat", "dog"][: 1 if defect == "one_class" else classes]
        for part in ["train", "test"] if split else [""]:
            for c, cls in enumerate(names):
                d = root / part / cls
                d.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    im = Image.new("RGB", (size[1], size[0]), (c * 90, i * 40 % 255, 200)).convert(mode)
                    im.save(d / f"{i}.png")
        first = root / ("train" if split else "") / names[0]
        if defect == "hidden_folder":
            (first.parent / ".cache").mkdir()
        elif defect == "empty_class":
            (first.parent / "zebra").mkdir()
        elif defect == "other_size":
            Image.new("L", (size[1] + 3, size[0])).save(first / "odd.png")
        elif defect == "broken_file":
            (first / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        elif defect == "text_file":
            (first / "notes.txt").write_text("not an image")
        elif defect == "empty_file":
            (first / "empty.png").write_bytes(b"")
        elif defect == "jpeg_named_png":
            Image.new("RGB", (size[1], size[0])).save(first / "photo.png", format="JPEG")
        elif defect == "split_mismatch" and split:
            (root / "test" / "zebra").mkdir()
            Image.new("L", (size[1], size[0])).save(root / "test" / "zebra" / "z.png")
        (box.dir / "r.yaml").write_text(
            dump({"stages": {"data": {"kind": "data", "params": {"source": f"folder:{root}", **params}}}})
        )
        code, _, _ = box.cli("run", str(box.dir / "r.yaml"), "--root", str(box.root))
        harmless = (
            defect in ("none", "hidden_folder", "text_file", "jpeg_named_png")
            or (defect == "other_size" and params.get("image_size"))
            or (defect == "split_mismatch" and not split)
        )
        assert code != 0 or harmless, f"an image folder with defect {defect!r} was accepted"


COMMANDS = st.sampled_from(
    ["run", "status", "graph", "kinds", "targets", "lint", "bench", "report", "worker", "nosuch"]
)
TOKENS = st.sampled_from(
    [
        "RECIPE",
        "MISSING.yaml",
        "--jobs",
        "two",
        "0",
        "-1",
        "2",
        "--profile",
        "smoke",
        "--root",
        "ROOTFILE",
        "--root",
        "ROOT",
        "--set",
        "data.seed=2",
        "data.seed=[",
        "--until",
        "data",
        "--only",
        "nope",
        "--target",
        "rpi4",
        "--target",
        "cortex-m4",
        "--host",
        "pi@127.0.0.1:1",
        "--force",
        "--dry-run",
        "--int8",
        "MODEL",
        "train",
        "data",
        "cortex-m4",
        "-p",
        "",
        "ünï",
        "--bogus",
    ]
)


@PROFILE
@given(command=COMMANDS, tokens=st.lists(TOKENS, max_size=6))
def test_any_command_line_runs_or_is_refused_in_one_line(command, tokens, tiny_int8_model):
    with Sandbox() as box:
        data = write_idx_dataset(box.dir / "idx", n_train=40, n_test=12)
        (box.dir / "r.yaml").write_text(
            dump(
                {
                    "stages": {
                        "data": {
                            "kind": "data",
                            "params": {"source": f"idx:{data}", "val_fraction": 0.2},
                            "publish": ["dataset.json"],
                        }
                    }
                }
            )
        )
        (box.dir / "rootfile").write_text("a file, not a folder")
        shutil.copy(tiny_int8_model, box.dir / "m.tflite")
        swap = {
            "RECIPE": str(box.dir / "r.yaml"),
            "MISSING.yaml": str(box.dir / "missing.yaml"),
            "ROOTFILE": str(box.dir / "rootfile"),
            "ROOT": str(box.root),
            "MODEL": str(box.dir / "m.tflite"),
        }
        box.cli(command, *[swap.get(t, t) for t in tokens])


@pytest.fixture(scope="module")
def tiny_int8_model(tmp_path_factory) -> Path:
    """A one-layer int8 .tflite, for the lint command."""
    from edgepipe.core._tf import keras, tf

    i = keras.Input((4, 4, 1))
    model = keras.Model(i, keras.layers.Dense(2)(keras.layers.Flatten()(i)))
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([np.random.default_rng(k).random((1, 4, 4, 1), np.float32)] for k in range(8))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("lint") / "tiny_int8.tflite"
    path.write_bytes(c.convert())
    return path
