"""The C decoding a detection bundle ships equals the Python decoding, float for float, on the host and on
the emulated Cortex-M4 (issue #32: "compiled and run on the emulated board in a test, equal to the Python
decoding").

The Python reference dequantises an int8 output with the host bench's own `dequantize_output`, then runs
`edgepipe.tasks.detection_decode.decode` and keeps the first `max_detections` rows; the C gets the raw
int8 tensor. Cases: softmax heat maps quantised as a model's output is (scale 1/256, zero point -128, and
scales that are not powers of two, whose products round), float maps, and the edge cases the decoding's
rules name, each also checked against what its rule says, so a case cannot silently stop testing it.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest

from edgepipe.targets.device_runner import dequantize_output
from edgepipe.targets.mcu.detect_decode import DecodeCase, run_decoder
from edgepipe.targets.mcu.errors import McuError
from edgepipe.targets.mcu.toolchain import find_toolchain

dd = pytest.importorskip(
    "edgepipe.tasks.detection_decode",
    reason="needs the Python decoding (edgepipe/tasks/detection_decode.py, issue #32)",
)

SCALE, ZERO = 1 / 256, -128  # a softmax output's int8 quantisation: p = (q + 128) / 256


def reference(case: DecodeCase) -> np.ndarray:
    """The Python decoding of a case, dequantised as the host bench dequantises a model's output."""
    out = case.output
    if out.dtype == np.int8:
        out = dequantize_output(out, {"dtype": np.int8, "quantization": (case.scale, case.zero_point)})
    c1 = case.classes + 1
    sizes = out[..., c1 : c1 + 2] if case.has_size else None
    return dd.decode(out[..., :c1], sizes, threshold=case.threshold, stride=case.stride)[: case.max_detections]


def quantise(p: np.ndarray, scale: float = SCALE, zero: int = ZERO) -> np.ndarray:
    return np.clip(np.round(p.astype(np.float64) / scale) + zero, -128, 127).astype(np.int8)


def int8_case(p: np.ndarray, classes: int, **kw) -> DecodeCase:
    scale, zero = kw.pop("scale", SCALE), kw.pop("zero_point", ZERO)
    return DecodeCase(quantise(p, scale, zero), classes, scale=scale, zero_point=zero, **kw)


def softmax_maps(rng, gh, gw, classes, objects, sizes=True) -> np.ndarray:
    """A heat map like a trained model's: background almost everywhere, bumps of 1-9 cells per object,
    then two size channels in [0, 0.6)."""
    logits = rng.normal(0.0, 1.0, (gh, gw, classes + 1))
    logits[..., 0] += 4.0
    for _ in range(objects):
        r, q, c = rng.integers(gh), rng.integers(gw), rng.integers(classes)
        amp = rng.uniform(3.0, 9.0)
        for dr in (-1, 0, 1):
            for dq in (-1, 0, 1):
                if 0 <= r + dr < gh and 0 <= q + dq < gw:
                    logits[r + dr, q + dq, c + 1] += amp * (1.0 if dr == dq == 0 else rng.uniform(0.0, 0.8))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    if sizes:
        p = np.concatenate([p, rng.uniform(0.0, 0.6, (gh, gw, 2))], -1)
    return p.astype(np.float32)


def heat(gh, gw, classes, hot, sizes=None, background=0.0):
    """A float map: `hot` maps (row, col, class) to a probability; the rest of each cell is background."""
    p = np.zeros((gh, gw, classes + 1), np.float32)
    p[..., 0] = 1.0 - background
    for (r, q, c), v in hot.items():
        p[r, q, c + 1] = v
        p[r, q, 0] = 1.0 - v
    if sizes is not None:
        p = np.concatenate([p, np.broadcast_to(np.asarray(sizes, np.float32), (gh, gw, 2))], -1).copy()
    return p


