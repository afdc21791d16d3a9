"""The import stage: bring your own model, a Keras file or a `.tflite`, into a recipe.

The file is an input of the stage like a dataset is of a data stage: its content is hashed into the cache
key (every file of a SavedModel folder), so a changed file makes the stage stale and reruns what follows.
A Keras model (`.h5`, `.keras`, a SavedModel folder) comes out as a train stage's output (`model.h5` and
`metrics.json` on the data stage's test and validation splits), so convert, qat, distill and transfer
stages take it; a `.tflite` comes out as a convert stage's (the file with its JSON sidecar and
`labels.txt`), so bench and bundle stages take it. Either way the model is checked against the data
stage first: its input must take the dataset's images and its output give one probability per class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.core.paths import SAFE_NAME
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import Dataset, load_dataset

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
QUANTIZED = ("int8", "uint8", "int16")  # integer tensors edgepipe feeds and reads, through their scale and zero point
WHAT = "an .h5 or .keras file, a SavedModel folder or a .tflite file"


@dataclasses.dataclass
class ImportParams:
    """Parameters of the import stage."""

    path: str = param("", f"the model: {WHAT} (relative paths start at the current directory, ~ is home)")
    name: str | None = param(
        None, "file-name prefix of an imported .tflite (<name>_<variant>.tflite); default: the stage's name"
    )

    def __post_init__(self):
        if not self.path.strip():
            raise ValueError(f"path is empty; fix: give the path of {WHAT}")
        suffix = Path(self.path).suffix.lower()
        if suffix and suffix not in (*KERAS_SUFFIXES, ".tflite") and not Path(self.path).expanduser().is_dir():
            raise ValueError(
                f"path {self.path!r}: a {suffix} file is not a model edgepipe reads; fix: give {WHAT} "
                "(export other formats to one of these first)"
            )
        if self.name is not None and not SAFE_NAME.match(self.name):
            raise ValueError(
                f"name {self.name!r} is not a usable file-name prefix; fix: use letters, digits, "
                "_, - and . (not first), no / or .."
            )


def source(params: ImportParams) -> Path:
    """The model's path (`~` is the user's home)."""
    return Path(params.path).expanduser()


def output_for(params: ImportParams) -> str:
    """What the stage outputs, from the file's name: a .tflite stays one, anything else is a Keras model."""
    return "tflite" if Path(params.path).suffix.lower() == ".tflite" else "model"


def model_files(params: ImportParams) -> list[Path]:
    """The files the model is made of (hashed into the cache key); raises if the path is missing."""
    p = source(params)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        if not (p / "saved_model.pb").is_file():
            raise EdgepipeError(
                f"import: {params.path} is a folder but not a SavedModel (no saved_model.pb)", f"give {WHAT}"
            )
        return files
    if not p.is_file():
        raise EdgepipeError(
            f"import: model file {params.path} not found",
            "check the path (relative paths start at the current directory)",
        )
    return [p]


def run_import_stage(params: ImportParams, io: StageIO) -> str:
    """Check the model against the data stage's dataset and write it out as a train or convert stage would."""
    ds = load_dataset(io.inputs["data"])
    model_files(params)  # the file may have gone since the key was taken
    if output_for(params) == "tflite":
        return _import_tflite(params, ds, io)
    return _import_keras(params, ds, io)


def _import_tflite(params: ImportParams, ds: Dataset, io: StageIO) -> str:
    from edgepipe.export.sidecar import describe_tflite, tflite_facts
    from edgepipe.targets import litert

    src = source(params)
    name = params.name or io.out.name
    try:
        din, dout = litert.io_details(litert.interpreter(src))
        facts = tflite_facts(src)
    except EdgepipeError as e:
        raise EdgepipeError(
            f"import: {params.path} is not a model LiteRT can run ({e.message})", f"give {WHAT}"
        ) from None
    _check_types(params.path, din, dout)
    _check_shapes(params.path, list(din["shape"][1:]), int(dout["shape"][-1]), ds)
    path = io.out / f"{name}_{facts['variant']}.tflite"
    fsio.copy_file(src, path)
    probs = litert.predict(path, ds.preprocess(ds.splits["val"][0][:64]))
    _check_probabilities(params.path, probs)
    side = describe_tflite(
        path,
        ds,
        variant=facts["variant"],
        source=io.out.name,
        qat=False,
        params=facts["params"],
        macs=facts["macs"],
        parity=None,
        imported_from=str(src),
    )
    fsio.write_json(path.with_suffix(".json"), side)
    fsio.write_text(io.out / "labels.txt", "\n".join(ds.classes) + "\n")
    return f"imported {src.name} as {path.name} ({facts['variant']}, {fsio.human_size(path.stat().st_size)})"


