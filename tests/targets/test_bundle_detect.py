"""A detection model's Cortex-M4 bundle ships the C decoding with its grid facts, and its `make check` runs the
model and the decoding on the emulated board on every sample test image, equal to edgepipe's Python decoding
of the same int8 outputs, bit for bit (issue #32: "The C decoding runs on the emulated board and equals
Python's on every test image").

The model is the detection chain test's tiny centroid net after its one epoch (tests/stages/
test_detection_chain.py). One epoch leaves every cell below the 0.5 threshold, so nothing would be decoded
and the check would prove nothing: its logits are sharpened and the background's lowered (the last
convolution's weights, no further training) until about a fifth of the test cells are hot, which gives
blobs of many sizes, classes side by side, boxes and tied peaks (52 detections on the 16 test images).
"""

import copy
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgepipe.testing import run_stage, write_recipe
from tests.conftest import NO_TFLM, SHARED_DATASETS, no_tflm_sources
from tests.stages.test_detection_chain import RECIPE

FIRMWARE = Path(__file__).resolve().parents[2] / "edgepipe/targets/mcu/firmware"
HOT_SHARE = 0.2  # of the test images' cells, hot after the background's bias is lowered

needs_board = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("arm-none-eabi-gcc", "qemu-system-arm", "make")),
    reason="no Cortex-M toolchain, QEMU or make (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
    "libstdc++-arm-none-eabi-newlib qemu-system-arm make)",
)


