"""prune, cluster and collaborative QAT on tiny data: what each promises is read back from the weights, in
Keras and in the .tflite the convert stage writes."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgepipe.export.weights import tflite_weight_stats
from edgepipe.stages.cluster import ClusterParams, run_cluster_stage
from edgepipe.stages.convert import ConvertParams, run_convert_stage
from edgepipe.stages.data import DataParams, run_data_stage
from edgepipe.stages.prune import PruneParams, run_prune_stage
from edgepipe.stages.qat import QatParams, run_qat_stage
from edgepipe.stages.train import TrainParams, run_train_stage
from edgepipe.testing import FAST, write_idx_dataset
from edgepipe.testing import run_stage as stage
from edgepipe.training.modelio import load_model

ARCH = {"arch": "strided_cnn", "arch_args": {"widths": [8, 16, 16]}}  # Conv -> BN -> ReLU blocks, as the zoo's


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    idx = write_idx_dataset(root / "idx", n_train=240, n_test=80)
    data = stage(root, "data", run_data_stage, DataParams, {"source": f"idx:{idx}", "val_fraction": 0.25})
    model = stage(root, "model", run_train_stage, TrainParams, {**ARCH, "epochs": 6, "lr": 0.01, **FAST}, data=data)
    return root, data, model


def _int8(root, data, model, name, **params):
    out = stage(
        root,
        name,
        run_convert_stage,
        ConvertParams,
        {
            "variants": ["int8"],
            "representative_samples": 20,
            "parity_samples": 40,
            "tolerance": {"int8_top1": 0.8},
            **params,
        },
        data=data,
        model=model,
    )
    return out / f"{model.name}_int8.tflite"


def _kernels_of(path):
    """The .tflite's conv and dense weight tensors (int8, 4-D or 2-D)."""
    return [s for s in tflite_weight_stats(path) if s["weights"] >= 64]


def test_pruning_reaches_its_sparsity_and_pqat_keeps_the_zeros_in_the_tflite(trained):
    root, data, model = trained
    pruned = stage(
        root,
        "pruned",
        run_prune_stage,
        PruneParams,
        {"sparsity": 0.75, "epochs": 3, "frequency": 5, "lr": 0.003, **FAST},
        data=data,
        model=model,
    )
    report = json.loads((pruned / "sparsity.json").read_text())
    conv = [s for s in report["layers"] if s["pruned"]]
    assert conv and all(abs(s["sparsity"] - 0.75) < 0.02 for s in conv), conv
    assert abs(report["achieved"] - 0.75) < 0.02
    assert not any(type(layer).__name__.startswith("Prune") for layer in load_model(pruned).layers)  # stripped

    pqat = stage(
        root, "pqat", run_qat_stage, QatParams, {"preserve": "sparsity", "epochs": 2, **FAST}, data=data, model=pruned
    )
    plain = stage(
        root, "qat_plain", run_qat_stage, QatParams, {"epochs": 2, "lr": 3e-3, **FAST}, data=data, model=pruned
    )
    kept = _kernels_of(_int8(root, data, pqat, "pqat_tflite"))
    lost = _kernels_of(_int8(root, data, plain, "plain_tflite"))
    zeros_before = sum(s["zeros"] for s in conv)
    assert sum(s["zeros"] for s in kept) >= 0.95 * zeros_before, (kept, zeros_before)
    # the reason PQAT exists: plain QAT at a working learning rate lets the zeros grow back
    assert sum(s["zeros"] for s in lost) < 0.9 * zeros_before, (lost, zeros_before)


def test_a_skipped_layer_stays_dense_and_the_overall_sparsity_counts_it(trained):
    root, data, model = trained
    first = next(layer.name for layer in load_model(model).layers if type(layer).__name__ == "Conv2D")
    pruned = stage(
        root,
        "pruned_skip",
        run_prune_stage,
        PruneParams,
        {"sparsity": 0.75, "skip": [first], "epochs": 3, "frequency": 5, "lr": 0.003, **FAST},
        data=data,
        model=model,
    )
    report = json.loads((pruned / "sparsity.json").read_text())
    by_name = {s["layer"]: s for s in report["layers"]}
    assert not by_name[first]["pruned"] and by_name[first]["sparsity"] < 0.1, by_name[first]
    assert abs(report["achieved"] - 0.75) < 0.02
    weights = sum(s["weights"] for s in report["layers"])
    zeros = sum(s["zeros"] for s in report["layers"])
    assert report["overall"] == pytest.approx(zeros / weights, abs=1e-4) and report["overall"] < report["achieved"]