def edge_cases() -> list[tuple[str, DecodeCase, int | None]]:
    """(name, case, the detection count its rule implies, or None when the name says all)."""
    out = []
    nothing = np.zeros((12, 12, 3), np.float32)
    nothing[..., 0] = 1.0
    out.append(("no hot cell", int8_case(nothing, 2), 0))
    everything = np.zeros((12, 12, 2), np.float32)
    everything[..., 1] = 1.0
    out.append(("all cells hot, int8", int8_case(everything, 1), 1))
    out.append(("all cells hot, float", DecodeCase(everything, 1), 1))
    # q = 0 is p = (0 + 128) / 256 = 0.5 exactly: not hot; q = 1 is hot.
    at = quantise(heat(4, 4, 1, {(1, 1, 0): 0.5, (2, 3, 0): 129 / 256}))
    assert at[1, 1, 1] == 0 and at[2, 3, 1] == 1
    out.append(("exactly at the threshold", DecodeCase(at, 1, scale=SCALE, zero_point=ZERO), 1))
    out.append(
        (
            "exactly at the threshold, float",
            DecodeCase(heat(4, 4, 1, {(1, 1, 0): 0.5, (0, 0, 0): np.nextafter(np.float32(0.5), 1)}), 1),
            1,
        )
    )
    out.append(
        (
            "threshold 0.3 as float32",
            DecodeCase(
                heat(3, 3, 1, {(0, 0, 0): np.float32(0.3), (2, 2, 0): np.nextafter(np.float32(0.3), 1)}),
                1,
                threshold=0.3,
            ),
            1,
        )
    )
    # a diagonal chain and an anti-diagonal pair: corners touch, so one blob each; a gap of one cell splits
    corners = heat(
        6,
        6,
        1,
        {
            (0, 0, 0): 0.9,
            (1, 1, 0): 0.8,
            (2, 2, 0): 0.7,
            (0, 5, 0): 0.6,
            (1, 4, 0): 0.95,
            (4, 0, 0): 0.9,
            (4, 2, 0): 0.9,
        },
    )
    out.append(("blobs touching at corners", int8_case(corners, 1), 4))
    # a plateau: the peak (the first of the tied cells in raster order) picks the box size
    tie = heat(5, 5, 1, {(1, 2, 0): 0.9, (2, 1, 0): 0.9, (2, 2, 0): 0.9, (3, 3, 0): 0.7}, sizes=(0.1, 0.2))
    tie[1, 2, 2:] = (0.25, 0.125)
    tie[2, 1, 2:] = (0.5, 0.5)
    tie[2, 2, 2:] = (0.4, 0.3)
    out.append(("tied peaks", int8_case(tie, 1), 1))
    out.append(("tied peaks, float", DecodeCase(tie, 1), 1))
    # several classes in one cell's neighbourhood: each class has its own blobs, classes in order
    multi = heat(6, 6, 3, {(0, 0, 2): 0.9, (0, 1, 0): 0.8, (1, 0, 1): 0.7, (1, 1, 2): 0.6, (5, 5, 0): 0.55})
    out.append(("several classes", int8_case(multi, 3), 4))
    # isolated cells on every other row and column: the most blobs a grid can hold (the work buffer's bound)
    for gh, gw in ((7, 5), (12, 12), (1, 9)):
        cells = {(r, q, 0): 0.6 + 0.001 * (r * gw + q) for r in range(0, gh, 2) for q in range(0, gw, 2)}
        grid = heat(gh, gw, 1, cells, sizes=(0.1, 0.1))
        most = ((gh + 1) // 2) * ((gw + 1) // 2)
        out.append((f"most blobs {gh}x{gw}", int8_case(grid, 1), most))
        out.append((f"most blobs {gh}x{gw}, float", DecodeCase(grid, 1), most))
        out.append((f"most blobs {gh}x{gw}, capped", int8_case(grid, 1, max_detections=3), min(3, most)))
    # the cap keeps the first in output order (class 0's blobs, then class 1's), and 0 keeps none
    capped = heat(4, 4, 2, {(0, 0, 1): 0.9, (3, 3, 0): 0.9, (0, 3, 0): 0.8, (3, 0, 1): 0.7})
    out.append(("cap inside a class", int8_case(capped, 2, max_detections=1), 1))
    out.append(("cap between classes", int8_case(capped, 2, max_detections=2), 2))
    out.append(("cap at the count", int8_case(capped, 2, max_detections=4), 4))
    out.append(("cap 0", int8_case(capped, 2, max_detections=0), 0))
    out.append(("one cell", DecodeCase(heat(1, 1, 1, {(0, 0, 0): 0.75}, sizes=(1.0, 1.0)), 1), 1))
    # sizes Python's max(0.0, s) clamps: negative, -0.0, NaN; a subnormal and huge ones stay
    odd = heat(3, 6, 1, {(r, q, 0): 0.9 for r in (0, 2) for q in (0, 2, 4)}, sizes=(0.2, 0.2))
    odd[0, 0, 2:] = (-0.25, -0.0)
    odd[0, 2, 2:] = (np.nan, 0.0)
    odd[0, 4, 2:] = (np.float32(1e-45), 3.0)
    odd[2, 0, 2:] = (np.inf, 0.5)
    odd[2, 2, 2:] = (1e30, -np.inf)
    out.append(("odd sizes, float", DecodeCase(odd, 1), 6))
    # sizes below 0 survive this quantisation (NaN has no int8 value)
    out.append(("negative sizes, int8", int8_case(np.nan_to_num(odd, nan=-1.0), 1, scale=1 / 64, zero_point=0), 6))
    # probabilities no softmax gives: NaN is never hot; a threshold below 0 makes every other cell hot
    weird = heat(3, 3, 1, {(0, 0, 0): np.nan, (1, 1, 0): 0.9})
    out.append(("NaN probability", DecodeCase(weird, 1), 1))
    out.append(("negative threshold", DecodeCase(weird, 1, threshold=-0.5), 1))
    below = heat(3, 3, 1, {(r, q, 0): -1.5 for r in range(3) for q in range(3)})
    out.append(("probabilities below -1", DecodeCase(below, 1, threshold=-2.0), 1))  # score stays -1, peak cell 0
    # a serpentine: one blob whose flood fill walks every cell of it
    snake = np.zeros((9, 9), bool)
    snake[::2] = True
    snake[1, 8] = snake[3, 0] = snake[5, 8] = snake[7, 0] = True
    sn = heat(
        9,
        9,
        1,
        {(r, q, 0): 0.51 + 0.005 * ((r * 7 + q * 3) % 90) for r, q in zip(*np.nonzero(snake))},
        sizes=(0.3, 0.2),
    )
    out.append(("serpentine", int8_case(sn, 1), 1))
    out.append(("serpentine, float", DecodeCase(sn, 1), 1))
    return out


def random_cases(seed: int = 32) -> list[tuple[str, DecodeCase, None]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(200):  # a model's int8 output: scale 1/256, zero point -128
        classes = int(rng.integers(1, 4))
        p = softmax_maps(rng, 12, 12, classes, int(rng.integers(0, 8)), sizes=bool(i % 3))
        out.append((f"int8 {i}", int8_case(p, classes), None))
    for i in range(60):  # other quantisations, whose float32 products round; other grids
        classes = int(rng.integers(1, 5))
        gh, gw = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        p = softmax_maps(rng, gh, gw, classes, int(rng.integers(0, 12)), sizes=bool(i % 2))
        scale = float(np.float32(rng.choice([1 / 255, 0.0041, 0.00392157, rng.uniform(0.002, 0.01)])))
        zero = int(rng.integers(-128, -100))
        out.append(
            (
                f"int8 scale {scale:.6g} zero {zero} {i}",
                int8_case(
                    p,
                    classes,
                    scale=scale,
                    zero_point=zero,
                    threshold=float(rng.uniform(0.2, 0.8)),
                    stride=int(rng.choice([4, 8, 16])),
                ),
                None,
            )
        )
    for i in range(100):  # float outputs: softmax maps, and uniform noise whose low thresholds make big blobs
        classes = int(rng.integers(1, 4))
        gh, gw = int(rng.integers(1, 24)), int(rng.integers(1, 24))
        if i % 2:
            p = softmax_maps(rng, gh, gw, classes, int(rng.integers(0, 10)), sizes=bool(i % 4 == 1))
            threshold = 0.5
        else:
            p = rng.uniform(0.0, 1.0, (gh, gw, classes + 1 + 2 * (i % 4 == 0))).astype(np.float32)
            p *= np.float32(2.0) ** rng.integers(-12, 1, p.shape)  # mixed exponents: the sums round
            threshold = float(rng.uniform(0.0, 0.3))
        out.append(
            (
                f"float {i}",
                DecodeCase(
                    p.astype(np.float32), classes, threshold=threshold, max_detections=int(rng.choice([100, 5]))
                ),
                None,
            )
        )
    return out


CASES = edge_cases() + random_cases()


def test_the_edge_cases_test_what_they_say():
    """Each edge case's Python decoding gives the count its rule implies (else the case tests nothing)."""
    for name, case, count in CASES:
        if count is not None:
            assert len(reference(case)) == count, name
    by_name = {name: reference(case) for name, case, _ in CASES}
    tie = by_name["tied peaks"][0]
    assert (tie[dd.X1] - tie[dd.X0], tie[dd.Y1] - tie[dd.Y0]) == (10.0, 5.0)  # the first 0.9 cell, (1, 2)
    assert by_name["cap between classes"][:, dd.CLASS].tolist() == [0.0, 0.0]
    assert by_name["several classes"][:, dd.CLASS].tolist() == [0.0, 0.0, 1.0, 2.0]
    assert np.isnan(by_name["all cells hot, int8"][0, dd.X0])  # no size channels: no box


def assert_equal_bits(results: list[np.ndarray], where: str) -> None:
    assert len(results) == len(CASES)
    for (name, case, _), got in zip(CASES, results):
        want = reference(case)
        assert got.shape == want.shape, f"{where}, {name}: {len(got)} detections, Python {len(want)}"
        same = got.view(np.uint32) == np.ascontiguousarray(want).view(np.uint32)
        assert same.all(), (
            f"{where}, {name}: detection {np.argwhere(~same)[0].tolist()} differs:\n"
            f"C      {got.tolist()}\nPython {want.tolist()}"
        )


def sanitizers_work(tmp_path) -> bool:
    cc = shutil.which("cc") or shutil.which("gcc")
    (tmp_path / "t.c").write_text("int main(void) { return 0; }\n")
    done = subprocess.run([cc, "-fsanitize=address,undefined", "t.c", "-o", "t"], cwd=tmp_path, capture_output=True)
    return done.returncode == 0 and subprocess.run([str(tmp_path / "t")], capture_output=True).returncode == 0


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no host C compiler (apt-get install gcc)")
def test_c_decoder_on_the_host_equals_python(tmp_path):
    t0 = time.monotonic()
    results = run_decoder(
        [c for _, c, _ in CASES],
        where="host",
        strict=True,
        sanitize=sanitizers_work(tmp_path),
        work_dir=tmp_path / "build",
    )
    assert_equal_bits(results, "host")
    print(f"host: {len(CASES)} output tensors equal, {time.monotonic() - t0:.1f} s")


def board_unmet() -> str | None:
    """Why the check firmware cannot be built and run here (the MCU bench's own toolchain check), or None."""
    try:
        find_toolchain()
    except McuError as e:
        return str(e)
    return None


@pytest.mark.skipif(board_unmet() is not None, reason=f"no Cortex-M toolchain or QEMU: {board_unmet()}")
def test_c_decoder_on_the_emulated_cortex_m4_equals_python(tmp_path):
    t0 = time.monotonic()
    results = run_decoder([c for _, c, _ in CASES], where="board", strict=True, work_dir=tmp_path)
    assert_equal_bits(results, "Cortex-M4")
    print(f"Cortex-M4: {len(CASES)} output tensors equal, {time.monotonic() - t0:.1f} s")


@pytest.mark.parametrize(
    "case, message",
    [
        (DecodeCase(np.zeros((4, 4, 3), np.int8), 1, scale=SCALE, zero_point=ZERO), "3 channels do not hold 1 classes"),
        (DecodeCase(np.zeros((4, 4, 2), np.int8), 1), "needs its scale and zero_point"),
        (DecodeCase(np.zeros((4, 4, 2), np.float64), 1), "int8 or float32, not float64"),
        (DecodeCase(np.zeros((4, 4, 2), np.float32), 1, max_detections=-1), "max_detections -1 >= 0"),
        (DecodeCase(np.zeros((300, 300, 2), np.float32), 1), "out of range"),
    ],
)
def test_malformed_cases_are_refused_before_compiling(case, message):
    with pytest.raises(ValueError, match=message):
        run_decoder([case], where="host")