def _eager(model, x: np.ndarray):
    """Sharpen the heat map's logits and lower the background's, so that about HOT_SHARE of the cells of `x`
    have a class above 0.5 (one epoch leaves the classes' logits close together: lowering the background's
    alone would split each cell's probability between the classes)."""
    from edgepipe.core._tf import keras

    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    z = keras.Model(model.input, logits.output).predict(x, verbose=0).astype(np.float64)
    sharpen = 4.0 / max(float(np.std(z[..., 1:] - z[..., 1:].mean(-1, keepdims=True))), 1e-6)
    z *= sharpen

    def hot(delta: float) -> float:
        zz = z.copy()
        zz[..., 0] -= delta
        p = np.exp(zz - zz.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return float(np.mean(p[..., 1:].max(-1) > 0.5))

    lo, hi = -1000.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if hot(mid) < HOT_SHARE else (lo, mid)
    bias = bias * sharpen
    bias[0] -= hi
    logits.set_weights([kernel * sharpen, bias])


@pytest.fixture(scope="module")
def detection_bundle(tmp_path_factory):
    """The tiny detector's int8 model bundled for the Cortex-M4 (the bundle stage's `cortex-m4/` folder)."""
    if not (SHARED_DATASETS / "mnist").is_dir():
        pytest.skip(f"synth:digits draws MNIST's digits: needs {SHARED_DATASETS / 'mnist'}")
    if no_tflm_sources():
        pytest.skip(NO_TFLM)
    from edgepipe.datasets.artifact import load_dataset
    from edgepipe.stages.bundle import BundleParams, run_bundle_stage
    from edgepipe.stages.convert import ConvertParams, run_convert_stage
    from edgepipe.training.modelio import load_model, save_model

    root = tmp_path_factory.mktemp("detect-bundle")
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"] = {k: recipe["stages"][k] for k in ("data", "model")}
    write_recipe(root / "det.yaml", recipe)
    exe = Path(sys.executable).with_name("edgepipe")
    env = dict(os.environ, EDGEPIPE_DATA_MIRROR=str(SHARED_DATASETS))
    done = subprocess.run([str(exe), "run", "det.yaml"], cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    data = root / "runs/det/data"
    ds = load_dataset(data)
    eager = root / "eager"
    shutil.copytree(root / "runs/det/model", eager)
    model = load_model(eager)
    _eager(model, ds.preprocess(ds.splits["test"][0]))
    save_model(model, eager / "model.h5")
    params = {"variants": ["int8"], "representative_samples": 16, "parity_samples": 16}
    tflite = run_stage(
        root,
        "tflite",
        run_convert_stage,
        ConvertParams,
        {**params, "tolerance": {"int8_top1": 0.0}},
        data=str(data),
        model=str(eager),
    )
    out = run_stage(
        root, "bundle", run_bundle_stage, BundleParams, {"target": "cortex-m4"}, data=str(data), model=str(tflite)
    )
    return out / "cortex-m4"


def read_detections(path: Path) -> list[bytes]:
    """`sample_detections.bin`'s detections, one bytes string per image (8 float32 per detection)."""
    b = path.read_bytes()
    assert b[:4] == b"EPD1"
    (count,) = struct.unpack("<I", b[4:8])
    at, images = 16, []
    for _ in range(count):
        (n,) = struct.unpack("<i", b[at : at + 4])
        images.append(b[at + 4 : at + 4 + 32 * n])
        at += 4 + 32 * n
    assert at == len(b)
    return images


def test_a_detection_bundle_ships_the_c_decoding_and_its_grid_facts(detection_bundle):
    out = detection_bundle
    for name in ("detect_decode.h", "detect_decode.c"):
        assert (out / name).read_bytes() == (FIRMWARE / name).read_bytes()
        assert f"  {name}\n" in (out / "SHA256SUMS").read_text()
    io_h = (out / "model_io.h").read_text()
    for line in (
        "constexpr int kDetectRows = 12;",
        "constexpr int kDetectCols = 12;",
        "constexpr int kDetectStride = 8;",
        "constexpr int kDetectHasSize = 1;",
        "constexpr float kDetectThreshold = 0.5f;",
        "constexpr int kNumClasses = 3;",
        '#include "detect_decode.h"',
    ):
        assert line in io_h
    assert (
        "detect_decode_int8(out->data.int8, kOutputScale, kOutputZeroPoint, &kDetectGrid"
        in (out / "main.cc").read_text()
    )
    card = (out / "MODEL_CARD.md").read_text()  # what a firmware author reads: how to call the decoder
    assert "## Decoding on the device" in card and "int n = detect_decode_int8(output->data.int8" in card
    assert "`make check` runs it on the emulated board on every sample test image" in card
    assert "A classifier" not in card and "A detector of object centres" in card
    assert "detect_decode.h on a microcontroller" in json.loads((out / "preprocessing.json").read_text())["output"]
    # every test image's outputs decoded on the emulated board when the bundle was written (a failure stops it)
    check = json.loads((out / "fit.json").read_text())["detect"]["every_test_image"]
    from edgepipe.targets.mcu import toolchain

    if toolchain.requirement("cortex-m4").unmet() is not None:
        assert check["images"] == 0 and check["why_not"] in card
    else:
        assert check == {"images": 16, "equal": 16, "detections": check["detections"], "where": "board"}
        assert check["detections"] >= 16 and "over the int8 outputs of all 16 test images" in card
    # Python's decoding of the sample outputs finds objects, or the board's check would compare nothing.
    images = read_detections(out / "sample_detections.bin")
    assert len(images) == 16 and sum(len(d) // 32 for d in images) >= 16
    assert sum(1 for d in images if d) >= 8


def seed_library(bundle: Path, build_dir: Path) -> None:
    """`build/libedgepipe_model.a` from edgepipe's cached build of the same TFLite Micro sources, compiled
    with the flags the bundle's Makefile uses: compiling TFLite Micro from the bundle takes minutes. The
    Makefile still compiles the model's array and adds it (`make LIB_OBJS=build/model_data.o`)."""
    from edgepipe.targets.mcu.build import build
    from edgepipe.targets.mcu.sources import locate_sources

    result = build(
        locate_sources(None), "cortex-m4", model=next(bundle.glob("*.tflite")), int8_kernels=True, progress=False
    )
    build_dir.mkdir()
    script = "create libedgepipe_model.a\n" + "".join(f"addlib {a}\n" for a in result.archives.values()) + "save\nend\n"
    subprocess.run(["arm-none-eabi-ar", "-M"], input=script, text=True, cwd=build_dir, check=True)


@needs_board
def test_make_check_decodes_every_sample_on_the_board_as_python_does(detection_bundle, tmp_path):
    from edgepipe.targets.mcu.sources import locate_sources

    t0 = time.monotonic()
    bundle = tmp_path / "bundle"
    shutil.copytree(detection_bundle, bundle)
    seed_library(bundle, bundle / "build")
    make = ["make", "-j2", f"TFLM_DIR={locate_sources(None).root}", "LIB_OBJS=build/model_data.o", "check"]
    done = subprocess.run(make, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = sum(len(d) // 32 for d in read_detections(bundle / "sample_detections.bin"))
    assert "16 of 16 sample outputs identical to edgepipe's measurement" in done.stdout
    assert (
        f"16 of 16 sample images: the C decoding on the board equals edgepipe's Python decoding, bit for bit "
        f"({found} detections)" in done.stdout
    )
    assert (bundle / "build/detections.bin").read_bytes()[16:] == (bundle / "sample_detections.bin").read_bytes()[16:]

    # main.cc's example: its exit status is the number of objects detect() finds in the first sample input.
    example = subprocess.run([*make[:-1], "run-example"], cwd=bundle, capture_output=True, text=True, timeout=600)
    first_count = len(read_detections(bundle / "sample_detections.bin")[0]) // 32
    assert f"objects in the first sample input: {first_count}\n" in example.stdout, example.stderr[-2000:]

    # A detection that differs in one bit fails make check loudly, naming the image and the detection.
    want = bytearray((bundle / "sample_detections.bin").read_bytes())
    first = next(i for i, d in enumerate(read_detections(bundle / "sample_detections.bin")) if d)
    at = 16 + sum(4 + len(d) for d in read_detections(bundle / "sample_detections.bin")[:first]) + 4 + 4
    want[at] ^= 1  # the first detection's score
    (bundle / "sample_detections.bin").write_bytes(bytes(want))
    bad = subprocess.run(make, cwd=bundle, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0
    assert f"DETECTIONS DIFFER on sample image {first}" in bad.stdout and "15 of 16 sample images" in bad.stdout
    print(f"make check on the emulated Cortex-M4: {found} detections equal, {time.monotonic() - t0:.1f} s")


@needs_board
@pytest.mark.slow
def test_the_detection_bundle_builds_tflite_micro_itself_and_checks(detection_bundle, tmp_path):
    """Copied to a clean folder, the bundle's Makefile compiles TFLite Micro too (minutes) and checks."""
    from edgepipe.targets.mcu.sources import locate_sources

    bundle = tmp_path / "bundle"
    shutil.copytree(detection_bundle, bundle)
    make = ["make", "-j2", f"TFLM_DIR={locate_sources(None).root}", "check"]
    done = subprocess.run(make, cwd=bundle, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "16 of 16 sample images: the C decoding on the board equals edgepipe's Python decoding" in done.stdout