def test_clustering_leaves_few_values_and_cqat_keeps_them_in_the_tflite(trained):
    root, data, model = trained
    clustered = stage(
        root,
        "clustered",
        run_cluster_stage,
        ClusterParams,
        {"clusters": 8, "epochs": 2, **FAST},
        data=data,
        model=model,
    )
    layers = json.loads((clustered / "clusters.json").read_text())["layers"]
    assert all(s["unique"] <= 8 for s in layers if s["clustered"]) and any(s["clustered"] for s in layers)
    cqat = stage(
        root,
        "cqat",
        run_qat_stage,
        QatParams,
        {"preserve": "clusters", "epochs": 1, **FAST},
        data=data,
        model=clustered,
    )
    per_channel = [s["max_unique_per_channel"] for s in _kernels_of(_int8(root, data, cqat, "cqat_tflite"))]
    assert per_channel and max(per_channel) <= 8, per_channel
    dense = [s["max_unique_per_channel"] for s in _kernels_of(_int8(root, data, model, "dense_tflite"))]
    assert max(dense) > 8  # the unclustered model's int8 weights use many more values


def _planted(root, data, k: float = 2000.0):
    """A small trained CNN (no BatchNormalization), saved twice: as trained, and with a planted outlier: one
    output channel of layer `outlier` scaled by k and the depthwise layer after it scaled back by 1/k for that
    channel. ReLU commutes with a positive scale, so the float model computes the same function, and the
    depthwise kernel has a scale per channel, so int8 keeps its weights; but int8 gives the `outlier` tensor
    one range, which the outlier channel now spans, and its other channels lose their resolution."""
    from edgepipe.core._tf import keras
    from edgepipe.datasets.artifact import load_dataset
    from edgepipe.training.modelio import save_model

    ds = load_dataset(data)
    keras.utils.set_random_seed(0)
    inp = keras.Input(ds.splits["train"][0].shape[1:] if ds.splits["train"][0].ndim == 4 else (12, 12, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="outlier")(inp)
    x = keras.layers.DepthwiseConv2D(3, strides=2, activation="relu", name="after")(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(len(ds.classes), activation="softmax", name="logits")(x)
    model = keras.Model(inp, out, name="planted")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    xs, ys = ds.preprocess(ds.splits["train"][0]), ds.splits["train"][1]
    model.fit(xs, ys, epochs=6, batch_size=16, verbose=0)
    clean = root / "planted_clean"
    clean.mkdir()
    save_model(model, clean / "model.h5")
    acts = keras.Model(inp, model.get_layer("outlier").output).predict(xs[:64], verbose=0)
    c = int(acts.mean(axis=(0, 1, 2)).argmax())  # a live channel
    kernel, bias = model.get_layer("outlier").get_weights()
    kernel[..., c] *= k
    bias[c] *= k
    model.get_layer("outlier").set_weights([kernel, bias])
    k2, b2 = model.get_layer("after").get_weights()
    k2[:, :, c, :] /= k  # depthwise kernel: (h, w, channels, multiplier)
    model.get_layer("after").set_weights([k2, b2])
    planted = root / "planted"
    planted.mkdir()
    save_model(model, planted / "model.h5")
    return clean, planted, xs


def test_the_debugger_ranks_a_planted_outlier_first_and_keeping_it_float_recovers_accuracy(trained):
    from edgepipe.datasets.artifact import load_dataset
    from edgepipe.stages.bench import quant_label
    from edgepipe.targets import lint, litert

    root, data, _ = trained
    clean, planted, _ = _planted(root, data)
    ds = load_dataset(data)
    x, y = ds.preprocess(ds.splits["test"][0]), ds.splits["test"][1]

    def accuracy(path):
        return float(np.mean(litert.predict(path, x).argmax(1) == y))

    loose = {"tolerance": {"int8_top1": 0.0}}
    base = accuracy(_int8(root, data, clean, "clean_int8", **loose))
    broken_dir = stage(
        root,
        "broken",
        run_convert_stage,
        ConvertParams,
        {
            "variants": ["int8"],
            "representative_samples": 40,
            "parity_samples": 40,
            "debug": True,
            "tolerance": {"int8_top1": 0.0},
        },
        data=data,
        model=planted,
    )
    broken = accuracy(broken_dir / "planted_int8.tflite")
    ranked = (broken_dir / "quant_debug.csv").read_text().splitlines()
    assert ranked[0].startswith("rank,layer,op") and ranked[1].split(",")[1] == "outlier", ranked[:4]
    assert (broken_dir / "quant_debug.png").stat().st_size > 1000
    assert broken < base - 0.2, (base, broken)  # the defect is real in int8...

    worst = stage(
        root,
        "worst",
        run_convert_stage,
        ConvertParams,
        {
            "variants": ["int8"],
            "representative_samples": 40,
            "parity_samples": 40,
            "keep_float_worst": 1,
            "tolerance": {"int8_top1": 0.0},
        },
        data=data,
        model=planted,
    )
    assert json.loads((worst / "planted_int8.json").read_text())["quantization"]["float_layers"] == ["outlier"]
    # The outlier tensor is quantized again where its consumer reads it, so the consumer stays float too.
    fixed_dir = stage(
        root,
        "fixed",
        run_convert_stage,
        ConvertParams,
        {
            "variants": ["int8"],
            "representative_samples": 40,
            "parity_samples": 40,
            "keep_float": ["outlier", "after"],
            "tolerance": {"int8_top1": 0.9},
        },
        data=data,
        model=planted,
    )
    side = json.loads((fixed_dir / "planted_int8.json").read_text())
    assert side["quantization"]["float_layers"] == ["outlier", "after"] and quant_label(side) == "int8 (mixed)"
    fixed = accuracy(fixed_dir / "planted_int8.tflite")
    assert fixed >= base - 0.03, (base, broken, fixed)  # ...and keeping those layers float undoes it
    found = lint.lint(fixed_dir / "planted_int8.tflite", int8=True, kept_float=side["quantization"]["float_layers"])
    assert found and all(f.intended for f in found), [f.message for f in found]
    assert not all(f.intended for f in lint.lint(fixed_dir / "planted_int8.tflite", int8=True))


def test_int16x8_is_closer_to_float_than_int8_and_per_tensor_has_one_scale(trained):
    from edgepipe.core._tf import keras  # noqa: F401
    from edgepipe.datasets.artifact import load_dataset
    from edgepipe.targets import litert

    root, data, model = trained
    out = stage(
        root,
        "wide",
        run_convert_stage,
        ConvertParams,
        {
            "variants": ["float32", "int8", "int16x8"],
            "representative_samples": 40,
            "parity_samples": 40,
            "tolerance": {"int8_top1": 0.8, "int16x8_top1": 0.9},
        },
        data=data,
        model=model,
    )
    ds = load_dataset(data)
    x = ds.preprocess(ds.splits["val"][0])
    ref = load_model(model).predict(x, verbose=0)
    diff = {v: float(np.max(np.abs(litert.predict(out / f"model_{v}.tflite", x) - ref))) for v in ("int8", "int16x8")}
    assert diff["int16x8"] < diff["int8"], diff
    io = json.loads((out / "model_int16x8.json").read_text())
    assert io["input"]["dtype"] == "int16" and io["quantization"]["granularity"] == "per_channel"

    per_tensor = _int8(root, data, model, "per_tensor", granularity="per_tensor")
    interp = litert.interpreter(per_tensor)
    kernels = [
        d
        for d in interp.get_tensor_details()
        if len(d["shape"]) == 4 and d["dtype"] == np.int8 and d["quantization_parameters"]["scales"].size >= 1
    ]
    per_channel = litert.interpreter(_int8(root, data, model, "per_channel_again"))
    assert kernels and all(d["quantization_parameters"]["scales"].size == 1 for d in kernels)
    assert any(
        d["quantization_parameters"]["scales"].size > 1
        for d in per_channel.get_tensor_details()
        if len(d["shape"]) == 4
    )


def _recipe(root, idx, stage: dict) -> Path:
    """data -> a tiny strided CNN -> the stage under test (`x`)."""
    from edgepipe.testing import write_recipe

    return write_recipe(
        root / "c.yaml",
        {
            "stages": {
                "data": {"kind": "data", "params": {"source": f"idx:{idx}", "val_fraction": 0.25}},
                "model": {
                    "kind": "train",
                    "inputs": {"data": "data"},
                    "params": {**ARCH, "epochs": 1, "lr": 0.01, **FAST},
                },
                "x": stage,
            }
        },
    )


AT_LOAD = [  # refused by `status`, before anything runs (exit 2)
    ({"kind": "prune", "params": {"sparsity": 1.0}}, "sparsity: 1.0 is out of range"),
    ({"kind": "prune", "params": {"sparsity": -0.1}}, "sparsity: -0.1 is out of range"),
    ({"kind": "prune", "params": {"m_by_n": [4, 2]}}, "m_by_n [4, 2] is not [m, n] with 0 < m < n"),
    ({"kind": "cluster", "params": {"clusters": 1}}, "clusters: 1 is out of range"),
    (
        {"kind": "qat", "params": {"preserve": "zeros"}},
        "preserve: 'zeros' is not a valid choice; fix: use one of: none, sparsity, clusters, both",
    ),
    (
        {"kind": "convert", "params": {"variants": ["float32"], "keep_float": ["conv2d"]}},
        "keep_float and keep_float_worst shape the int8 model",
    ),
    (
        {"kind": "convert", "params": {"granularity": "per_row"}},
        "granularity: 'per_row' is not a valid choice; fix: use one of: per_channel, per_tensor",
    ),
]
AT_RUN = [  # refused when the stage sees the model (exit 1)
    (
        {"kind": "prune", "params": {"layers": ["nope"]}},
        "prune: model 'strided_cnn' has no layer 'nope'; fix: use one of: conv2d, conv2d_1, conv2d_2, logits",
    ),
    (
        {"kind": "prune", "params": {"layers": ["batch_normalization"]}},
        "tfmot cannot prune layer 'batch_normalization' (BatchNormalization",
    ),
    (
        {"kind": "qat", "params": {"preserve": "sparsity"}},
        "preserve: sparsity on model 'strided_cnn', which was never pruned",
    ),
    ({"kind": "qat", "params": {"preserve": "clusters"}}, "whose weights were never clustered"),
    (
        {"kind": "convert", "params": {"variants": ["int8"], "keep_float": ["conv2d", "dense_9"]}},
        "keep_float: model 'model' has no layer 'dense_9'; fix: use layer names of the model: ",
    ),
]


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), n_train=80, n_test=20)


