"""The transfer stage: adapter maths against keras' own preprocess_input, frozen and fine-tuned layers,
application backbones built flat (so QAT works), and the offline imagenet error."""

import json

import numpy as np
import pytest

from edgepipe.core.errors import EdgepipeError, RecipeError
from edgepipe.core.params import build
from edgepipe.core.stage import StageIO
from edgepipe.stages.convert import ConvertParams, run_convert_stage
from edgepipe.stages.data import DataParams, run_data_stage
from edgepipe.stages.qat import QatParams, run_qat_stage
from edgepipe.stages.train import TrainParams, run_train_stage
from edgepipe.stages.transfer import TransferParams, run_transfer_stage
from edgepipe.testing import FAST, write_idx_dataset
from edgepipe.testing import run_stage as stage
from edgepipe.training.backbones import adapter_weights
from edgepipe.training.modelio import load_model


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny_conv backbone trained on one dataset, and a second dataset to transfer it to."""
    root = tmp_path_factory.mktemp("transfer")
    source = stage(
        root,
        "source_data",
        run_data_stage,
        DataParams,
        {"source": f"idx:{write_idx_dataset(root / 'a', n_train=200, n_test=40, seed=1)}"},
    )
    target = stage(
        root,
        "target_data",
        run_data_stage,
        DataParams,
        {"source": f"idx:{write_idx_dataset(root / 'b', n_train=120, n_test=40, seed=2)}", "val_fraction": 0.25},
    )
    backbone = stage(
        root,
        "backbone",
        run_train_stage,
        TrainParams,
        {"arch": "cnn_teacher", "arch_args": {"width": 0.1}, "epochs": 2, **FAST},
        data=source,
    )
    return root, target, backbone


@pytest.mark.parametrize("mode, reference", [("tf", "mobilenet_v2"), ("caffe", "resnet50")])
@pytest.mark.parametrize(
    "normalize", [{"scale": 1 / 255, "mean": [0.0], "std": [1.0]}, {"scale": 1 / 255, "mean": [0.13], "std": [0.31]}]
)
def test_adapter_reproduces_keras_preprocess_input(mode, reference, normalize):
    from edgepipe.core._tf import keras

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 4, 4, 1)).astype(np.float32)
    x = (pixels * normalize["scale"] - normalize["mean"][0]) / normalize["std"][0]  # what the data stage feeds
    kernel, bias, info = adapter_weights(normalize, 1, mode)
    ours = np.einsum("nhwc,co->nhwo", x, kernel[0, 0]) + bias
    expected = getattr(keras.applications, reference).preprocess_input(np.repeat(pixels, 3, -1))
    np.testing.assert_allclose(ours, expected, atol=1e-3)
    assert info["channels"] == "grayscale -> RGB"


def test_rgb_caffe_adapter_swaps_channels():
    from edgepipe.core._tf import keras

    pixels = np.random.default_rng(1).integers(0, 256, (3, 2, 2, 3)).astype(np.float32)
    kernel, bias, info = adapter_weights({"scale": 1 / 255, "mean": [0.0] * 3, "std": [1.0] * 3}, 3, "caffe")
    ours = np.einsum("nhwc,co->nhwo", pixels / 255, kernel[0, 0]) + bias
    np.testing.assert_allclose(ours, keras.applications.resnet50.preprocess_input(pixels.copy()), atol=1e-3)
    assert info["channels"] == "RGB -> BGR"


def test_head_only_keeps_the_backbone_frozen(pretrained):
    root, data, backbone = pretrained
    out = stage(
        root,
        "head_only",
        run_transfer_stage,
        TransferParams,
        {"backbone": "stage", "epochs": 2, "lr": 0.01, **FAST},
        data=data,
        backbone=backbone,
    )
    before, after = load_model(backbone), load_model(out)
    shared = [layer.name for layer in after.layers if layer.weights and layer.name not in ("logits",)]
    assert shared, "the transferred model should reuse the backbone's layers"
    for name in shared:
        for w0, w1 in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights()):
            np.testing.assert_array_equal(w0, w1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["phase_test_accuracy"]) == ["head"]
    assert metrics["epochs_run"] == 2 and (out / "curves.png").is_file()


def test_fine_tune_moves_the_top_layers_but_not_batchnorm_statistics(pretrained):
    from edgepipe.core._tf import keras

    root, data, backbone = pretrained
    out = stage(
        root,
        "fine_tuned",
        run_transfer_stage,
        TransferParams,
        {
            "backbone": "stage",
            "epochs": 1,
            "lr": 0.01,
            **FAST,
            "fine_tune": {"epochs": 2, "lr": 0.01, "unfreeze_top": 6, **FAST},
        },
        data=data,
        backbone=backbone,
    )
    before, after = load_model(backbone), load_model(out)
    convs = [layer.name for layer in before.layers if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer.name for layer in before.layers if isinstance(layer, keras.layers.BatchNormalization)]
    changed = {
        n: not np.array_equal(before.get_layer(n).get_weights()[0], after.get_layer(n).get_weights()[0]) for n in convs
    }
    assert changed[convs[-1]], "the top conv was unfrozen and should have moved"
    assert not changed[convs[0]], "the bottom conv was outside unfreeze_top and should not move"
    for n in bns:  # gamma, beta, moving mean, moving variance all unchanged: BatchNorm stays frozen
        for w0, w1 in zip(before.get_layer(n).get_weights(), after.get_layer(n).get_weights()):
            np.testing.assert_array_equal(w0, w1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["phase_test_accuracy"]) == ["head", "fine_tune"]
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,phase") and len(history) == 1 + 3
    assert [line.split(",")[1] for line in history[1:]] == ["head", "fine_tune", "fine_tune"]


def test_the_doctor_judges_early_stopping_by_the_last_phase(pretrained, tmp_path, monkeypatch):
    """Head with early stopping (restore_best), fine-tuning without: the final weights are the last
    epoch's, so the doctor must not say early stopping kept an earlier one."""
    from edgepipe.training import doctor

    seen = []
    real = doctor.diagnose
    monkeypatch.setattr(doctor, "diagnose", lambda *a, **kw: seen.append(a[3]) or real(*a, **kw))
    _, data, backbone = pretrained
    stage(
        tmp_path,
        "fine_tuned",
        run_transfer_stage,
        TransferParams,
        {
            "backbone": "stage",
            **FAST,
            "epochs": 1,
            "early_stopping": {"enabled": True, "restore_best": True},
            "fine_tune": {"epochs": 1, **FAST},
        },
        data=data,
        backbone=backbone,
    )
    assert seen == [{"class_weights": "none", "restore_best": False}]