def _import_keras(params: ImportParams, ds: Dataset, io: StageIO) -> str:
    from edgepipe.training import nets
    from edgepipe.training.evaluate import evaluate
    from edgepipe.training.modelio import save_model
    from edgepipe.training.outputs import plot_confusion

    model = _load_keras(str(source(params)))
    inputs, outputs = list(model.inputs), list(model.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise EdgepipeError(
            f"import: {params.path} has {len(inputs)} inputs and {len(outputs)} outputs",
            "edgepipe takes classifiers: one image input, one output of class probabilities",
        )
    _check_shapes(params.path, list(inputs[0].shape[1:]), outputs[0].shape[-1], ds)
    _check_probabilities(params.path, model.predict(ds.preprocess(ds.splits["val"][0][:64]), verbose=0))
    save_model(model, io.out / "model.h5")
    fsio.write_text(io.out / "labels.txt", "\n".join(ds.classes) + "\n")
    test = evaluate(model, ds, "test")
    metrics = {
        "test": test,
        "val": {k: v for k, v in evaluate(model, ds, "val").items() if k in ("accuracy", "loss")},
        "params": int(model.count_params()),
        "macs": nets.count_macs(model),
        "imported_from": params.path,
    }
    fsio.write_json(io.out / "metrics.json", metrics)
    plot_confusion(test["confusion_matrix"], ds.classes, io.out / "confusion_matrix.png")
    return (
        f"imported {Path(params.path).name}: test accuracy {100 * test['accuracy']:.2f} %, {metrics['params']:,} params"
    )


def _load_keras(path: str):
    """The tf_keras model in a file or SavedModel folder (tfmot's QAT layers in scope), or one error line."""
    import warnings

    import tensorflow_model_optimization as tfmot

    from edgepipe.core._tf import keras  # first: TensorFlow's import noise silenced

    try:
        with tfmot.quantization.keras.quantize_scope(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - h5py, TensorFlow and Keras each raise their own types
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise EdgepipeError(
            f"import: {path} is not a Keras model tf_keras can load ({reason})",
            f"give {WHAT} saved by tf_keras (Keras 2); a custom layer cannot be imported",
        ) from None
    if not isinstance(model, keras.Model):
        raise EdgepipeError(
            f"import: {path} holds a {type(model).__name__}, not a Keras model",
            "save the model with tf_keras' model.save()",
        )
    return model


def _check_types(path: str, din: dict, dout: dict) -> None:
    """Refuse a .tflite whose input or output edgepipe cannot feed or read (bool, string, an unquantized
    integer, float16), naming what it supports, before anything else reads it."""
    for what, d in (("input", din), ("output", dout)):
        dtype = np.dtype(d["dtype"])
        if dtype == np.float32 or (dtype.name in QUANTIZED and (d.get("quantization") or (0.0,))[0] > 0):
            continue
        kind = dtype.name if dtype.name in QUANTIZED else _dtype_name(dtype)
        raise EdgepipeError(
            f"import: {path}: its {what} is {kind}{' without quantization' if dtype.name in QUANTIZED else ''}, "
            "which edgepipe does not run",
            f"give an image classifier whose input and output are float32, or {'/'.join(QUANTIZED)} quantized "
            "(as LiteRT's converter writes them)",
        )


def _dtype_name(dtype: np.dtype) -> str:
    return "string" if dtype.kind in "SUO" else dtype.name


def _check_shapes(path: str, input_shape: list, classes, ds: Dataset) -> None:
    """The model takes one of the dataset's images and gives one output per class."""
    image = list(ds.preprocess(ds.splits["test"][0][:1]).shape[1:])
    if [None if s is None else int(s) for s in input_shape] != image:
        raise EdgepipeError(
            f"import: {path} takes input {list(input_shape)}, the data stage's images are {image}",
            "import a model made for this dataset (its size and channels), or resize the data (image_size, channels)",
        )
    if classes is None or int(classes) != len(ds.classes):
        raise EdgepipeError(
            f"import: {path} has {classes} outputs, the dataset has {len(ds.classes)} classes",
            "import a classifier of this dataset's classes",
        )


def _check_probabilities(path: str, probs: np.ndarray) -> None:
    """Outputs are class probabilities (what every stage after this one reads), not logits."""
    if not np.all(np.isfinite(probs)) or probs.min() < -1e-3 or np.abs(probs.sum(1) - 1).max() > 1e-2:
        raise EdgepipeError(
            f"import: {path} does not output class probabilities (its outputs do not sum to 1)",
            "end the model with a softmax",
        )


KIND = StageKind(
    name="import",
    params=ImportParams,
    run=run_import_stage,
    inputs={"data": False},
    output="model",
    also_outputs=("tflite",),
    output_for=output_for,
    accepts={"data": ("dataset",)},
    main_output="labels.txt",
    deps=model_files,
    doc="bring your own model: a Keras file or SavedModel, or a .tflite, checked on the dataset",
)