@pytest.mark.parametrize("spec, expected", AT_LOAD, ids=[e for _, e in AT_LOAD])
def test_bad_compression_params_are_refused_at_load_in_one_line(tmp_path, idx, spec, expected):
    from edgepipe.testing import check_clean_outcome, run_cli

    inputs = {"data": "data", "model": "model"}
    code, out, err = run_cli(["status", str(_recipe(tmp_path, idx, {**spec, "inputs": inputs}))], tmp_path)
    assert code == 2, (out, err)
    assert expected in check_clean_outcome(code, err, tmp_path)


@pytest.mark.parametrize("spec, expected", AT_RUN, ids=[e[:40] for _, e in AT_RUN])
def test_compression_that_cannot_apply_to_the_model_is_one_line(cli, tmp_path, idx, spec, expected):
    from edgepipe.testing import check_clean_outcome

    done = cli("run", _recipe(tmp_path, idx, {**spec, "inputs": {"data": "data", "model": "model"}}))
    line = check_clean_outcome(done.returncode, done.stderr, tmp_path)
    assert done.returncode == 1 and expected in line, line
    assert not (tmp_path / "runs/c/x").exists()


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.recipe
def test_mnist_compress_smoke_runs_every_variant_to_the_report(cli, tmp_path):
    """recipes/mnist_compress.yaml --profile smoke: pruned, clustered, PQAT/CQAT, int16x8, per-tensor and mixed
    int8 models of the teacher and the student, benched on the host and the (emulated when QEMU is there)
    Cortex-M4, in one report with the compressed sizes."""
    import shutil

    shutil.copy(REPO / "recipes/mnist_compress.yaml", tmp_path / "mnist_compress.yaml")
    done = cli("run", tmp_path / "mnist_compress.yaml", "--profile", "smoke", timeout=3000)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "runs/mnist_compress/report/report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["student_mixed/int8"]["quantization"] == "int8 (mixed)"
    assert rows["student_pt/int8"]["quantization"] == "int8 per-tensor"
    assert rows["teacher/int16x8"]["quantization"] == "int16x8"
    for name in ("teacher", "student"):  # zeros and shared values pay once compressed, not before
        dense, pruned = rows[f"{name}/int8"], rows[f"{name}_p80/int8"]
        assert pruned["compressed_bytes"] < 0.6 * dense["compressed_bytes"], (pruned, dense)
        assert abs(pruned["size_bytes"] - dense["size_bytes"]) < 1024
    sparsity = json.loads((tmp_path / "runs/mnist_compress/student_p80/sparsity.json").read_text())
    assert abs(sparsity["achieved"] - 0.81) < 0.02 and sparsity["overall"] >= 0.79, sparsity  # first conv dense
    pqat = tflite_weight_stats(tmp_path / "runs/mnist_compress/student_pqat_tflite/student_pqat_int8.tflite")
    assert sum(s["zeros"] for s in pqat) >= 0.95 * sum(s["zeros"] for s in sparsity["layers"] if s["pruned"])
    assert (tmp_path / "runs/mnist_compress/student_tflite/quant_debug.csv").is_file()
    bench = json.loads((tmp_path / "runs/mnist_compress/bench/bench.json").read_text())
    mixed = next(r for r in bench["rows"] if r["name"] == "student_mixed/int8")
    assert mixed["float_islands"] and not mixed["lint"]
    text = (tmp_path / "runs/mnist_compress/report/report.md").read_text()
    assert "| compressed |" in text and "int8 (mixed)" in text
