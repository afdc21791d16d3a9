"""The bundle stage: the firmware hand-off folder for one model on one target, `<target>/` in its output.

What an app or firmware team needs and nothing else: the `.tflite`; for microcontrollers the model as a
16-byte-aligned C array (`model_data.cc/.h`), an op-resolver header registering exactly the operators
the model uses with TFLite Micro's own method names (`model_ops.h`) and `model_io.h` (input shape, I/O
scale and zero point, class names, the tensor arena); for an Arm Cortex-M, a project that builds by
itself (a Makefile and the list of TFLite Micro sources the model needs, `main.cc`, the harness edgepipe
measured it with and sample inputs with the outputs it measured, so `make check` proves the build);
`labels.txt`; `preprocessing.json` (pixels to the model's integer input); `MODEL_CARD.md` (data, metrics
of every variant, fit on the target, limits, intended use); and `SHA256SUMS` over all of it. Publish it
with `publish: ["<target>/**/*"]`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from edgepipe.core import fsio
from edgepipe.core.errors import EdgepipeError
from edgepipe.core.params import param
from edgepipe.core.paths import C_IDENTIFIER, CPP_KEYWORDS
from edgepipe.core.stage import StageIO, StageKind
from edgepipe.datasets.artifact import load_dataset
from edgepipe.export.sidecar import sidecars
from edgepipe.stages.report_tables import metric_of
from edgepipe.targets.backends import backend_for
from edgepipe.targets.profiles import load_target
from edgepipe.targets.provenance import rows_by_name
from edgepipe.tasks import task_of


@dataclasses.dataclass
class BundleParams:
    """Parameters of the bundle stage."""

    target: str | None = param(None, "target profile (name or .yaml); null: the recipe's `target:`, else host")
    variant: str = param("int8", "which of the convert stage's models to bundle (its variant)")
    intended_use: str = param("", "one paragraph for MODEL_CARD.md: what the model is for, and what not")
    symbol: str = param("g_model_data", "C name of the model array in model_data.cc")

    def __post_init__(self):
        if not C_IDENTIFIER.match(self.symbol) or self.symbol in CPP_KEYWORDS:
            raise ValueError(
                f"symbol {self.symbol!r} is not a C identifier; fix: use letters, digits and _, not "
                "starting with a digit, and not a C++ keyword (e.g. g_model_data)"
            )


def preprocessing_spec(side: dict, task: str = "classification") -> dict:
    """How firmware turns raw pixels into the model's input, and reads its output, spelled out."""
    p = side["preprocessing"]
    output = (
        "class scores in class order (labels.txt)"
        if task == "classification"
        else "per cell of a grid at 1/8 of the input, background then class probabilities (labels.txt), "
        "then with a size head the box's width and height as fractions of the image; objects: "
        "edgepipe.tasks.detection_decode.decode, or detect_decode.h on a microcontroller"
    )
    return {
        "input_shape": side["input"]["shape"],
        "input_dtype": side["input"]["dtype"],
        "float_input": "x = (pixel * scale - mean) / std, per channel",
        "scale": p["scale"],
        "mean": p["mean"],
        "std": p["std"],
        "quantize": (
            "q = clamp(round(x / input_scale) + input_zero_point) to the input dtype's range"
            if side["input"]["dtype"] != "float32"
            else None
        ),
        "input_scale": side["input"]["scale"],
        "input_zero_point": side["input"]["zero_point"],
        "output": f"{output}; dequantize: (q - output_zero_point) * output_scale",
        "output_scale": side["output"]["scale"],
        "output_zero_point": side["output"]["zero_point"],
        "recorded": p,
    }


