"""Benchmarks that back edgepipe's speed claims (run with `make bench`).

runner_noop: how long `edgepipe run` takes when every stage is up to date (the "rerun with nothing
changed" figure), as the median of several runs of the real console script on the smoke recipe.

mcu_calibration: MLPerf Tiny's reference models on the emulated Cortex-M4, and the cycles per instruction
fitted to their published latencies on a real board (the cortex-m4 profile's `cycles_per_instruction`).

latency_vs_reference: after `make recipe=mnist_student`, the deployable int8 student against the TF-MOT
example model (or any two models of one input: `--pair OURS REFERENCE`), one thread each, interleaved
round by round in one process so that both see the same machine; the ratio is taken within each round
and its median reported. The bench stage times its models with the same code (`rounds`); this
benchmark times more invokes and reports the spread of the ratio.

`python benchmarks/run_all.py [NAME ...] [--run-dir DIR] [--pair OURS REFERENCE]` runs only the named
benchmarks; a missing or corrupt model file is one error line and exit status 1.
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


MNIST_STUDENT_PAIR = ("qat_tflite/student_qat_int8.tflite", "ref_tflite/tfmot_ref_qat_int8.tflite")


def latency_vs_reference(ours: Path, reference: Path, rounds: int = 7, runs: int = 2000) -> dict:
    """Median single-thread p50 (us) of two models over `rounds` interleaved rounds, and the median ratio.

    The timing is the bench stage's (`device_runner.time_rounds`), with more invokes per round.
    """
    import numpy as np

    from edgepipe.core.errors import EdgepipeError
    from edgepipe.core.native import quiet_native
    from edgepipe.targets import device_runner
    from edgepipe.targets.litert import interpreter, io_details

    shapes = [tuple(int(d) for d in io_details(interpreter(f))[0]["shape"][1:]) for f in (ours, reference)]
    if shapes[0] != shapes[1]:
        raise EdgepipeError(
            f"{ours.name} takes {shapes[0]} and {reference.name} {shapes[1]}", "compare two models of the same input"
        )
    x = np.random.default_rng(0).random((64, *shapes[0]), dtype=np.float32)  # invoke time ignores the content
    with quiet_native():
        rows = device_runner.time_rounds(
            [str(ours), str(reference)], x, [1], warmup=200, runs=runs * rounds, rounds=rounds
        )
    p50 = [rows[str(f)]["latency"]["threads_1"]["round_p50_us"] for f in (ours, reference)]
    ratios = [a / b for a, b in zip(*p50)]
    return {
        "p50_us": [statistics.median(v) for v in p50],
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "rounds": rounds,
        "runs": runs,
    }


def mcu_calibration() -> None:
    """MLPerf Tiny's four reference models on the emulated Cortex-M4 (TFLite Micro + CMSIS-NN), the cycles per
    instruction fitted to their published latencies on the NUCLEO-L4R5ZI, against the cortex-m4 profile's."""
    import shutil

    from edgepipe.targets.mcu.calibrate import calibration
    from edgepipe.targets.profiles import load_target

    if not all(shutil.which(t) for t in ("arm-none-eabi-gcc", "qemu-system-arm")):
        print(
            "mcu_calibration: skipped (no Cortex-M toolchain: apt-get install gcc-arm-none-eabi "
            "libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm)"
        )
        return
    fit = calibration(log=print)
    profile = load_target("cortex-m4").cycles_per_instruction
    print(
        f"mcu_calibration: fitted {fit['factor']:.3f} cycles per instruction; the cortex-m4 profile uses {profile}"
        + ("" if abs(fit["factor"] - profile) < 0.01 else " (update it)")
    )


BENCHMARKS = ("runner_noop", "latency_vs_reference", "mcu_calibration")


@click.command()
@click.argument("names", nargs=-1, type=click.Choice(BENCHMARKS))
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=REPO / "runs" / "mnist_student",
    show_default=True,
    help="the mnist_student run whose .tflite files latency_vs_reference times",
)
@click.option(
    "--pair",
    nargs=2,
    type=click.Path(path_type=Path),
    default=None,
    metavar="OURS REFERENCE",
    help="two .tflite files of the same input for latency_vs_reference, instead of the mnist_student "
    "run's QAT student and TF-MOT example",
)
def main(names: tuple[str, ...], run_dir: Path, pair: tuple[Path, Path] | None) -> None:
    """Run the benchmarks NAMES (default: all) and print one line each."""
    from edgepipe.core.errors import EdgepipeError

    try:
        report(names or BENCHMARKS, run_dir, pair)
    except EdgepipeError as e:
        click.echo(f"benchmarks: error: {e}", err=True)
        sys.exit(e.exit_code)


def report(names, run_dir: Path, pair: tuple[Path, Path] | None = None) -> None:
    os.environ.setdefault("EDGEPIPE_DATA_MIRROR", str(REPO.parent / "shared" / "datasets"))
    if "runner_noop" in names:
        r = runner_noop()
        print(
            f"runner_noop (smoke recipe, all stages fresh): median {r['median_s']:.3f} s over {r['runs']} "
            f"runs (min {r['min_s']:.3f}, max {r['max_s']:.3f})"
        )
    if "mcu_calibration" in names:
        mcu_calibration()
    if "latency_vs_reference" not in names:
        return
    if pair is None:
        pair = tuple(run_dir / f for f in MNIST_STUDENT_PAIR)
        if not all(f.is_file() for f in pair):
            print(
                f"latency_vs_reference: skipped (no {pair[0]} or {pair[1]}: run `make recipe=mnist_student` "
                "first, or name two models with --pair)"
            )
            return
    lat = latency_vs_reference(*pair)
    (ours, ref), (a, b) = lat["p50_us"], (p.name for p in pair)
    print(
        f"latency_vs_reference (1 thread, {lat['rounds']} interleaved rounds of {lat['runs']} invokes): "
        f"{a} p50 {ours:.1f} us, {b} {ref:.1f} us, ratio {lat['ratio']:.2f} "
        f"(rounds {lat['ratio_range'][0]:.2f}-{lat['ratio_range'][1]:.2f})"
    )


if __name__ == "__main__":
    main()