def test_application_backbone_is_flat_quantizes_and_records_its_adapter(pretrained, tmp_path):
    """MobileNetV2 (random weights: no download here) on grayscale data: the adapter makes RGB in the model."""
    _, data, _ = pretrained
    out = stage(
        tmp_path,
        "mnv2",
        run_transfer_stage,
        TransferParams,
        {"backbone": "MobileNetV2", "weights": None, "alpha": 0.35, "input_size": [32, 32], "epochs": 1, **FAST},
        data=data,
    )
    model = load_model(out)
    from edgepipe.core._tf import keras

    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "the backbone must not be nested"
    assert model.get_layer("input_adapter").get_weights()[0].shape == (1, 1, 1, 3)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["input_adapter"]["resize"] == {"from": [12, 12], "to": [32, 32], "interpolation": "bilinear"}
    assert metrics["input_adapter"]["channels"] == "grayscale -> RGB"
    # The float model converts, and the sidecar tells a device about the adapter inside the model.
    conv = stage(
        tmp_path,
        "mnv2_tflite",
        run_convert_stage,
        ConvertParams,
        {"variants": ["float32"], "representative_samples": 10, "parity_samples": 20},
        data=data,
        model=out,
    )
    sidecar = json.loads((conv / "mnv2_float32.json").read_text())
    assert sidecar["input_adapter"]["backbone_input"] == "pixel / 127.5 - 1"
    assert sidecar["parity"]["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_mobilenet_v2_through_qat_to_int8(tmp_path):
    """QAT needs no Resizing layer in the model: the data is already at the backbone's size."""
    idx = write_idx_dataset(tmp_path / "idx", n_train=60, n_test=20, size=32, seed=3)
    data = stage(tmp_path, "data", run_data_stage, DataParams, {"source": f"idx:{idx}", "val_fraction": 0.25})
    model = stage(
        tmp_path,
        "mnv2",
        run_transfer_stage,
        TransferParams,
        {"backbone": "MobileNetV2", "weights": None, "alpha": 0.35, "epochs": 1, **FAST},
        data=data,
    )
    qat = stage(tmp_path, "qat", run_qat_stage, QatParams, {"epochs": 1, **FAST}, data=data, model=model)
    conv = stage(
        tmp_path,
        "qat_tflite",
        run_convert_stage,
        ConvertParams,
        {"variants": ["int8"], "representative_samples": 10, "parity_samples": 20},
        data=data,
        model=qat,
    )
    sidecar = json.loads((conv / "qat_int8.json").read_text())
    assert sidecar["qat"] and sidecar["input"]["dtype"] == "int8"
    assert "resize" not in sidecar["input_adapter"]


def test_offline_imagenet_names_the_file_and_where_to_put_it(pretrained, tmp_path, monkeypatch):
    _, data, _ = pretrained
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # an empty cache
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # and no network, even where there is one
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(EdgepipeError) as e:
        stage(
            tmp_path,
            "mnv2",
            run_transfer_stage,
            TransferParams,
            {
                "backbone": "MobileNetV2",
                "weights": "imagenet",
                "alpha": 0.35,
                "input_size": [96, 96],
                "epochs": 1,
                **FAST,
            },
            data=data,
        )
    text = str(e.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in text
    assert str(tmp_path / "keras" / "models") in text and "https://" in text


@pytest.mark.parametrize(
    "params, message",
    [
        ({"backbone": "VGG99"}, "backbone 'VGG99' is not known; fix: use one of MobileNetV2"),
        ({"backbone": "ResNet50", "alpha": 0.5}, "no width multiplier"),
        ({"backbone": "MobileNetV2", "cut_at": "x"}, "cut_at applies to backbone: stage"),
        ({"fine_tune": {"unfreeze_top": 3, "unfreeze_from": "conv"}}, "not both"),
    ],
)
def test_conflicting_or_unknown_params_are_rejected_at_load(params, message):
    with pytest.raises(RecipeError, match=message):
        build(TransferParams, params, "stages.t.params")


def test_unknown_cut_layer_lists_real_ones(pretrained, tmp_path):
    _, data, backbone = pretrained
    with pytest.raises(EdgepipeError, match="has no layer 'nope'.*e.g. the last ones"):
        stage(
            tmp_path,
            "t",
            run_transfer_stage,
            TransferParams,
            {"backbone": "stage", "cut_at": "nope", "epochs": 1, **FAST},
            data=data,
            backbone=backbone,
        )


def test_flowers_recipe_builds_and_trains_offline_with_random_weights(tmp_path):
    """recipes/flowers_mobilenet.yaml cannot download here: run its transfer stage as written, except
    weights: null, one epoch per phase, on a few synthetic photos at the recipe's size."""
    from edgepipe import load_recipe
    from tests.conftest import REPO

    recipe = load_recipe(
        REPO / "recipes/flowers_mobilenet.yaml",
        sets=("mobilenet.weights=null", "mobilenet.epochs=1", "mobilenet.fine_tune.epochs=1"),
    )
    params = recipe.stages["mobilenet"].params
    assert (params.backbone, params.alpha, params.fine_tune.unfreeze_top) == ("MobileNetV2", 0.35, 50)
    size = recipe.stages["data"].params.image_size
    from edgepipe.testing import write_png_folder

    root = write_png_folder(tmp_path / "photos", per_class=4, classes=("daisy", "rose", "tulip"), size=size[0])
    data = stage(
        tmp_path,
        "data",
        run_data_stage,
        DataParams,
        {"source": f"folder:{root}", "image_size": size, "channels": 3, "val_fraction": 0.25},
    )
    out = tmp_path / "mobilenet"
    out.mkdir()
    run_transfer_stage(params, StageIO(inputs={"data": data}, out=out, work=tmp_path / ".work"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["phase_test_accuracy"]) == ["head", "fine_tune"]
    assert metrics["input_adapter"] == {"in_model": True, "channels": "RGB", "backbone_input": "pixel / 127.5 - 1"}
    assert load_model(out).input_shape == (None, *size, 3)


def test_a_crash_in_fine_tuning_resumes_without_redoing_the_head(pretrained, tmp_path, monkeypatch):
    import edgepipe.stages.transfer as transfer

    _, data, backbone = pretrained
    params = build(TransferParams, {"backbone": "stage", "epochs": 1, **FAST, "fine_tune": {"epochs": 1, **FAST}}, "t")
    io = StageIO(inputs={"data": data, "backbone": backbone}, out=tmp_path / "out", work=tmp_path / "work")
    io.out.mkdir()
    real_fit, phases = transfer.fit, []

    def crashing_fit(model, ds, knobs, phase_io, **kw):
        phases.append(phase_io.work.name)
        if phase_io.work.name == "fine_tune" and len(phases) == 2:
            raise KeyboardInterrupt  # killed during phase 2
        return real_fit(model, ds, knobs, phase_io, **kw)

    monkeypatch.setattr(transfer, "fit", crashing_fit)
    with pytest.raises(KeyboardInterrupt):
        run_transfer_stage(params, io)
    assert (io.work / "head_weights.h5").is_file()
    run_transfer_stage(params, io)
    assert phases == ["head", "fine_tune", "fine_tune"], "the head phase ran once"
    assert list(json.loads((io.out / "metrics.json").read_text())["phase_test_accuracy"]) == ["head", "fine_tune"]