def run_bundle_stage(params: BundleParams, io: StageIO) -> str:
    """Write the hand-off folder `<target>/` for the convert stage's `variant` model."""
    target = load_target(params.target or "host")
    model_dir = Path(io.inputs["model"])
    side = next((s for s in sidecars(model_dir) if s["variant"] == params.variant), None)
    if side is None:
        have = ", ".join(s["variant"] for s in sidecars(model_dir))
        raise EdgepipeError(
            f"bundle: stage '{model_dir.name}' has no {params.variant} model",
            f"set variant to one of: {have}, or add {params.variant} to its variants",
        )
    if not target.runs(params.variant):
        raise EdgepipeError(
            f"bundle: {target.name} runs full-int8 models only, not {params.variant}",
            "bundle the int8 variant for this target",
        )
    ds = load_dataset(io.inputs["data"])
    task = task_of(ds.info).name
    src = model_dir / side["file"]
    out = io.out / target.name
    out.mkdir(parents=True)
    shutil.copyfile(src, out / src.name)
    fsio.write_text(out / "labels.txt", "\n".join(side["classes"]) + "\n")
    fsio.write_json(out / "preprocessing.json", preprocessing_spec(side, task))
    bench_dirs = [Path(b) for b in io.inputs.get("benches", [])]
    benches = [json.loads((b / "bench.json").read_text()) for b in bench_dirs]
    fit = backend_for(target).bundle_files(target, out, src, side, ds, symbol=params.symbol, bench_dirs=bench_dirs)
    fsio.write_text(out / "MODEL_CARD.md", model_card(side, ds, target, fit, benches, params.intended_use))
    files = sorted(p for p in out.rglob("*") if p.is_file())
    sums = "".join(f"{fsio.sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in files)
    fsio.write_text(out / "SHA256SUMS", sums)
    if fit is None:
        verdict = ""
    elif fit.get("measured"):
        m = fit["measured"]
        verdict = (
            f"; measured on the emulated {target.cpu}: flash {fsio.human_size(m['flash_bytes'])}, RAM "
            f"{fsio.human_size(m['ram_used_bytes'])}: {'fits' if m['fits'] else 'does NOT fit'} {target.name}"
        )
    else:
        verdict = (
            f"; arena {fsio.human_size(fit['arena_bytes'])}, flash {fsio.human_size(fit['flash_needed_bytes'])} "
            f"(estimate): {'fits' if fit['fits'] else 'does NOT fit'} {target.name}"
        )
    return f"{target.name}/ {len(list(out.iterdir()))} files for {src.name}{verdict}"


def model_card(side: dict, ds, target, fit: dict | None, benches: list[dict], intended_use: str) -> str:
    """MODEL_CARD.md: what the model is, what it was trained and measured on, its figures and its limits."""
    rows = list(rows_by_name(benches).values())  # a model benched on several targets is one row
    lines = _card_header(side, ds, target) + _card_metrics(side, rows, benches) + _card_limits(ds)
    if fit:
        lines += _card_fit(side, target, fit, task_of(ds.info))
    if fit and fit.get("detect"):
        lines += _card_decoding(fit["detect"])
    lines += ["## Intended use", "", intended_use or "Not stated by the recipe (bundle param `intended_use`).", ""]
    return "\n".join(lines)


def _card_header(side: dict, ds, target) -> list[str]:
    info = ds.info
    counts = {s: len(ds.splits[s][1]) for s in ("train", "val", "test")}
    return [
        f"# Model card: {side['file']}",
        "",
        f"- Source: stage `{side['source']}`, {side['variant']}{' (QAT)' if side['qat'] else ''}, "
        f"{side['params']:,} parameters, {side['macs'] / 1e6:.2f} M MACs, {fsio.human_size(side['size_bytes'])}",
        f"- SHA-256: `{side['sha256']}`",
        f"- Input: {side['input']['dtype']} {side['input']['shape']}; output: {side['output']['dtype']} "
        f"scores for {len(side['classes'])} classes ({', '.join(side['classes'])})",
        f"- Target: {target.name} ({target.description})",
        "",
        "## Data",
        "",
        f"- Source `{info.get('source')}`: {counts['train']:,} train / {counts['val']:,} validation / "
        f"{counts['test']:,} test samples, {len(ds.classes)} classes.",
        f"- Preprocessing: see `preprocessing.json` (scale {info['preprocessing']['scale']}, mean "
        f"{info['preprocessing']['mean']}, std {info['preprocessing']['std']}).",
        "",
    ]


def _card_metrics(side: dict, rows: list[dict], benches: list[dict]) -> list[str]:
    """Every benched variant's figures, then the model's weakest classes (the start of the limits)."""
    if not rows:
        return ["## Limits", ""]
    metric = metric_of(benches)
    lines = [
        "## Metrics of every variant",
        "",
        f"{metric['label'][:1].upper()}{metric['label'][1:]} from each `.tflite` on the full test split; latency p50 "
        "at one thread on the host named below.",
        "",
        f"| model | quant | size | {metric['short']} | p50 (host) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        one = r["latency"].get("threads_1") or {}
        lines.append(
            f"| {r['name']} | {r['variant']}{' (QAT)' if r['qat'] else ''} | "
            f"{fsio.human_size(r['size_bytes'])} | {100 * r['accuracy']:.2f} % | "
            f"{one.get('p50_us', float('nan')):.0f} us |"
        )
    lines += ["", f"Host: {benches[0]['provenance'].get('cpu')}.", ""]
    mine = next((r for r in rows if r["file"] == side["file"]), None)
    if mine and mine.get("per_class_accuracy"):
        worst = sorted((a, c) for c, a in zip(side["classes"], mine["per_class_accuracy"]) if a is not None)[:3]
        lines += [
            "## Limits",
            "",
            f"- Weakest classes on the test split: {', '.join(f'{c} {100 * a:.1f} %' for a, c in worst)}.",
        ]
    return lines


def _card_limits(ds) -> list[str]:
    return [
        f"- Measured only on `{ds.info.get('source')}`'s test split; inputs unlike it (other sensors, "
        "lighting, sizes) are untested.",
        "- A classifier: it always answers one of the classes above, even for inputs of none of them."
        if task_of(ds.info).name == "classification"
        else "- A detector of object centres on a grid of cells: objects whose centres fall in touching cells "
        "are found as one.",
        "",
    ]


def _card_decoding(facts: dict) -> list[str]:
    """How firmware turns a detection model's output into objects with the C decoding this bundle ships."""
    return [
        "## Decoding on the device",
        "",
        f"The model keeps to builtin ops: its output is a {facts['rows']} x {facts['cols']} grid of cells, "
        f"{facts['stride']} input pixels each, of background and class probabilities"
        + (" and box sizes" if facts["has_size"] else "")
        + ". `detect_decode.h` / `detect_decode.c` (C99, no allocation, no libm) turn it into objects (class, "
        "score, centre" + (", box" if facts["has_size"] else "") + " in input pixels) exactly as edgepipe's "
        f"Python decoding does (a cell is hot above {facts['threshold']}). `model_io.h` holds the grid facts "
        "it needs (`kDetectGrid`, `kDetectWorkBytes`, `kDetectMaxDetections`); after the model runs:",
        "",
        "```c++",
        "static double work[kDetectWorkBytes / sizeof(double)];",
        "detect_detection found[kDetectMaxDetections];",
        "int n = detect_decode_int8(output->data.int8, kOutputScale, kOutputZeroPoint, &kDetectGrid, work,",
        "                           sizeof work, found, kDetectMaxDetections);",
        "```",
        "",
        *(
            [
                "`main.cc`'s `detect()` does both; `make check` runs it on the emulated board on every sample test "
                "image and compares the objects with edgepipe's Python decoding of the same outputs, bit for bit.",
                "",
            ]
            if facts["checked_on_board"]
            else []
        ),
        _every_image(facts["every_test_image"]),
        "",
    ]


def _every_image(check: dict) -> str:
    """What the bundle stage checked of the shipped decoding on every test image, or why it did not."""
    if not check["images"]:
        return f"The decoding was not run over every test image when this bundle was written: {check['why_not']}."
    return (
        f"When this bundle was written, the shipped decoding ran on the emulated board over the int8 outputs of "
        f"all {check['images']:,} test images ({check['detections']:,} detections) and equalled edgepipe's Python "
        "decoding on every one, bit for bit."
    )


def _card_fit(side: dict, target, fit: dict, task) -> list[str]:
    m = fit.get("measured")
    if m:  # measured on the emulated core: the figures of the firmware this bundle builds
        origin = ", ".join(f"{k} {v:,}" for k, v in m["flash_by_origin"].items() if v > 0 and k != "padding")
        latency = (
            f"- Latency: {m['latency_ms']:.2f} ms per inference at {target.clock_mhz} MHz: "
            f"{m['instructions']['median']:,.0f} instructions on the emulated {target.cpu} x "
            f"{target.cycles_per_instruction} cycles per instruction ({target.calibration})."
            if m["latency_ms"] is not None
            else f"- Latency: {m['instructions']['median']:,.0f} instructions per inference on the emulated "
            f"{target.cpu}; no milliseconds: the profile has no calibrated cycles per instruction."
        )
        return [
            f"## Fit on {target.name}",
            "",
            f"Measured on QEMU's {m['emulator']['machine']} ({target.cpu}) with TFLite Micro and CMSIS-NN int8 "
            f"kernels, the firmware built from this folder's files, over {m['test_samples']:,} test images.",
            "",
            f"- {task.headline_label[:1].upper()}{task.headline_label[1:]} on the emulated board: "
            f"{100 * m['accuracy']:.2f} %; the output bytes equal the tflite_micro interpreter's on "
            f"{m['outputs_bit_exact_with_tflite_micro']:,} of {m['test_samples']:,} images, "
            + (
                f"the class equals LiteRT's on this host for {100 * m['top1_agreement_with_host_litert']:.2f} %."
                if task.name == "classification"
                else f"{task.agreement_label} as LiteRT's on this host: "
                f"{100 * m[task.agreement_name + '_with_host_litert']:.2f} %."
            ),
            f"- Flash: {m['flash_bytes']:,} of {target.flash_bytes:,} bytes ({origin}).",
            f"- RAM: {m['ram_used_bytes']:,} of {target.ram_bytes:,} bytes used (tensor arena "
            f"{m['arena_used_bytes']:,}, stack {m['stack_used_bytes']:,}, heap {m['heap_used_bytes']:,}, other "
            f"statics); `kTensorArenaSize` is {fit['arena_hint_bytes']:,}.",
            latency,
            f"- Verdict: {'fits' if m['fits'] else 'does NOT fit'}.",
            "",
        ]
    latency = (
        f"- Latency: about {fit['latency_us_estimate'] / 1000:.2f} ms per inference, an **estimate** from "
        f"MACs x {target.cycles_per_mac} cycles/MAC at {target.clock_mhz} MHz, not a measurement."
        if fit["latency_us_estimate"] is not None
        else "- Latency: not estimated (the target profile gives no cycles_per_mac)."
    )
    return [
        f"## Fit on {target.name}",
        "",
        f"- Tensor arena: {fit['arena_bytes']:,} bytes measured with TFLite Micro on the host; with the "
        f"{100 * fit['arena_margin']:.0f} % margin {fit['ram_needed_bytes']:,} of {fit['ram_bytes']:,} bytes RAM.",
        f"- Flash: {fit['flash_needed_bytes']:,} of {fit['flash_bytes']:,} bytes (model {side['size_bytes']:,} + "
        f"runtime and kernels {fit['code_bytes_estimate']:,}, an estimate).",
        latency,
        f"- Verdict: {'fits' if fit['fits'] else 'does NOT fit'}.",
        "",
    ]


def needs(params: BundleParams) -> list:
    """What writing the bundle for the target needs from this machine (checked before the run starts)."""
    target = load_target(params.target or "host")
    return backend_for(target).bundle_needs(target)


KIND = StageKind(
    name="bundle",
    params=BundleParams,
    run=run_bundle_stage,
    needs=needs,
    inputs={"data": False, "model": False, "benches": True},
    optional_inputs=("benches",),
    output="bundle",
    accepts={"data": ("dataset",), "model": ("tflite",), "benches": ("bench",)},
    main_output="",
    doc="firmware hand-off folder for one model on one target (C array, op resolver, card)",
)
