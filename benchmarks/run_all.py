"""Benchmarks that back edgepipe's speed claims (run with `make bench`).

runner_noop: how long `edgepipe run` takes when every stage is up to date (the "rerun with nothing
changed" figure), as the median of several runs of the real console script on the smoke recipe.

latency_vs_reference: after `make recipe=mnist_student`, the deployable int8 student against the TF-MOT
example model, one thread each, interleaved round by round in one process so that both see the same
machine; the ratio is taken within each round and its median reported. The bench stage interleaves
its models too (`rounds`); this benchmark times more invokes and reports the spread of the ratio.

`python benchmarks/run_all.py [NAME ...] [--run-dir DIR]` runs only the named benchmarks; a missing or
corrupt model file is one error line and exit status 1.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).with_name("edgepipe")


def runner_noop(repeats: int = 7) -> dict:
    with tempfile.TemporaryDirectory() as root:
        recipe = REPO / "recipes" / "smoke.yaml"
        subprocess.run([EXE, "run", recipe], cwd=root, check=True, capture_output=True)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            p = subprocess.run([EXE, "run", recipe], cwd=root, check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - t)
            assert " 0 ran" in p.stdout, p.stdout
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": repeats}


def latency_vs_reference(run_dir: Path, rounds: int = 7, runs: int = 2000) -> dict | None:
    """Median single-thread p50 (us) of each model over `rounds` interleaved rounds, and the median ratio."""
    import numpy as np

    from edgepipe.device_runner import invoke_times, io_details, latency_stats, quantize_input
    from edgepipe.litert import interpreter

    files = {"student_qat/int8": run_dir / "qat_tflite" / "student_qat_int8.tflite",
             "tfmot_ref_qat/int8": run_dir / "ref_tflite" / "tfmot_ref_qat_int8.tflite"}
    if not all(f.is_file() for f in files.values()):
        return None
    interps = {name: interpreter(f, num_threads=1) for name, f in files.items()}
    rng = np.random.default_rng(0)  # images in [0, 1]: invoke time does not depend on what they show
    inputs = {}
    for name, it in interps.items():
        detail = io_details(it)[0]
        inputs[name] = quantize_input(rng.random((64, *detail["shape"][1:]), dtype=np.float32), detail)
    p50 = {name: [] for name in files}
    for _ in range(rounds):
        for name, it in interps.items():
            p50[name].append(latency_stats(invoke_times(it, inputs[name], warmup=200, runs=runs))["p50_us"])
    ratios = [a / b for a, b in zip(*p50.values())]
    return {"p50_us": {n: statistics.median(v) for n, v in p50.items()}, "ratio": statistics.median(ratios),
            "ratio_range": (min(ratios), max(ratios)), "rounds": rounds, "runs": runs}


BENCHMARKS = ("runner_noop", "latency_vs_reference")


@click.command()
@click.argument("names", nargs=-1, type=click.Choice(BENCHMARKS))
@click.option("--run-dir", type=click.Path(path_type=Path), default=REPO / "runs" / "mnist_student",
              show_default=True, help="the mnist_student run whose .tflite files latency_vs_reference times")
def main(names: tuple[str, ...], run_dir: Path) -> None:
    """Run the benchmarks NAMES (default: all) and print one line each."""
    from edgepipe.errors import EdgepipeError

    try:
        report(names or BENCHMARKS, run_dir)
    except EdgepipeError as e:
        click.echo(f"benchmarks: error: {e}", err=True)
        sys.exit(e.exit_code)


def report(names, run_dir: Path) -> None:
    os.environ.setdefault("EDGEPIPE_DATA_MIRROR", str(REPO.parent / "shared" / "datasets"))
    if "runner_noop" in names:
        r = runner_noop()
        print(f"runner_noop (smoke recipe, all stages fresh): median {r['median_s']:.3f} s over {r['runs']} "
              f"runs (min {r['min_s']:.3f}, max {r['max_s']:.3f})")
    if "latency_vs_reference" not in names:
        return
    lat = latency_vs_reference(run_dir)
    if lat is None:
        print(f"latency_vs_reference: skipped (no {run_dir}/qat_tflite and ref_tflite: "
              "run `make recipe=mnist_student` first)")
    else:
        ours, ref = lat["p50_us"].values()
        print(f"latency_vs_reference (1 thread, {lat['rounds']} interleaved rounds of {lat['runs']} invokes): "
              f"student_qat/int8 p50 {ours:.1f} us, tfmot_ref_qat/int8 {ref:.1f} us, ratio {lat['ratio']:.2f} "
              f"(rounds {lat['ratio_range'][0]:.2f}-{lat['ratio_range'][1]:.2f})")


if __name__ == "__main__":
    main()
